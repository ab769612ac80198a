//! Compiles the small C++ shim against libtorch's headers and sets where the plugin and its
//! tests find libtorch at run time.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        panic!("LIBTORCH is not set; run scripts/fetch-libtorch.sh (the Makefile does)");
    };
    let include = libtorch.join("include");
    if !include.is_dir() {
        panic!(
            "no libtorch headers at {}; run scripts/fetch-libtorch.sh (the Makefile does)",
            include.display()
        );
    }
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .file("src/shim.cpp")
        .compile("ferrum_torch_shim");

    // The installed plugin finds libtorch beside itself (backends/pytorch/runtime.sh puts it
    // there), never in the download cache.
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN");
    // Tests run from target/: they load the cached libtorch, through its real folder so that
    // libtorch's own $ORIGIN-relative RPATH finds the CUDA runtime stubs.
    let torch_cpu = libtorch.join("lib/libtorch_cpu.so");
    if let Some(dir) = std::fs::canonicalize(&torch_cpu)
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
    {
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{}", dir.display());
    }
}
