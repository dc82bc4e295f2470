//! Fuzz target `path_normalize`: see `checks::path_normalize` for the properties.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::path_normalize(data));
