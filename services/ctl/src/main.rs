//! The `postbackctl` binary.

use std::process::ExitCode;

use postback_ctl::cli::Cli;

fn main() -> ExitCode {
    let cli = match postback_common::config::parse::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match postback_common::runtime::run(postback_ctl::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}
