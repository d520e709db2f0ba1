//! Fuzz target: a URL template and a value, through validation and expansion.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    postback_common::template::check_fuzz_input(input);
});
