//! A structured `SubnetEnv` (addresses, prefix lengths, MTU and ip-masq from
//! `arbitrary`) is rendered and read back with `EnvFile::parse`.
//!
//! Invariant: every value written is read back: `previous_subnet()` (the file
//! holds the first host address, reading masks it back to the network) and its
//! IPv6 twin, both networks, the MTU and ip-masq. A /32 or /128 subnet's
//! "first host" is the address itself.

#![no_main]

use arbitrary::Arbitrary;
use flannel_core::ip::{Cidr, Family, Ip4Net, Ip6Net};
use flannel_core::subnet_env::{EnvFile, SubnetEnv};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Arbitrary, Debug)]
struct Input {
    network: Option<(u32, u8)>,
    subnet: Option<(u32, u8)>,
    ipv6_network: Option<(u128, u8)>,
    ipv6_subnet: Option<(u128, u8)>,
    mtu: u32,
    ip_masq: bool,
}

fn v4((addr, len): (u32, u8)) -> Ip4Net {
    Cidr::new(Ipv4Addr::from(addr), len % 33).expect("len <= 32")
}

fn v6((addr, len): (u128, u8)) -> Ip6Net {
    Cidr::new(Ipv6Addr::from(addr), len % 129).expect("len <= 128")
}

fn check<F: Family>(
    what: &str,
    want: Option<Cidr<F>>,
    got: (Option<Cidr<F>>, Vec<String>),
    text: &str,
) {
    match want {
        Some(n) => assert_eq!(got, (Some(n), vec![]), "{what} of\n{text}"),
        None => assert_eq!(got.0, None, "{what} of\n{text}"),
    }
}

fuzz_target!(|input: Input| {
    let env = SubnetEnv {
        network: input.network.map(v4),
        subnet: input.subnet.map(v4),
        ipv6_network: input.ipv6_network.map(v6),
        ipv6_subnet: input.ipv6_subnet.map(v6),
        mtu: input.mtu,
        ip_masq: input.ip_masq,
    };
    let text = env.render();
    assert!(text.ends_with('\n'), "{text:?}");
    let file = EnvFile::parse(&text);
    assert!(file.warnings.is_empty(), "{:?} for\n{text}", file.warnings);
    check("previous_subnet", env.subnet, file.previous_subnet(), &text);
    check(
        "previous_network",
        env.network,
        file.previous_network(),
        &text,
    );
    check(
        "previous_ipv6_subnet",
        env.ipv6_subnet,
        file.previous_ipv6_subnet(),
        &text,
    );
    check(
        "previous_ipv6_network",
        env.ipv6_network,
        file.previous_ipv6_network(),
        &text,
    );
    assert_eq!(file.mtu(), Some(env.mtu), "{text}");
    assert_eq!(file.ip_masq(), Some(env.ip_masq), "{text}");
    let lines = [
        env.network.is_some(),
        env.subnet.is_some(),
        env.ipv6_network.is_some(),
        env.ipv6_subnet.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count()
        + 2;
    assert_eq!(file.entries().count(), lines, "{text}");
});
