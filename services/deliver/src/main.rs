//! The `postback-deliver` binary: settings, logging, run until signalled.

use std::process::ExitCode;

use postback_deliver::{Config, Deliverer};

fn main() -> ExitCode {
    let config = match postback_common::config::parse::<Config>() {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Err(e) = config.validate() {
        return postback_common::config::report(&e);
    }
    if let Err(e) = postback_common::telemetry::init() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match postback_common::runtime::run(serve(config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let deliverer = match Deliverer::build(config).await {
        Ok(deliverer) => deliverer,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match deliverer.run(postback_common::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            ExitCode::FAILURE
        }
    }
}
