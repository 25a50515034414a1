//! The ipsec network against real charons (strongSwan 5.9, Debian) on
//! netns hosts of this machine, whose kernel has XFRM but no ESP: charon
//! runs with `kernel-libipsec` (userspace ESP) for the IKE negotiation,
//! each with its own `strongswan.conf` and VICI socket
//! ([`flannel_testutil::strongswan`]). What is checked here: charon started
//! and stopped by the backend, the PSK and connections loaded over VICI,
//! IKE and child SAs established between two nodes with Go's parameters, a
//! node with a wrong PSK getting no SA, exactly three policies per peer in
//! `ip xfrm policy`, a deleted policy restored and a stale one removed by
//! resync, and the PSK in no log line. Kernel ESP data paths (pods pinging
//! through the SAs) run in the VM (`flanneld/tests/ipsec.rs`): kernel XFRM
//! policies and userspace ESP cannot carry traffic together.
//!
//! Needs root and strongswan-charon, strongswan-swanctl,
//! libcharon-extra-plugins, libstrongswan-standard-plugins,
//! libstrongswan-extra-plugins.

use std::time::{Duration, Instant};

use flannel_backend_ipsec::{CharonSettings, IpsecNetwork};
use flannel_core::backend::{ExternalInterface, HostContext, Network, RegisterContext};
use flannel_core::config::NetConfig;
use flannel_subnet::local::LocalStore;
use flannel_subnet::manager::LeaseManager;
use flannel_testutil::logs::Logs;
use flannel_testutil::netns::{Host, NetNs, Topology};
use flannel_testutil::strongswan::CharonFiles;

fn conf(psk: &str) -> String {
    format!(r#"{{"Network":"10.50.0.0/16","Backend":{{"Type":"ipsec","PSK":"{psk}"}}}}"#)
}

/// What the hosts of the test share.
struct Env<'a> {
    rt: &'a tokio::runtime::Runtime,
    store: &'a std::path::Path,
    logs: &'a Logs,
}

/// Registers an ipsec network on `host`, charon started by the backend from
/// `files`, leases in the shared store, our subnet `previous` when free.
fn register(
    env: &Env<'_>,
    host: &Host,
    files: &CharonFiles,
    psk: &str,
    previous: &str,
) -> IpsecNetwork {
    let (rt, store, logs) = (env.rt, env.store, env.logs);
    let (ns, ip) = (&host.ns, host.ipv4);
    let conf = conf(psk);
    let mut config = NetConfig::parse(&conf).unwrap();
    config.check().unwrap();
    let local = LocalStore::open(store).unwrap();
    local.set_config(&conf).unwrap();
    let manager = LeaseManager::new(local);
    let iface = ExternalInterface {
        name: "eth0".into(),
        index: 0,
        mtu: 1500,
        iface_addr: Some(ip),
        iface_v6_addr: None,
        ext_addr: Some(ip),
        ext_v6_addr: None,
    };
    let host = HostContext::default();
    let settings = CharonSettings {
        executable: Some(files.wrapper.clone()),
        vici_uri: Some(files.uri.clone()),
    };
    ns.run(|| {
        let _log = logs.install(tracing::Level::INFO);
        rt.block_on(async {
            let ctx = RegisterContext {
                config: &config,
                ext_iface: &iface,
                manager: &manager,
                previous_subnet: Some(previous.parse().unwrap()),
                previous_ipv6_subnet: None,
                host: &host,
            };
            IpsecNetwork::register(&ctx, settings)
                .await
                .unwrap_or_else(|e| panic!("registering on {}: {e}", ns.name()))
        })
    })
}

/// The flannel policies (reqid 11) of `ns`, one line each.
fn policies(ns: &NetNs) -> Vec<String> {
    let out = ns.ip(&["xfrm", "policy"]).expect("ip xfrm policy");
    let mut blocks: Vec<String> = Vec::new();
    for line in out.lines() {
        if line.starts_with(char::is_whitespace) {
            if let Some(b) = blocks.last_mut() {
                b.push(' ');
                b.push_str(line.trim());
            }
        } else {
            blocks.push(line.trim().to_string());
        }
    }
    let mut ours: Vec<String> = blocks
        .into_iter()
        .filter(|b| b.contains("reqid 11 "))
        .collect();
    ours.sort();
    ours
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if start.elapsed() > timeout => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

#[test]
fn charon_negotiates_sas_and_flannel_keeps_three_policies_per_peer() {
    let logs = Logs::default();
    let _log = logs.install(tracing::Level::INFO);
    let psk = "flannel-test-psk-".repeat(6);
    let wrong = "not-the-cluster-psk".repeat(6);
    let topo = Topology::builder()
        .hosts(3)
        .name_hint("ipsec")
        .build()
        .expect("three netns hosts (root needed)");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let files: Vec<CharonFiles> = (0..3)
        .map(|i| CharonFiles::create(&dir.path().join(format!("h{i}")), true).unwrap())
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (h1, h2, h3) = (&topo.hosts[0], &topo.hosts[1], &topo.hosts[2]);

    // Left by an earlier run: a flannel policy of a lease that is gone.
    h1.ns
        .ip(&[
            "xfrm",
            "policy",
            "add",
            "src",
            "10.50.1.0/24",
            "dst",
            "10.50.99.0/24",
            "dir",
            "out",
            "tmpl",
            "src",
            "192.168.100.1",
            "dst",
            "192.168.100.99",
            "proto",
            "esp",
            "reqid",
            "11",
            "mode",
            "tunnel",
        ])
        .expect("a stale policy");

    let env = Env {
        rt: &rt,
        store: &store,
        logs: &logs,
    };
    let mut n1 = register(&env, h1, &files[0], &psk, "10.50.1.0/24");
    let mut n2 = register(&env, h2, &files[1], &psk, "10.50.2.0/24");
    let mut n3 = register(&env, h3, &files[2], &wrong, "10.50.3.0/24");
    assert_eq!(n1.mtu(), 1423);
    let (l1, l2, l3) = (n1.lease().clone(), n2.lease().clone(), n3.lease().clone());
    assert_eq!(
        l1.attrs.to_json(),
        r#"{"PublicIP":"192.168.100.1","PublicIPv6":null,"BackendType":"ipsec"}"#
    );

    rt.block_on(async {
        n1.resync(&[&l2, &l3]).await.unwrap();
        n2.resync(&[&l1, &l3]).await.unwrap();
        n3.resync(&[&l1, &l2]).await.unwrap();
    });

    // Three policies per peer, Go's; the stale one gone.
    let p1 = policies(&h1.ns);
    assert_eq!(p1.len(), 6, "{p1:#?}");
    for (sel, tmpl) in [
        (
            "src 10.50.1.0/24 dst 10.50.2.0/24 dir out",
            "tmpl src 192.168.100.1 dst 192.168.100.2 proto esp reqid 11 mode tunnel",
        ),
        (
            "src 10.50.2.0/24 dst 10.50.1.0/24 dir in",
            "tmpl src 192.168.100.2 dst 192.168.100.1 proto esp reqid 11 mode tunnel",
        ),
        (
            "src 10.50.2.0/24 dst 10.50.1.0/24 dir fwd",
            "tmpl src 192.168.100.2 dst 192.168.100.1 proto esp reqid 11 mode tunnel",
        ),
    ] {
        assert!(
            p1.iter().any(|p| p.starts_with(sel) && p.ends_with(tmpl)),
            "no `{sel} ... {tmpl}` in {p1:#?}"
        );
    }
    assert!(!p1.iter().any(|p| p.contains("10.50.99.0")), "{p1:#?}");

    // IKE and child SAs between the two nodes sharing the PSK; none with
    // the node whose PSK differs.
    wait_for(
        "an established SA between h1 and h2",
        Duration::from_secs(30),
        || {
            let sas = files[0].swanctl(&["--list-sas"]);
            let ok = sas.contains("10.50.1.0/24-10.50.2.0/24")
                && sas.contains("reqid 11, INSTALLED, TUNNEL");
            if ok {
                Ok(())
            } else {
                let log = std::fs::read_to_string(&files[0].log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                Err(format!(
                    "{sas}\ncharon log (last lines first):\n{}",
                    tail.join("\n")
                ))
            }
        },
    );
    let sas = files[0].swanctl(&["--list-sas"]);
    assert!(sas.contains("ESTABLISHED, IKEv2"), "{sas}");
    assert!(sas.contains("AES_GCM_16-128"), "the ESP proposal: {sas}");
    assert!(
        sas.contains("AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_4096"),
        "the IKE proposal: {sas}"
    );
    let conns = files[0].swanctl(&["--list-conns"]);
    assert!(
        conns.contains("192.168.100.1-10.50.1.0/24-10.50.2.0/24-192.168.100.2"),
        "{conns}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let sas3 = files[2].swanctl(&["--list-sas"]);
    assert!(
        !sas3.contains("ESTABLISHED"),
        "a wrong PSK got an SA: {sas3}"
    );
    let sas = files[0].swanctl(&["--list-sas"]);
    assert!(
        !sas.contains("10.50.1.0/24-10.50.3.0/24: #"),
        "h3 has an SA: {sas}"
    );

    // A deleted policy comes back with the next resync.
    h1.ns
        .ip(&[
            "xfrm",
            "policy",
            "delete",
            "src",
            "10.50.2.0/24",
            "dst",
            "10.50.1.0/24",
            "dir",
            "fwd",
        ])
        .expect("delete a policy");
    assert_eq!(policies(&h1.ns).len(), 5);
    rt.block_on(n1.resync(&[&l2, &l3])).unwrap();
    assert_eq!(policies(&h1.ns), p1);

    // A removed lease: its connection unloaded, its policies deleted.
    rt.block_on(n1.resync(&[&l2])).unwrap();
    assert_eq!(policies(&h1.ns).len(), 3);
    let conns = files[0].swanctl(&["--list-conns"]);
    assert!(!conns.contains("10.50.3.0/24-192.168.100.3"), "{conns}");

    // Shutdown stops the charons flannel started and leaves the policies.
    rt.block_on(async {
        for n in [&mut n1, &mut n2, &mut n3] {
            n.shutdown().await.unwrap();
        }
    });
    assert_eq!(policies(&h1.ns).len(), 3);
    assert!(
        files[0].swanctl(&["--stats"]).contains("connecting"),
        "charon still answers after shutdown"
    );
    let text = logs.text();
    assert!(
        !text.contains(&psk) && !text.contains(&wrong),
        "a PSK was logged"
    );
    assert!(
        text.contains(
            "IPSec config: UDPEncap=false ESPProposal=aes128gcm16-sha256-prfsha256-ecp256"
        ),
        "{text}"
    );
}
