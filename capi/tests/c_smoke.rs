//! Compiles `tests/c/smoke.c` with gcc against the built `libferrum.so` and runs it on the
//! workspace's `model_repository/` with the backends in `target/debug/backends` (or
//! `$FERRUM_BACKEND_DIRECTORY`). With `FERRUM_CAPI_VALGRIND=1` it runs under valgrind's leak
//! checker with `tests/c/valgrind.supp` (scripts/test-embedding.sh does that).

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("capi/ has a parent")
        .to_path_buf()
}

/// The folder holding `libferrum.so`: `target/<profile>/deps`, beside this test's binary.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().expect("deps folder").to_path_buf()
}

#[test]
fn c_smoke_test_passes() {
    let root = workspace();
    let lib = library_dir();
    assert!(
        lib.join("libferrum.so").exists(),
        "no libferrum.so in {}",
        lib.display()
    );
    let backends = std::env::var("FERRUM_BACKEND_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/debug/backends"));
    for backend in ["add_sub", "onnxruntime", "repeat", "identity"] {
        assert!(
            backends.join(backend).is_dir(),
            "backend '{backend}' is missing from {}: build the backends first",
            backends.display()
        );
    }
    let out = tempfile_dir();
    let exe = out.join("smoke");
    let include = Path::new(env!("OUT_DIR"));
    let status = Command::new("gcc")
        .args([
            "-std=c11",
            "-D_GNU_SOURCE",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-g",
        ])
        .arg(root.join("capi/tests/c/smoke.c"))
        .arg(format!("-I{}", include.display()))
        .arg(format!("-L{}", lib.display()))
        .args(["-lferrum", "-lpthread", "-lm"])
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("gcc runs");
    assert!(status.success(), "gcc failed to build smoke.c");

    let valgrind = std::env::var("FERRUM_CAPI_VALGRIND").is_ok_and(|v| v == "1");
    let mut command = if valgrind {
        let mut c = Command::new("valgrind");
        c.args([
            "--leak-check=full",
            "--error-exitcode=1",
            "--num-callers=40",
        ])
        .arg(format!(
            "--suppressions={}",
            root.join("capi/tests/c/valgrind.supp").display()
        ))
        .arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let output = command
        .arg(root.join("model_repository"))
        .arg(&backends)
        .current_dir(&root)
        .output()
        .expect("smoke runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if valgrind {
        let summary: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("ERROR SUMMARY") || l.contains("lost:"))
            .collect();
        println!("valgrind: {}", summary.join(" | "));
    }
    assert!(
        output.status.success(),
        "smoke failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}

/// A fresh folder for the compiled program.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrum-capi-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp folder");
    dir
}
