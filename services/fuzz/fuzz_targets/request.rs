//! Fuzz target: an ingest request body, through parsing and validation,
//! within a work budget (see `budget.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod budget;

#[global_allocator]
static ALLOCATOR: budget::Counting = budget::Counting;

fuzz_target!(|body: &[u8]| {
    // Parsing copies the body and builds a tree of it; each accepted item
    // becomes a postback, encoded and JSON-serialised once by the check.
    budget::within(body, 64, 1 << 20, postback_ingest::request::check_body);
});
