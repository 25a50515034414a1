//! Packet-filter rules and the blackhole route (behaviour reference §7,
//! §0 steps 16–19), one network per test (see `multinet.rs` for several
//! networks sharing the chains), each test in its own fresh network namespace: the
//! drivers run on a thread that joined the namespace, so every `iptables`,
//! `nft` and netlink call they make (and every check here) sees only that
//! namespace's rules. Needs root, iproute2, iptables (nft backend or legacy)
//! and nft.
//!
//! Golden texts are Go flannel's (`e2e/rules.go`), except nftables rule 4
//! (ours: `ip saddr != N ip daddr S return`, see DESIGN.md).

mod common;
use common::{in_netns, nft_delete_negated_postrtg_rule, sh};
use std::process::Command;
use std::time::{Duration, Instant};

use flannel_core::ip::{Ip4Net, Ip6Net};
use flannel_traffic::{
    Blackhole, Iptables, Nftables, Previous, Rules, RulesOptions, RulesPlan, TrafficManager,
    ensure_blackhole,
};

const N4: &str = "10.244.0.0/16";
const S4: &str = "10.244.7.0/24";
const N6: &str = "fd00:10:244::/56";
const S6: &str = "fd00:10:244:7::/64";

fn n4() -> Ip4Net {
    N4.parse().unwrap()
}
fn s4() -> Ip4Net {
    S4.parse().unwrap()
}
fn n6() -> Ip6Net {
    N6.parse().unwrap()
}
fn s6() -> Ip6Net {
    S6.parse().unwrap()
}

/// Like [`sh`] but returns whether it succeeded.
fn try_sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What Go's e2e `iptablesNatFlannel` collects: the POSTROUTING lines
/// mentioning FLANNEL, then `-S FLANNEL-POSTRTG`.
fn nat_flannel(bin: &str) -> String {
    let post = sh(&[bin, "-t", "nat", "-S", "POSTROUTING"]);
    let chain = sh(&[bin, "-t", "nat", "-S", "FLANNEL-POSTRTG"]);
    let mut lines: Vec<&str> = post.lines().filter(|l| l.contains("FLANNEL")).collect();
    lines.extend(chain.trim_end().lines());
    lines.join("\n")
}

/// The FORWARD lines mentioning FLANNEL, then `-S FLANNEL-FWD`.
fn filter_flannel(bin: &str) -> String {
    let fwd = sh(&[bin, "-t", "filter", "-S", "FORWARD"]);
    let chain = sh(&[bin, "-t", "filter", "-S", "FLANNEL-FWD"]);
    let mut lines: Vec<&str> = fwd.lines().filter(|l| l.contains("FLANNEL")).collect();
    lines.extend(chain.trim_end().lines());
    lines.join("\n")
}

/// Go's `expectedIptablesPostrouting`, parameterised for v6 and
/// `--random-fully`.
fn golden_postrouting(n: &str, s: &str, multicast: &str, random_fully: bool) -> String {
    let rf = if random_fully { " --random-fully" } else { "" };
    [
        r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#.to_string(),
        "-N FLANNEL-POSTRTG".to_string(),
        r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#.to_string(),
        format!(r#"-A FLANNEL-POSTRTG -s {s} -d {n} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s {n} -d {s} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG ! -s {n} -d {s} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s {n} ! -d {multicast} -m comment --comment "flanneld masq" -j MASQUERADE{rf}"#),
        format!(r#"-A FLANNEL-POSTRTG ! -s {n} -d {n} -m comment --comment "flanneld masq" -j MASQUERADE{rf}"#),
    ]
    .join("\n")
}

/// §7.3 as `-S` prints it.
fn golden_forward(n: &str) -> String {
    [
        r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#.to_string(),
        "-N FLANNEL-FWD".to_string(),
        format!(r#"-A FLANNEL-FWD -s {n} -m comment --comment "flanneld forward" -j ACCEPT"#),
        format!(r#"-A FLANNEL-FWD -d {n} -m comment --comment "flanneld forward" -j ACCEPT"#),
    ]
    .join("\n")
}

/// Go's `expectedNftPostrouting` with our rule 4.
fn golden_nft_postrtg(fam: &str, table: &str, n: &str, s: &str, multicast: &str) -> String {
    [
        format!("table {fam} {table} {{"),
        "\tchain postrtg {".to_string(),
        "\t\tcomment \"chain to manage traffic masquerading by flannel\"".to_string(),
        "\t\ttype nat hook postrouting priority srcnat; policy accept;".to_string(),
        "\t\tmeta mark 0x00004000 return".to_string(),
        format!("\t\t{fam} saddr {s} {fam} daddr {n} return"),
        format!("\t\t{fam} saddr {n} {fam} daddr {s} return"),
        format!("\t\t{fam} saddr != {n} {fam} daddr {s} return"),
        format!("\t\t{fam} saddr {n} {fam} daddr != {multicast} masquerade fully-random"),
        format!("\t\t{fam} saddr != {n} {fam} daddr {n} masquerade fully-random"),
        "\t}".to_string(),
        "}".to_string(),
    ]
    .join("\n")
}

/// Go's `expectedNftForward`.
fn golden_nft_forward(fam: &str, table: &str, n: &str) -> String {
    [
        format!("table {fam} {table} {{"),
        "\tchain forward {".to_string(),
        "\t\tcomment \"chain to accept flannel traffic\"".to_string(),
        "\t\ttype filter hook forward priority filter; policy accept;".to_string(),
        format!("\t\t{fam} saddr {n} accept"),
        format!("\t\t{fam} daddr {n} accept"),
        "\t}".to_string(),
        "}".to_string(),
    ]
    .join("\n")
}

fn nft_chain(fam: &str, table: &str, chain: &str) -> String {
    sh(&["nft", "list", "chain", fam, table, chain])
        .trim_end()
        .to_string()
}

/// A plan for the v4 and v6 test networks (what the cleanup removes).
fn plan(nftables: bool) -> RulesPlan {
    RulesPlan {
        nftables,
        v4: Some((n4(), s4())),
        v6: Some((n6(), s6())),
        masq: true,
        forward: true,
        blackhole: true,
        period: Duration::from_millis(200),
        fully_random_disable: false,
        previous: Previous::default(),
    }
}

fn options(fully_random_disable: bool, previous: Previous) -> RulesOptions {
    RulesOptions {
        fully_random_disable,
        previous,
    }
}

#[test]
fn iptables_golden_v4_v6_with_random_fully() {
    in_netns("ipt-gold", || async {
        let ipt = Iptables::new(RulesOptions::default());
        ipt.init().await.unwrap();
        ipt.setup_masq(Some((n4(), s4())), Some((n6(), s6())))
            .await
            .unwrap();
        ipt.setup_forward(Some(n4()), Some(n6())).await.unwrap();
        assert_eq!(
            nat_flannel("iptables"),
            golden_postrouting(N4, S4, "224.0.0.0/4", true)
        );
        assert_eq!(
            nat_flannel("ip6tables"),
            golden_postrouting(N6, S6, "ff00::/8", true)
        );
        assert_eq!(filter_flannel("iptables"), golden_forward(N4));
        assert_eq!(filter_flannel("ip6tables"), golden_forward(N6));
        // Right after setup nothing drifts.
        assert!(!ipt.resync_once().await.unwrap());
    });
}

#[test]
fn iptables_golden_without_random_fully() {
    in_netns("ipt-norf", || async {
        let ipt = Iptables::new(options(true, Previous::default()));
        ipt.setup_masq(Some((n4(), s4())), Some((n6(), s6())))
            .await
            .unwrap();
        assert_eq!(
            nat_flannel("iptables"),
            golden_postrouting(N4, S4, "224.0.0.0/4", false)
        );
        assert_eq!(
            nat_flannel("ip6tables"),
            golden_postrouting(N6, S6, "ff00::/8", false)
        );
        assert!(!ipt.resync_once().await.unwrap());
    });
}

#[test]
fn iptables_jump_is_appended_once_after_other_rules() {
    in_netns("ipt-order", || async {
        // Someone else's rule, and a stale duplicate of our jump before it.
        sh(&["iptables", "-t", "nat", "-N", "FLANNEL-POSTRTG"]);
        sh(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ]);
        sh(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "eth9",
            "-j",
            "ACCEPT",
        ]);
        sh(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ]);
        let ipt = Iptables::new(RulesOptions::default());
        ipt.setup_masq(Some((n4(), s4())), None).await.unwrap();
        let post = sh(&["iptables", "-t", "nat", "-S", "POSTROUTING"]);
        assert_eq!(
            post,
            "-P POSTROUTING ACCEPT\n-A POSTROUTING -o eth9 -j ACCEPT\n\
             -A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n"
        );
    });
}

#[test]
fn iptables_resync_rewrites_only_on_drift() {
    in_netns("ipt-drift", || async {
        let ipt = Iptables::new(RulesOptions::default());
        ipt.setup_masq(Some((n4(), s4())), Some((n6(), s6())))
            .await
            .unwrap();
        ipt.setup_forward(Some(n4()), Some(n6())).await.unwrap();
        let gold_nat = golden_postrouting(N4, S4, "224.0.0.0/4", true);
        let gold_nat6 = golden_postrouting(N6, S6, "ff00::/8", true);
        let gold_fwd = golden_forward(N4);

        // No drift: no write, two listings per table (4 tables).
        let before = ipt.stats();
        let t0 = Instant::now();
        assert!(!ipt.resync_once().await.unwrap());
        let took = t0.elapsed();
        let after = ipt.stats();
        assert_eq!(after.writes, before.writes, "a no-drift resync wrote");
        assert_eq!(after.commands - before.commands, 8);
        eprintln!(
            "no-drift resync (v4+v6, nat+filter): {} commands, {took:?}",
            after.commands - before.commands
        );

        // One rule deleted.
        sh(&["iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "3"]);
        let w = ipt.stats().writes;
        assert!(ipt.resync_once().await.unwrap());
        assert_eq!(
            ipt.stats().writes,
            w + 1,
            "only the drifted table is rewritten"
        );
        assert_eq!(nat_flannel("iptables"), gold_nat);

        // A rule changed in place (same count, other text): ours comes back,
        // the foreign rule is not ours to delete.
        sh(&[
            "iptables",
            "-t",
            "nat",
            "-R",
            "FLANNEL-POSTRTG",
            "2",
            "-s",
            "10.9.0.0/16",
            "-j",
            "RETURN",
        ]);
        assert!(ipt.resync_once().await.unwrap());
        let chain = sh(&["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]);
        assert!(
            chain.contains("-A FLANNEL-POSTRTG -s 10.9.0.0/16 -j RETURN\n"),
            "{chain}"
        );
        sh(&[
            "iptables",
            "-t",
            "nat",
            "-D",
            "FLANNEL-POSTRTG",
            "-s",
            "10.9.0.0/16",
            "-j",
            "RETURN",
        ]);
        assert!(
            !ipt.resync_once().await.unwrap(),
            "a foreign rule going away is no drift"
        );
        assert_eq!(nat_flannel("iptables"), gold_nat);

        // A rule in our chain that is not ours is left alone: no drift.
        sh(&[
            "iptables",
            "-t",
            "filter",
            "-A",
            "FLANNEL-FWD",
            "-j",
            "DROP",
        ]);
        assert!(!ipt.resync_once().await.unwrap());
        assert_eq!(
            filter_flannel("iptables"),
            format!("{gold_fwd}\n-A FLANNEL-FWD -j DROP")
        );
        sh(&[
            "iptables",
            "-t",
            "filter",
            "-D",
            "FLANNEL-FWD",
            "-j",
            "DROP",
        ]);
        assert_eq!(filter_flannel("iptables"), gold_fwd);

        // Our rules out of order.
        sh(&["iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "2"]);
        sh(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "FLANNEL-POSTRTG",
            "-s",
            S4,
            "-d",
            N4,
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "RETURN",
        ]);
        assert!(ipt.resync_once().await.unwrap());
        assert_eq!(nat_flannel("iptables"), gold_nat);

        // The whole chain (and its jump) gone.
        sh(&[
            "iptables",
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ]);
        sh(&["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
        sh(&["iptables", "-t", "nat", "-X", "FLANNEL-POSTRTG"]);
        assert!(ipt.resync_once().await.unwrap());
        assert_eq!(nat_flannel("iptables"), gold_nat);

        // Only the v6 jump gone.
        sh(&[
            "ip6tables",
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ]);
        assert!(ipt.resync_once().await.unwrap());
        assert_eq!(nat_flannel("ip6tables"), gold_nat6);

        // Settled again.
        let w = ipt.stats().writes;
        assert!(!ipt.resync_once().await.unwrap());
        assert_eq!(ipt.stats().writes, w);
    });
}

#[test]
fn iptables_previous_subnet_is_recycled() {
    in_netns("ipt-recycle", || async {
        let s1: Ip4Net = "10.244.1.0/24".parse().unwrap();
        let s2: Ip4Net = "10.244.2.0/24".parse().unwrap();
        let first = Iptables::new(RulesOptions::default());
        first.setup_masq(Some((n4(), s1)), None).await.unwrap();
        assert!(sh(&["iptables-save", "-t", "nat"]).contains("10.244.1.0/24"));

        // A restart that got another subnet, with the old subnet.env.
        let prev = Previous {
            network: Some(n4()),
            subnet: Some(s1),
            ..Previous::default()
        };
        let second = Iptables::new(options(false, prev));
        second.setup_masq(Some((n4(), s2)), None).await.unwrap();
        let save = sh(&["iptables-save", "-t", "nat"]);
        assert!(!save.contains("10.244.1.0/24"), "{save}");
        assert_eq!(
            nat_flannel("iptables"),
            golden_postrouting(N4, "10.244.2.0/24", "224.0.0.0/4", true)
        );
        // And with another cluster network too.
        let n: Ip4Net = "10.245.0.0/16".parse().unwrap();
        let s3: Ip4Net = "10.245.3.0/24".parse().unwrap();
        let prev = Previous {
            network: Some(n4()),
            subnet: Some(s2),
            ..Previous::default()
        };
        let third = Iptables::new(options(false, prev));
        third.setup_masq(Some((n, s3)), None).await.unwrap();
        let save = sh(&["iptables-save", "-t", "nat"]);
        assert!(!save.contains("10.244."), "{save}");
        assert_eq!(
            nat_flannel("iptables"),
            golden_postrouting("10.245.0.0/16", "10.245.3.0/24", "224.0.0.0/4", true)
        );
    });
}

#[test]
fn nftables_golden_v4_v6() {
    in_netns("nft-gold", || async {
        let nft = Nftables::new(RulesOptions::default());
        nft.init().await.unwrap();
        nft.setup_masq(Some((n4(), s4())), Some((n6(), s6())))
            .await
            .unwrap();
        nft.setup_forward(Some(n4()), Some(n6())).await.unwrap();
        assert_eq!(
            nft_chain("ip", "flannel-ipv4", "postrtg"),
            golden_nft_postrtg("ip", "flannel-ipv4", N4, S4, "224.0.0.0/4")
        );
        assert_eq!(
            nft_chain("ip6", "flannel-ipv6", "postrtg"),
            golden_nft_postrtg("ip6", "flannel-ipv6", N6, S6, "ff00::/8")
        );
        assert_eq!(
            nft_chain("ip", "flannel-ipv4", "forward"),
            golden_nft_forward("ip", "flannel-ipv4", N4)
        );
        assert_eq!(
            nft_chain("ip6", "flannel-ipv6", "forward"),
            golden_nft_forward("ip6", "flannel-ipv6", N6)
        );
        // The temporary probe chain was never committed.
        assert!(!sh(&["nft", "list", "table", "ip", "flannel-ipv4"]).contains("masqueradeTest"));
        // Setting up again replaces, never duplicates.
        nft.setup_masq(Some((n4(), s4())), None).await.unwrap();
        assert_eq!(
            nft_chain("ip", "flannel-ipv4", "postrtg"),
            golden_nft_postrtg("ip", "flannel-ipv4", N4, S4, "224.0.0.0/4")
        );
    });
}

#[test]
fn nftables_without_fully_random() {
    in_netns("nft-norf", || async {
        let nft = Nftables::new(options(true, Previous::default()));
        nft.init().await.unwrap();
        nft.setup_masq(Some((n4(), s4())), None).await.unwrap();
        assert_eq!(
            nft_chain("ip", "flannel-ipv4", "postrtg"),
            golden_nft_postrtg("ip", "flannel-ipv4", N4, S4, "224.0.0.0/4")
                .replace(" fully-random", "")
        );
    });
}

#[test]
fn nftables_resync_rewrites_only_on_drift() {
    in_netns("nft-drift", || async {
        let nft = Nftables::new(RulesOptions::default());
        nft.init().await.unwrap();
        nft.setup_masq(Some((n4(), s4())), Some((n6(), s6())))
            .await
            .unwrap();
        nft.setup_forward(Some(n4()), Some(n6())).await.unwrap();
        let gold = golden_nft_postrtg("ip", "flannel-ipv4", N4, S4, "224.0.0.0/4");

        let before = nft.stats();
        let t0 = Instant::now();
        assert!(!nft.resync_once().await.unwrap());
        let took = t0.elapsed();
        let after = nft.stats();
        assert_eq!(after.writes, before.writes, "a no-drift resync wrote");
        assert_eq!(
            after.commands - before.commands,
            2,
            "one listing per family"
        );
        eprintln!(
            "no-drift nft resync (v4+v6): {} commands, {took:?}",
            after.commands - before.commands
        );

        // One rule deleted (by handle).
        let listing = sh(&[
            "nft",
            "-a",
            "list",
            "chain",
            "ip",
            "flannel-ipv4",
            "postrtg",
        ]);
        nft_delete_negated_postrtg_rule(&listing, "ip daddr 10.244.7.0/24 return");
        assert!(nft.resync_once().await.unwrap());
        assert_eq!(nft_chain("ip", "flannel-ipv4", "postrtg"), gold);

        // A chain flushed.
        sh(&["nft", "flush", "chain", "ip6", "flannel-ipv6", "forward"]);
        assert!(nft.resync_once().await.unwrap());
        assert_eq!(
            nft_chain("ip6", "flannel-ipv6", "forward"),
            golden_nft_forward("ip6", "flannel-ipv6", N6)
        );

        // The whole table deleted.
        sh(&["nft", "delete", "table", "ip", "flannel-ipv4"]);
        assert!(nft.resync_once().await.unwrap());
        assert_eq!(nft_chain("ip", "flannel-ipv4", "postrtg"), gold);
        assert_eq!(
            nft_chain("ip", "flannel-ipv4", "forward"),
            golden_nft_forward("ip", "flannel-ipv4", N4)
        );

        let w = nft.stats().writes;
        assert!(!nft.resync_once().await.unwrap());
        assert_eq!(nft.stats().writes, w);
    });
}

#[test]
fn switching_iptables_to_nftables_removes_the_chains() {
    in_netns("sw-to-nft", || async {
        let ipt = Iptables::new(RulesOptions::default());
        ipt.setup_masq(Some((n4(), s4())), Some((n6(), s6())))
            .await
            .unwrap();
        ipt.setup_forward(Some(n4()), Some(n6())).await.unwrap();
        // Someone else's rules stay.
        sh(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "eth9",
            "-j",
            "ACCEPT",
        ]);

        let nft = Nftables::new(RulesOptions::default());
        nft.cleanup_other_mode(&plan(true)).await.unwrap();
        for save in ["iptables-save", "ip6tables-save"] {
            let text = sh(&[save]);
            assert!(!text.contains("FLANNEL"), "{save}:\n{text}");
        }
        assert!(sh(&["iptables", "-t", "nat", "-S", "POSTROUTING"]).contains("-o eth9 -j ACCEPT"));
        // Nothing left: a second cleanup writes nothing.
        let w = nft.stats().writes;
        nft.cleanup_other_mode(&plan(true)).await.unwrap();
        assert_eq!(nft.stats().writes, w);
    });
}

#[test]
fn switching_nftables_to_iptables_deletes_the_tables() {
    in_netns("sw-to-ipt", || async {
        let nft = Nftables::new(RulesOptions::default());
        nft.init().await.unwrap();
        nft.setup_masq(Some((n4(), s4())), Some((n6(), s6())))
            .await
            .unwrap();
        sh(&["nft", "add", "table", "ip", "someone-else"]);

        let ipt = Iptables::new(RulesOptions::default());
        ipt.cleanup_other_mode(&plan(false)).await.unwrap();
        let tables = sh(&["nft", "list", "tables"]);
        assert!(!tables.contains("flannel-ipv4"), "{tables}");
        assert!(!tables.contains("flannel-ipv6"), "{tables}");
        assert!(tables.contains("table ip someone-else"), "{tables}");
        // Nothing to delete the second time.
        let w = ipt.stats().writes;
        ipt.cleanup_other_mode(&plan(false)).await.unwrap();
        assert_eq!(ipt.stats().writes, w);
        // The chains work from iptables mode afterwards.
        ipt.setup_masq(Some((n4(), s4())), None).await.unwrap();
        assert!(try_sh(&["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]));
    });
}

#[test]
fn blackhole_route_present_after_one_tick() {
    in_netns("bh", || async {
        let (netlink, conn) = flannel_netlink::Netlink::connect().unwrap();
        tokio::spawn(conn);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut p = plan(false);
        (p.masq, p.forward) = (false, false);
        let rules = std::sync::Arc::new(Rules::new(p, Some(netlink.clone())));
        let task = tokio::spawn({
            let rules = rules.clone();
            async move {
                rules
                    .blackhole_loop(async {
                        let _ = stop_rx.await;
                    })
                    .await
            }
        });
        // Nothing before the first period (Go checks after one period).
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!sh(&["ip", "route"]).contains("blackhole"));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            sh(&["ip", "route", "show", "proto", "boot"]),
            "blackhole 10.244.7.0/24 \n"
        );
        let v6 = sh(&["ip", "-6", "route", "show", "proto", "boot"]);
        assert!(v6.starts_with("blackhole fd00:10:244:7::/64 "), "{v6}");
        // Deleted → back after a tick.
        sh(&["ip", "route", "del", "blackhole", "10.244.7.0/24"]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(sh(&["ip", "route"]).contains("blackhole 10.244.7.0/24"));
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the blackhole task stops")
            .unwrap();
    });
}

#[test]
fn blackhole_leaves_a_bridge_route_alone() {
    in_netns("bh-br", || async {
        let (netlink, conn) = flannel_netlink::Netlink::connect().unwrap();
        tokio::spawn(conn);
        sh(&["ip", "link", "add", "cni0", "type", "bridge"]);
        sh(&["ip", "addr", "add", "10.244.7.1/24", "dev", "cni0"]);
        sh(&["ip", "link", "set", "cni0", "up"]);
        let got = ensure_blackhole(&netlink, "10.244.7.0".parse().unwrap(), 24)
            .await
            .unwrap();
        assert!(matches!(got, Blackhole::Shadowed(_)), "{got:?}");
        let routes = sh(&["ip", "route"]);
        assert!(routes.contains("10.244.7.0/24 dev cni0"), "{routes}");
        assert!(!routes.contains("blackhole"), "{routes}");
        // Without the bridge route it is added, then found.
        let got = ensure_blackhole(&netlink, "10.244.9.0".parse().unwrap(), 24)
            .await
            .unwrap();
        assert_eq!(got, Blackhole::Added);
        let got = ensure_blackhole(&netlink, "10.244.9.0".parse().unwrap(), 24)
            .await
            .unwrap();
        assert_eq!(got, Blackhole::Present);
    });
}

#[test]
fn update_moves_rules_and_blackhole_route_to_the_new_lease() {
    in_netns("upd", || async {
        let (netlink, conn) = flannel_netlink::Netlink::connect().unwrap();
        tokio::spawn(conn);
        let mut p = plan(false);
        p.v6 = None;
        p.forward = false;
        let rules = Rules::new(p.clone(), Some(netlink.clone()));
        rules.setup().await.unwrap();
        assert!(
            rules
                .status()
                .programmed
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        ensure_blackhole(&netlink, s4().addr().into(), 24)
            .await
            .unwrap();
        assert_eq!(
            nat_flannel("iptables"),
            golden_postrouting(N4, S4, "224.0.0.0/4", true)
        );

        let s9: Ip4Net = "10.244.9.0/24".parse().unwrap();
        let lease = flannel_core::lease::Lease::new(
            flannel_core::key::SubnetKey::v4(s9),
            flannel_core::lease::LeaseAttrs::default(),
        );
        let next = rules.plan().for_lease(&lease);
        assert_eq!(next.previous.subnet, Some(s4()));
        rules.update(next.clone()).await.unwrap();
        assert_eq!(rules.plan(), next);
        // Exactly Go's text for the new subnet: the old lines are gone.
        assert_eq!(
            nat_flannel("iptables"),
            golden_postrouting(N4, "10.244.9.0/24", "224.0.0.0/4", true)
        );
        assert_eq!(
            sh(&["ip", "route", "show", "proto", "boot"]),
            "blackhole 10.244.9.0/24 \n"
        );
        // Nothing left to do.
        let w = rules.driver().stats().writes;
        assert!(!rules.driver().resync_once().await.unwrap());
        assert_eq!(rules.driver().stats().writes, w);
        // A mode switch at run time is refused.
        let mut nft = next;
        nft.nftables = true;
        assert!(matches!(
            rules.update(nft).await,
            Err(flannel_traffic::TrafficError::ModeChange { .. })
        ));
    });
}
