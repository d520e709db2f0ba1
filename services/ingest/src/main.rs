//! The `postback-ingest` binary: settings, logging, serve until signalled.

use std::process::ExitCode;

use postback_common::{runtime, shutdown};
use postback_ingest::{Application, Config};

/// mimalloc: the profile of a worker at saturation showed glibc malloc and
/// free in 13 % of its samples (see the README's Performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    runtime::main(Config::validate, |config| async move {
        let app = Application::build(config).await?;
        app.run(shutdown::on_signal()).await?;
        Ok(())
    })
}
