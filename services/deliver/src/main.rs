//! The `postback-deliver` binary: settings, logging, deliver until signalled.

use std::process::ExitCode;

use postback_common::{runtime, shutdown};
use postback_deliver::{Config, Deliverer};

fn main() -> ExitCode {
    runtime::main(Config::validate, |config| async move {
        let deliverer = Deliverer::build(config).await?;
        deliverer.run(shutdown::on_signal()).await
    })
}
