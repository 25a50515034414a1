//! Programming and removing the kernel state of many remote vxlan leases.
//!
//! Two fresh network namespaces get the same underlay (a veth pair, `eth0`
//! with `192.168.100.1/24`) and a vxlan device `flannel.1` (VNI 1, MTU
//! 1450). Then, side by side, for `N` synthetic remote leases (default
//! 5,000; first argument to change), each needing a neighbour, an FDB entry
//! and an onlink route:
//! - ours: the vxlan backend's own code path. `VxlanNetwork::register`
//!   (through the embedded local lease store) creates `flannel.1`; a
//!   `resync` with the `N` leases programs them (listing the kernel, then
//!   one request per object) and one event batch removing all `N` leases
//!   (`handle_events`) takes them away again;
//! - baseline: the same objects (from the backend's `desired_state`) as one
//!   `ip -batch` (neighbours and routes) plus one `bridge -batch` (FDB
//!   entries), timed together, on a device made as flanneld makes it.
//!
//! Every step is checked with `ip neigh`, `bridge fdb` and `ip route`
//! (all `N` entries present after programming, none left after removal).
//! Rounds alternate ours and baseline; medians are reported (kind
//! `comparison`: both leave the same kernel state). Prints one row
//! per figure and the figures as JSON lines.

use flannel_backend_vxlan::VxlanNetwork;
use flannel_backend_vxlan::state::{DeviceState, DeviceView, desired_state};
use flannel_benches::{Figure, Kind, Res, median_ms, print_figures};
use flannel_core::backend::{ExternalInterface, HostContext, Network, RegisterContext};
use flannel_core::config::NetConfig;
use flannel_core::event::LeaseEvent;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_netlink::{Netlink, SharedOps, VxlanSpec, format_mac};
use flannel_subnet::local::LocalStore;
use flannel_subnet::manager::LeaseManager;
use flannel_testutil::netns::NetNs;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;
const DEV: &str = "flannel.1";
const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
/// The overlay: our own subnet is `10.1.0.0/24`, the peers' `10.100.0.0/24`
/// onwards.
const NET_CONF: &str = r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;

/// Runs `f` with a fresh netlink connection on a current-thread runtime in
/// a thread inside `ns`.
fn in_ns<T: Send>(ns: &NetNs, f: impl AsyncFnOnce(Netlink) -> Res<T> + Send) -> Res<T> {
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        rt.block_on(async move {
            let (nl, conn) = Netlink::connect().map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            f(nl).await
        })
    })
}

/// Runs a command, failing with its stderr.
fn run(program: &str, args: &[&str]) -> Res<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The underlay: `eth0` (`192.168.100.1/24`, up) and its veth peer.
fn underlay(ns: &NetNs) -> Res<()> {
    let ip = |args: &[&str]| ns.ip(args).map(drop).map_err(|e| e.to_string());
    ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])?;
    ip(&["addr", "add", &format!("{LOCAL}/24"), "dev", "eth0"])?;
    ip(&["link", "set", "eth1", "up"])?;
    ip(&["link", "set", "eth0", "up"])
}

/// The baseline's `flannel.1`, made as flanneld makes it (up, with
/// `10.1.0.0/32`); returns the device's index.
fn baseline_device(ns: &NetNs) -> Res<u32> {
    in_ns(ns, async |nl: Netlink| {
        let eth0 = nl
            .link_by_name("eth0")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no eth0")?;
        let spec = VxlanSpec {
            name: DEV.into(),
            vni: 1,
            vtep_index: Some(eth0.index),
            local: Some(IpAddr::V4(LOCAL)),
            port: None,
            learning: false,
            gbp: false,
            mtu: Some(1450),
            mac: None,
        };
        let dev = nl
            .ensure_vxlan(&spec)
            .await
            .map_err(|e| e.to_string())?
            .link;
        nl.add_address(dev.index, IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)), 32)
            .await
            .map_err(|e| e.to_string())?;
        nl.set_up(dev.index).await.map_err(|e| e.to_string())?;
        Ok(dev.index)
    })
}

/// `n` synthetic remote leases (Go's JSON):
/// `10.(100 + i / 256).(i % 256).0/24` behind `172.16.x.y`.
fn leases(n: usize) -> Res<Vec<Lease>> {
    (0..n)
        .map(|i| {
            let key = format!("10.{}.{}.0-24", 100 + i / 256, i % 256);
            let json = format!(
                r#"{{"PublicIP":"172.16.{}.{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:bb:00:{:02x}:{:02x}:01"}}}}"#,
                i / 250,
                i % 250 + 1,
                i >> 8,
                i & 0xff
            );
            let attrs = LeaseAttrs::from_json(&json).map_err(|e| e.to_string())?;
            Ok(Lease::new(
                key.parse().map_err(|e| format!("{key}: {e:?}"))?,
                attrs,
            ))
        })
        .collect()
}

/// Registers the vxlan network in the current namespace (which has
/// `eth0`), as flanneld does, with the embedded local store in `store`.
async fn register(nl: Netlink, store: &Path) -> Res<VxlanNetwork> {
    let eth0 = nl
        .link_by_name("eth0")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no eth0")?;
    let store = LocalStore::open(store).map_err(|e| e.to_string())?;
    store.set_config(NET_CONF).map_err(|e| e.to_string())?;
    let manager = LeaseManager::new(store);
    let mut config = NetConfig::parse(NET_CONF).map_err(|e| e.to_string())?;
    config.check().map_err(|e| e.to_string())?;
    let iface = ExternalInterface {
        name: "eth0".into(),
        index: eth0.index,
        mtu: eth0.mtu,
        iface_addr: Some(LOCAL),
        iface_v6_addr: None,
        ext_addr: Some(LOCAL),
        ext_v6_addr: None,
    };
    let ops: SharedOps = Arc::new(nl);
    let host = HostContext::default().with_extension(ops.clone());
    let ctx = RegisterContext {
        config: &config,
        ext_iface: &iface,
        manager: &manager,
        previous_subnet: Some("10.1.0.0/24".parse().map_err(|e| format!("{e:?}"))?),
        previous_ipv6_subnet: None,
        host: &host,
    };
    VxlanNetwork::register(ops, &ctx)
        .await
        .map_err(|e| e.to_string())
}

/// The `ip -batch` and `bridge -batch` files that program (`add`) or remove
/// the backend's desired state.
fn batch_files(dir: &Path, state: &DeviceState, add: bool) -> Res<(PathBuf, PathBuf)> {
    let (mut ip, mut br) = (String::new(), String::new());
    for n in &state.neighbours {
        let (gateway, m) = (n.ip, format_mac(&n.mac));
        if add {
            let _ = writeln!(
                ip,
                "neigh replace {gateway} dev {DEV} lladdr {m} nud permanent"
            );
        } else {
            let _ = writeln!(ip, "neigh del {gateway} dev {DEV}");
        }
    }
    for r in &state.routes {
        let (dst, len) = (r.dst, r.prefix);
        let gateway = r.gateway.ok_or("a route without a gateway")?;
        if add {
            let _ = writeln!(
                ip,
                "route replace {dst}/{len} via {gateway} dev {DEV} onlink"
            );
        } else {
            let _ = writeln!(ip, "route del {dst}/{len} via {gateway} dev {DEV}");
        }
    }
    for f in &state.fdb {
        let (m, dst) = (format_mac(&f.mac), f.dst);
        if add {
            let _ = writeln!(br, "fdb replace {m} dev {DEV} self dst {dst} permanent");
        } else {
            let _ = writeln!(br, "fdb del {m} dev {DEV} self dst {dst}");
        }
    }
    let what = if add { "add" } else { "del" };
    let (ip_path, br_path) = (
        dir.join(format!("ip-{what}.batch")),
        dir.join(format!("bridge-{what}.batch")),
    );
    std::fs::write(&ip_path, ip).map_err(|e| format!("{}: {e}", ip_path.display()))?;
    std::fs::write(&br_path, br).map_err(|e| format!("{}: {e}", br_path.display()))?;
    Ok((ip_path, br_path))
}

fn baseline(ns: &NetNs, files: &(PathBuf, PathBuf)) -> Res<Duration> {
    let (ip, br) = (files.0.to_string_lossy(), files.1.to_string_lossy());
    let t = Instant::now();
    run("ip", &["-n", ns.name(), "-batch", &ip])?;
    run("bridge", &["-n", ns.name(), "-batch", &br])?;
    Ok(t.elapsed())
}

/// Neighbours, FDB entries (with a `dst`) and onlink routes on `flannel.1`.
fn counts(ns: &NetNs) -> Res<[usize; 3]> {
    let neigh = run("ip", &["-n", ns.name(), "neigh", "show", "dev", DEV])?;
    let fdb = run("bridge", &["-n", ns.name(), "fdb", "show", "dev", DEV])?;
    let route = run("ip", &["-n", ns.name(), "-4", "route", "show", "dev", DEV])?;
    Ok([
        neigh.lines().filter(|l| l.contains("PERMANENT")).count(),
        fdb.lines().filter(|l| l.contains(" dst ")).count(),
        route.lines().filter(|l| l.contains("onlink")).count(),
    ])
}

fn check(ns: &NetNs, want: usize, what: &str) -> Res<()> {
    let got = counts(ns)?;
    if got != [want; 3] {
        return Err(format!(
            "{what}: want {want} neighbours, FDB entries and routes on {DEV}, \
             found {} / {} / {}",
            got[0], got[1], got[2]
        ));
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5_000);
    let ours_ns = NetNs::new("bench-prog-ours")?;
    let base_ns = NetNs::new("bench-prog-base")?;
    underlay(&ours_ns)?;
    underlay(&base_ns)?;
    let base_dev = baseline_device(&base_ns)?;
    let leases = leases(n)?;
    let refs: Vec<&Lease> = leases.iter().collect();
    let removals: Vec<LeaseEvent> = leases
        .iter()
        .map(|l| LeaseEvent::removed(Lease::new(l.key(), LeaseAttrs::default())))
        .collect();
    let base_view = DeviceView {
        v6: false,
        index: base_dev,
        own: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)),
        network: Some((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8)),
    };
    let (base_state, skipped) = desired_state(&base_view, &refs, &HashMap::new());
    if !skipped.is_empty() || base_state.neighbours.len() != n {
        return Err(format!(
            "{} of {n} synthetic leases are not programmable",
            skipped.len()
        )
        .into());
    }
    let dir = std::env::temp_dir().join(format!("flannel-bench-program-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let add_files = batch_files(&dir, &base_state, true)?;
    let del_files = batch_files(&dir, &base_state, false)?;

    let (mut ours_add, mut ours_del, mut base_add, mut base_del) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // The network lives for all rounds, on one runtime in a thread inside
    // the namespace; the baseline and the checks run `ip -n` from there.
    let result = in_ns(&ours_ns, async |nl: Netlink| {
        let mut net = register(nl, &dir.join("store")).await?;
        for round in 1..=ROUNDS {
            let t = Instant::now();
            net.resync(&refs).await.map_err(|e| e.to_string())?;
            let oa = t.elapsed();
            check(&ours_ns, n, "ours after programming")?;
            let ba = baseline(&base_ns, &add_files)?;
            check(&base_ns, n, "baseline after programming")?;
            let t = Instant::now();
            net.handle_events(&removals, &[])
                .await
                .map_err(|e| e.to_string())?;
            let od = t.elapsed();
            check(&ours_ns, 0, "ours after removal")?;
            let bd = baseline(&base_ns, &del_files)?;
            check(&base_ns, 0, "baseline after removal")?;
            eprintln!(
                "round {round}/{ROUNDS}: program ours {oa:?} baseline {ba:?}; \
                 remove ours {od:?} baseline {bd:?}"
            );
            ours_add.push(oa);
            base_add.push(ba);
            ours_del.push(od);
            base_del.push(bd);
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    result?;

    let figures = [
        Figure {
            name: format!("program {n} vxlan leases"),
            kind: Kind::Comparison,
            value: median_ms(&mut ours_add),
            unit: "ms",
            baseline_name: "ip -batch + bridge -batch".into(),
            baseline: median_ms(&mut base_add),
        },
        Figure {
            name: format!("remove {n} vxlan leases"),
            kind: Kind::Comparison,
            value: median_ms(&mut ours_del),
            unit: "ms",
            baseline_name: "ip -batch + bridge -batch deletes".into(),
            baseline: median_ms(&mut base_del),
        },
    ];
    print_figures(&figures);
    Ok(())
}
