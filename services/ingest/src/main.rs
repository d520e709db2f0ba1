//! The `postback-ingest` binary: settings, logging, serve until signalled.

use std::process::ExitCode;

use postback_common::{runtime, shutdown};
use postback_ingest::{Application, Config};

fn main() -> ExitCode {
    runtime::main(Config::validate, |config| async move {
        let app = Application::build(config).await?;
        app.run(shutdown::on_signal()).await?;
        Ok(())
    })
}
