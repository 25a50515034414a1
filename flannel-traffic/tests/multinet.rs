//! Several flannel networks on one host (two daemons with their own
//! `-etcd-prefix`/`-subnet-file`) share the chains `FLANNEL-POSTRTG` and
//! `FLANNEL-FWD` (nftables: `postrtg` and `forward`). Each test runs two
//! drivers, A (10.11.0.0/16) and B (10.12.0.0/16), in one fresh network
//! namespace with the real iptables and nft: each keeps its own rules,
//! neither rewrites the other's, and removing one network's rules leaves
//! the other's. Needs root, iproute2, iptables and nft.

mod common;
use common::{in_netns, nft_delete_negated_postrtg_rule, sh};
use std::sync::Arc;
use std::time::Duration;

use flannel_core::ip::Ip4Net;
use flannel_traffic::{
    IpFamily, Iptables, Nftables, Previous, Rules, RulesOptions, RulesPlan, TrafficManager,
    iptables,
};

const NA: &str = "10.11.0.0/16";
const SA: &str = "10.11.3.0/24";
const NB: &str = "10.12.0.0/16";
const SB: &str = "10.12.5.0/24";

fn net(s: &str) -> Ip4Net {
    s.parse().unwrap()
}

/// `iptables -t <table> -S <chain>` as lines (`-A` lines only).
fn chain(table: &str, chain: &str) -> Vec<String> {
    sh(&["iptables", "-t", table, "-S", chain])
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

/// The lines of `chain` our masquerade rules for (n, s) are (the mark rule
/// first), as this host's iptables (≥ 1.6.2: `--random-fully`) lists them.
fn masq_lines(n: &str, s: &str) -> Vec<String> {
    iptables::masq_rules(IpFamily::V4, n, s, true)
        .iter()
        .skip(1)
        .map(|r| r.line("-A"))
        .collect()
}

fn fwd_lines(n: &str) -> Vec<String> {
    iptables::forward_rules(n)
        .iter()
        .skip(1)
        .map(|r| r.line("-A"))
        .collect()
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

/// Whether `want` appear in `lines` in this order.
fn in_order(lines: &[String], want: &[String]) -> bool {
    iptables::missing_in_order(lines, want).is_none()
}

async fn install(tm: &dyn TrafficManager, n: &str, s: &str) {
    tm.init().await.unwrap();
    tm.setup_masq(Some((net(n), net(s))), None).await.unwrap();
    tm.setup_forward(Some(net(n)), None).await.unwrap();
}

fn plan(nftables: bool, n: &str, s: &str) -> RulesPlan {
    RulesPlan {
        nftables,
        v4: Some((net(n), net(s))),
        v6: None,
        masq: true,
        forward: true,
        blackhole: false,
        period: Duration::from_secs(1),
        fully_random_disable: false,
        previous: Previous::default(),
    }
}

/// Resyncs A and B alternately `rounds` times; asserts nobody rewrote.
async fn assert_settled(a: &dyn TrafficManager, b: &dyn TrafficManager, rounds: usize) {
    let (wa, wb) = (a.stats().writes, b.stats().writes);
    for i in 0..rounds {
        assert!(!a.resync_once().await.unwrap(), "A rewrote in round {i}");
        assert!(!b.resync_once().await.unwrap(), "B rewrote in round {i}");
    }
    assert_eq!(a.stats().writes, wa, "A wrote");
    assert_eq!(b.stats().writes, wb, "B wrote");
}

fn assert_both_iptables() {
    let nat = chain("nat", "FLANNEL-POSTRTG");
    assert!(in_order(&nat, &masq_lines(NA, SA)), "{nat:#?}");
    assert!(in_order(&nat, &masq_lines(NB, SB)), "{nat:#?}");
    assert_eq!(nat.len(), 11, "one shared mark rule + 5 + 5: {nat:#?}");
    assert_eq!(count(&nat, "--mark"), 1, "{nat:#?}");
    let post = chain("nat", "POSTROUTING");
    assert_eq!(count(&post, "FLANNEL-POSTRTG"), 1, "{post:#?}");
    let fwd = chain("filter", "FLANNEL-FWD");
    assert!(in_order(&fwd, &fwd_lines(NA)), "{fwd:#?}");
    assert!(in_order(&fwd, &fwd_lines(NB)), "{fwd:#?}");
    assert_eq!(fwd.len(), 4, "{fwd:#?}");
    assert_eq!(count(&chain("filter", "FORWARD"), "FLANNEL-FWD"), 1);
}

#[test]
fn iptables_two_networks_keep_their_rules() {
    in_netns("mn-ipt", || async {
        let a = Iptables::new(RulesOptions::default());
        let b = Iptables::new(RulesOptions::default());
        install(&a, NA, SA).await;
        install(&b, NB, SB).await;
        assert_both_iptables();
        // Neither considers the other's rules drift.
        assert_settled(&a, &b, 3).await;
        assert_both_iptables();

        // A restart of A (a new driver, same network) replaces A's rules and
        // leaves B's.
        let a2 = Iptables::new(RulesOptions::default());
        install(&a2, NA, SA).await;
        assert_both_iptables();
        assert_settled(&a2, &b, 2).await;
    });
}

#[test]
fn iptables_a_lost_rule_is_restored_by_a_only() {
    in_netns("mn-ipt-del", || async {
        let a = Iptables::new(RulesOptions::default());
        let b = Iptables::new(RulesOptions::default());
        install(&a, NA, SA).await;
        install(&b, NB, SB).await;
        let victim = masq_lines(NA, SA)[2].clone();
        let num = chain("nat", "FLANNEL-POSTRTG")
            .iter()
            .position(|l| *l == victim)
            .expect("A's rule is there")
            + 1;
        sh(&[
            "iptables",
            "-t",
            "nat",
            "-D",
            "FLANNEL-POSTRTG",
            &num.to_string(),
        ]);
        assert!(!chain("nat", "FLANNEL-POSTRTG").contains(&victim));

        let wb = b.stats().writes;
        assert!(
            !b.resync_once().await.unwrap(),
            "B must not touch A's rules"
        );
        assert_eq!(b.stats().writes, wb);
        let before_b: Vec<String> = chain("nat", "FLANNEL-POSTRTG")
            .into_iter()
            .filter(|l| l.contains("10.12."))
            .collect();
        assert!(a.resync_once().await.unwrap());
        assert_both_iptables();
        let after_b: Vec<String> = chain("nat", "FLANNEL-POSTRTG")
            .into_iter()
            .filter(|l| l.contains("10.12."))
            .collect();
        assert_eq!(before_b, after_b, "B's rules stay as they were");
        assert_settled(&a, &b, 3).await;

        // The same for a forward rule.
        sh(&[
            "iptables",
            "-t",
            "filter",
            "-D",
            "FLANNEL-FWD",
            "-d",
            NA,
            "-m",
            "comment",
            "--comment",
            "flanneld forward",
            "-j",
            "ACCEPT",
        ]);
        let wb = b.stats().writes;
        assert!(!b.resync_once().await.unwrap());
        assert_eq!(b.stats().writes, wb);
        assert!(a.resync_once().await.unwrap());
        assert_both_iptables();
        assert_settled(&a, &b, 2).await;
    });
}

#[test]
fn iptables_network_change_deletes_only_the_old_lines() {
    in_netns("mn-ipt-move", || async {
        let b = Iptables::new(RulesOptions::default());
        install(&b, NB, SB).await;

        // A restart of A with another subnet, recycling the previous one.
        let old = Iptables::new(RulesOptions::default());
        install(&old, NA, "10.11.1.0/24").await;
        let prev = Previous {
            network: Some(net(NA)),
            subnet: Some(net("10.11.1.0/24")),
            ..Previous::default()
        };
        let a = Iptables::new(RulesOptions {
            fully_random_disable: false,
            previous: prev,
        });
        install(&a, NA, SA).await;
        let nat = chain("nat", "FLANNEL-POSTRTG");
        assert_eq!(count(&nat, "10.11.1.0/24"), 0, "{nat:#?}");
        assert_both_iptables();

        // At run time, through the Rules handle: A moves to another subnet
        // and network; only A's lines change.
        let a = Arc::new(Rules::new(plan(false, NA, SA), None));
        a.setup().await.unwrap();
        assert_both_iptables();
        let moved = RulesPlan {
            v4: Some((net("10.13.0.0/16"), net("10.13.9.0/24"))),
            ..a.plan()
        };
        a.update(moved).await.unwrap();
        let nat = chain("nat", "FLANNEL-POSTRTG");
        assert_eq!(count(&nat, "10.11."), 0, "{nat:#?}");
        assert!(in_order(&nat, &masq_lines("10.13.0.0/16", "10.13.9.0/24")));
        assert!(in_order(&nat, &masq_lines(NB, SB)), "{nat:#?}");
        assert_eq!(nat.len(), 11, "{nat:#?}");
        let fwd = chain("filter", "FLANNEL-FWD");
        assert_eq!(count(&fwd, "10.11."), 0, "{fwd:#?}");
        assert!(in_order(&fwd, &fwd_lines("10.13.0.0/16")));
        assert!(in_order(&fwd, &fwd_lines(NB)));
        assert_settled(a.driver().as_ref(), &b, 2).await;
    });
}

#[test]
fn nftables_cleanup_leaves_the_other_networks_iptables_rules() {
    in_netns("mn-ipt-clean", || async {
        let a = Iptables::new(RulesOptions::default());
        let b = Iptables::new(RulesOptions::default());
        install(&a, NA, SA).await;
        install(&b, NB, SB).await;

        // A switches to nftables.
        let a_nft = Nftables::new(RulesOptions::default());
        a_nft.cleanup_other_mode(&plan(true, NA, SA)).await.unwrap();
        let nat = chain("nat", "FLANNEL-POSTRTG");
        assert_eq!(count(&nat, "10.11."), 0, "{nat:#?}");
        assert!(in_order(&nat, &masq_lines(NB, SB)), "{nat:#?}");
        assert_eq!(nat.len(), 6, "{nat:#?}");
        assert_eq!(count(&chain("nat", "POSTROUTING"), "FLANNEL-POSTRTG"), 1);
        assert_eq!(chain("filter", "FLANNEL-FWD"), fwd_lines(NB));
        assert_eq!(count(&chain("filter", "FORWARD"), "FLANNEL-FWD"), 1);
        let wb = b.stats().writes;
        assert!(!b.resync_once().await.unwrap());
        assert_eq!(b.stats().writes, wb);

        // B too: nothing of flannel is left.
        let b_nft = Nftables::new(RulesOptions::default());
        b_nft.cleanup_other_mode(&plan(true, NB, SB)).await.unwrap();
        let save = sh(&["iptables-save"]);
        assert!(!save.contains("FLANNEL"), "{save}");
    });
}

/// `nft list chain ip flannel-ipv4 <chain>` rule lines.
fn nft_rules(chain: &str) -> Vec<String> {
    sh(&["nft", "list", "chain", "ip", "flannel-ipv4", chain])
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(" return") || l.contains("masquerade") || l.contains("accept"))
        .filter(|l| !l.starts_with("type ") && !l.starts_with("comment "))
        .map(str::to_string)
        .collect()
}

fn assert_both_nft() {
    let post = nft_rules("postrtg");
    assert_eq!(post.len(), 11, "{post:#?}");
    assert_eq!(count(&post, "meta mark"), 1, "{post:#?}");
    assert!(post[0].starts_with("meta mark"), "{post:#?}");
    assert_eq!(count(&post, "10.11."), 5, "{post:#?}");
    assert_eq!(count(&post, "10.12."), 5, "{post:#?}");
    // Each network's rules in order; which network comes first depends on
    // who wrote last.
    let fwd = nft_rules("forward");
    assert_eq!(fwd.len(), 4, "{fwd:#?}");
    for n in [NA, NB] {
        let want = [
            format!("ip saddr {n} accept"),
            format!("ip daddr {n} accept"),
        ];
        assert!(in_order(&fwd, &want), "{fwd:#?}");
    }
}

#[test]
fn nftables_two_networks_keep_their_rules() {
    in_netns("mn-nft", || async {
        let a = Nftables::new(RulesOptions::default());
        let b = Nftables::new(RulesOptions::default());
        install(&a, NA, SA).await;
        install(&b, NB, SB).await;
        assert_both_nft();
        assert_settled(&a, &b, 3).await;

        // One of A's rules deleted: B leaves it to A.
        let listing = sh(&[
            "nft",
            "-a",
            "list",
            "chain",
            "ip",
            "flannel-ipv4",
            "postrtg",
        ]);
        nft_delete_negated_postrtg_rule(&listing, &format!("ip daddr {SA} return"));
        let wb = b.stats().writes;
        assert!(!b.resync_once().await.unwrap());
        assert_eq!(b.stats().writes, wb);
        let b_before: Vec<String> = nft_rules("postrtg")
            .into_iter()
            .filter(|l| l.contains("10.12."))
            .collect();
        assert!(a.resync_once().await.unwrap());
        assert_both_nft();
        let b_after: Vec<String> = nft_rules("postrtg")
            .into_iter()
            .filter(|l| l.contains("10.12."))
            .collect();
        assert_eq!(b_before, b_after);
        assert_settled(&a, &b, 3).await;

        // A restart of A replaces A's rules, never duplicates them.
        let a2 = Nftables::new(RulesOptions::default());
        install(&a2, NA, SA).await;
        assert_both_nft();
        assert_settled(&a2, &b, 2).await;

        // A's masquerade network moves at run time.
        a2.setup_masq(Some((net("10.13.0.0/16"), net("10.13.9.0/24"))), None)
            .await
            .unwrap();
        let post = nft_rules("postrtg");
        assert_eq!(count(&post, "10.11."), 0, "{post:#?}");
        assert_eq!(count(&post, "10.13."), 5, "{post:#?}");
        assert_eq!(count(&post, "10.12."), 5, "{post:#?}");
        assert_settled(&a2, &b, 2).await;
    });
}

#[test]
fn iptables_cleanup_leaves_the_other_networks_nftables_rules() {
    in_netns("mn-nft-clean", || async {
        let a = Nftables::new(RulesOptions::default());
        let b = Nftables::new(RulesOptions::default());
        install(&a, NA, SA).await;
        install(&b, NB, SB).await;

        let a_ipt = Iptables::new(RulesOptions::default());
        a_ipt
            .cleanup_other_mode(&plan(false, NA, SA))
            .await
            .unwrap();
        let post = nft_rules("postrtg");
        assert_eq!(count(&post, "10.11."), 0, "{post:#?}");
        assert_eq!(count(&post, "10.12."), 5, "{post:#?}");
        assert_eq!(count(&post, "meta mark"), 1, "{post:#?}");
        assert_eq!(
            nft_rules("forward"),
            [
                format!("ip saddr {NB} accept"),
                format!("ip daddr {NB} accept")
            ]
        );
        let wb = b.stats().writes;
        assert!(!b.resync_once().await.unwrap());
        assert_eq!(b.stats().writes, wb);
        // No scratch table is left behind.
        assert!(!sh(&["nft", "list", "tables"]).contains("probe"));

        let b_ipt = Iptables::new(RulesOptions::default());
        b_ipt
            .cleanup_other_mode(&plan(false, NB, SB))
            .await
            .unwrap();
        let tables = sh(&["nft", "list", "tables"]);
        assert!(!tables.contains("flannel-ipv4"), "{tables}");
    });
}
