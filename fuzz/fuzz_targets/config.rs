#![no_main]
// See service_mgr::fuzz_targets for what this target checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| service_mgr::fuzz_targets::config(data));
