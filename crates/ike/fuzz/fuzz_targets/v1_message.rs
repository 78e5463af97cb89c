#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One epoch for the whole run; the engine itself never reads a clock.
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    #[allow(clippy::disallowed_methods)]
    let now = *EPOCH.get_or_init(Instant::now);
    ike::v1::fuzz::message(data, now);
});
