//! Sans-IO IKEv2 (RFC 7296).
pub mod config;
pub mod keys;
pub mod sk;
pub mod ts;
pub mod wire;
