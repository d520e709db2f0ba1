//! The `postback-deliver` binary: settings, logging, deliver until signalled.

use std::process::ExitCode;

use postback_common::{runtime, shutdown};
use postback_deliver::{Config, Deliverer};

/// mimalloc: the profile of a worker at saturation showed glibc malloc and
/// free in 13 % of its samples (see the README's Performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    runtime::main(Config::validate, |config| async move {
        let deliverer = Deliverer::build(config).await?;
        deliverer.run(shutdown::on_signal()).await
    })
}
