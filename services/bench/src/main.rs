//! The `postback-bench` binary.

use std::process::ExitCode;

use clap::Parser;

/// The same allocator as the services, so the bare twins' ceilings are not
/// lowered by a slower one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = postback_bench::cli::Cli::parse();
    match postback_common::runtime::run(postback_bench::main(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
