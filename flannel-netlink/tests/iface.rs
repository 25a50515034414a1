//! Kernel tests of external interface selection: each rule against a real
//! kernel inside a private network namespace. Needs root (as the CI runs
//! it); without root the namespace helper fails with an error saying so.

mod common;
use common::with_netlink;
use std::net::{Ipv4Addr, Ipv6Addr};

use flannel_core::config::Stack;
use flannel_netlink::iface::{IfaceError, IfaceSelection, select};
use flannel_testutil::netns::{NetNs, veth_pair};

/// A namespace "host" with two uplinks:
/// * `eth0` (veth to `peer0`, MTU 1500): `192.168.100.1/24`,
///   `fd00:100::1/64`; the v4 and v6 default routes leave through it;
/// * `eth1` (veth to `peer1`, MTU 1400): `10.9.0.1/24`, `fd00:9::1/64`.
fn host(hint: &str) -> NetNs {
    let ns = NetNs::new(hint).unwrap();
    veth_pair(&ns, "eth0", &ns, "peer0").unwrap();
    veth_pair(&ns, "eth1", &ns, "peer1").unwrap();
    ns.ip(&["link", "set", "eth1", "mtu", "1400"]).unwrap();
    for (dev, v4, v6) in [
        ("eth0", "192.168.100.1/24", "fd00:100::1/64"),
        ("eth1", "10.9.0.1/24", "fd00:9::1/64"),
    ] {
        ns.ip(&["addr", "add", v4, "dev", dev]).unwrap();
        ns.ip(&["-6", "addr", "add", v6, "dev", dev, "nodad"])
            .unwrap();
    }
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "192.168.100.254",
        "dev",
        "eth0",
    ])
    .unwrap();
    ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd00:100::fe",
        "dev",
        "eth0",
    ])
    .unwrap();
    ns
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// The error and its sources, `a: b`.
fn chain(e: &IfaceError) -> String {
    let mut text = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

#[test]
fn default_route_interface_and_public_ip() {
    let ns = host("iface-default");
    with_netlink(&ns, |nl| async move {
        let none = IfaceSelection::default();
        let ext = select(&nl, &none, Stack::Ipv4, (None, None)).await.unwrap();
        assert_eq!(ext.name, "eth0");
        assert_eq!(ext.mtu, 1500);
        assert_eq!(ext.iface_addr, Some(v4("192.168.100.1")));
        assert_eq!(ext.ext_addr, Some(v4("192.168.100.1")));
        assert_eq!((ext.iface_v6_addr, ext.ext_v6_addr), (None, None));

        let ext = select(&nl, &none, Stack::Dual, (None, None)).await.unwrap();
        assert_eq!(ext.name, "eth0");
        assert_eq!(ext.iface_v6_addr, Some(v6("fd00:100::1")));
        let ext = select(&nl, &none, Stack::Ipv6, (None, None)).await.unwrap();
        assert_eq!((ext.iface_addr, ext.ext_addr), (None, None));
        assert_eq!(ext.ext_v6_addr, Some(v6("fd00:100::1")));

        // --public-ip alone: the interface owning it.
        let public = IfaceSelection {
            public_ip: Some(v4("10.9.0.1")),
            ..IfaceSelection::default()
        };
        let ext = select(&nl, &public, Stack::Ipv4, (None, None))
            .await
            .unwrap();
        assert_eq!((ext.name.as_str(), ext.mtu), ("eth1", 1400));
        assert_eq!(ext.ext_addr, Some(v4("10.9.0.1")));

        // A stored public IP overrides the flag.
        let ext = select(&nl, &public, Stack::Ipv4, (Some(v4("192.168.100.1")), None))
            .await
            .unwrap();
        assert_eq!(ext.name, "eth0");

        // An address no interface has (behind NAT) is an error in this mode.
        let nat = IfaceSelection {
            public_ip: Some(v4("203.0.113.9")),
            ..IfaceSelection::default()
        };
        let e = select(&nl, &nat, Stack::Ipv4, (None, None))
            .await
            .unwrap_err();
        assert_eq!(
            chain(&e),
            "Failed to find any valid interface to use: \
             error looking up interface 203.0.113.9: no interface has this address"
        );

        // --public-ipv6 alone.
        let public6 = IfaceSelection {
            public_ipv6: Some(v6("fd00:9::1")),
            ..IfaceSelection::default()
        };
        let ext = select(&nl, &public6, Stack::Ipv6, (None, None))
            .await
            .unwrap();
        assert_eq!(ext.name, "eth1");
        assert_eq!(ext.ext_v6_addr, Some(v6("fd00:9::1")));
    });
}

#[test]
fn default_route_errors() {
    let ns = host("iface-noroute");
    // v6 default route through another interface than the v4 one.
    ns.ip(&[
        "-6",
        "route",
        "replace",
        "default",
        "via",
        "fd00:9::fe",
        "dev",
        "eth1",
    ])
    .unwrap();
    with_netlink(&ns, |nl| async move {
        let none = IfaceSelection::default();
        let e = select(&nl, &none, Stack::Dual, (None, None))
            .await
            .unwrap_err();
        assert_eq!(
            chain(&e),
            "Failed to find any valid interface to use: \
             v6 default route interface eth1 must be the same with v4 default route interface eth0"
        );
    });
    ns.ip(&["route", "del", "default"]).unwrap();
    ns.ip(&["-6", "route", "del", "default"]).unwrap();
    with_netlink(&ns, |nl| async move {
        let none = IfaceSelection::default();
        let e = select(&nl, &none, Stack::Ipv4, (None, None))
            .await
            .unwrap_err();
        assert_eq!(
            chain(&e),
            "Failed to find any valid interface to use: unable to find default route"
        );
        let e = select(&nl, &none, Stack::Ipv6, (None, None))
            .await
            .unwrap_err();
        assert_eq!(
            chain(&e),
            "Failed to find any valid interface to use: unable to find v6 default route"
        );
    });
}

#[test]
fn iface_regex_and_can_reach_in_order() {
    let ns = host("iface-flags");
    with_netlink(&ns, |nl| async move {
        let by = |sel: IfaceSelection| {
            let nl = nl.clone();
            async move { select(&nl, &sel, Stack::Ipv4, (None, None)).await }
        };
        // --iface by name, and by address.
        let ext = by(IfaceSelection {
            ifaces: vec!["eth1".into()],
            ..IfaceSelection::default()
        })
        .await
        .unwrap();
        assert_eq!(
            (ext.name.as_str(), ext.iface_addr),
            ("eth1", Some(v4("10.9.0.1")))
        );
        let ext = by(IfaceSelection {
            ifaces: vec!["10.9.0.1".into()],
            ..IfaceSelection::default()
        })
        .await
        .unwrap();
        assert_eq!(ext.name, "eth1");

        // Failed attempts fall through: bad name, bad address, bad regex,
        // unmatched regex, then a regex on the address wins.
        let ext = by(IfaceSelection {
            ifaces: vec!["nope0".into(), "10.99.0.1".into()],
            regexes: vec!["(".into(), "^wlan".into(), r"^10\.9\.".into()],
            can_reach: Some("192.168.100.7".into()),
            ..IfaceSelection::default()
        })
        .await
        .unwrap();
        assert_eq!(
            (ext.name.as_str(), ext.iface_addr),
            ("eth1", Some(v4("10.9.0.1")))
        );

        // A regex on the name.
        let ext = by(IfaceSelection {
            regexes: vec!["^eth1$".into()],
            ..IfaceSelection::default()
        })
        .await
        .unwrap();
        assert_eq!(ext.name, "eth1");

        // --iface-can-reach: the route's interface and preferred source.
        let ext = by(IfaceSelection {
            can_reach: Some("10.9.0.77".into()),
            ..IfaceSelection::default()
        })
        .await
        .unwrap();
        assert_eq!(
            (ext.name.as_str(), ext.iface_addr),
            ("eth1", Some(v4("10.9.0.1")))
        );
        let ext = by(IfaceSelection {
            can_reach: Some("198.51.100.1".into()),
            ..IfaceSelection::default()
        })
        .await
        .unwrap();
        assert_eq!(ext.name, "eth0", "through the default route");

        // Nothing matches.
        let e = by(IfaceSelection {
            ifaces: vec!["nope0".into()],
            regexes: vec!["^wlan".into()],
            can_reach: Some("not-an-ip".into()),
            ..IfaceSelection::default()
        })
        .await
        .unwrap_err();
        assert!(matches!(e, IfaceError::NoMatchingInterface), "{e}");
    });
}

#[test]
fn dual_stack_iface_address_and_public_ipv6_must_share_the_interface() {
    let ns = host("iface-dual");
    with_netlink(&ns, |nl| async move {
        let sel = IfaceSelection {
            ifaces: vec!["192.168.100.1".into()],
            public_ipv6: Some(v6("fd00:100::1")),
            ..IfaceSelection::default()
        };
        let ext = select(&nl, &sel, Stack::Dual, (None, None)).await.unwrap();
        assert_eq!(ext.name, "eth0");
        assert_eq!(ext.iface_v6_addr, Some(v6("fd00:100::1")));

        let sel = IfaceSelection {
            public_ip: Some(v4("192.168.100.1")),
            public_ipv6: Some(v6("fd00:9::1")),
            ..IfaceSelection::default()
        };
        let e = select(&nl, &sel, Stack::Dual, (None, None))
            .await
            .unwrap_err();
        assert_eq!(
            chain(&e),
            "Failed to find any valid interface to use: \
             v6 interface eth1 must be the same with v4 interface eth0"
        );
    });
}
