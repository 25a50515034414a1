//! `EnvFile::parse` (which never fails) and its accessors on arbitrary text.
//!
//! Invariants: nothing panics; keys are unique and well-formed; `get` and the
//! typed accessors agree with the entries; a subnet read back is canonical.

#![no_main]

use flannel_core::subnet_env::{EnvFile, KEY_IPMASQ, KEY_MTU};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = EnvFile::parse(text);
    let (v4, _) = file.previous_subnet();
    let (v6, _) = file.previous_ipv6_subnet();
    let _ = file.previous_network();
    let _ = file.previous_ipv6_network();
    let mtu = file.mtu();
    let masq = file.ip_masq();

    let entries: Vec<(&str, &str)> = file.entries().collect();
    for (i, (k, v)) in entries.iter().enumerate() {
        assert!(!k.is_empty(), "empty key from {text:?}");
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.'),
            "bad key {k:?} from {text:?}"
        );
        assert!(
            entries[i + 1..].iter().all(|(k2, _)| k2 != k),
            "repeated key {k:?} from {text:?}"
        );
        assert_eq!(file.get(k), Some(*v), "get({k:?}) from {text:?}");
    }
    assert_eq!(
        mtu,
        file.get(KEY_MTU).and_then(|v| v.parse().ok()),
        "{text:?}"
    );
    assert_eq!(
        masq,
        file.get(KEY_IPMASQ).and_then(|v| v.parse().ok()),
        "{text:?}"
    );
    if let Some(n) = v4 {
        assert_eq!(
            n.to_string().parse(),
            Ok(n),
            "non-canonical {n:?} from {text:?}"
        );
    }
    if let Some(n) = v6 {
        if n.addr().to_ipv4_mapped().is_none() {
            assert_eq!(
                n.to_string().parse(),
                Ok(n),
                "non-canonical {n:?} from {text:?}"
            );
        }
    }
});
