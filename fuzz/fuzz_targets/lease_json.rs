//! `LeaseAttrs::from_json` on arbitrary text.
//!
//! Invariant: decoded attributes re-encode to JSON that decodes again and
//! re-encodes to the same bytes, with the same addresses and backend type.
//!
//! IPv4-mapped IPv6 values (which Go prints dotted and cannot read back)
//! are printed in hex by flannel-core and must round-trip too; the fuzzer
//! found that defect, now fixed.

#![no_main]

use flannel_core::lease::LeaseAttrs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(attrs) = LeaseAttrs::from_json(text) else {
        return;
    };
    let json = attrs.to_json();
    let again = LeaseAttrs::from_json(&json).unwrap_or_else(|e| {
        panic!("to_json output does not decode: {e}\ninput: {text:?}\njson: {json}")
    });
    assert_eq!(again.to_json(), json, "to_json not stable; input: {text:?}");
    assert_eq!(again.public_ip, attrs.public_ip, "input: {text:?}");
    assert_eq!(again.public_ipv6, attrs.public_ipv6, "input: {text:?}");
    assert_eq!(again.backend_type, attrs.backend_type, "input: {text:?}");
    assert_eq!(
        again.backend_data.is_some(),
        attrs.backend_data.is_some(),
        "input: {text:?}"
    );
    assert_eq!(
        again.backend_v6_data.is_some(),
        attrs.backend_v6_data.is_some(),
        "input: {text:?}"
    );
});
