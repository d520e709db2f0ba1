//! Fuzz target: an ingest request body, through parsing and validation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    postback_ingest::request::check_body(body);
});
