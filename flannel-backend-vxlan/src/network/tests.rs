//! The vxlan network on [`FakeNetlink`]: registration, events, resyncs,
//! DirectRouting and damage repair, without root.

use super::*;
use flannel_core::backend::{ExternalInterface, HostContext};
use flannel_core::config::NetConfig;
use flannel_netlink::NetOps;
use flannel_netlink::fake::FakeNetlink;
use flannel_subnet::local::LocalStore;
use flannel_subnet::manager::LeaseManager;

const ETH0: u32 = 2;
/// `flannel.1` and `flannel-v6.1` as the fake numbers them (after `lo` and
/// `eth0`).
const V4DEV: u32 = 3;
const V6DEV: u32 = 4;

const V4_ONLY: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;
const DUAL: &str = r#"{"Network":"10.5.0.0/16","IPv6Network":"fd00:5::/48","EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#;
const DIRECT: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;

struct Node {
    nl: Arc<FakeNetlink>,
    net: VxlanNetwork,
    _store: tempfile::TempDir,
}

/// Registers a vxlan network for `10.5.1.0/24` (and `fd00:5:0:1::/64`) on
/// a fake kernel with `eth0` = 192.168.100.1 / fd00:100::1, through the
/// local lease store, and forgets the registration's calls.
async fn node(conf: &str) -> Node {
    let nl = Arc::new(FakeNetlink::new());
    assert_eq!(nl.add_link("eth0", 1500), ETH0);
    let dir = tempfile::tempdir().expect("a temporary directory for the lease store");
    let store = LocalStore::open(dir.path()).unwrap();
    store.set_config(conf).unwrap();
    let manager = LeaseManager::new(store);
    let mut config = NetConfig::parse(conf).unwrap();
    config.check().unwrap();
    let iface = ExternalInterface {
        name: "eth0".into(),
        index: ETH0,
        mtu: 1500,
        iface_addr: Some([192, 168, 100, 1].into()),
        iface_v6_addr: Some("fd00:100::1".parse().unwrap()),
        ext_addr: Some([192, 168, 100, 1].into()),
        ext_v6_addr: Some("fd00:100::1".parse().unwrap()),
    };
    let ops: SharedOps = nl.clone();
    let host = HostContext::default().with_extension(ops.clone());
    let ctx = RegisterContext {
        config: &config,
        ext_iface: &iface,
        manager: &manager,
        previous_subnet: Some("10.5.1.0/24".parse().unwrap()),
        previous_ipv6_subnet: Some("fd00:5:0:1::/64".parse().unwrap()),
        host: &host,
    };
    let net = VxlanNetwork::register(ops, &ctx).await.unwrap();
    assert_eq!(
        net.lease().key().to_string().split('&').next(),
        Some("10.5.1.0-24")
    );
    nl.take_calls();
    Node {
        nl,
        net,
        _store: dir,
    }
}

fn mac(n: u8) -> String {
    format!("0a:00:00:00:00:{n:02x}")
}

/// The lease of node `n`: `10.5.<n>.0/24` (and `fd00:5:0:<n>::/64`) behind
/// `192.168.100.<n>` (`fd00:100::<n>`), VTEP MAC `0a:00:00:00:00:<n>`
/// (`…:<n+0x80>` for v6).
fn peer(n: u8, v6: bool) -> Lease {
    let (key, json) = if v6 {
        (
            format!("10.5.{n}.0-24&fd00:5:0:{n}::-64"),
            format!(
                r#"{{"PublicIP":"192.168.100.{n}","PublicIPv6":"fd00:100::{n}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                mac(n),
                mac(n + 0x80)
            ),
        )
    } else {
        (
            format!("10.5.{n}.0-24"),
            format!(
                r#"{{"PublicIP":"192.168.100.{n}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                mac(n)
            ),
        )
    };
    Lease::new(key.parse().unwrap(), LeaseAttrs::from_json(&json).unwrap())
}

/// Go's three entries for v4 peer `n` on `flannel.1`, in Go's order.
fn go_v4(n: u8) -> [String; 3] {
    [
        format!("neigh replace 10.5.{n}.0 lladdr {} dev if{V4DEV}", mac(n)),
        format!("fdb replace {} dev if{V4DEV} dst 192.168.100.{n}", mac(n)),
        format!("route replace 10.5.{n}.0/24 via 10.5.{n}.0 dev if{V4DEV} onlink"),
    ]
}

fn added(l: &Lease) -> LeaseEvent {
    LeaseEvent::added(l.clone())
}

#[tokio::test]
async fn registration_creates_the_devices_as_go_does() {
    let n = node(DUAL).await;
    let lease = n.net.lease();
    assert_eq!(lease.key().to_string(), "10.5.1.0-24&fd00:5:0:1::-64");
    assert_eq!(n.net.mtu(), 1450);
    for (name, index, addr) in [
        ("flannel.1", V4DEV, "10.5.1.0/32"),
        ("flannel-v6.1", V6DEV, "fd00:5:0:1::/128"),
    ] {
        let link = n.nl.link_by_name(name).await.unwrap().unwrap();
        assert_eq!((link.index, link.up, link.mtu), (index, true, 1450));
        let v = link.vxlan.unwrap();
        assert_eq!((v.vni, v.vtep_index, v.learning), (1, Some(ETH0), false));
        let addrs: Vec<String> =
            n.nl.addresses(index)
                .await
                .unwrap()
                .iter()
                .map(|a| format!("{}/{}", a.addr, a.prefix))
                .collect();
        assert_eq!(addrs, [addr]);
    }
    let data = VxlanLeaseData::parse(lease.attrs.backend_data.as_ref().unwrap()).unwrap();
    assert_eq!(data.vni, 1);
    assert_eq!(
        Some(data.vtep_mac),
        n.nl.link_by_index(V4DEV).await.unwrap().unwrap().mac
    );
}

#[tokio::test]
async fn first_resync_programs_each_peer_as_go_does_v4_and_v6() {
    let mut n = node(DUAL).await;
    let (a, b) = (peer(3, true), peer(4, false));
    n.net.resync(&[&a, &b]).await.unwrap();
    let writes = n.nl.take_writes();
    let v6_mac = mac(0x83);
    assert_eq!(
        writes,
        [
            // flannel.1: neighbours, FDB entries, routes.
            format!("neigh replace 10.5.3.0 lladdr {} dev if3", mac(3)),
            format!("neigh replace 10.5.4.0 lladdr {} dev if3", mac(4)),
            format!("fdb replace {} dev if3 dst 192.168.100.3", mac(3)),
            format!("fdb replace {} dev if3 dst 192.168.100.4", mac(4)),
            "route replace 10.5.3.0/24 via 10.5.3.0 dev if3 onlink".to_string(),
            "route replace 10.5.4.0/24 via 10.5.4.0 dev if3 onlink".to_string(),
            // flannel-v6.1: only the dual-stack peer.
            format!("neigh replace fd00:5:0:3:: lladdr {v6_mac} dev if4"),
            format!("fdb replace {v6_mac} dev if4 dst fd00:100::3"),
            "route replace fd00:5:0:3::/64 via fd00:5:0:3:: dev if4 onlink".to_string(),
        ]
    );
    // The routes as the kernel holds them: proto boot, scope global.
    let r =
        n.nl.routes_now()
            .into_iter()
            .find(|r| r.dst.to_string() == "10.5.3.0")
            .unwrap();
    assert_eq!(
        (r.protocol, r.scope, r.onlink),
        (
            flannel_netlink::RTPROT_BOOT,
            flannel_netlink::RT_SCOPE_UNIVERSE,
            true
        )
    );
    // No drift: the next resync lists and writes nothing.
    n.net.resync(&[&a, &b]).await.unwrap();
    assert!(n.nl.take_writes().is_empty());
}

#[tokio::test]
async fn events_do_not_list_and_a_removal_removes_all_three() {
    let mut n = node(V4_ONLY).await;
    let (a, b) = (peer(3, false), peer(4, false));
    n.net.handle_events(&[added(&a)], &[&a]).await.unwrap();
    assert_eq!(n.nl.take_calls(), go_v4(3));
    n.net.handle_events(&[added(&b)], &[&a, &b]).await.unwrap();
    assert_eq!(n.nl.take_calls(), go_v4(4), "only the new lease's entries");
    // A removal event carries only the key; the state comes from the rest.
    let gone = Lease::new(a.key(), LeaseAttrs::default());
    n.net
        .handle_events(&[LeaseEvent::removed(gone)], &[&b])
        .await
        .unwrap();
    assert_eq!(
        n.nl.take_calls(),
        [
            format!("neigh del 10.5.3.0 dev if{V4DEV}"),
            format!("fdb del {} dev if{V4DEV} dst 192.168.100.3", mac(3)),
            format!("route del 10.5.3.0/24 via 10.5.3.0 dev if{V4DEV} onlink"),
        ]
    );
    assert_eq!(n.nl.neighbours_now(V4DEV).len(), 1);
    assert_eq!(n.nl.fdb_now(V4DEV).len(), 1);
    assert_eq!(n.nl.routes_now().len(), 1);
    // Another backend's lease is ignored.
    let hostgw = Lease::new(
        "10.5.9.0-24".parse().unwrap(),
        LeaseAttrs::from_json(
            r#"{"PublicIP":"192.168.100.9","PublicIPv6":null,"BackendType":"host-gw"}"#,
        )
        .unwrap(),
    );
    n.net
        .handle_events(&[added(&hostgw)], &[&b, &hostgw])
        .await
        .unwrap();
    assert!(n.nl.take_calls().is_empty());
}

#[tokio::test]
async fn resync_collects_garbage_and_restores_deleted_entries() {
    let mut n = node(V4_ONLY).await;
    let (a, b, c) = (peer(3, false), peer(4, false), peer(5, false));
    n.net.resync(&[&a, &b, &c]).await.unwrap();
    n.nl.take_calls();
    // Lease 5 vanished while we were not watching (a restart, a compacted
    // watch); an admin deleted lease 3's neighbour, FDB entry and route.
    n.nl.remove_neigh(V4DEV, "10.5.3.0".parse().unwrap());
    n.nl.remove_fdb(V4DEV, parse_mac(&mac(3)).unwrap());
    n.nl.remove_route("10.5.3.0".parse().unwrap(), 24);
    // Not ours, and left alone: the underlay's connected route and an
    // admin's static route into the overlay.
    let mut connected = Route::unicast("192.168.100.0".parse().unwrap(), 24);
    connected.protocol = flannel_netlink::RTPROT_KERNEL;
    connected.oif = Some(ETH0);
    n.nl.insert_route(connected.clone());
    let mut admin = Route::unicast("10.5.200.0".parse().unwrap(), 24);
    admin.protocol = flannel_netlink::RTPROT_STATIC;
    admin.gateway = Some("192.168.100.50".parse().unwrap());
    admin.oif = Some(ETH0);
    n.nl.insert_route(admin.clone());

    n.net.resync(&[&a, &b]).await.unwrap();
    let mut writes = n.nl.take_writes();
    writes.sort();
    let mut want = vec![
        format!("neigh del 10.5.5.0 dev if{V4DEV}"),
        format!("fdb del {} dev if{V4DEV} dst 192.168.100.5", mac(5)),
        format!("route del 10.5.5.0/24 via 10.5.5.0 dev if{V4DEV} onlink"),
    ];
    want.extend(go_v4(3));
    want.sort();
    assert_eq!(writes, want);
    let routes = n.nl.routes_now();
    assert!(routes.contains(&connected) && routes.contains(&admin));
    assert_eq!(routes.len(), 4);
    // No drift: nothing written.
    n.net.resync(&[&a, &b]).await.unwrap();
    assert!(n.nl.take_writes().is_empty());
}

#[tokio::test]
async fn direct_routing_is_decided_per_peer_and_reused_by_resyncs() {
    let mut n = node(DIRECT).await;
    let (near, far) = (peer(3, false), peer(4, false));
    // 192.168.100.3 is on eth0's segment; 192.168.100.4 is behind a gateway.
    let mut on_link = Route::unicast("192.168.100.3".parse().unwrap(), 32);
    on_link.oif = Some(ETH0);
    n.nl.set_route_get("192.168.100.3".parse().unwrap(), vec![on_link]);
    let mut via = Route::unicast("192.168.100.4".parse().unwrap(), 32);
    via.oif = Some(ETH0);
    via.gateway = Some("192.168.100.254".parse().unwrap());
    n.nl.set_route_get("192.168.100.4".parse().unwrap(), vec![via]);

    n.net
        .handle_events(&[added(&near), added(&far)], &[&near, &far])
        .await
        .unwrap();
    let mut want = vec![
        "route get 192.168.100.3".to_string(),
        "route get 192.168.100.4".to_string(),
    ];
    let [neigh, fdb, route] = go_v4(4);
    want.extend([neigh, fdb]);
    want.push(format!(
        "route replace 10.5.3.0/24 via 192.168.100.3 dev if{ETH0}"
    ));
    want.push(route);
    assert_eq!(n.nl.take_calls(), want);
    // Resyncs reuse the decisions: no `ip route get`, nothing to repair.
    n.net.resync(&[&near, &far]).await.unwrap();
    let calls = n.nl.take_calls();
    assert!(
        !calls.iter().any(|c| c.starts_with("route get")),
        "{calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| !c.contains(" list") && !c.starts_with("link show"))
    );
    // The direct route is ours: when the peer goes, it goes.
    n.net.resync(&[&far]).await.unwrap();
    assert_eq!(
        n.nl.take_writes(),
        [format!(
            "route del 10.5.3.0/24 via 192.168.100.3 dev if{ETH0}"
        )]
    );
}

#[tokio::test]
async fn a_lease_with_bad_backend_data_is_skipped_and_the_others_programmed() {
    let mut n = node(V4_ONLY).await;
    let good = peer(3, false);
    let bad = Lease::new(
        "10.5.4.0-24".parse().unwrap(),
        LeaseAttrs::from_json(
            r#"{"PublicIP":"192.168.100.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":7}}"#,
        )
        .unwrap(),
    );
    n.net
        .handle_events(&[added(&bad), added(&good)], &[&bad, &good])
        .await
        .unwrap();
    assert_eq!(n.nl.take_calls(), go_v4(3));
    n.net.resync(&[&bad, &good]).await.unwrap();
    assert!(n.nl.take_writes().is_empty());
    assert_eq!(n.net.reported.len(), 1, "{:?}", n.net.reported);
}

#[tokio::test]
async fn a_deleted_device_is_recreated_with_its_mac_and_reprogrammed() {
    let mut n = node(V4_ONLY).await;
    let a = peer(3, false);
    n.net.resync(&[&a]).await.unwrap();
    let before = n.nl.link_by_name("flannel.1").await.unwrap().unwrap();
    n.nl.delete_link("flannel.1");
    n.nl.take_calls();
    n.net.resync(&[&a]).await.unwrap();
    let after = n.nl.link_by_name("flannel.1").await.unwrap().unwrap();
    assert_ne!(after.index, before.index);
    assert_eq!((after.mac, after.up, after.mtu), (before.mac, true, 1450));
    let i = after.index;
    let writes = n.nl.take_writes();
    assert_eq!(
        writes,
        [
            "link add vxlan flannel.1 id 1".to_string(),
            "sysctl net.ipv6.conf.flannel.1.accept_ra=0".to_string(),
            format!("addr add 10.5.1.0/32 dev if{i}"),
            format!("link set if{i} up"),
            format!("neigh replace 10.5.3.0 lladdr {} dev if{i}", mac(3)),
            format!("fdb replace {} dev if{i} dst 192.168.100.3", mac(3)),
            format!("route replace 10.5.3.0/24 via 10.5.3.0 dev if{i} onlink"),
        ]
    );
    // Events after the repair use the new device.
    let b = peer(4, false);
    n.net.handle_events(&[added(&b)], &[&a, &b]).await.unwrap();
    assert!(
        n.nl.take_calls()
            .iter()
            .all(|c| c.ends_with(&format!("if{i}")) || c.contains(&format!("dev if{i} ")))
    );
}

#[tokio::test]
async fn a_lease_outside_the_network_is_never_programmed() {
    let mut n = node(V4_ONLY).await;
    let hostile = Lease::new(
        "192.168.100.0-24".parse().unwrap(),
        LeaseAttrs::from_json(&format!(
            r#"{{"PublicIP":"192.168.100.66","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            mac(66)
        ))
        .unwrap(),
    );
    n.net
        .handle_events(&[added(&hostile)], &[&hostile])
        .await
        .unwrap();
    n.net.resync(&[&hostile]).await.unwrap();
    assert!(n.nl.take_writes().is_empty());
    assert!(n.nl.neighbours_now(V4DEV).is_empty() && n.nl.fdb_now(V4DEV).is_empty());
}

#[tokio::test]
async fn a_failure_is_returned_and_retried_by_the_next_pass() {
    let mut n = node(V4_ONLY).await;
    let (a, b) = (peer(3, false), peer(4, false));
    n.nl.fail_on("fdb replace");
    let e = n
        .net
        .handle_events(&[added(&a), added(&b)], &[&a, &b])
        .await
        .unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "2 errors, first: fdb {} dev if{V4DEV} dst 192.168.100.3: ",
            mac(3)
        )),
        "{e}"
    );
    n.nl.clear_failures();
    n.nl.take_calls();
    // The next event batch retries exactly what failed.
    n.net.handle_events(&[], &[&a, &b]).await.unwrap();
    assert_eq!(
        n.nl.take_calls(),
        [
            format!("fdb replace {} dev if{V4DEV} dst 192.168.100.3", mac(3)),
            format!("fdb replace {} dev if{V4DEV} dst 192.168.100.4", mac(4)),
        ]
    );
    // A failed resync likewise.
    n.nl.remove_route("10.5.4.0".parse().unwrap(), 24);
    n.nl.fail_on("route replace");
    assert!(n.net.resync(&[&a, &b]).await.is_err());
    n.nl.clear_failures();
    n.nl.take_calls();
    n.net.resync(&[&a, &b]).await.unwrap();
    assert_eq!(n.nl.take_writes(), [go_v4(4)[2].clone()]);
}

/// Two leases behind one VTEP (same MAC and public IP: a node that moved
/// and whose old lease has not expired yet) need one FDB entry; removing
/// either lease must keep it for the other.
#[tokio::test]
async fn a_shared_fdb_entry_stays_while_a_lease_still_needs_it() {
    let mut n = node(V4_ONLY).await;
    let a = peer(3, false);
    let b = Lease::new("10.5.4.0-24".parse().unwrap(), a.attrs.clone());
    n.net
        .handle_events(&[added(&a), added(&b)], &[&a, &b])
        .await
        .unwrap();
    let fdb = || n.nl.fdb_now(V4DEV);
    assert_eq!(fdb().len(), 1, "one entry for the shared VTEP");
    n.nl.take_calls();
    // Event path: the removal of one lease.
    let gone = Lease::new(a.key(), LeaseAttrs::default());
    n.net
        .handle_events(&[LeaseEvent::removed(gone)], &[&b])
        .await
        .unwrap();
    let calls = n.nl.take_calls();
    assert!(!calls.iter().any(|c| c.starts_with("fdb")), "{calls:?}");
    assert_eq!(
        calls,
        [
            format!("neigh del 10.5.3.0 dev if{V4DEV}"),
            format!("route del 10.5.3.0/24 via 10.5.3.0 dev if{V4DEV} onlink"),
        ]
    );
    assert_eq!(n.nl.fdb_now(V4DEV).len(), 1);
    // Resync path: both again, then one gone while we were away.
    n.net.resync(&[&a, &b]).await.unwrap();
    n.net.resync(&[&a]).await.unwrap();
    assert_eq!(n.nl.fdb_now(V4DEV).len(), 1, "still needed by 10.5.3.0-24");
    assert_eq!(n.nl.neighbours_now(V4DEV).len(), 1);
    // The last lease gone: now the entry goes.
    n.net.resync(&[]).await.unwrap();
    assert!(n.nl.fdb_now(V4DEV).is_empty());
}

/// A lease with undecodable backend data is warned about once (not on
/// every resync), is not counted as usable, and is warned about again
/// only when it changes to another error.
#[tokio::test]
async fn an_undecodable_lease_is_reported_once_and_not_counted() {
    let mut n = node(V4_ONLY).await;
    let good = peer(3, false);
    let bad = |data: &str| {
        Lease::new(
            "10.5.4.0-24".parse().unwrap(),
            LeaseAttrs::from_json(&format!(
                r#"{{"PublicIP":"192.168.100.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{data}}}"#
            ))
            .unwrap(),
        )
    };
    let b1 = bad(r#"{"VNI":1,"VtepMAC":"zz"}"#);
    n.net
        .handle_events(&[added(&b1), added(&good)], &[&b1, &good])
        .await
        .unwrap();
    assert_eq!(n.net.undecodable_leases(), 1);
    let first = n.net.reported.clone();
    assert_eq!(first.len(), 1, "{first:?}");
    let msg = first.iter().next().unwrap();
    assert_eq!(
        msg.matches("error decoding subnet lease JSON").count(),
        1,
        "{msg}"
    );
    for _ in 0..3 {
        n.net.resync(&[&b1, &good]).await.unwrap();
        assert_eq!(n.net.reported, first, "nothing new to report");
        assert_eq!(n.net.undecodable_leases(), 1);
    }
    // Changed to another bad value: a new warning; the array's error has
    // the prefix once.
    let b2 = bad("[1]");
    n.net
        .handle_events(&[added(&b2)], &[&b2, &good])
        .await
        .unwrap();
    n.net.resync(&[&b2, &good]).await.unwrap();
    assert_eq!(n.net.reported.len(), 1);
    let msg = n.net.reported.iter().next().unwrap();
    assert_ne!(Some(msg), first.iter().next());
    assert_eq!(
        msg,
        "lease 10.5.4.0-24: error decoding subnet lease JSON: json: cannot unmarshal array \
         into Go value of type vxlan.vxlanLeaseAttrs; skipping it"
    );
    // Fixed: usable again and programmed.
    n.net.resync(&[&peer(4, false), &good]).await.unwrap();
    assert_eq!(n.net.undecodable_leases(), 0);
    assert!(n.net.reported.is_empty());
    assert_eq!(n.nl.routes_now().len(), 2);
}

/// The resync summary names exactly what was repaired: a route deleted by
/// hand (added back), a stale lease's three entries (removed), and a VTEP
/// that changed its MAC (its neighbour corrected, its FDB entry one
/// removed and one added: the key is the whole entry).
#[tokio::test]
async fn the_resync_summary_counts_exactly_what_it_repaired() {
    let mut n = node(V4_ONLY).await;
    let (a, b, c) = (peer(3, false), peer(4, false), peer(5, false));
    let (lines, res) = n.net.resync_pass(&[&a, &b, &c]).await;
    res.unwrap();
    assert_eq!(
        lines,
        ["flannel.1 resync: added 3 neighbours, 3 fdb entries, 3 routes"]
    );
    // Nothing to do: no line at all.
    let (lines, res) = n.net.resync_pass(&[&a, &b, &c]).await;
    res.unwrap();
    assert!(lines.is_empty(), "{lines:?}");

    // Damage: a route deleted by hand. Lease 5 gone; lease 4's VTEP got a
    // new MAC (its neighbour is corrected, its FDB entry replaced).
    n.nl.remove_route("10.5.3.0".parse().unwrap(), 24);
    let mut b2 = b.clone();
    b2.attrs.backend_data = Some(
        VxlanLeaseData {
            vni: 1,
            vtep_mac: parse_mac("0a:00:00:00:00:44").unwrap(),
        }
        .to_raw(),
    );
    let (lines, res) = n.net.resync_pass(&[&a, &b2]).await;
    res.unwrap();
    assert_eq!(
        lines,
        [
            "flannel.1 resync: added 1 fdb entry, 1 route; corrected 1 neighbour; \
          removed 1 neighbour, 2 fdb entries, 1 route"
        ]
    );
    // And the kernel holds exactly the two leases' entries.
    assert_eq!(n.nl.neighbours_now(V4DEV).len(), 2);
    assert_eq!(n.nl.fdb_now(V4DEV).len(), 2);
    assert_eq!(n.nl.routes_now().len(), 2);
}
