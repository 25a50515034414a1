//! Free-subnet search.
//!
//! Candidates are walked from `SubnetMin` to `SubnetMax` in steps of the subnet
//! size; a candidate is free when it overlaps no existing lease of any prefix
//! length (leases outside the range count too). Like Go flannel, up to
//! [`MAX_CANDIDATES`] free candidates are collected and one is picked at random,
//! which spreads nodes that acquire at the same moment over different subnets.
//!
//! The walk is a sweep over the existing leases sorted once: a candidate that
//! hits a lease jumps straight past it, so the cost is `O(n log n)` in the
//! number of leases, never `O(n × candidates)`.

use flannel_core::config::NetConfig;
use flannel_core::ip::{Cidr, Family, Ip4Net, Ip6Net};
use flannel_core::key::SubnetKey;
use flannel_core::manager::ManagerError;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Go's cap on collected free candidates.
pub const MAX_CANDIDATES: usize = 100;

/// Up to `limit` free subnets of length `len` from `min` to `max` (subnet
/// addresses, both inclusive), in address order, skipping every candidate that
/// overlaps one of `taken`.
pub fn free_subnets<F: Family>(
    min: F,
    max: F,
    len: u8,
    taken: impl IntoIterator<Item = Cidr<F>>,
    limit: usize,
) -> Vec<Cidr<F>> {
    let Ok(first) = Cidr::new(min, len) else {
        return Vec::new();
    };
    let last = Cidr::new(max, len).map(|c| c.addr().to_u128()).unwrap_or(0);
    let host = first.last_addr().to_u128() - first.addr().to_u128();
    let mut busy: Vec<(u128, u128)> = taken
        .into_iter()
        .map(|c| (c.addr().to_u128(), c.last_addr().to_u128()))
        .collect();
    busy.sort_unstable();

    let mut out = Vec::new();
    let mut cand = first.addr().to_u128();
    let mut i = 0;
    while cand <= last && out.len() < limit {
        let cand_end = cand | host;
        // Leases ending before the candidate can never matter again.
        while i < busy.len() && busy[i].1 < cand {
            i += 1;
        }
        if i < busy.len() && busy[i].0 <= cand_end {
            // Overlap: jump to the first aligned candidate after this lease.
            match busy[i].1.checked_add(1).and_then(|n| n.checked_add(host)) {
                Some(n) => cand = n & !host,
                None => break,
            }
            continue;
        }
        out.push(Cidr::new(F::from_u128(cand), len).expect("length checked above"));
        match cand_end.checked_add(1) {
            Some(n) => cand = n,
            None => break,
        }
    }
    out
}

/// A source of random indexes: `pick(n)` returns a number below `n`.
/// Injectable so tests can fix the choice.
pub type Picker<'a> = &'a mut dyn FnMut(usize) -> usize;

/// The default picker: uniform over `0..n`.
pub fn random_index(n: usize) -> usize {
    fastrand::usize(..n)
}

fn pick_free<F: Family>(
    min: Option<F>,
    max: Option<F>,
    len: u32,
    taken: impl IntoIterator<Item = Cidr<F>>,
    pick: Picker<'_>,
) -> Result<Cidr<F>, ManagerError> {
    let (Some(min), Some(max)) = (min, max) else {
        return Err(ManagerError::Other("network config not validated".into()));
    };
    let free = free_subnets(min, max, len as u8, taken, MAX_CANDIDATES);
    if free.is_empty() {
        return Err(ManagerError::OutOfSubnets);
    }
    Ok(free[pick(free.len()).min(free.len() - 1)])
}

/// Picks a free subnet for each family `cfg` enables (which must have passed
/// [`NetConfig::check`]), avoiding every key in `taken`. The two families are
/// chosen independently, as in Go.
pub fn allocate(
    cfg: &NetConfig,
    taken: &[SubnetKey],
    pick: Picker<'_>,
) -> Result<SubnetKey, ManagerError> {
    let v4 = if cfg.enable_ipv4 {
        Some(pick_free::<Ipv4Addr>(
            cfg.subnet_min,
            cfg.subnet_max,
            cfg.subnet_len,
            taken.iter().filter_map(|k| k.ipv4()),
            pick,
        )?)
    } else {
        None
    };
    let v6 = if cfg.enable_ipv6 {
        Some(pick_free::<Ipv6Addr>(
            cfg.ipv6_subnet_min,
            cfg.ipv6_subnet_max,
            cfg.ipv6_subnet_len,
            taken.iter().filter_map(|k| k.ipv6()),
            pick,
        )?)
    } else {
        None
    };
    SubnetKey::new(v4, v6).ok_or(ManagerError::Other("none defined stack".into()))
}

fn in_range<F: Family>(net: &Cidr<F>, min: Option<F>, max: Option<F>, len: u32) -> bool {
    u32::from(net.prefix_len()) == len
        && min.is_some_and(|m| m <= net.addr())
        && max.is_some_and(|m| net.addr() <= m)
}

/// Go's compatibility test for reusing a lease or a previous subnet under
/// `cfg` (validated): each enabled family's subnet lies in
/// `[SubnetMin, SubnetMax]` with exactly `SubnetLen`, and a disabled family
/// has no subnet.
pub fn is_compatible(cfg: &NetConfig, key: &SubnetKey) -> bool {
    let v4_ok = match (cfg.enable_ipv4, key.ipv4()) {
        (true, Some(n)) => in_range(&n, cfg.subnet_min, cfg.subnet_max, cfg.subnet_len),
        (false, None) => true,
        _ => false,
    };
    let v6_ok = match (cfg.enable_ipv6, key.ipv6()) {
        (true, Some(n)) => in_range(
            &n,
            cfg.ipv6_subnet_min,
            cfg.ipv6_subnet_max,
            cfg.ipv6_subnet_len,
        ),
        (false, None) => true,
        _ => false,
    };
    v4_ok && v6_ok
}

/// The key for a previous subnet pair read from `subnet.env`, if the enabled
/// families are all present.
pub fn previous_key(cfg: &NetConfig, v4: Option<Ip4Net>, v6: Option<Ip6Net>) -> Option<SubnetKey> {
    let v4 = if cfg.enable_ipv4 { Some(v4?) } else { None };
    let v6 = if cfg.enable_ipv6 { Some(v6?) } else { None };
    SubnetKey::new(v4, v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net4(s: &str) -> Ip4Net {
        s.parse().unwrap()
    }

    fn cfg(json: &str) -> NetConfig {
        let mut c = NetConfig::parse(json).unwrap();
        c.check().unwrap();
        c
    }

    #[test]
    fn go_subnet_test_scenario() {
        // pkg/subnet/etcd/subnet_test.go: the free subnets of this config.
        let c = cfg(
            r#"{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.1.0", "SubnetMax": "10.3.25.0" }"#,
        );
        let taken: Vec<SubnetKey> = [
            "10.3.1.0-24",
            "10.3.2.0-24",
            "10.3.4.0-24",
            "10.3.5.0-24",
            "10.3.31.0-24",
        ]
        .iter()
        .map(|k| k.parse().unwrap())
        .collect();
        let free = free_subnets(
            c.subnet_min.unwrap(),
            c.subnet_max.unwrap(),
            24,
            taken.iter().filter_map(|k| k.ipv4()),
            100,
        );
        let expect: Vec<Ip4Net> = std::iter::once(3)
            .chain(6..=25)
            .map(|i| net4(&format!("10.3.{i}.0/24")))
            .collect();
        assert_eq!(free, expect);
        // The picker chooses among them.
        let key = allocate(&c, &taken, &mut |n| n - 1).unwrap();
        assert_eq!(key.to_string(), "10.3.25.0-24");
        let key = allocate(&c, &taken, &mut |_| 0).unwrap();
        assert_eq!(key.to_string(), "10.3.3.0-24");
    }

    #[test]
    fn any_prefix_overlap_is_skipped_and_cap_applies() {
        let min = "10.0.0.0".parse().unwrap();
        let max = "10.255.255.0".parse().unwrap();
        // A /12 lease blocks 10.0.0.0–10.15.255.255, a /32 blocks one /24.
        let taken = [net4("10.0.0.0/12"), net4("10.16.0.7/32")];
        let free = free_subnets::<Ipv4Addr>(min, max, 24, taken, 3);
        assert_eq!(
            free,
            [
                net4("10.16.1.0/24"),
                net4("10.16.2.0/24"),
                net4("10.16.3.0/24")
            ]
        );
        assert_eq!(
            free_subnets::<Ipv4Addr>(min, max, 24, [net4("0.0.0.0/0")], 3),
            []
        );
    }

    #[test]
    fn top_of_space_and_ipv6() {
        let free = free_subnets::<Ipv4Addr>(
            "255.255.254.0".parse().unwrap(),
            "255.255.255.0".parse().unwrap(),
            24,
            [net4("255.255.254.0/24")],
            10,
        );
        assert_eq!(free, [net4("255.255.255.0/24")]);
        let free = free_subnets::<Ipv4Addr>(
            "255.255.254.0".parse().unwrap(),
            "255.255.255.0".parse().unwrap(),
            24,
            [net4("255.255.255.0/24")],
            10,
        );
        assert_eq!(free, [net4("255.255.254.0/24")]);
        let c = cfg(
            r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "ffff:ffff:ffff:ffff::/64",
            "IPv6SubnetLen": 126}"#,
        );
        let taken = ["ffff:ffff:ffff:ffff::4-126".parse().unwrap()];
        let k = allocate(&c, &taken, &mut |_| 0).unwrap();
        assert_eq!(k.to_string(), "ffff:ffff:ffff:ffff::8-126");
        let k = allocate(&c, &taken, &mut |n| n - 1).unwrap();
        assert_eq!(k.to_string(), "ffff:ffff:ffff:ffff::194-126");
        let free = free_subnets::<Ipv6Addr>(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc".parse().unwrap(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc".parse().unwrap(),
            126,
            [],
            10,
        );
        assert_eq!(free.len(), 1);
    }

    #[test]
    fn out_of_subnets_and_dual_stack() {
        let c = cfg(r#"{"Network": "10.3.0.0/28"}"#);
        let taken: Vec<SubnetKey> = ["10.3.0.4-30", "10.3.0.8-30", "10.3.0.12-30"]
            .iter()
            .map(|k| k.parse().unwrap())
            .collect();
        assert!(matches!(
            allocate(&c, &taken, &mut random_index),
            Err(ManagerError::OutOfSubnets)
        ));
        let c =
            cfg(r#"{"EnableIPv6": true, "Network": "10.3.0.0/16", "IPv6Network": "fd00::/56"}"#);
        let k = allocate(&c, &[], &mut |_| 0).unwrap();
        assert_eq!(k.to_string(), "10.3.1.0-24&fd00:0:0:1::-64");
    }

    #[test]
    fn compatibility_rules() {
        let c = cfg(
            r#"{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.1.0", "SubnetMax": "10.3.25.0" }"#,
        );
        let ok = |k: &str| is_compatible(&c, &k.parse().unwrap());
        assert!(ok("10.3.6.0-24"));
        assert!(!ok("10.4.1.0-24"));
        assert!(!ok("10.3.26.0-24"));
        assert!(!ok("10.3.6.0-25"));
        assert!(
            !ok("10.3.6.0-24&fd00::-64"),
            "v6 disabled: a v6 part is incompatible"
        );
        let d =
            cfg(r#"{"EnableIPv6": true, "Network": "10.3.0.0/16", "IPv6Network": "fd00::/56"}"#);
        assert!(is_compatible(
            &d,
            &"10.3.6.0-24&fd00:0:0:5::-64".parse().unwrap()
        ));
        assert!(!is_compatible(&d, &"10.3.6.0-24".parse().unwrap()));
        assert_eq!(previous_key(&d, Some(net4("10.3.6.0/24")), None), None);
        assert_eq!(
            previous_key(&c, Some(net4("10.3.6.0/24")), None)
                .unwrap()
                .to_string(),
            "10.3.6.0-24"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// The sweep finds exactly what a naive scan finds.
            #[test]
            fn sweep_equals_naive(
                taken in prop::collection::vec((0u32..4096, 18u8..=28), 0..40),
                lo in 0u32..64, span in 0u32..64, limit in 1usize..120,
            ) {
                let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
                let taken: Vec<Ip4Net> = taken.iter()
                    .map(|(off, len)| Ip4Net::new(Ipv4Addr::from(base + off * 256), *len).unwrap()).collect();
                let min = Ipv4Addr::from(base + lo * 1024);
                let max = Ipv4Addr::from(base + (lo + span) * 1024);
                let got = free_subnets(min, max, 22, taken.clone(), limit);
                let naive: Vec<Ip4Net> = flannel_core::ip::Subnets::between(min, max, 22)
                    .filter(|c| !taken.iter().any(|t| t.overlaps(c)))
                    .take(limit)
                    .collect();
                prop_assert_eq!(got, naive);
            }
        }
    }
}
