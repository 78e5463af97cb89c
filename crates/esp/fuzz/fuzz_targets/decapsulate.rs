//! `cargo +nightly fuzz run decapsulate` (from crates/esp). The body is
//! `esp::fuzzing::decapsulate`, which `cargo test -p esp` also runs on pseudo-random input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = esp::fuzzing::decapsulate(data);
});
