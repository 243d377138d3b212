#![no_main]
// See service_mgr_fuzz_targets (fuzz/targets/) for what this target checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| service_mgr_fuzz_targets::zap_request(data));
