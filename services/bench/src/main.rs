//! The `postback-bench` binary.

use std::process::ExitCode;

use clap::Parser;

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
