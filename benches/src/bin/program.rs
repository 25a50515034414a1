//! Programming and removing the kernel state of many remote vxlan leases.
//!
//! Two fresh network namespaces get the same underlay (a veth pair, `eth0`
//! with `192.168.100.1/24`) and the same vxlan device `flannel.1` (VNI 1,
//! MTU 1450, made with flannel-netlink as flanneld makes it). Then, side by
//! side, for `N` synthetic remote leases (default 5,000; first argument to
//! change), each needing a neighbour, an FDB entry and an onlink route:
//! - ours: flannel-netlink, one request after the other, exactly as the
//!   vxlan backend programs a lease (`replace_neigh`, `replace_fdb`,
//!   `replace_route`, the desired state from
//!   `flannel_backend_vxlan::state::peer_for`) and removes it (`del_route`,
//!   `del_neigh`, `del_fdb`);
//! - baseline: the same operations as one `ip -batch` (neighbours and
//!   routes) plus one `bridge -batch` (FDB entries), timed together.
//!
//! Every step is checked with `ip neigh`, `bridge fdb` and `ip route`
//! (all `N` entries present after programming, none left after removal).
//! Rounds alternate ours and baseline; medians are reported (kind
//! `comparison`: both leave the same kernel state). Prints one row
//! per figure and the figures as JSON lines.

use flannel_backend_vxlan::state::{Peer, peer_for};
use flannel_benches::{Figure, Kind, Res, median_ms};
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_netlink::{Netlink, VxlanSpec, format_mac};
use flannel_testutil::netns::NetNs;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;
const DEV: &str = "flannel.1";
const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

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

/// The underlay and `flannel.1` (up, with `10.1.0.0/32`); returns the
/// device's index.
fn setup(ns: &NetNs) -> Res<u32> {
    let ip = |args: &[&str]| ns.ip(args).map(drop).map_err(|e| e.to_string());
    ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])?;
    ip(&["addr", "add", &format!("{LOCAL}/24"), "dev", "eth0"])?;
    ip(&["link", "set", "eth1", "up"])?;
    ip(&["link", "set", "eth0", "up"])?;
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

/// `n` synthetic remote leases (Go's JSON), as the backend sees them:
/// `10.(100 + i / 256).(i % 256).0/24` behind `172.16.x.y`.
fn peers(n: usize, dev: u32) -> Res<Vec<Peer>> {
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
            let lease = Lease::new(key.parse().map_err(|e| format!("{key}: {e:?}"))?, attrs);
            peer_for(&lease, false, dev, None).map_err(|e| format!("{key}: {e:?}"))
        })
        .collect()
}

fn ours_program(ns: &NetNs, dev: u32, peers: &[Peer]) -> Res<Duration> {
    in_ns(ns, async move |nl: Netlink| {
        let t = Instant::now();
        for p in peers {
            let Peer::Encap {
                gateway,
                mac,
                public_ip,
                route,
            } = p
            else {
                return Err("not an encap peer".into());
            };
            nl.replace_neigh(dev, *gateway, *mac)
                .await
                .map_err(|e| e.to_string())?;
            nl.replace_fdb(dev, *mac, *public_ip)
                .await
                .map_err(|e| e.to_string())?;
            nl.replace_route(route).await.map_err(|e| e.to_string())?;
        }
        Ok(t.elapsed())
    })
}

fn ours_remove(ns: &NetNs, dev: u32, peers: &[Peer]) -> Res<Duration> {
    in_ns(ns, async move |nl: Netlink| {
        let t = Instant::now();
        for p in peers {
            let Peer::Encap {
                gateway,
                mac,
                public_ip,
                route,
            } = p
            else {
                return Err("not an encap peer".into());
            };
            nl.del_route(route).await.map_err(|e| e.to_string())?;
            nl.del_neigh(dev, *gateway)
                .await
                .map_err(|e| e.to_string())?;
            nl.del_fdb(dev, *mac, *public_ip)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(t.elapsed())
    })
}

/// The `ip -batch` and `bridge -batch` files that program (`add`) or remove
/// the peers.
fn batch_files(dir: &Path, peers: &[Peer], add: bool) -> Res<(PathBuf, PathBuf)> {
    let (mut ip, mut br) = (String::new(), String::new());
    for p in peers {
        let Peer::Encap {
            gateway,
            mac,
            public_ip,
            route,
        } = p
        else {
            return Err("not an encap peer".into());
        };
        let m = format_mac(mac);
        let (dst, len) = (route.dst, route.prefix);
        if add {
            let _ = writeln!(
                ip,
                "neigh replace {gateway} dev {DEV} lladdr {m} nud permanent"
            );
            let _ = writeln!(
                ip,
                "route replace {dst}/{len} via {gateway} dev {DEV} onlink"
            );
            let _ = writeln!(
                br,
                "fdb replace {m} dev {DEV} self dst {public_ip} permanent"
            );
        } else {
            let _ = writeln!(ip, "route del {dst}/{len} via {gateway} dev {DEV}");
            let _ = writeln!(ip, "neigh del {gateway} dev {DEV}");
            let _ = writeln!(br, "fdb del {m} dev {DEV} self dst {public_ip}");
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
    let ours_dev = setup(&ours_ns)?;
    let base_dev = setup(&base_ns)?;
    let ours_peers = peers(n, ours_dev)?;
    let base_peers = peers(n, base_dev)?;
    let dir = std::env::temp_dir().join(format!("flannel-bench-program-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let add_files = batch_files(&dir, &base_peers, true)?;
    let del_files = batch_files(&dir, &base_peers, false)?;

    let (mut ours_add, mut ours_del, mut base_add, mut base_del) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let result = (|| -> Res<()> {
        for round in 1..=ROUNDS {
            let oa = ours_program(&ours_ns, ours_dev, &ours_peers)?;
            check(&ours_ns, n, "ours after programming")?;
            let ba = baseline(&base_ns, &add_files)?;
            check(&base_ns, n, "baseline after programming")?;
            let od = ours_remove(&ours_ns, ours_dev, &ours_peers)?;
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
    })();
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
    for f in &figures {
        println!("{}", f.row());
    }
    for f in &figures {
        println!("{}", f.to_json());
    }
    Ok(())
}
