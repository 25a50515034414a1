//! MAC address helpers, compatible with Go's `net.HardwareAddr`.

use crate::NetlinkError;

/// A 6-byte Ethernet (EUI-48) address.
pub type Mac = [u8; 6];

/// Formats a MAC the way Go's `net.HardwareAddr.String()` does (and `ip
/// link` prints it): lowercase, colon separated, e.g. `c6:d2:32:6f:8f:44`.
pub fn format_mac(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Parses the 6-byte forms accepted by Go's `net.ParseMAC`:
/// `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` and `aabb.ccdd.eeff` (hex digits
/// in either case). The 8- and 20-byte forms Go also accepts are rejected,
/// since VTEP MACs are always 6 bytes.
pub fn parse_mac(s: &str) -> Result<Mac, NetlinkError> {
    let invalid = || NetlinkError::InvalidMac {
        input: s.to_string(),
    };
    let b = s.as_bytes();
    let mut mac = [0u8; 6];
    match b.get(2).copied() {
        Some(sep @ (b':' | b'-')) if b.len() == 17 => {
            for (i, out) in mac.iter_mut().enumerate() {
                let x = i * 3;
                *out = hex_byte(b[x], b[x + 1]).ok_or_else(invalid)?;
                if i < 5 && b[x + 2] != sep {
                    return Err(invalid());
                }
            }
        }
        _ if b.len() == 14 && b[4] == b'.' && b[9] == b'.' => {
            for (i, pair) in mac.chunks_mut(2).enumerate() {
                let x = i * 5;
                pair[0] = hex_byte(b[x], b[x + 1]).ok_or_else(invalid)?;
                pair[1] = hex_byte(b[x + 2], b[x + 3]).ok_or_else(invalid)?;
            }
        }
        _ => return Err(invalid()),
    }
    Ok(mac)
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    let h = (hi as char).to_digit(16)?;
    let l = (lo as char).to_digit(16)?;
    u8::try_from(h * 16 + l).ok()
}

/// A random, locally administered, unicast MAC, as Go flannel's
/// `pkg/mac.NewHardwareAddr`: 6 random bytes with `b[0] = (b[0] & 0xfe) | 0x02`.
pub fn random_vtep_mac() -> Mac {
    let mut m = [0u8; 6];
    fastrand::fill(&mut m);
    m[0] = (m[0] & 0xfe) | 0x02;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_lowercase_colon() {
        assert_eq!(
            format_mac(&[0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]),
            "c6:d2:32:6f:8f:44"
        );
        assert_eq!(format_mac(&[0, 1, 2, 3, 4, 5]), "00:01:02:03:04:05");
    }

    #[test]
    fn parses_go_forms() {
        let want = [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44];
        for s in [
            "c6:d2:32:6f:8f:44",
            "C6:D2:32:6F:8F:44",
            "c6-d2-32-6f-8f-44",
            "c6d2.326f.8f44",
        ] {
            assert_eq!(parse_mac(s).unwrap(), want, "{s}");
        }
    }

    #[test]
    fn rejects_bad_forms() {
        for s in [
            "",
            "c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:44:",
            "c6:d2:32:6f:8f:4",
            "c6:d2-32:6f:8f:44",
            "c6:d2:32:6f:8f:4g",
            "c6d2.326f.8f4",
            "c6d2:326f:8f44",
            "00:00:5e:00:53:00:00:01",
            "c6:d2:32:6f:8f:44 ",
            "+6:d2:32:6f:8f:44",
        ] {
            let e = parse_mac(s).unwrap_err();
            assert_eq!(e.to_string(), format!("address {s}: invalid MAC address"));
        }
    }

    #[test]
    fn random_is_local_unicast() {
        for _ in 0..1000 {
            let m = random_vtep_mac();
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
        assert_ne!(random_vtep_mac(), random_vtep_mac());
    }
}
