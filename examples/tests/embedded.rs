//! Runs the `embedded` example (the Rust API end to end) on the workspace's
//! `model_repository/` with the backends in `target/debug/backends` (or
//! `$FERRUM_BACKEND_DIRECTORY`).

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn embedded_example_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("examples/ has a parent")
        .to_path_buf();
    let backends = std::env::var("FERRUM_BACKEND_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/debug/backends"));
    assert!(
        backends.join("add_sub").is_dir(),
        "no backends in {}: build them first",
        backends.display()
    );
    let output = Command::new(env!("CARGO_BIN_EXE_embedded"))
        .arg(root.join("model_repository"))
        .arg(&backends)
        .current_dir(&root)
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "embedded failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
