//! `NetConfig::parse` + `check` on arbitrary text.
//!
//! Invariant: a config that parses and checks writes a `to_json()` that
//! parses and checks again and writes the same bytes.
//!
//! IPv4-mapped IPv6 values (which Go prints dotted and cannot read back)
//! are printed in hex by flannel-core and must round-trip too; the fuzzer
//! found that defect, now fixed.

#![no_main]

use flannel_core::config::NetConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut cfg) = NetConfig::parse(text) else {
        return;
    };
    let _ = cfg.backend_type_lower();
    let _ = cfg.stack();
    // `to_json` must not panic on unchecked configs either.
    let _ = cfg.to_json();
    if cfg.check().is_err() {
        return;
    }
    let json = cfg.to_json();
    let mut again = NetConfig::parse(&json).unwrap_or_else(|e| {
        panic!("to_json output does not parse: {e}\ninput: {text:?}\njson: {json}")
    });
    again.check().unwrap_or_else(|e| {
        panic!("to_json output does not check: {e}\ninput: {text:?}\njson: {json}")
    });
    assert_eq!(again.to_json(), json, "to_json not stable; input: {text:?}");
    assert_eq!(again.backend_type, cfg.backend_type, "input: {text:?}");
});
