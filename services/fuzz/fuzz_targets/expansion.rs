//! Fuzz target: adversarial URL templates and values through budgeted
//! expansion and length measurement, within a work budget.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod budget;

#[global_allocator]
static ALLOCATOR: budget::Counting = budget::Counting;

fuzz_target!(|input: &[u8]| {
    // The check's own full expansion runs only on URLs within 512 bytes.
    budget::within(input, 16, 64 << 10, postback_common::template::check_expansion_fuzz_input);
});
