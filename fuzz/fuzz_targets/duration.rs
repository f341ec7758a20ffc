//! `crds::duration::parse` on any text: never panics, never goes past `MAX`, and accepts only
//! what the CRDs' pattern accepts (so the API server and the operator agree).
#![no_main]

use std::sync::OnceLock;

use crds::duration::{DURATION_PATTERN, MAX, parse};
use libfuzzer_sys::fuzz_target;
use regex::Regex;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    let pattern = PATTERN.get_or_init(|| Regex::new(DURATION_PATTERN).expect("a valid pattern"));
    if let Some(duration) = parse(text) {
        assert!(duration <= MAX, "{text:?} parsed past MAX: {duration:?}");
        assert!(
            pattern.is_match(text),
            "{text:?} parsed but the CRD pattern refuses it"
        );
    }
});
