//! The `ferrum` executable.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // The same executable runs the instances of isolated models in child processes.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(ferrum_core::isolation::CHILD_ARGUMENT))
    {
        return ferrum_core::isolation::child::main();
    }
    let args = ferrum::cli::Args::parse();
    let logging = match ferrum::logging::init(
        args.log_info,
        args.log_warning,
        args.log_error,
        args.log_verbose,
        &args.log_format,
        &args.log_file,
    ) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {}", e.message);
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ferrum::server::run(args, logging)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
