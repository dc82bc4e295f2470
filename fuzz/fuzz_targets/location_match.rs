//! Fuzz target `location_match`: see `checks::location_match` for the properties.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::location_match(data));
