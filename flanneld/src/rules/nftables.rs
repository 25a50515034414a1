//! The nftables driver (§7.5): tables `ip flannel-ipv4` / `ip6 flannel-ipv6`,
//! chains `postrtg` (nat, postrouting, srcnat) and `forward` (filter,
//! forward), written with `nft -f -`, one transaction that adds, flushes and
//! fills each chain.
//!
//! Rule 4 is ours, not Go's: `ip saddr != N ip daddr S return`, the same
//! meaning as iptables' `! -s N -d S -j RETURN` (Go writes
//! `ip saddr != S ip daddr N return`, which stops host→cluster
//! masquerading).
//!
//! The resync lists each family's table once (`nft -j list table ...`) and
//! compares our chains and rules (handles removed) with what was listed
//! right after our own write; any difference rewrites that family.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
use async_trait::async_trait;
use flannel_core::ip::{Ip4Net, Ip6Net};
use serde_json::Value;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::{CommandStats, Exec, IpFamily, Masq4, Masq6, RulesOptions, TrafficManager};

/// The masquerade chain.
pub const POSTRTG_CHAIN: &str = "postrtg";
/// The forward chain.
pub const FORWARD_CHAIN: &str = "forward";

impl IpFamily {
    /// The nft family keyword, also the address match keyword: `ip`, `ip6`.
    pub fn nft(self) -> &'static str {
        match self {
            IpFamily::V4 => "ip",
            IpFamily::V6 => "ip6",
        }
    }

    /// `flannel-ipv4` or `flannel-ipv6`.
    pub fn nft_table(self) -> &'static str {
        match self {
            IpFamily::V4 => "flannel-ipv4",
            IpFamily::V6 => "flannel-ipv6",
        }
    }
}

/// `add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }`
pub fn table_command(family: IpFamily) -> String {
    let t = family.nft_table();
    format!(
        "add table {} {t} {{ comment \"rules for {t}\" ; }}\n",
        family.nft()
    )
}

/// The transaction that (re)creates the `postrtg` chain with the
/// masquerade rules for cluster network `cluster` and own subnet `pod`.
pub fn masq_script(family: IpFamily, cluster: &str, pod: &str, fully_random: bool) -> String {
    let f = family.nft();
    let head = format!("{f} {} {POSTRTG_CHAIN}", family.nft_table());
    let masq = if fully_random {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let mc = family.multicast();
    let mut s = table_command(family);
    s.push_str(&format!(
        "add chain {head} {{ type nat hook postrouting priority srcnat ; \
         comment \"chain to manage traffic masquerading by flannel\" ; }}\n\
         flush chain {head}\n\
         add rule {head} meta mark 0x4000 return\n\
         add rule {head} {f} saddr {pod} {f} daddr {cluster} return\n\
         add rule {head} {f} saddr {cluster} {f} daddr {pod} return\n\
         add rule {head} {f} saddr != {cluster} {f} daddr {pod} return\n\
         add rule {head} {f} saddr {cluster} {f} daddr != {mc} {masq}\n\
         add rule {head} {f} saddr != {cluster} {f} daddr {cluster} {masq}\n"
    ));
    s
}

/// The transaction that (re)creates the `forward` chain accepting traffic
/// from and to `network`.
pub fn forward_script(family: IpFamily, network: &str) -> String {
    let f = family.nft();
    let head = format!("{f} {} {FORWARD_CHAIN}", family.nft_table());
    let mut s = table_command(family);
    s.push_str(&format!(
        "add chain {head} {{ type filter hook forward priority filter ; \
         comment \"chain to accept flannel traffic\" ; }}\n\
         flush chain {head}\n\
         add rule {head} {f} saddr {network} accept\n\
         add rule {head} {f} daddr {network} accept\n"
    ));
    s
}

/// The probe Go runs (`masqueradeTest`), checked only (`nft -c`), never
/// committed.
fn fully_random_probe() -> String {
    let mut s = table_command(IpFamily::V4);
    s.push_str(
        "add chain ip flannel-ipv4 masqueradeTest { type nat hook postrouting priority srcnat ; }\n\
         add rule ip flannel-ipv4 masqueradeTest ip saddr != 127.0.0.1 masquerade fully-random\n",
    );
    s
}

/// Removes `handle` keys everywhere.
fn strip_handles(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("handle");
            map.values_mut().for_each(strip_handles);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_handles),
        _ => {}
    }
}

/// Our chains and their rules, in listing order and without handles, from
/// `nft -j list table` output.
pub fn fingerprint(json: &str, chains: &[&str]) -> Result<Vec<Value>> {
    let doc: Value =
        serde_json::from_str(json).map_err(|e| anyhow!("cannot parse `nft -j` output: {e}"))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("`nft -j` output has no \"nftables\" array"))?;
    let mut out = Vec::new();
    for item in items {
        let name = if let Some(c) = item.get("chain") {
            c.get("name")
        } else if let Some(r) = item.get("rule") {
            r.get("chain")
        } else {
            continue;
        };
        if name
            .and_then(Value::as_str)
            .is_some_and(|n| chains.contains(&n))
        {
            let mut item = item.clone();
            strip_handles(&mut item);
            out.push(item);
        }
    }
    Ok(out)
}

/// What flannel wants in one family's table.
#[derive(Debug, Clone, Default)]
struct Wanted {
    /// (cluster, pod) for `postrtg`.
    masq: Option<(String, String)>,
    /// The cluster network for `forward`.
    forward: Option<String>,
    /// What the table listed right after our last write.
    fingerprint: Option<Vec<Value>>,
}

impl Wanted {
    fn chains(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.masq.is_some() {
            v.push(POSTRTG_CHAIN);
        }
        if self.forward.is_some() {
            v.push(FORWARD_CHAIN);
        }
        v
    }

    fn script(&self, family: IpFamily, fully_random: bool) -> String {
        let mut s = String::new();
        if let Some((c, p)) = &self.masq {
            s.push_str(&masq_script(family, c, p, fully_random));
        }
        if let Some(n) = &self.forward {
            s.push_str(&forward_script(family, n));
        }
        s
    }
}

#[derive(Debug, Default)]
struct State {
    fully_random: Option<bool>,
    families: BTreeMap<IpFamily, Wanted>,
}

/// The nftables driver.
#[derive(Debug)]
pub struct Nftables {
    options: RulesOptions,
    exec: Exec,
    state: Mutex<State>,
}

impl Nftables {
    /// A driver with `options`; no command runs until a method is called.
    pub fn new(options: RulesOptions) -> Nftables {
        Nftables {
            options,
            exec: Exec::default(),
            state: Mutex::new(State::default()),
        }
    }

    /// `nft -f -` with `script`; `what` names it in the error.
    async fn apply(&self, script: &str, what: &str) -> Result<()> {
        let out = self
            .exec
            .run("nft", &["-f", "-"], Some(script), true)
            .await
            .map_err(|e| anyhow!("nftables: couldn't {what}: cannot run `nft`: {e}"))?;
        if !out.success {
            bail!("nftables: couldn't {what}: {}", out.failure());
        }
        Ok(())
    }

    /// Whether `masquerade fully-random` works here (probed once).
    async fn fully_random(&self, state: &mut State) -> bool {
        if self.options.fully_random_disable {
            return false;
        }
        if let Some(v) = state.fully_random {
            return v;
        }
        let ok = match self
            .exec
            .run(
                "nft",
                &["-c", "-f", "-"],
                Some(&fully_random_probe()),
                false,
            )
            .await
        {
            Ok(out) if out.success => true,
            Ok(out) => {
                info!(
                    "nftables: masquerade fully-random is not supported: {}",
                    out.failure()
                );
                false
            }
            Err(e) => {
                info!("nftables: cannot probe masquerade fully-random: {e}");
                false
            }
        };
        state.fully_random = Some(ok);
        ok
    }

    /// Lists `family`'s table and returns our part of it (`Err` text when
    /// the table cannot be listed, e.g. it was deleted).
    async fn current(
        &self,
        family: IpFamily,
        chains: &[&str],
    ) -> Result<std::result::Result<Vec<Value>, String>> {
        let out = self
            .exec
            .run(
                "nft",
                &["-j", "list", "table", family.nft(), family.nft_table()],
                None,
                false,
            )
            .await
            .map_err(|e| anyhow!("cannot run `nft`: {e}"))?;
        if !out.success {
            return Ok(Err(out.failure()));
        }
        Ok(Ok(fingerprint(&out.stdout, chains)?))
    }

    /// Remembers what `family`'s table holds now, for the resync.
    async fn record(&self, state: &mut State, family: IpFamily) {
        let Some(w) = state.families.get(&family) else {
            return;
        };
        let chains = w.chains();
        let fp = match self.current(family, &chains).await {
            Ok(Ok(fp)) => Some(fp),
            Ok(Err(e)) => {
                warn!("nftables: cannot list table {}: {e}", family.nft_table());
                None
            }
            Err(e) => {
                warn!("nftables: {e:#}");
                None
            }
        };
        if let Some(w) = state.families.get_mut(&family) {
            w.fingerprint = fp;
        }
    }
}

/// iptables mode's cleanup (§7.4): deletes the tables `ip flannel-ipv4` and
/// `ip6 flannel-ipv6` if present (nothing to do without `nft`).
pub(crate) async fn delete_flannel_tables(exec: &Exec) -> Result<()> {
    let out = match exec.run("nft", &["list", "tables"], None, false).await {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            debug!("nft is not installed: no nftables tables to clean up");
            return Ok(());
        }
        Err(e) => {
            debug!("cannot run `nft list tables`: {e}");
            return Ok(());
        }
    };
    if !out.success {
        debug!("nftables cleanup: {}", out.failure());
        return Ok(());
    }
    let present: Vec<String> = [IpFamily::V4, IpFamily::V6]
        .iter()
        .map(|f| format!("table {} {}", f.nft(), f.nft_table()))
        .filter(|t| out.stdout.lines().any(|l| l.trim() == t))
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let script: String = present.iter().map(|t| format!("delete {t}\n")).collect();
    let del = exec
        .run("nft", &["-f", "-"], Some(&script), true)
        .await
        .map_err(|e| anyhow!("nftables cleanup: cannot run `nft`: {e}"))?;
    if !del.success {
        bail!(
            "nftables cleanup: couldn't delete tables: {}",
            del.failure()
        );
    }
    info!(
        "Deleted the nftables {} (left by nftables mode)",
        present.join(", ")
    );
    Ok(())
}

#[async_trait]
impl TrafficManager for Nftables {
    fn mode(&self) -> &'static str {
        "nftables"
    }

    async fn cleanup_other_mode(&self) -> Result<()> {
        info!("Cleaning-up iptables rules...");
        super::iptables::remove_flannel_chains(&self.exec).await
    }

    async fn init(&self) -> Result<()> {
        info!("Starting flannel in nftables mode...");
        let script = table_command(IpFamily::V4) + &table_command(IpFamily::V6);
        self.apply(&script, "initialise tables flannel-ipv4 and flannel-ipv6")
            .await
            .map_err(|e| anyhow!("no nftables support: {e:#}"))
    }

    async fn setup_masq(&self, v4: Option<Masq4>, v6: Option<Masq6>) -> Result<()> {
        let mut state = self.state.lock().await;
        let fully_random = self.fully_random(&mut state).await;
        let mut script = String::new();
        let mut families = Vec::new();
        let wanted = [
            v4.map(|(n, s)| (IpFamily::V4, n.to_string(), s.to_string())),
            v6.map(|(n, s)| (IpFamily::V6, n.to_string(), s.to_string())),
        ];
        for (family, net, sub) in wanted.into_iter().flatten() {
            info!("nftables: setting up masking rules ({})", family.nft());
            script.push_str(&masq_script(family, &net, &sub, fully_random));
            state.families.entry(family).or_default().masq = Some((net, sub));
            families.push(family);
        }
        let res = self.apply(&script, "setup masq rules").await;
        for f in families {
            self.record(&mut state, f).await;
        }
        res
    }

    async fn setup_forward(&self, v4: Option<Ip4Net>, v6: Option<Ip6Net>) -> Result<()> {
        let mut state = self.state.lock().await;
        let mut script = String::new();
        let mut families = Vec::new();
        let wanted = [
            v4.map(|n| (IpFamily::V4, n.to_string())),
            v6.map(|n| (IpFamily::V6, n.to_string())),
        ];
        for (family, net) in wanted.into_iter().flatten() {
            info!(
                "nftables: Changing default FORWARD chain policy to ACCEPT ({})",
                family.nft()
            );
            script.push_str(&forward_script(family, &net));
            state.families.entry(family).or_default().forward = Some(net);
            families.push(family);
        }
        let res = self.apply(&script, "setup forward rules").await;
        for f in families {
            self.record(&mut state, f).await;
        }
        res
    }

    async fn resync_once(&self) -> Result<bool> {
        let mut state = self.state.lock().await;
        let mut drifted = Vec::new();
        let entries: Vec<(IpFamily, Wanted)> = state
            .families
            .iter()
            .map(|(f, w)| (*f, w.clone()))
            .collect();
        for (family, w) in &entries {
            let chains = w.chains();
            if chains.is_empty() {
                continue;
            }
            match self.current(*family, &chains).await? {
                Ok(fp) if w.fingerprint.as_ref() == Some(&fp) => {}
                Ok(_) => {
                    debug!("nftables: table {} differs", family.nft_table());
                    drifted.push(*family);
                }
                Err(e) => {
                    debug!("nftables: {e}");
                    drifted.push(*family);
                }
            }
        }
        if drifted.is_empty() {
            return Ok(false);
        }
        warn!("Some nftables rules are missing; deleting and recreating rules");
        let fully_random = self.fully_random(&mut state).await;
        let script: String = entries
            .iter()
            .filter(|(f, _)| drifted.contains(f))
            .map(|(f, w)| w.script(*f, fully_random))
            .collect();
        self.apply(&script, "recreate rules").await?;
        for f in drifted {
            self.record(&mut state, f).await;
        }
        Ok(true)
    }

    fn stats(&self) -> CommandStats {
        self.exec.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masq_script_has_corrected_rule_4() {
        let s = masq_script(
            IpFamily::V6,
            "fd00:10:244::/56",
            "fd00:10:244:7::/64",
            false,
        );
        assert!(
            s.contains(
                "add rule ip6 flannel-ipv6 postrtg ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:7::/64 return\n"
            ),
            "{s}"
        );
        assert!(s.contains("ip6 daddr != ff00::/8 masquerade\n"), "{s}");
    }

    #[test]
    fn fingerprint_drops_handles_and_foreign_chains() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "flannel-ipv4", "handle": 2}},
            {"chain": {"family": "ip", "table": "flannel-ipv4", "name": "postrtg", "handle": 1}},
            {"chain": {"family": "ip", "table": "flannel-ipv4", "name": "other", "handle": 9}},
            {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "postrtg", "handle": 3, "expr": [{"return": null}]}},
            {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "other", "handle": 4, "expr": []}}]}"#;
        let fp = fingerprint(json, &["postrtg"]).unwrap();
        assert_eq!(fp.len(), 2);
        assert!(!serde_json::to_string(&fp).unwrap().contains("handle"));
    }
}
