//! `cargo +nightly fuzz run views` (from crates/esp): every packet view, the UDP/4500
//! demultiplexer and the selector flow extraction on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    esp::fuzzing::views(data);
});
