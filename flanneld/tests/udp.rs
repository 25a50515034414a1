//! End-to-end tests of the udp backend: real `flanneld` processes on netns
//! "hosts" with a real etcd, pods attached through our CNI plugin, and a
//! host running a stand-in for Go flannel's udp proxy
//! (`flannel_testutil::goproxy`) to check that both speak the same wire
//! format. Behaviour reference: §5.5 (udp), §2.2 (lease JSON), §8.4
//! (restarts).
//!
//! Needs root, iproute2, iputils-ping, iptables, coreutils' `sha256sum`,
//! containernetworking-plugins, etcd-server and `/dev/net/tun`; a missing
//! prerequisite fails the test with its name. Run as root:
//! `cargo test -p flanneld --test udp` (`FLANNEL_E2E_VERBOSE=1` prints the
//! logs and kernel state of passing tests too).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use flannel_testutil::cluster::{
    Backing, CONVERGE, Cluster, PREFIX, Pinger, env_value, http_get, metric_value, ping,
    ping_counts, tcp_transfer, v4_subnet,
};
use flannel_testutil::goproxy::{GoProxy, GoProxyConfig};
use flannel_testutil::netns::NetNs;

/// The daemon under test.
const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");

const UDP_CONFIG: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}"#;

/// The TUN MTU on a 1500-byte underlay: 1500 − 20 (IP) − 8 (UDP).
const TUN_MTU: u32 = 1472;

/// The Go-style node's subnet (taken before our nodes start, so they
/// allocate around it).
const GO_SUBNET: Ipv4Addr = Ipv4Addr::new(10, 244, 200, 0);

/// The metrics port of our daemons (each host is its own namespace).
const HEALTHZ_PORT: u16 = 9123;

fn prerequisite(cmd: &str, package: &str) {
    let ok = std::process::Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{cmd} is missing: install the Debian package {package}");
    assert!(
        Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: the kernel needs TUN support (CONFIG_TUN)"
    );
}

/// Host `i`'s lease subnet from its subnet.env, checking the file's text.
fn lease_subnet(c: &mut Cluster, i: usize) -> Ipv4Addr {
    let env = c.wait_env(i);
    let first = env_value(&env, "FLANNEL_SUBNET")
        .unwrap_or_else(|| panic!("host {}: no FLANNEL_SUBNET in {env:?}", i + 1))
        .to_owned();
    assert_eq!(
        env,
        format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={first}\nFLANNEL_MTU={TUN_MTU}\nFLANNEL_IPMASQ=false\n"
        ),
        "host {}: subnet.env",
        i + 1
    );
    v4_subnet(&first).0
}

/// flannel0 on host `i` as Go configures it: a TUN with the MTU, the lease
/// address /32, and the route to the whole network, exactly once.
fn check_tun(c: &Cluster, i: usize, subnet: Ipv4Addr) {
    let link = c.ip(i, &["-d", "link", "show", "flannel0"]);
    assert!(
        link.contains(&format!("mtu {TUN_MTU} ")) && link.contains("tun type tun"),
        "host {}: flannel0: {link}",
        i + 1
    );
    assert!(
        link.contains("persist on"),
        "host {}: flannel0 must be persistent: {link}",
        i + 1
    );
    let addrs = c.ip(i, &["-4", "-o", "addr", "show", "dev", "flannel0"]);
    let inet: Vec<&str> = addrs
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .skip(1)
        .take(1)
        .collect();
    assert_eq!(
        inet,
        [format!("{subnet}/32").as_str()],
        "host {}: flannel0 addresses: {addrs}",
        i + 1
    );
    assert_eq!(
        addrs.matches(" inet ").count(),
        1,
        "host {}: one address on flannel0: {addrs}",
        i + 1
    );
    let routes: Vec<String> = c
        .routes(i, false)
        .lines()
        .filter(|l| l.contains("flannel0"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        routes.len(),
        1,
        "host {}: routes via flannel0: {routes:?}",
        i + 1
    );
    assert!(
        // `ip route` leaves out `proto boot`, the protocol Go's route has.
        routes[0].trim() == "10.244.0.0/16 dev flannel0",
        "host {}: the network route: {}",
        i + 1,
        routes[0]
    );
}

/// A pseudo-random file of `len` bytes (xorshift; content only needs to
/// be non-repeating).
fn random_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, data).expect("write the test file");
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum (coreutils)");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Sends the file `src` from a client in `client` to a server in `server`
/// on `server_ip`, which writes it to `dst`; returns the throughput in
/// Mbit/s.
fn send_file(server: &NetNs, server_ip: Ipv4Addr, client: &NetNs, src: &Path, dst: &Path) -> f64 {
    let listener = server
        .run(|| TcpListener::bind((server_ip, 0)))
        .unwrap_or_else(|e| panic!("bind {server_ip}: {e}"));
    let addr = listener.local_addr().expect("local addr");
    let dst = dst.to_owned();
    let srv = thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut out = std::fs::File::create(&dst)?;
        let n = std::io::copy(&mut s, &mut out)?;
        out.sync_all()?;
        s.write_all(b"ok")?;
        Ok(n)
    });
    let data = std::fs::read(src).expect("read the test file");
    let t0 = Instant::now();
    let mut s = client
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_write_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(&data).expect("send the file");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut ack = [0u8; 2];
    s.read_exact(&mut ack).expect("the server's ack");
    let secs = t0.elapsed().as_secs_f64();
    let n = srv.join().expect("server thread").expect("server");
    assert_eq!(n, data.len() as u64, "bytes received");
    data.len() as f64 * 8.0 / secs / 1e6
}

fn metrics(c: &Cluster, i: usize) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], HEALTHZ_PORT));
    let (code, body) = http_get(c.host(i), addr, "/metrics")
        .unwrap_or_else(|e| panic!("host {}: GET /metrics: {e}", i + 1));
    assert_eq!(code, 200, "host {}: /metrics", i + 1);
    body
}

/// A labelled sample `name{labels}` in an exposition.
fn sample(exposition: &str, name_and_labels: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name_and_labels).then(|| v.parse().ok()).flatten()
    })
}

/// Three nodes of ours and one Go-style node: leases and kernel state as
/// Go's, pods reach each other both ways (ping, a file with matching
/// SHA-256, TCP to and from the Go-style node, full-size pings with DF),
/// every datagram a Go node receives holds exactly one packet, a packet for
/// a subnet nobody holds is answered with ICMP Net Unreachable, and
/// `/metrics` shows the datapath.
#[test]
fn udp_three_hosts_and_a_go_node() {
    prerequisite("sha256sum", "coreutils");
    let t0 = Instant::now();
    let mut c = Cluster::new(FLANNELD, "udp4", 4, false, Backing::Etcd, UDP_CONFIG);
    // The Go node's lease, byte for byte as Go writes it, with a 24 h
    // etcd lease; then its subnet.env, which Go's flanneld would write.
    let go = 3;
    let go_ip = c.host_ip(go);
    c.etcd_put_with_lease(
        &format!("{PREFIX}/subnets/{GO_SUBNET}-24"),
        &format!(r#"{{"PublicIP":"{go_ip}","PublicIPv6":null}}"#),
        86400,
    );
    std::fs::write(
        c.subnet_file(go),
        format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.200.1/24\nFLANNEL_MTU={TUN_MTU}\nFLANNEL_IPMASQ=false\n"
        ),
    )
    .expect("the Go node's subnet.env");
    let port = format!("--healthz-port={HEALTHZ_PORT}");
    for i in 0..3 {
        c.start(i, &[&port]);
    }
    let subnets: Vec<Ipv4Addr> = (0..3).map(|i| lease_subnet(&mut c, i)).collect();
    let mut all = subnets.clone();
    all.push(GO_SUBNET);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4, "subnets collide: {subnets:?}");

    // Leases exactly as Go's udp backend writes them: no BackendType.
    let leases = c.etcd_leases();
    for (i, sn) in subnets.iter().enumerate() {
        let key = format!("{PREFIX}/subnets/{sn}-24");
        let (value, _) = leases
            .get(&key)
            .unwrap_or_else(|| panic!("no lease {key} in {leases:?}"));
        assert_eq!(
            value,
            &format!(r#"{{"PublicIP":"{}","PublicIPv6":null}}"#, c.host_ip(i)),
            "host {} lease value",
            i + 1
        );
    }
    for (i, sn) in subnets.iter().enumerate() {
        check_tun(&c, i, *sn);
    }

    // The Go-style node: its proxy routes every other lease to
    // PublicIP:8285, as Go's SET_ROUTE commands would.
    let routes = (0..3)
        .map(|i| ((subnets[i], 24), SocketAddrV4::new(c.host_ip(i), 8285)))
        .collect();
    let proxy = GoProxy::start(
        c.host(go),
        GoProxyConfig {
            tun_name: "flannel0".into(),
            tun_addr: GO_SUBNET,
            network: (Ipv4Addr::new(10, 244, 0, 0), 16),
            mtu: TUN_MTU,
            bind: SocketAddrV4::new(go_ip, 8285),
            routes,
        },
    )
    .unwrap_or_else(|e| panic!("the Go-style proxy on host {}: {e}", go + 1));
    for i in 0..4 {
        c.add_pod(i);
    }
    c.ping_all_pairs(false);

    // Full-size packets with DF set cross in both directions: the pods'
    // MTU (1472) is what the path carries.
    let payload = (TUN_MTU - 28).to_string();
    for (a, b) in [(0, 1), (1, 2), (0, go), (go, 2)] {
        let dst = c.pod(b).v4.to_string();
        let out = c.pod(a).ns.exec(&[
            "ping", "-c", "2", "-W", "2", "-M", "do", "-s", &payload, &dst,
        ]);
        assert!(
            out.is_ok(),
            "pod {} -> pod {}: a {TUN_MTU}-byte ping with DF: {out:?}",
            a + 1,
            b + 1
        );
    }

    // A file between two of our nodes (the GSO path), SHA-256 checked.
    let dir = c.dir.path().to_owned();
    let (src, dst) = (dir.join("file.src"), dir.join("file.dst"));
    random_file(&src, 32 << 20, 0x5eed);
    let mbps = send_file(&c.pod(1).ns, c.pod(1).v4, &c.pod(0).ns, &src, &dst);
    assert_eq!(
        sha256(&dst),
        sha256(&src),
        "SHA-256 of the transferred file"
    );
    eprintln!("32 MiB pod 1 -> pod 2 over the udp backend: {mbps:.0} Mbit/s");

    // TCP to and from the Go-style node: our GSO sender must still put one
    // packet in each datagram; the Go node's datagrams are coalesced by us.
    tcp_transfer(
        &c.pod(go).ns,
        IpAddr::V4(c.pod(go).v4),
        &c.pod(0).ns,
        4 << 20,
    );
    tcp_transfer(
        &c.pod(2).ns,
        IpAddr::V4(c.pod(2).v4),
        &c.pod(go).ns,
        4 << 20,
    );
    let s = proxy.stats();
    assert_eq!(
        s.violations, 0,
        "datagrams that were not exactly one packet of at most {TUN_MTU} bytes: {s:?}"
    );
    assert!(
        s.received > 2000 && s.sent > 2000,
        "the Go-style node's traffic: {s:?}"
    );
    assert!(
        s.largest_datagram <= u64::from(TUN_MTU) && s.largest_datagram >= 1400,
        "largest datagram at the Go-style node: {s:?}"
    );

    // A subnet nobody holds: the connect fails at once with "network
    // unreachable", from the ICMP answer flannel0 writes back.
    let free = (1..=255u8)
        .map(|n| Ipv4Addr::new(10, 244, n, 0))
        .find(|n| !all.contains(n))
        .expect("a free subnet");
    let target = SocketAddr::from((Ipv4Addr::from(u32::from(free) + 5), 80));
    let started = Instant::now();
    let err = c
        .pod(0)
        .ns
        .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)))
        .expect_err("a connect to a subnet without a lease");
    assert_eq!(
        err.raw_os_error(),
        Some(101),
        "ENETUNREACH from the ICMP Net Unreachable, got {err} after {:?}",
        started.elapsed()
    );

    // /metrics: traffic both ways, the no-route answer, the mode.
    let m = metrics(&c, 0);
    for (name, min) in [
        ("flannel_udp_packets_total{direction=\"tx\"}", 1000.0),
        ("flannel_udp_packets_total{direction=\"rx\"}", 1000.0),
        ("flannel_udp_bytes_total{direction=\"tx\"}", 1e6),
        ("flannel_udp_icmp_replies_total", 1.0),
        ("flannel_udp_offload_mode{mode=\"gso\"}", 1.0),
    ] {
        let v = sample(&m, name).unwrap_or_else(|| panic!("{name} missing from /metrics:\n{m}"));
        assert!(v >= min, "{name} = {v}, expected at least {min}");
    }
    assert_eq!(
        metric_value(&m, "flannel_udp_fallbacks_total"),
        Some(0.0),
        "no fallback"
    );
    let stats = proxy.stop().expect("the Go-style proxy ran without error");
    eprintln!(
        "Go-style node: {} packets sent, {} received, largest datagram {} bytes; test took {:?}",
        stats.sent,
        stats.received,
        stats.largest_datagram,
        t0.elapsed()
    );
}

/// kill -9 flanneld during a continuous ping and start it again: flannel0
/// and its route stay meanwhile, traffic resumes within a second of the
/// new start, and no stale route or address is left.
#[test]
fn udp_restart_under_traffic() {
    let mut c = Cluster::new(FLANNELD, "udprs", 2, false, Backing::Etcd, UDP_CONFIG);
    c.start_all();
    let subnets: Vec<Ipv4Addr> = (0..2).map(|i| lease_subnet(&mut c, i)).collect();
    c.add_pod(0);
    c.add_pod(1);
    let dst = IpAddr::V4(c.pod(1).v4);
    ping(&c.pod(0).ns, dst, CONVERGE).expect("pod 1 -> pod 2 before the restart");
    let out = c.dir.path().join("ping.out");
    let pinger = Pinger::start(&c.pod(0).ns, dst, &out);
    thread::sleep(Duration::from_secs(1));

    let old_env = c.env_inode(0);
    c.daemon(0).kill9();
    let killed = Instant::now();
    // Meanwhile the persistent device and its route remain.
    let link = c.ip(0, &["link", "show", "flannel0"]);
    assert!(
        link.contains("flannel0"),
        "flannel0 must outlive flanneld: {link}"
    );
    assert!(
        c.route_to(0, "10.244.0.0/16").is_some(),
        "the network route must outlive flanneld: {}",
        c.routes(0, false)
    );
    thread::sleep(Duration::from_millis(500));
    c.start(0, &[]);
    let restarted = Instant::now();
    c.wait_env_rewritten(0, old_env);
    let ready = restarted.elapsed();
    thread::sleep(Duration::from_secs(2));
    let output = pinger.stop();
    let (sent, received) =
        ping_counts(&output).unwrap_or_else(|| panic!("no ping statistics in: {output}"));
    // The outage: the longest run of missing sequence numbers (10 per s).
    let seqs: Vec<u64> = output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            l.split("icmp_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let gap = seqs.windows(2).map(|w| w[1] - w[0] - 1).max().unwrap_or(0);
    let outage = Duration::from_millis(gap * 100);
    let down = restarted.duration_since(killed);
    let resumed_after = outage.saturating_sub(down);
    eprintln!(
        "restart under a 10/s ping: {} of {sent} lost, longest outage {outage:?} (flanneld down {down:?}); subnet.env {ready:?} and replies about {resumed_after:?} after the new start",
        sent - received
    );
    assert!(
        seqs.last().is_some_and(|l| *l + 5 >= sent),
        "no replies after the restart:\n{output}"
    );
    assert!(
        outage <= down + Duration::from_millis(1200),
        "traffic resumed {resumed_after:?} after the new start (more than a second):\n{output}"
    );
    // No stale state: one address, one route, the same subnet.
    check_tun(&c, 0, subnets[0]);
    assert_eq!(lease_subnet(&mut c, 0), subnets[0]);

    // SIGTERM stops the engine and leaves the device and its route.
    let status = c.daemon(0).terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "flanneld's exit on SIGTERM: {status:?}"
    );
    assert!(
        c.log(0).contains("udp datapath stopped"),
        "the engine's stop in the log:\n{}",
        c.log_tail(0, 20)
    );
    let link = c.ip(0, &["-d", "link", "show", "flannel0"]);
    assert!(
        link.contains("persist on"),
        "flannel0 after SIGTERM: {link}"
    );
    // No process holds the TUN now, so the kernel marks the route linkdown.
    let route = c.route_to(0, "10.244.0.0/16").unwrap_or_default();
    assert!(
        route.starts_with("10.244.0.0/16 dev flannel0"),
        "the network route after SIGTERM: {route:?}"
    );
}

/// `ip link del flannel0` during a continuous ping: flanneld recreates the
/// TUN (address, route, datapath) on its own instead of exiting or waiting
/// for a restart, says so once, counts it in `/metrics`, and traffic
/// crosses again within a few seconds.
#[test]
fn udp_recreates_a_deleted_tun() {
    let mut c = Cluster::new(FLANNELD, "udpdel", 2, false, Backing::Etcd, UDP_CONFIG);
    c.start(0, &[&format!("--healthz-port={HEALTHZ_PORT}")]);
    c.start(1, &[]);
    let subnet = lease_subnet(&mut c, 0);
    lease_subnet(&mut c, 1);
    c.add_pod(0);
    c.add_pod(1);
    let dst = IpAddr::V4(c.pod(1).v4);
    ping(&c.pod(0).ns, dst, CONVERGE).expect("pod 1 -> pod 2 before the deletion");
    let rec = c.delete_and_await_recreation(
        0,
        1,
        "flannel0",
        "10.244.0.0/16",
        "10.244.0.0/16 dev flannel0",
    );
    // The same kernel state as at the start: persistent TUN, one /32, one route.
    check_tun(&c, 0, subnet);
    let log = c.log(0);
    assert_eq!(
        log.matches("flannel0 was deleted; recreated it and restarted the udp datapath")
            .count(),
        1,
        "the recreation is logged once:\n{}",
        c.log_tail(0, 30)
    );
    let m = metrics(&c, 0);
    assert_eq!(
        metric_value(&m, "flannel_udp_tun_recreated_total"),
        Some(1.0),
        "/metrics:\n{m}"
    );
    // The counters of the first engine are kept: traffic of both engines.
    let rx = sample(&m, "flannel_udp_packets_total{direction=\"rx\"}").unwrap_or_default();
    assert!(
        rx >= rec.received as f64,
        "rx packets {rx} include the {} ping replies of both engines",
        rec.received
    );
}
