//! Fuzz target `upstream_request`: see `checks::upstream_request` for the properties.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::upstream_request(data));
