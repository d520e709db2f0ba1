//! Fuzz target: arbitrary bytes as a stream entry's postback.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    postback_common::records::postback::check_fuzz_input(bytes);
});
