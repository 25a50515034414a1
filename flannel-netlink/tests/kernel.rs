//! Kernel tests: every operation against a real kernel, inside a private
//! network namespace per test, checked through both this crate's API and the
//! `ip`/`bridge` commands. Needs root (as the CI runs it); without root the
//! namespace helper fails with an error saying so.

mod common;
use common::with_netlink;
use std::net::{IpAddr, UdpSocket};
use std::time::Duration;

use flannel_core::reconcile::Reconciler;
use flannel_netlink::{
    Family, LinkEvent, Mac, Netlink, RT_TABLE_MAIN, RTPROT_BOOT, Route, RouteKind, RouteSet,
    SharedOps, VxlanSpec, format_mac, parse_mac, watch_links,
};
use flannel_testutil::netns::{NetNs, Topology, veth_pair};
use futures_util::StreamExt;

const MAC: &str = "c6:d2:32:6f:8f:44";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac() -> Mac {
    parse_mac(MAC).unwrap()
}

/// A namespace "host": `eth0` (veth to `peer0`, both up) with
/// `192.168.100.1/24` and `fd00:100::1/64`.
fn host(hint: &str) -> NetNs {
    let ns = NetNs::new(hint).unwrap();
    veth_pair(&ns, "eth0", &ns, "peer0").unwrap();
    ns.ip(&["addr", "add", "192.168.100.1/24", "dev", "eth0"])
        .unwrap();
    ns.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:100::1/64",
        "dev",
        "eth0",
        "nodad",
    ])
    .unwrap();
    ns
}

fn vxlan_spec(eth0: u32) -> VxlanSpec {
    VxlanSpec {
        name: "flannel.1".into(),
        vni: 1,
        vtep_index: Some(eth0),
        local: Some(ip("192.168.100.1")),
        port: None,
        learning: false,
        gbp: false,
        mtu: Some(1450),
        mac: Some(mac()),
    }
}

async fn index_of(nl: &Netlink, name: &str) -> u32 {
    nl.link_by_name(name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no link {name}"))
        .index
}

/// The vxlan route for a remote lease: `<subnet> via <subnet .0> dev
/// flannel.1 onlink`.
fn vxlan_route(subnet: &str, prefix: u8, dev: u32) -> Route {
    let mut r = Route::unicast(ip(subnet), prefix);
    r.gateway = Some(ip(subnet));
    r.oif = Some(dev);
    r.onlink = true;
    r
}

#[test]
fn ensure_vxlan_creates_reuses_and_recreates() {
    let ns = &host("vxcreate");
    with_netlink(ns, |nl| async move {
        let eth0 = index_of(&nl, "eth0").await;
        let spec = vxlan_spec(eth0);
        let first = nl.ensure_vxlan(&spec).await.unwrap();
        assert!(first.created);
        assert_eq!(first.recreated_because, None);
        let l = &first.link;
        assert_eq!(l.name, "flannel.1");
        assert_eq!(l.mac, Some(mac()));
        assert_eq!(l.mtu, 1450);
        assert!(!l.up, "ensure_vxlan leaves the device down");
        assert_eq!(l.kind.as_deref(), Some("vxlan"));
        let v = l.vxlan.as_ref().unwrap();
        assert_eq!(v.vni, 1);
        assert_eq!(v.vtep_index, Some(eth0));
        assert_eq!(v.local, Some(ip("192.168.100.1")));
        assert_eq!(v.port, Some(8472));
        assert!(!v.learning);
        assert!(!v.gbp);
        let shown = ns.ip(&["-d", "link", "show", "flannel.1"]).unwrap();
        assert!(
            shown.contains(
                "vxlan id 1 local 192.168.100.1 dev eth0 srcport 0 0 dstport 8472 nolearning"
            ),
            "{shown}"
        );
        assert!(shown.contains(&format!("link/ether {MAC}")), "{shown}");
        assert!(shown.contains("mtu 1450"), "{shown}");

        // Reuse: a compatible device keeps its MAC and MTU, even when the
        // spec asks for others.
        let mut again = spec.clone();
        again.mac = None;
        again.mtu = Some(1400);
        again.local = None; // unset on one side: not compared
        let second = nl.ensure_vxlan(&again).await.unwrap();
        assert!(!second.created);
        assert_eq!(second.recreated_because, None);
        assert_eq!(second.link.index, l.index);
        assert_eq!(second.link.mac, Some(mac()));
        assert_eq!(second.link.mtu, 1450);

        // Recreate on a different VNI.
        let mut vni2 = spec.clone();
        vni2.vni = 2;
        let third = nl.ensure_vxlan(&vni2).await.unwrap();
        assert!(third.created);
        assert_eq!(third.recreated_because.as_deref(), Some("vni: 2 vs 1"));
        assert_ne!(third.link.index, l.index);
        assert_eq!(third.link.vxlan.as_ref().unwrap().vni, 2);
        let shown = ns.ip(&["-d", "link", "show", "flannel.1"]).unwrap();
        assert!(shown.contains("vxlan id 2 "), "{shown}");

        // Recreate on a different port (the kernel reports 8472 for "unset").
        let mut port = vni2.clone();
        port.port = Some(4789);
        let fourth = nl.ensure_vxlan(&port).await.unwrap();
        assert_eq!(
            fourth.recreated_because.as_deref(),
            Some("port: 4789 vs 8472")
        );
        let shown = ns.ip(&["-d", "link", "show", "flannel.1"]).unwrap();
        assert!(shown.contains("dstport 4789"), "{shown}");
        assert_eq!(
            nl.links()
                .await
                .unwrap()
                .iter()
                .filter(|l| l.name == "flannel.1")
                .count(),
            1
        );

        // A non-vxlan device with the name is replaced too.
        ns.ip(&[
            "link",
            "add",
            "flannel.9",
            "type",
            "veth",
            "peer",
            "name",
            "x9",
        ])
        .unwrap();
        let mut other = spec.clone();
        other.name = "flannel.9".into();
        other.vni = 9;
        let fifth = nl.ensure_vxlan(&other).await.unwrap();
        assert_eq!(
            fifth.recreated_because.as_deref(),
            Some("link type: vxlan vs veth")
        );
        assert_eq!(fifth.link.kind.as_deref(), Some("vxlan"));
    });
}

#[test]
fn vxlan_gbp_learning_and_port_reach_the_device() {
    let ns = &host("vxopts");
    with_netlink(ns, |nl| async move {
        let eth0 = index_of(&nl, "eth0").await;
        let mut spec = vxlan_spec(eth0);
        spec.name = "flannel.7".into();
        spec.vni = 7;
        spec.learning = true;
        spec.gbp = true;
        spec.port = Some(4789);
        let got = nl.ensure_vxlan(&spec).await.unwrap();
        let v = got.link.vxlan.unwrap();
        assert!(v.learning && v.gbp);
        assert_eq!(v.port, Some(4789));
        let shown = ns.ip(&["-d", "link", "show", "flannel.7"]).unwrap();
        assert!(
            shown.contains("vxlan id 7 local 192.168.100.1 dev eth0 srcport 0 0 dstport 4789 ttl"),
            "learning is the default and not printed: {shown}"
        );
        assert!(!shown.contains("nolearning"), "{shown}");
        assert!(shown.contains(" gbp "), "{shown}");

        // learning differs -> recreated, with the reason.
        spec.learning = false;
        let again = nl.ensure_vxlan(&spec).await.unwrap();
        assert_eq!(
            again.recreated_because.as_deref(),
            Some("learning: false vs true")
        );
        spec.gbp = false;
        let again = nl.ensure_vxlan(&spec).await.unwrap();
        assert_eq!(
            again.recreated_because.as_deref(),
            Some("gbp: false vs true")
        );
        let shown = ns.ip(&["-d", "link", "show", "flannel.7"]).unwrap();
        assert!(
            shown.contains("nolearning") && !shown.contains(" gbp "),
            "{shown}"
        );
    });
}

#[test]
fn vxlan_per_lease_state_v4_is_idempotent() {
    let ns = &host("vxlease");
    with_netlink(ns, |nl| async move {
        let eth0 = index_of(&nl, "eth0").await;
        let dev = nl.ensure_vxlan(&vxlan_spec(eth0)).await.unwrap().link.index;
        let route = vxlan_route("10.5.3.0", 24, dev);
        for _ in 0..2 {
            nl.add_address(dev, ip("10.5.72.0"), 32).await.unwrap();
            nl.set_up(dev).await.unwrap();
            nl.replace_neigh(dev, ip("10.5.3.0"), mac()).await.unwrap();
            nl.replace_fdb(dev, mac(), ip("192.168.100.2"))
                .await
                .unwrap();
            nl.replace_route(&route).await.unwrap();
        }

        let link = nl.link_by_index(dev).await.unwrap().unwrap();
        assert!(link.up);
        let addrs = nl.addresses(dev).await.unwrap();
        let v4: Vec<_> = addrs.iter().filter(|a| a.addr.is_ipv4()).collect();
        assert_eq!(v4.len(), 1, "{addrs:?}");
        assert_eq!(
            (v4[0].addr, v4[0].prefix, v4[0].permanent),
            (ip("10.5.72.0"), 32, true)
        );
        assert!(
            ns.ip(&["addr", "show", "dev", "flannel.1"])
                .unwrap()
                .contains("inet 10.5.72.0/32 scope global flannel.1")
        );

        let neigh = nl.neighbours(dev).await.unwrap();
        let n: Vec<_> = neigh.iter().filter(|n| n.ip == ip("10.5.3.0")).collect();
        assert_eq!(n.len(), 1, "{neigh:?}");
        assert_eq!(n[0].mac, Some(mac()));
        assert!(n[0].permanent);
        let shown = ns.ip(&["neigh", "show", "dev", "flannel.1"]).unwrap();
        assert!(
            shown.contains(&format!("10.5.3.0 lladdr {MAC} PERMANENT")),
            "{shown}"
        );

        let fdb = nl.fdb(dev).await.unwrap();
        let f: Vec<_> = fdb.iter().filter(|f| f.mac == mac()).collect();
        assert_eq!(f.len(), 1, "{fdb:?}");
        assert_eq!(f[0].dst, Some(ip("192.168.100.2")));
        assert!(f[0].permanent);
        let shown = ns
            .exec(&["bridge", "fdb", "show", "dev", "flannel.1"])
            .unwrap();
        assert!(
            shown.contains(&format!("{MAC} dst 192.168.100.2 self permanent")),
            "{shown}"
        );

        let routes = nl.routes(Family::V4).await.unwrap();
        let r: Vec<_> = routes.iter().filter(|r| r.key() == route.key()).collect();
        assert_eq!(r, vec![&route], "read back exactly as written");
        // `ip route` hides proto boot; `-d` shows it.
        assert_eq!(
            ns.ip(&["route", "show", "10.5.3.0/24"]).unwrap().trim(),
            "10.5.3.0/24 via 10.5.3.0 dev flannel.1 onlink"
        );
        assert_eq!(
            ns.ip(&["-d", "route", "show", "10.5.3.0/24"])
                .unwrap()
                .trim(),
            "unicast 10.5.3.0/24 via 10.5.3.0 dev flannel.1 proto boot scope global onlink"
        );

        // Replacing with a new MAC / VTEP overwrites in place.
        let mac2 = parse_mac("c6:d2:32:6f:8f:45").unwrap();
        nl.replace_neigh(dev, ip("10.5.3.0"), mac2).await.unwrap();
        nl.replace_fdb(dev, mac(), ip("192.168.100.3"))
            .await
            .unwrap();
        let n = nl.neighbours(dev).await.unwrap();
        assert_eq!(
            n.iter()
                .filter(|n| n.ip == ip("10.5.3.0"))
                .map(|n| n.mac)
                .collect::<Vec<_>>(),
            vec![Some(mac2)]
        );
        let f = nl.fdb(dev).await.unwrap();
        assert_eq!(
            f.iter()
                .filter(|f| f.mac == mac())
                .map(|f| f.dst)
                .collect::<Vec<_>>(),
            vec![Some(ip("192.168.100.3"))]
        );

        // Removal, twice: the second round finds nothing and is still Ok.
        for _ in 0..2 {
            nl.del_route(&route).await.unwrap();
            nl.del_fdb(dev, mac(), ip("192.168.100.3")).await.unwrap();
            nl.del_neigh(dev, ip("10.5.3.0")).await.unwrap();
            nl.del_address(dev, ip("10.5.72.0"), 32).await.unwrap();
        }
        assert_eq!(ns.ip(&["route", "show", "10.5.3.0/24"]).unwrap(), "");
        assert_eq!(ns.ip(&["neigh", "show", "dev", "flannel.1"]).unwrap(), "");
        assert!(
            !ns.exec(&["bridge", "fdb", "show", "dev", "flannel.1"])
                .unwrap()
                .contains(MAC)
        );
        assert!(
            !ns.ip(&["addr", "show", "dev", "flannel.1"])
                .unwrap()
                .contains("10.5.72.0")
        );
        let left = nl.neighbours(dev).await.unwrap();
        assert!(
            left.is_empty(),
            "{left:?} / {}",
            ns.ip(&["neigh", "show", "nud", "all", "dev", "flannel.1"])
                .unwrap()
        );
        assert!(nl.fdb(dev).await.unwrap().iter().all(|f| f.mac != mac()));

        nl.delete_link(dev).await.unwrap();
        nl.delete_link(dev).await.unwrap();
        assert_eq!(nl.link_by_name("flannel.1").await.unwrap(), None);
        assert_eq!(nl.link_by_index(dev).await.unwrap(), None);
    });
}

#[test]
fn deleting_missing_objects_is_ok() {
    let ns = &host("delmissing");
    with_netlink(ns, |nl| async move {
        let eth0 = index_of(&nl, "eth0").await;
        let dev = nl.ensure_vxlan(&vxlan_spec(eth0)).await.unwrap().link.index;
        nl.set_up(dev).await.unwrap();
        // Objects that never existed, on an existing device...
        nl.del_route(&vxlan_route("10.5.99.0", 24, dev))
            .await
            .unwrap();
        nl.del_route(&Route::unicast(ip("fd00:5:99::"), 64))
            .await
            .unwrap();
        nl.del_neigh(dev, ip("10.5.99.0")).await.unwrap();
        nl.del_neigh(dev, ip("fd00:5:99::")).await.unwrap();
        nl.del_fdb(dev, mac(), ip("192.168.100.99")).await.unwrap();
        nl.del_address(dev, ip("10.5.99.0"), 32).await.unwrap();
        nl.del_address(dev, ip("fd00:5:99::"), 128).await.unwrap();
        // ...and on a device index that does not exist.
        let gone = 999_999;
        nl.delete_link(gone).await.unwrap();
        nl.del_neigh(gone, ip("10.5.99.0")).await.unwrap();
        nl.del_fdb(gone, mac(), ip("192.168.100.99")).await.unwrap();
        nl.del_address(gone, ip("10.5.99.0"), 32).await.unwrap();
        assert_eq!(nl.link_by_index(gone).await.unwrap(), None);
        assert_eq!(nl.link_by_name("nosuchdev").await.unwrap(), None);
    });
}

#[test]
fn ipv6_vxlan_device_neighbour_and_route() {
    let ns = &host("vx6");
    with_netlink(ns, |nl| async move {
        let eth0 = index_of(&nl, "eth0").await;
        let spec = VxlanSpec {
            name: "flannel-v6.1".into(),
            local: Some(ip("fd00:100::1")),
            ..vxlan_spec(eth0)
        };
        let got = nl.ensure_vxlan(&spec).await.unwrap();
        assert_eq!(
            got.link.vxlan.as_ref().unwrap().local,
            Some(ip("fd00:100::1"))
        );
        let shown = ns.ip(&["-d", "link", "show", "flannel-v6.1"]).unwrap();
        assert!(
            shown.contains(
                "vxlan id 1 local fd00:100::1 dev eth0 srcport 0 0 dstport 8472 nolearning"
            ),
            "{shown}"
        );
        let dev = got.link.index;
        let gw = ip("fd00:5:3::");
        let route = vxlan_route("fd00:5:3::", 64, dev);
        for _ in 0..2 {
            nl.add_address(dev, ip("fd00:5:72::"), 128).await.unwrap();
            nl.set_up(dev).await.unwrap();
            nl.replace_neigh(dev, gw, mac()).await.unwrap();
            nl.replace_fdb(dev, mac(), ip("fd00:100::2")).await.unwrap();
            nl.replace_route(&route).await.unwrap();
        }
        let addrs = nl.addresses(dev).await.unwrap();
        assert!(
            addrs
                .iter()
                .any(|a| a.addr == ip("fd00:5:72::") && a.prefix == 128 && !a.is_link_local()),
            "{addrs:?}"
        );
        let n = nl.neighbours(dev).await.unwrap();
        assert!(
            n.iter()
                .any(|n| n.ip == gw && n.mac == Some(mac()) && n.permanent),
            "{n:?}"
        );
        let shown = ns
            .ip(&["-6", "neigh", "show", "dev", "flannel-v6.1"])
            .unwrap();
        assert!(
            shown.contains(&format!("fd00:5:3:: lladdr {MAC} PERMANENT")),
            "{shown}"
        );
        let f = nl.fdb(dev).await.unwrap();
        assert!(
            f.iter()
                .any(|f| f.mac == mac() && f.dst == Some(ip("fd00:100::2"))),
            "{f:?}"
        );
        let shown = ns
            .exec(&["bridge", "fdb", "show", "dev", "flannel-v6.1"])
            .unwrap();
        assert!(
            shown.contains(&format!("{MAC} dst fd00:100::2 self permanent")),
            "{shown}"
        );
        let routes = nl.routes(Family::V6).await.unwrap();
        assert!(routes.contains(&route), "{routes:?}");
        let shown = ns.ip(&["-6", "route", "show", "fd00:5:3::/64"]).unwrap();
        assert_eq!(
            shown.trim(),
            "fd00:5:3::/64 via fd00:5:3:: dev flannel-v6.1 metric 1024 onlink pref medium"
        );
        assert!(
            routes.iter().any(|r| r.satisfies(&route)),
            "the kernel's listing satisfies the route as programmed"
        );

        // The kernel disables IPv6 on links with MTU < 1280, and then
        // refuses NDP entries; the error names the neighbour and device.
        nl.set_mtu(dev, 1200).await.unwrap();
        let err = nl
            .replace_neigh(dev, ip("fd00:5:4::"), mac())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert_eq!(
            text,
            format!(
                "neighbour fd00:5:4:: lladdr {MAC} dev flannel-v6.1: Invalid argument (os error 22) \
                 (IPv6 is disabled on this device)"
            )
        );
        nl.set_mtu(dev, 1400).await.unwrap();
        nl.replace_neigh(dev, ip("fd00:5:4::"), mac())
            .await
            .unwrap();

        for _ in 0..2 {
            nl.del_route(&route).await.unwrap();
            nl.del_fdb(dev, mac(), ip("fd00:100::2")).await.unwrap();
            nl.del_neigh(dev, gw).await.unwrap();
            nl.del_address(dev, ip("fd00:5:72::"), 128).await.unwrap();
        }
        assert_eq!(
            ns.ip(&["-6", "route", "show", "fd00:5:3::/64"]).unwrap(),
            ""
        );
        assert!(!nl.routes(Family::V6).await.unwrap().contains(&route));
    });
}

#[test]
fn hostgw_route_blackhole_and_route_get() {
    let ns = &host("hostgw");
    with_netlink(ns, |nl| async move {
        let eth0 = index_of(&nl, "eth0").await;
        let mut r = Route::unicast(ip("10.5.2.0"), 24);
        r.gateway = Some(ip("192.168.100.2"));
        r.oif = Some(eth0);
        nl.replace_route(&r).await.unwrap();
        nl.replace_route(&r).await.unwrap();
        assert_eq!(
            ns.ip(&["route", "show", "10.5.2.0/24"]).unwrap().trim(),
            "10.5.2.0/24 via 192.168.100.2 dev eth0"
        );
        assert!(
            ns.ip(&["-d", "route", "show", "10.5.2.0/24"])
                .unwrap()
                .contains("proto boot"),
        );
        let routes = nl.routes(Family::V4).await.unwrap();
        assert!(routes.contains(&r), "{routes:?}");
        // The connected route is listed too, as the kernel made it.
        let connected = routes
            .iter()
            .find(|x| x.dst == ip("192.168.100.0"))
            .unwrap();
        assert_eq!(
            (connected.protocol, connected.scope, connected.prefsrc),
            (2, 253, Some(ip("192.168.100.1")))
        );
        assert_eq!(connected.table, RT_TABLE_MAIN);

        // route get: directly connected, via a gateway, and local.
        let direct = nl.route_get(ip("192.168.100.2")).await.unwrap();
        assert_eq!(direct.len(), 1, "{direct:?}");
        assert_eq!((direct[0].gateway, direct[0].oif), (None, Some(eth0)));
        assert_eq!((direct[0].dst, direct[0].prefix), (ip("192.168.100.2"), 32));
        assert_eq!(direct[0].prefsrc, Some(ip("192.168.100.1")));
        let via = nl.route_get(ip("10.5.2.9")).await.unwrap();
        assert_eq!(via.len(), 1);
        assert_eq!(via[0].gateway, Some(ip("192.168.100.2")));
        let local = nl.route_get(ip("192.168.100.1")).await.unwrap();
        assert_eq!(local[0].kind, RouteKind::Local);
        let v6 = nl.route_get(ip("fd00:100::2")).await.unwrap();
        assert_eq!((v6[0].gateway, v6[0].oif), (None, Some(eth0)));
        let unreachable = nl.route_get(ip("10.99.0.1")).await.unwrap_err();
        assert_eq!(
            unreachable.to_string(),
            "route get 10.99.0.1: Network is unreachable (os error 101)"
        );

        // Error messages name the route.
        let mut bad = Route::unicast(ip("10.5.9.0"), 24);
        bad.gateway = Some(ip("10.99.0.1"));
        bad.oif = Some(eth0);
        let err = nl.replace_route(&bad).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("route 10.5.9.0/24 via 10.99.0.1 dev eth0: "),
            "{err}"
        );
        // ...while onlink skips the gateway check (vxlan's `.0` gateways).
        bad.onlink = true;
        nl.replace_route(&bad).await.unwrap();
        assert_eq!(
            ns.ip(&["route", "show", "10.5.9.0/24"]).unwrap().trim(),
            "10.5.9.0/24 via 10.99.0.1 dev eth0 onlink"
        );
        // add (not replace) is where EEXIST lives; ours never sees it.
        let add = ns.ip(&[
            "route",
            "add",
            "10.5.2.0/24",
            "via",
            "192.168.100.2",
            "dev",
            "eth0",
            "proto",
            "boot",
        ]);
        assert!(format!("{add:?}").contains("File exists"), "{add:?}");

        // onlink needs the device up. (Taking eth0 down also flushes every
        // IPv4 route through it, the host-gw routes included.)
        ns.ip(&["link", "set", "peer0", "down"]).unwrap();
        ns.ip(&["link", "set", "eth0", "down"]).unwrap();
        let mut down = bad.clone();
        down.dst = ip("10.5.10.0");
        let err = nl.replace_route(&down).await.unwrap_err();
        assert_eq!(err.os_error(), Some(100), "ENETDOWN: {err}");
        assert!(
            err.to_string().contains("Nexthop device is not up"),
            "extack text: {err}"
        );
        ns.ip(&["link", "set", "eth0", "up"]).unwrap();
        ns.ip(&["link", "set", "peer0", "up"]).unwrap();
        assert!(
            !nl.routes(Family::V4).await.unwrap().contains(&r),
            "flushed by link down"
        );
        nl.replace_route(&r).await.unwrap();

        // Blackhole.
        let bh = Route::blackhole(ip("10.5.0.0"), 16);
        nl.replace_route(&bh).await.unwrap();
        nl.replace_route(&bh).await.unwrap();
        assert_eq!(
            ns.ip(&["route", "show", "10.5.0.0/16"]).unwrap().trim(),
            "blackhole 10.5.0.0/16"
        );
        assert!(nl.routes(Family::V4).await.unwrap().contains(&bh));
        nl.del_route(&bh).await.unwrap();
        nl.del_route(&bh).await.unwrap();
        assert_eq!(ns.ip(&["route", "show", "10.5.0.0/16"]).unwrap(), "");
        // A route read back from the kernel deletes cleanly too.
        let from_kernel = nl
            .routes(Family::V4)
            .await
            .unwrap()
            .into_iter()
            .find(|x| x.key() == r.key())
            .unwrap();
        nl.del_route(&from_kernel).await.unwrap();
        assert_eq!(ns.ip(&["route", "show", "10.5.2.0/24"]).unwrap(), "");
    });
}

#[test]
fn route_set_reconciles_the_kernel() {
    let ns = &host("apply");
    with_netlink(ns, |nl| async move {
        let eth0 = index_of(&nl, "eth0").await;
        let hostgw = |subnet: &str, gw: &str| {
            let mut r = Route::unicast(ip(subnet), 24);
            r.gateway = Some(ip(gw));
            r.oif = Some(eth0);
            r
        };
        let ops: SharedOps = std::sync::Arc::new(nl.clone());
        let set = RouteSet::new(
            ops,
            vec![Family::V4],
            std::sync::Arc::new(move |r: &Route| {
                r.protocol == RTPROT_BOOT && r.oif == Some(eth0) && r.gateway.is_some()
            }),
        );
        let mut routes = Reconciler::new();
        // Foreign routes in the cluster range that must survive: one beside
        // ours, one where a desired route would go. (`ip route add`
        // defaults to proto boot too, so they say `proto static`.)
        for (dst, via) in [
            ("10.5.200.0/24", "192.168.100.254"),
            ("10.5.6.0/24", "192.168.100.66"),
        ] {
            ns.ip(&[
                "route", "add", dst, "via", via, "dev", "eth0", "proto", "static",
            ])
            .unwrap();
        }

        let want = vec![
            hostgw("10.5.2.0", "192.168.100.2"),
            hostgw("10.5.3.0", "192.168.100.3"),
            hostgw("10.5.6.0", "192.168.100.6"),
        ];
        let r = routes.resync(&set, &want).await.unwrap();
        assert_eq!((r.added, r.changed, r.removed), (2, 0, 0), "{r:?}");
        assert_eq!(r.newly_blocked.len(), 1, "{r:?}");
        let r = routes.resync(&set, &want).await.unwrap();
        assert!(
            r.is_empty() && r.newly_blocked.is_empty(),
            "converged: {r:?}"
        );

        // Lease 10.5.3.0 goes away, 10.5.4.0 arrives, 10.5.2.0 moves: an
        // event batch, applied without listing.
        let want = vec![
            hostgw("10.5.2.0", "192.168.100.22"),
            hostgw("10.5.4.0", "192.168.100.4"),
        ];
        let r = routes.update(&set, &want).await.unwrap();
        assert_eq!((r.added, r.changed, r.removed), (1, 1, 1), "{r:?}");
        let shown = ns.ip(&["route", "show"]).unwrap();
        for line in [
            "10.5.2.0/24 via 192.168.100.22 dev eth0",
            "10.5.4.0/24 via 192.168.100.4 dev eth0",
            "10.5.200.0/24 via 192.168.100.254 dev eth0",
            "10.5.6.0/24 via 192.168.100.66 dev eth0",
        ] {
            assert!(shown.contains(line), "{line} in {shown}");
        }
        assert!(!shown.contains("10.5.3.0"), "{shown}");

        // An admin deletes one of ours: the resync restores it.
        ns.ip(&["route", "del", "10.5.4.0/24"]).unwrap();
        let r = routes.resync(&set, &want).await.unwrap();
        assert_eq!(r.added, 1, "{r:?}");

        // Failures do not stop the rest, and all are reported.
        let mut want = want;
        want.extend([
            hostgw("10.5.7.0", "10.99.0.7"),
            hostgw("10.5.5.0", "192.168.100.5"),
            hostgw("10.5.8.0", "10.99.0.8"),
        ]);
        let err = routes.update(&set, &want).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("2 errors, first: route 10.5.7.0/24 via 10.99.0.7"),
            "{text}"
        );
        let shown = ns.ip(&["route", "show"]).unwrap();
        assert!(shown.contains("10.5.5.0/24 via 192.168.100.5"), "{shown}");
    });
}

#[test]
fn links_addresses_mtu_and_mac() {
    let ns = &host("links");
    with_netlink(ns, |nl| async move {
        let links = nl.links().await.unwrap();
        let names: Vec<_> = links.iter().map(|l| l.name.as_str()).collect();
        assert!(
            names.contains(&"lo") && names.contains(&"eth0") && names.contains(&"peer0"),
            "{names:?}"
        );
        let eth0 = links.iter().find(|l| l.name == "eth0").unwrap().clone();
        assert_eq!(eth0.kind.as_deref(), Some("veth"));
        assert!(eth0.up && eth0.vxlan.is_none());
        assert_eq!(
            nl.link_by_index(eth0.index).await.unwrap(),
            Some(eth0.clone())
        );

        nl.set_mtu(eth0.index, 1400).await.unwrap();
        let m = parse_mac("02:11:22:33:44:55").unwrap();
        nl.set_mac(eth0.index, m).await.unwrap();
        let now = nl.link_by_name("eth0").await.unwrap().unwrap();
        assert_eq!((now.mtu, now.mac), (1400, Some(m)));
        let shown = ns.ip(&["link", "show", "eth0"]).unwrap();
        assert!(
            shown.contains("mtu 1400") && shown.contains("link/ether 02:11:22:33:44:55"),
            "{shown}"
        );
        assert_eq!(format_mac(&now.mac.unwrap()), "02:11:22:33:44:55");

        nl.add_address(eth0.index, ip("10.1.2.3"), 24)
            .await
            .unwrap();
        nl.add_address(eth0.index, ip("10.1.2.3"), 24)
            .await
            .unwrap();
        let shown = ns.ip(&["addr", "show", "dev", "eth0"]).unwrap();
        assert!(
            shown.contains("inet 10.1.2.3/24 brd 10.1.2.255 scope global eth0"),
            "{shown}"
        );
        let addrs = nl.addresses(eth0.index).await.unwrap();
        assert!(
            addrs
                .iter()
                .any(|a| a.addr == ip("10.1.2.3") && a.prefix == 24 && a.permanent && a.scope == 0)
        );
        assert!(
            addrs
                .iter()
                .any(|a| a.addr == ip("fd00:100::1") && a.prefix == 64)
        );
        let all = nl.all_addresses().await.unwrap();
        assert!(
            all.iter()
                .any(|a| a.addr == ip("127.0.0.1") && a.scope == 254)
        );
        nl.del_address(eth0.index, ip("10.1.2.3"), 24)
            .await
            .unwrap();
        nl.del_address(eth0.index, ip("10.1.2.3"), 24)
            .await
            .unwrap();
        assert!(
            !ns.ip(&["addr", "show", "dev", "eth0"])
                .unwrap()
                .contains("10.1.2.3")
        );

        // Errors name the link.
        let err = nl.set_mtu(eth0.index, 10).await.unwrap_err();
        assert!(
            err.to_string().starts_with("link set dev eth0 mtu 10: "),
            "{err}"
        );
        let err = nl.set_up(999_999).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("link set dev if999999 up: No such device"),
            "{err}"
        );
    });
}

#[test]
fn watch_links_sees_new_and_del() {
    let ns = NetNs::new("watch").unwrap();
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut events, conn) = watch_links().unwrap();
            tokio::spawn(conn);
            ns.ip(&["link", "add", "w0", "type", "veth", "peer", "name", "w1"])
                .unwrap();
            ns.ip(&["link", "del", "w0"]).unwrap();
            let mut new_index = None;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let mut seen = Vec::new();
            loop {
                let ev = tokio::time::timeout_at(deadline, events.next())
                    .await
                    .unwrap_or_else(|_| panic!("no DelLink within 10 s; saw {seen:?}"))
                    .expect("stream ended");
                match &ev {
                    LinkEvent::New(l) if l.name == "w0" => new_index = Some(l.index),
                    LinkEvent::Del { index, name } if name == "w0" => {
                        assert_eq!(Some(*index), new_index, "DelLink after NewLink, same index");
                        break;
                    }
                    _ => {}
                }
                seen.push(ev);
            }
        })
    });
}

/// End to end: two namespace hosts on a bridge, each with flannel's vxlan
/// state for the other; the overlay addresses ping each other.
#[test]
fn vxlan_overlay_between_two_hosts_passes_traffic() {
    let topo = Topology::builder()
        .hosts(2)
        .ipv6(true)
        .name_hint("vxe2e")
        .build()
        .unwrap();
    let h1 = topo.host(1);
    assert_eq!(
        (h1.iface.as_str(), h1.ipv4.to_string()),
        ("eth0", "192.168.100.2".to_string())
    );
    assert_eq!(h1.ipv6, Some("fd00:100::2".parse().unwrap()));
    let shown = h1.ns.ip(&["addr", "show", "dev", "eth0"]).unwrap();
    assert!(
        shown.contains("inet 192.168.100.2/24") && shown.contains("inet6 fd00:100::2/64"),
        "{shown}"
    );
    assert_eq!(
        h1.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .unwrap()
            .trim(),
        "1"
    );
    assert!(
        topo.switch
            .ip(&["link", "show", "master", "br0"])
            .unwrap()
            .contains("h1@")
    );
    let macs = [
        parse_mac("02:aa:00:00:00:01").unwrap(),
        parse_mac("02:aa:00:00:00:02").unwrap(),
    ];
    let subnets = ["10.5.1.0", "10.5.2.0"];
    for i in 0..2 {
        let me = topo.host(i);
        let peer = topo.host(1 - i);
        let (my_mac, peer_mac) = (macs[i], macs[1 - i]);
        let (my_subnet, peer_subnet) = (subnets[i], subnets[1 - i]);
        let my_ip = IpAddr::V4(me.ipv4);
        let peer_ip = IpAddr::V4(peer.ipv4);
        with_netlink(&me.ns, |nl| async move {
            let eth0 = index_of(&nl, "eth0").await;
            let spec = VxlanSpec {
                local: Some(my_ip),
                mac: Some(my_mac),
                ..vxlan_spec(eth0)
            };
            let dev = nl.ensure_vxlan(&spec).await.unwrap().link.index;
            nl.add_address(dev, ip(my_subnet), 32).await.unwrap();
            nl.set_up(dev).await.unwrap();
            nl.replace_neigh(dev, ip(peer_subnet), peer_mac)
                .await
                .unwrap();
            nl.replace_fdb(dev, peer_mac, peer_ip).await.unwrap();
            nl.replace_route(&vxlan_route(peer_subnet, 24, dev))
                .await
                .unwrap();
        });
    }
    // Traffic: UDP from 10.5.1.0 (host 0) to 10.5.2.0 (host 1) and back,
    // through the vxlan devices (no external tools needed).
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            topo.host(1).ns.run(|| {
                let sock = UdpSocket::bind("10.5.2.0:9999").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut buf = [0u8; 64];
                let (n, from) = sock
                    .recv_from(&mut buf)
                    .expect("nothing arrived over the overlay");
                sock.send_to(&buf[..n], from).unwrap();
                (buf[..n].to_vec(), from)
            })
        });
        let echoed = topo.host(0).ns.run(|| {
            let sock = UdpSocket::bind("10.5.1.0:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 64];
            for _ in 0..50 {
                sock.send_to(b"hello over vxlan", "10.5.2.0:9999").unwrap();
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    return Some((buf[..n].to_vec(), from));
                }
            }
            None
        });
        let (payload, from) = server.join().unwrap();
        assert_eq!(payload, b"hello over vxlan");
        assert_eq!(from.ip(), ip("10.5.1.0"));
        let (back, back_from) = echoed.expect("no echo came back over the overlay");
        assert_eq!(back, b"hello over vxlan");
        assert_eq!(back_from.ip(), ip("10.5.2.0"));
    });
}
