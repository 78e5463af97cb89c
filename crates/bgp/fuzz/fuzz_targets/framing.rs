//! Message framing over an arbitrarily segmented stream, into a `Framer`
//! and into a `Session` that has just opened a connection.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The engine reads no clock; the harness provides one fixed instant.
    static T0: OnceLock<Instant> = OnceLock::new();
    bgp::fuzz::framing(data, *T0.get_or_init(Instant::now));
});
