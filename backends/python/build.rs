//! Makes the plugin find the Python it was built against at run time, without
//! LD_LIBRARY_PATH: a RUNPATH entry for the interpreter's library folder (the one pyo3 links).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-changed=build.rs");
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(&python)
        .args([
            "-c",
            "import sysconfig as s; print(s.get_config_var('LIBDIR') or ''); \
             print(s.get_config_var('INSTSONAME') or ''); \
             import sys, platform; print(platform.python_version()); print(sys.base_prefix)",
        ])
        .output();
    let text = match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).to_string(),
        _ => String::new(),
    };
    let mut lines = text.lines().map(str::trim);
    let libdir = lines.next().unwrap_or_default().to_string();
    let soname = lines
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("libpython3.so");
    let version = lines.next().unwrap_or("unknown");
    let prefix = lines.next().unwrap_or("unknown");
    println!("cargo:rustc-env=FERRUM_PYTHON_VERSION={version}");
    println!("cargo:rustc-env=FERRUM_PYTHON_PREFIX={prefix}");
    // The library whose symbols the plugin makes global before starting Python.
    println!("cargo:rustc-env=FERRUM_LIBPYTHON_SONAME={soname}");
    if libdir.is_empty() {
        println!(
            "cargo:warning=could not ask {python} for its LIBDIR; the plugin will need LD_LIBRARY_PATH"
        );
        return;
    }
    // Every target (the plugin and its unit tests) links libpython.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{libdir}");
}
