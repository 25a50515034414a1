//! `SubnetKey` parsing (`FromStr` and `from_path`) on arbitrary text.
//!
//! Invariant: a parsed key prints (`to_string`) to text that parses back to
//! an equal key, and a key parsed from a bare name is the key `from_path`
//! finds at the end of an etcd path.
//!
//! IPv4-mapped IPv6 values (which Go prints dotted and cannot read back)
//! are printed in hex by flannel-core and must round-trip too; the fuzzer
//! found that defect, now fixed.

#![no_main]

use flannel_core::key::SubnetKey;
use libfuzzer_sys::fuzz_target;

fn round_trip(how: &str, text: &str, key: SubnetKey) {
    assert!(
        key.ipv4().is_some() || key.ipv6().is_some(),
        "{how} gave an empty key for {text:?}"
    );
    let printed = key.to_string();
    let back: SubnetKey = printed.parse().unwrap_or_else(|e| {
        panic!("{how}({text:?}) = {key:?}, whose to_string {printed:?} does not parse: {e}")
    });
    assert_eq!(
        back, key,
        "{how}({text:?}) does not round-trip via {printed:?}"
    );
    assert_eq!(back.to_string(), printed, "{how}({text:?})");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = text.parse::<SubnetKey>();
    if let Ok(key) = parsed {
        round_trip("from_str", text, key);
        let path = format!("/coreos.com/network/subnets/{text}");
        assert_eq!(SubnetKey::from_path(&path), Ok(key), "path {path:?}");
    }
    let from_path = SubnetKey::from_path(text);
    if !text.contains('/') {
        assert_eq!(from_path, parsed, "from_path vs from_str on {text:?}");
    }
    if let Ok(key) = from_path {
        round_trip("from_path", text, key);
    }
});
