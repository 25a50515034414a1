//! The backends that need kernel features this machine lacks, end to end:
//! ipip (§5.3) and ipsec with kernel ESP (§5.6).
//!
//! The kernel tests (module `in_vm`) run inside one qemu VM booting
//! Debian's kernel ([`flannel_testutil::vm`]), started by
//! [`kernel_tests_pass_in_one_vm`]; they are `#[ignore]`d on the host. On
//! the host itself, [`a_kernel_without_ipip_gets_an_error_naming_it`]
//! checks the message a kernel without ipip support gets.
//!
//! Needs root, qemu-system-x86, busybox-static, kmod, etcd-server,
//! iproute2, iputils-ping, iptables, containernetworking-plugins, tcpdump
//! and strongSwan (strongswan-charon, strongswan-swanctl,
//! libstrongswan-standard-plugins).
#![cfg(all(feature = "ipip", feature = "ipsec"))]

use std::process::Command;
use std::time::Duration;

use flannel_testutil::cluster::{Backing, Cluster, PREFIX, cni_plugin, env_value, wait_until};
use flannel_testutil::netns::NetNs;
use flannel_testutil::strongswan::CharonFiles;
use flannel_testutil::vm;

/// The daemon under test.
const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");

/// How long a VM test waits for a daemon or the kernel: every process
/// spawn under the VM's software emulation is 5–10× slower than here.
const SLOW: Duration = Duration::from_secs(90);

/// flanneld flags in the VM: no FORWARD rules (a dozen iptables processes,
/// seconds under emulation; the namespaces' FORWARD policy is ACCEPT).
const VM_FLAGS: &[&str] = &["--iptables-forward-rules=false"];

const IPIP: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "ipip"}}"#;

/// Whether this kernel can create an ipip device (probed in a scratch
/// namespace).
fn kernel_has_ipip() -> bool {
    let ns = NetNs::new("ipip-probe").expect("a scratch namespace");
    ns.ip(&["link", "add", "probe0", "type", "ipip", "local", "10.0.0.1"])
        .is_ok()
}

#[test]
fn kernel_tests_pass_in_one_vm() {
    // Built here: cargo inside the emulated VM would take minutes.
    cni_plugin(FLANNELD.as_ref());
    // All three at once: much of their time is spent waiting (daemons
    // starting, resync periods, IKE), not computing.
    vm::assert_tests_pass_in_vm("in_vm::", &[("RUST_TEST_THREADS", "3")]);
}

#[test]
fn a_kernel_without_ipip_gets_an_error_naming_it() {
    let mut c = Cluster::new(FLANNELD, "ipipno", 1, false, Backing::Local, IPIP);
    c.start(0, &[]);
    if kernel_has_ipip() {
        // A kernel with ipip (not this machine's): the backend just works.
        let env = c.wait_env(0);
        assert_eq!(env_value(&env, "FLANNEL_MTU"), Some("1480"), "{env}");
        return;
    }
    let status = wait_until(Duration::from_secs(20), || {
        c.daemon(0)
            .exited()
            .ok_or_else(|| "flanneld still running".to_string())
    })
    .unwrap_or_else(|e| panic!("flanneld did not exit on a kernel without ipip: {e}"))
    .0;
    assert!(!status.success());
    let log = c.log(0);
    assert!(
        log.contains("cannot create flannel.ipip: this kernel has no ipip tunnel support (CONFIG_NET_IPIP, module `ipip`"),
        "{log}"
    );
}

/// Helpers shared by the kernel tests.
mod common {
    use super::*;

    /// Waits for every host's subnet.env and returns the lease subnets
    /// (`10.244.X.0`), checking the ipip MTU.
    pub fn subnets(c: &mut Cluster, hosts: std::ops::Range<usize>) -> Vec<String> {
        hosts
            .map(|i| {
                let env = c.wait_env_within(i, None, SLOW);
                assert_eq!(
                    env_value(&env, "FLANNEL_MTU"),
                    Some("1480"),
                    "host {}: {env}",
                    i + 1
                );
                let first = env_value(&env, "FLANNEL_SUBNET")
                    .expect("FLANNEL_SUBNET")
                    .to_owned();
                let net = first.strip_suffix(".1/24").expect("a /24 lease");
                format!("{net}.0")
            })
            .collect()
    }

    /// Waits until host `i` has exactly the route `want` to `dst`.
    pub fn wait_route(c: &Cluster, i: usize, dst: &str, want: &str) {
        let res = wait_until(SLOW, || match c.route_to(i, dst) {
            Some(r) if r == want => Ok(()),
            other => Err(format!("route to {dst}: {other:?}")),
        });
        if let Err(e) = res {
            panic!(
                "host {}: wanted `{want}`: {e}\n{}",
                i + 1,
                c.routes(i, false)
            );
        }
    }

    /// `ip -d link show flannel.ipip` without the parts that differ per
    /// host (index, local address).
    pub fn device_shape(c: &Cluster, i: usize) -> String {
        let out = c.ip(i, &["-d", "link", "show", "flannel.ipip"]);
        let local = c.host_ip(i).to_string();
        out.lines()
            .skip(1)
            .map(|l| l.replace(&local, "X"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn run(cmd: &mut Command) -> String {
        let out = cmd.output().expect("spawn");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

mod in_vm {
    use super::common::*;
    use super::*;
    use flannel_testutil::cluster::tcp_transfer;
    use std::net::IpAddr;

    /// Two Rust nodes and a Go-style node (kernel state and lease made by
    /// hand exactly as Go flannel makes them) on etcd: devices, routes and
    /// leases as Go's, pods reach each other both ways and move data, a
    /// deleted route and a deleted device come back.
    #[test]
    #[ignore = "kernel-only: run inside the VM by kernel_tests_pass_in_one_vm"]
    fn three_nodes_and_a_go_style_peer() {
        vm::require_vm();
        let mut c = Cluster::new(FLANNELD, "ipip3", 3, false, Backing::Etcd, IPIP);
        // The Go node's lease first, byte for byte as Go writes it, so the
        // Rust nodes allocate around it.
        let go_net = "10.244.200.0";
        let go_ip = c.host_ip(2).to_string();
        c.etcd_put_with_lease(
            &format!("{PREFIX}/subnets/{go_net}-24"),
            &format!(r#"{{"PublicIP":"{go_ip}","PublicIPv6":null,"BackendType":"ipip"}}"#),
            86400,
        );
        for i in 0..2 {
            c.start(i, VM_FLAGS);
        }
        let nets = subnets(&mut c, 0..2);

        // Leases as Go writes them.
        let leases = c.etcd_leases();
        for (i, net) in nets.iter().enumerate() {
            let (value, _) = &leases[&format!("{PREFIX}/subnets/{net}-24")];
            assert_eq!(
                value,
                &format!(
                    r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"ipip"}}"#,
                    c.host_ip(i)
                ),
            );
        }

        // The Go node: what Go's ipip backend leaves in the kernel.
        let h = c.host(2).name().to_owned();
        let ip = |args: &str| {
            run(Command::new("ip")
                .arg("-n")
                .arg(&h)
                .args(args.split_whitespace()))
        };
        ip(&format!(
            "link add flannel.ipip type ipip local {go_ip} ttl inherit nopmtudisc"
        ));
        ip("link set flannel.ipip mtu 1480");
        ip(&format!("addr add {go_net}/32 dev flannel.ipip"));
        ip("link set flannel.ipip up");
        for (i, net) in nets.iter().enumerate() {
            ip(&format!(
                "route replace {net}/24 via {} dev flannel.ipip onlink proto boot",
                c.host_ip(i)
            ));
        }
        std::fs::write(
            c.subnet_file(2),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.200.1/24\nFLANNEL_MTU=1480\nFLANNEL_IPMASQ=false\n",
        )
        .expect("the Go node's subnet.env");

        // Rust devices and routes as Go's.
        let go_shape = device_shape(&c, 2);
        for (i, net) in nets.iter().enumerate() {
            assert_eq!(
                device_shape(&c, i),
                go_shape,
                "host {}: flannel.ipip",
                i + 1
            );
            let addrs = c.ip(i, &["-4", "-o", "addr", "show", "dev", "flannel.ipip"]);
            assert!(
                addrs.contains(&format!("inet {net}/32 ")),
                "host {}: {addrs}",
                i + 1
            );
            for (j, other) in nets.iter().enumerate().filter(|(j, _)| *j != i) {
                wait_route(
                    &c,
                    i,
                    &format!("{other}/24"),
                    &format!("{other}/24 via {} dev flannel.ipip onlink", c.host_ip(j)),
                );
            }
            wait_route(
                &c,
                i,
                &format!("{go_net}/24"),
                &format!("{go_net}/24 via {go_ip} dev flannel.ipip onlink"),
            );
            // tunl0 (made by the module) is left alone.
            let tunl = c.ip(i, &["link", "show", "tunl0"]);
            assert!(
                tunl.contains("state DOWN") || !tunl.contains(",UP"),
                "{tunl}"
            );
        }

        for i in 0..3 {
            c.add_pod(i);
        }
        c.ping_all_pairs(false);
        let (p1, go) = (c.pod(0), c.pod(2));
        tcp_transfer(&go.ns, IpAddr::V4(go.v4), &p1.ns, 256 * 1024);
        tcp_transfer(&p1.ns, IpAddr::V4(p1.v4), &go.ns, 256 * 1024);

        // Drift: a deleted route and a deleted device come back.
        let dst = format!("{}/24", nets[1]);
        c.ip(0, &["route", "del", &dst]);
        wait_route(
            &c,
            0,
            &dst,
            &format!("{dst} via {} dev flannel.ipip onlink", c.host_ip(1)),
        );
        c.ip(1, &["link", "del", "flannel.ipip"]);
        wait_route(
            &c,
            1,
            &format!("{go_net}/24"),
            &format!("{go_net}/24 via {go_ip} dev flannel.ipip onlink"),
        );
        c.ping_all_pairs(false);
    }

    /// DirectRouting: peers on our L2 segment get a plain route on eth0,
    /// a peer behind a gateway gets the tunnel.
    #[test]
    #[ignore = "kernel-only: run inside the VM by kernel_tests_pass_in_one_vm"]
    fn direct_routing_on_and_off_the_shared_segment() {
        vm::require_vm();
        let conf =
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "ipip", "DirectRouting": true}}"#;
        let mut c = Cluster::new(FLANNELD, "ipipdr", 3, false, Backing::Etcd, conf);
        // Host 1 reaches host 3 through host 2: off its segment.
        let (h2, h3) = (c.host_ip(1).to_string(), c.host_ip(2).to_string());
        c.ip(0, &["route", "add", &format!("{h3}/32"), "via", &h2]);
        for i in 0..3 {
            c.start(i, VM_FLAGS);
        }
        let nets = subnets(&mut c, 0..3);
        wait_route(
            &c,
            0,
            &format!("{}/24", nets[1]),
            &format!("{}/24 via {h2} dev eth0 onlink", nets[1]),
        );
        wait_route(
            &c,
            0,
            &format!("{}/24", nets[2]),
            &format!("{}/24 via {h3} dev flannel.ipip onlink", nets[2]),
        );
        wait_route(
            &c,
            2,
            &format!("{}/24", nets[0]),
            &format!("{}/24 via {} dev eth0 onlink", nets[0], c.host_ip(0)),
        );
        for i in 0..3 {
            c.add_pod(i);
        }
        c.ping_all_pairs(false);
    }

    /// ipsec with kernel ESP: two flanneld on etcd, each starting its own
    /// charon; pods ping and move data through ESP, the SAs carry the
    /// configured proposal, three policies per peer, and the underlay
    /// carries only ESP, never the pods' bytes.
    #[test]
    #[ignore = "kernel-only: run inside the VM by kernel_tests_pass_in_one_vm"]
    fn ipsec_with_kernel_esp() {
        vm::require_vm();
        let psk = "flannel-vm-psk-".repeat(7);
        let conf = format!(
            r#"{{"Network": "10.244.0.0/16", "Backend": {{"Type": "ipsec", "PSK": "{psk}"}}}}"#
        );
        let mut c = Cluster::new(FLANNELD, "ipsec2", 2, false, Backing::Etcd, &conf);
        // Like a real node, a default route: ipsec adds no routes, the
        // kernel routes the pods' packets out (here via the switch) and the
        // XFRM policies turn them into ESP to the peer on the way.
        for i in 0..2 {
            c.ip(i, &["route", "add", "default", "via", "192.168.100.254"]);
        }
        let mut charons = Vec::new();
        for i in 0..2 {
            let files = CharonFiles::create(&c.dir.path().join(format!("charon{i}")), false)
                .expect("charon files");
            let exe = format!("--charon-executable-path={}", files.wrapper.display());
            let uri = format!("--charon-vici-uri={}", files.uri);
            // --ip-masq: flanneld's rules leave pod-to-pod traffic alone;
            // without it the CNI bridge masquerades it to the host address,
            // which no longer matches the SA's traffic selectors.
            let mut flags = VM_FLAGS.to_vec();
            flags.extend([exe.as_str(), uri.as_str(), "--ip-masq"]);
            c.start(i, &flags);
            charons.push(files);
        }
        let envs: Vec<String> = (0..2).map(|i| c.wait_env_within(i, None, SLOW)).collect();
        for env in &envs {
            assert_eq!(env_value(env, "FLANNEL_MTU"), Some("1423"), "{env}");
        }
        for i in 0..2 {
            c.add_pod(i);
        }
        // IKE under the VM's emulated CPU takes a while: wait for the SAs.
        for (i, files) in charons.iter().enumerate() {
            let res = wait_until(SLOW, || {
                let states = c.ip(i, &["xfrm", "state"]);
                match states.matches("reqid 11").count() {
                    2.. => Ok(()),
                    _ => Err(format!("SAs: {states}\n{}", files.swanctl(&["--list-sas"]))),
                }
            });
            if let Err(e) = res {
                let log = std::fs::read_to_string(&files.log).unwrap_or_default();
                panic!("host {}: no SAs: {e}\ncharon log:\n{log}", i + 1);
            }
        }
        c.ping_all_pairs(false);

        // The SAs, with the configured ESP proposal, and 3 policies.
        let states = c.ip(0, &["xfrm", "state"]);
        assert!(
            states.contains("proto esp") && states.contains("reqid 11"),
            "{states}"
        );
        assert!(
            states.contains("aead rfc4106(gcm(aes))") && states.contains(" 128"),
            "{states}"
        );
        for i in 0..2 {
            let policies = c.ip(i, &["xfrm", "policy"]);
            let ours = policies.lines().filter(|l| l.contains("reqid 11")).count();
            assert_eq!(ours, 3, "host {}: {policies}", i + 1);
        }
        let sas = charons[0].swanctl(&["--list-sas"]);
        assert!(sas.contains("ESP:AES_GCM_16-128"), "{sas}");

        // The underlay carries ESP only: a marked ping and a TCP transfer
        // leave no plaintext on the wire. Captured on the switch's port of
        // host 2 (every frame to and from it): on a host's eth0, tcpdump
        // also sees the packets ESP decrypted (the kernel re-injects them
        // on the interface they came in by), and br0 itself sees only
        // frames for the switch's own address.
        let pcap = c.dir.path().join("underlay.pcap");
        let switch = c.topo.switch.name().to_owned();
        let mut dump = Command::new("ip")
            .args([
                "netns", "exec", &switch, "tcpdump", "-i", "h1", "-n", "-U", "-w",
            ])
            .arg(&pcap)
            .arg("ip")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tcpdump (apt-get install tcpdump)");
        std::thread::sleep(Duration::from_secs(3));
        let (p1, p2) = (c.pod(0), c.pod(1));
        let dst = p2.v4.to_string();
        p1.ns
            .exec(&["ping", "-c", "3", "-W", "5", "-p", "c0ffee00c0ffee00", &dst])
            .expect("a marked ping through ESP");
        tcp_transfer(&p2.ns, IpAddr::V4(p2.v4), &p1.ns, 64 * 1024);
        std::thread::sleep(Duration::from_secs(2));
        let _ = Command::new("kill").arg(dump.id().to_string()).status();
        let _ = dump.wait();
        let text = run(Command::new("tcpdump").arg("-n").arg("-r").arg(&pcap));
        assert!(text.contains("ESP(spi="), "{text}");
        let plain: Vec<&str> = text.lines().filter(|l| !l.contains("ESP(spi=")).collect();
        // Besides ESP: IKE (isakmp, UDP 500/4500) and the etcd client.
        assert!(
            plain
                .iter()
                .all(|l| l.contains("isakmp") || l.contains("192.168.100.254")),
            "non-ESP packets on the underlay: {plain:#?}\nhost 1: {}\n{}\nhost 2: {}\n{}",
            c.ip(0, &["xfrm", "policy"]),
            c.ip(0, &["route"]),
            c.ip(1, &["xfrm", "policy"]),
            c.ip(1, &["route"])
        );
        let raw = std::fs::read(&pcap).expect("the capture");
        let marker = [0xc0, 0xff, 0xee, 0x00, 0xc0, 0xff, 0xee, 0x00];
        assert!(
            !raw.windows(8).any(|w| w == marker),
            "the ping's payload crossed the underlay in clear"
        );
        // tcp_transfer sends bytes i % 251: a run of 16 of them in clear.
        let run16: Vec<u8> = (100u8..116).collect();
        assert!(
            !raw.windows(16).any(|w| w == run16.as_slice()),
            "TCP payload in clear"
        );
        for (i, files) in charons.iter().enumerate() {
            let log = std::fs::read_to_string(&files.log).unwrap_or_default();
            assert!(!log.contains(&psk), "charon {i} logged the PSK");
            assert!(!c.log(i).contains(&psk), "flanneld {i} logged the PSK");
        }
    }
}
