//! The `postback-ingest` binary: settings, logging, run until signalled.

use std::process::ExitCode;

use postback_ingest::{Application, Config};

fn main() -> ExitCode {
    let config = match postback_common::config::parse::<Config>() {
        Ok(config) => config,
        Err(code) => return code,
    };
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
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match app.run(postback_common::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}
