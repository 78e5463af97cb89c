//! UPDATE body decoder (RFC 4271 §4.3 with RFC 7606): never panics, and a
//! clean decode survives an encode/decode round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bgp::fuzz::update_body(data);
});
