//! The ipip network on [`FakeNetlink`]: registration, routes, DirectRouting
//! and damage repair, without root. The kernel itself is exercised in the
//! VM (`tests/vm.rs`).

use super::*;
use flannel_core::backend::HostContext;
use flannel_core::config::NetConfig;
use flannel_netlink::fake::FakeNetlink;
use flannel_netlink::{IpipInfo, NetOps};
use flannel_subnet::local::LocalStore;
use flannel_subnet::manager::LeaseManager;

const ETH0: u32 = 2;
const CONF: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}"#;
const DIRECT: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"ipip","DirectRouting":true}}"#;

fn iface(mtu: u32) -> ExternalInterface {
    ExternalInterface {
        name: "eth0".into(),
        index: ETH0,
        mtu,
        iface_addr: Some([192, 168, 100, 1].into()),
        iface_v6_addr: None,
        ext_addr: Some([192, 168, 100, 1].into()),
        ext_v6_addr: None,
    }
}

struct Node {
    nl: Arc<FakeNetlink>,
    net: Result<IpipNetwork, BackendError>,
    _store: tempfile::TempDir,
}

/// Registers an ipip network for `10.5.1.0/24` on a fake kernel with
/// `eth0` = 192.168.100.1, after `prepare` ran on the fake.
async fn node_with(conf: &str, mtu: u32, prepare: impl FnOnce(&FakeNetlink)) -> Node {
    let nl = Arc::new(FakeNetlink::new());
    assert_eq!(nl.add_link("eth0", 1500), ETH0);
    prepare(&nl);
    let dir = tempfile::tempdir().expect("a temporary directory for the lease store");
    let store = LocalStore::open(dir.path()).unwrap();
    store.set_config(conf).unwrap();
    let manager = LeaseManager::new(store);
    let mut config = NetConfig::parse(conf).unwrap();
    config.check().unwrap();
    let ops: SharedOps = nl.clone();
    let host = HostContext::default().with_extension(ops.clone());
    let ext = iface(mtu);
    let ctx = RegisterContext {
        config: &config,
        ext_iface: &ext,
        manager: &manager,
        previous_subnet: Some("10.5.1.0/24".parse().unwrap()),
        previous_ipv6_subnet: None,
        host: &host,
    };
    let net = IpipNetwork::register(ops, &ctx).await;
    Node {
        nl,
        net,
        _store: dir,
    }
}

async fn node(conf: &str) -> (Arc<FakeNetlink>, IpipNetwork, tempfile::TempDir) {
    let n = node_with(conf, 1500, |_| {}).await;
    let net = n.net.unwrap();
    n.nl.take_calls();
    (n.nl, net, n._store)
}

/// The writes so far, without the `ip route get` lookups of DirectRouting.
fn writes(nl: &FakeNetlink) -> Vec<String> {
    nl.take_writes()
        .into_iter()
        .filter(|w| !w.starts_with("route get"))
        .collect()
}

fn peer(n: u8, backend: &str) -> Lease {
    Lease::new(
        format!("10.5.{n}.0-24").parse().unwrap(),
        LeaseAttrs::from_json(&format!(
            r#"{{"PublicIP":"192.168.{n}.{n}","PublicIPv6":null,"BackendType":"{backend}"}}"#
        ))
        .unwrap(),
    )
}

#[test]
fn options_mtu_and_lease_attrs_as_go() {
    let raw = RawJson::new(r#"{"Type":"ipip","directrouting":true}"#).unwrap();
    assert!(IpipOptions::parse(Some(&raw)).unwrap().direct_routing);
    assert!(!IpipOptions::parse(None).unwrap().direct_routing);
    let bad = RawJson::new(r#"{"Type":"ipip","DirectRouting":"yes"}"#).unwrap();
    assert!(IpipOptions::parse(Some(&bad)).is_err());
    assert_eq!(mtu_for(&iface(1500)).unwrap(), 1480);
    assert_eq!(
        mtu_for(&iface(20)).unwrap_err().to_string(),
        "MTU 20 of iface eth0 is too small for ipip mode to work"
    );
    assert_eq!(
        lease_attrs(&iface(1500)).unwrap().to_json(),
        r#"{"PublicIP":"192.168.100.1","PublicIPv6":null,"BackendType":"ipip"}"#
    );
}

#[tokio::test]
async fn registration_builds_the_device_as_go() {
    let n = node_with(CONF, 1500, |_| {}).await;
    let net = n.net.unwrap();
    assert_eq!(net.mtu(), 1480);
    assert_eq!(
        net.lease().attrs.to_json(),
        r#"{"PublicIP":"192.168.100.1","PublicIPv6":null,"BackendType":"ipip"}"#
    );
    let dev = n.nl.link_by_name(DEVICE).await.unwrap().unwrap();
    assert_eq!(
        (dev.kind.as_deref(), dev.mtu, dev.up),
        (Some("ipip"), 1480, true)
    );
    let addrs = n.nl.addresses(dev.index).await.unwrap();
    assert_eq!(addrs.len(), 1);
    assert_eq!(
        (addrs[0].addr.to_string(), addrs[0].prefix),
        ("10.5.1.0".into(), 32)
    );
    assert!(
        n.nl.calls()
            .contains(&"link add ipip flannel.ipip local 192.168.100.1".to_string()),
        "{:?}",
        n.nl.calls()
    );
}

#[tokio::test]
async fn existing_devices_reused_recreated_or_refused() {
    // Ours from an earlier run, with a stale address and the wrong MTU.
    let n = node_with(CONF, 1500, |nl| {
        let i = nl.add_ipip_link(
            DEVICE,
            IpipInfo {
                local: Some([192, 168, 100, 1].into()),
                remote: None,
            },
            1400,
        );
        assert_eq!(i, 3);
    })
    .await;
    let net = n.net.unwrap();
    assert_eq!(net.tunnel_index(), 3, "reused");
    assert!(n.nl.calls().contains(&"link set if3 mtu 1480".to_string()));

    // Another local address: recreated.
    let n = node_with(CONF, 1500, |nl| {
        nl.add_ipip_link(
            DEVICE,
            IpipInfo {
                local: Some([192, 168, 100, 9].into()),
                remote: None,
            },
            1480,
        );
    })
    .await;
    assert_ne!(n.net.unwrap().tunnel_index(), 3, "recreated");

    // Not an ipip device: Go's refusal, the link left alone.
    let n = node_with(CONF, 1500, |nl| {
        nl.add_link(DEVICE, 1500);
    })
    .await;
    assert_eq!(
        n.net.err().unwrap().to_string(),
        "flannel.ipip isn't an ipip mode device, please remove device and try again"
    );
    assert_eq!(
        n.nl.link_by_name(DEVICE)
            .await
            .unwrap()
            .unwrap()
            .kind
            .as_deref(),
        Some("veth")
    );

    let n = node_with(CONF, 10, |_| {}).await;
    assert_eq!(
        n.net.err().unwrap().to_string(),
        "MTU 10 of iface eth0 is too small for ipip mode to work"
    );
}

#[tokio::test]
async fn routes_via_the_tunnel_onlink_and_drift_repaired() {
    let (nl, mut net, _s) = node(CONF).await;
    let tun = net.tunnel_index();
    let (a, b, v) = (peer(2, "ipip"), peer(3, "ipip"), peer(4, "vxlan"));
    net.handle_events(
        &[LeaseEvent::added(a.clone()), LeaseEvent::added(v.clone())],
        &[&a, &v],
    )
    .await
    .unwrap();
    assert_eq!(
        writes(&nl),
        [format!(
            "route replace 10.5.2.0/24 via 192.168.2.2 dev if{tun} onlink"
        )]
    );
    net.resync(&[&a, &b]).await.unwrap();
    assert_eq!(
        writes(&nl),
        [format!(
            "route replace 10.5.3.0/24 via 192.168.3.3 dev if{tun} onlink"
        )]
    );
    // Drift: an admin deletes a route; a stale route of a gone lease.
    nl.remove_route("10.5.2.0".parse().unwrap(), 24);
    let mut stale = route_for(&peer(7, "ipip"), tun, None).unwrap();
    stale.dst = "10.5.7.0".parse().unwrap();
    nl.insert_route(stale);
    net.resync(&[&a, &b]).await.unwrap();
    let mut w = writes(&nl);
    w.sort();
    assert_eq!(
        w,
        [
            format!("route del 10.5.7.0/24 via 192.168.7.7 dev if{tun} onlink"),
            format!("route replace 10.5.2.0/24 via 192.168.2.2 dev if{tun} onlink"),
        ]
    );
    net.resync(&[&a, &b]).await.unwrap();
    assert!(writes(&nl).is_empty(), "no drift, no writes");
    net.handle_events(&[LeaseEvent::removed(b.clone())], &[&a])
        .await
        .unwrap();
    assert_eq!(
        writes(&nl),
        [format!(
            "route del 10.5.3.0/24 via 192.168.3.3 dev if{tun} onlink"
        )]
    );
}

#[tokio::test]
async fn direct_routing_uses_the_external_interface_for_on_link_peers() {
    let (nl, mut net, _s) = node(DIRECT).await;
    let tun = net.tunnel_index();
    let (near, far) = (peer(2, "ipip"), peer(3, "ipip"));
    let mut connected = Route::unicast("192.168.2.2".parse().unwrap(), 32);
    connected.oif = Some(ETH0);
    nl.set_route_get("192.168.2.2".parse().unwrap(), vec![connected]);
    let mut via_gw = Route::unicast("192.168.3.3".parse().unwrap(), 32);
    via_gw.oif = Some(ETH0);
    via_gw.gateway = Some("192.168.100.254".parse().unwrap());
    nl.set_route_get("192.168.3.3".parse().unwrap(), vec![via_gw]);
    net.handle_events(
        &[
            LeaseEvent::added(near.clone()),
            LeaseEvent::added(far.clone()),
        ],
        &[&near, &far],
    )
    .await
    .unwrap();
    let mut w = writes(&nl);
    w.sort();
    assert_eq!(
        w,
        [
            format!("route replace 10.5.2.0/24 via 192.168.2.2 dev if{ETH0} onlink"),
            format!("route replace 10.5.3.0/24 via 192.168.3.3 dev if{tun} onlink"),
        ]
    );
    net.resync(&[&near, &far]).await.unwrap();
    assert!(writes(&nl).is_empty());
}

#[tokio::test]
async fn a_deleted_device_is_rebuilt_with_its_routes() {
    let (nl, mut net, _s) = node(CONF).await;
    let a = peer(2, "ipip");
    net.resync(&[&a]).await.unwrap();
    nl.delete_link(DEVICE);
    nl.take_calls();
    net.resync(&[&a]).await.unwrap();
    let tun = net.tunnel_index();
    let dev = nl.link_by_name(DEVICE).await.unwrap().unwrap();
    assert_eq!((dev.index, dev.up), (tun, true));
    assert!(
        nl.routes_now()
            .iter()
            .any(|r| r.oif == Some(tun) && r.dst.to_string() == "10.5.2.0")
    );
    assert_eq!(nl.addresses(tun).await.unwrap().len(), 1);
}

#[tokio::test]
async fn foreign_routes_are_left_alone() {
    let (nl, mut net, _s) = node(CONF).await;
    // host-gw style (not onlink) and an admin's static route.
    let mut hostgw = Route::unicast("10.5.8.0".parse().unwrap(), 24);
    hostgw.gateway = Some("192.168.100.8".parse().unwrap());
    hostgw.oif = Some(ETH0);
    nl.insert_route(hostgw.clone());
    let mut admin = route_for(&peer(9, "ipip"), net.tunnel_index(), None).unwrap();
    admin.protocol = flannel_netlink::RTPROT_STATIC;
    nl.insert_route(admin.clone());
    net.resync(&[]).await.unwrap();
    let routes = nl.routes_now();
    assert!(routes.contains(&hostgw) && routes.contains(&admin));
}
