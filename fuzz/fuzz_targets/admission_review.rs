//! Any bytes as an AdmissionReview body: decode, decide and answer exactly as the HTTP handler
//! does (`review::review`), for a webhook with and without native sidecars.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultkeeper_fuzz::{check_review, webhook_configs};

fuzz_target!(|body: &[u8]| {
    for config in webhook_configs() {
        check_review(body, config);
    }
});
