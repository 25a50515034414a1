//! The nftables driver (§7.5): tables `ip flannel-ipv4` / `ip6 flannel-ipv6`,
//! chains `postrtg` (nat, postrouting, srcnat) and `forward` (filter,
//! forward), written with `nft -f -`: one transaction per write that adds
//! the table and chains if missing (never flushing them), deletes our rules
//! that are present by handle, and adds them again.
//!
//! Our rules are recognised by content: the `expr` of their `nft -j` listing.
//! That JSON is nft's own normalisation of the rule text (`0x4000` is listed
//! as `0x00004000`, ...), so it is learnt once per rule text by writing the
//! rules into a private scratch table (`flannel-probe-<pid>-<n>`, a regular
//! chain without a hook, deleted right away) and listing it.
//!
//! Rule 4 is ours, not Go's: `ip saddr != N ip daddr S return`, the same
//! meaning as iptables' `! -s N -d S -j RETURN` (Go writes
//! `ip saddr != S ip daddr N return`, which stops host→cluster
//! masquerading).
//!
//! The resync lists each family's table once (`nft -j list table ...`) and
//! checks that our rules are in our chains in order (other rules may sit in
//! between); a family with anything missing is rewritten.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use flannel_core::ip::{Ip4Net, Ip6Net};
use serde_json::Value;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::exec::{Exec, Kind, not_installed};
use crate::plan::Owned;
use crate::{
    CommandStats, IpFamily, Masq4, Masq6, RuleKind, RulesOptions, RulesPlan, TrafficError,
    TrafficManager, report,
};

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

/// `add chain ...` for `postrtg` or `forward` (a no-op when it exists).
fn chain_command(family: IpFamily, chain: &str) -> String {
    let head = format!("{} {} {chain}", family.nft(), family.nft_table());
    if chain == POSTRTG_CHAIN {
        format!(
            "add chain {head} {{ type nat hook postrouting priority srcnat ; \
             comment \"chain to manage traffic masquerading by flannel\" ; }}\n"
        )
    } else {
        format!(
            "add chain {head} {{ type filter hook forward priority filter ; \
             comment \"chain to accept flannel traffic\" ; }}\n"
        )
    }
}

/// The `postrtg` rules for cluster network `cluster` and own subnet `pod`,
/// as `add rule` takes them, with whether each is shared by every network
/// (the kube-proxy mark rule).
pub fn masq_rules(
    family: IpFamily,
    cluster: &str,
    pod: &str,
    fully_random: bool,
) -> Vec<(String, bool)> {
    let f = family.nft();
    let masq = if fully_random {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let mc = family.multicast();
    vec![
        ("meta mark 0x4000 return".to_string(), true),
        (format!("{f} saddr {pod} {f} daddr {cluster} return"), false),
        (format!("{f} saddr {cluster} {f} daddr {pod} return"), false),
        (
            format!("{f} saddr != {cluster} {f} daddr {pod} return"),
            false,
        ),
        (
            format!("{f} saddr {cluster} {f} daddr != {mc} {masq}"),
            false,
        ),
        (
            format!("{f} saddr != {cluster} {f} daddr {cluster} {masq}"),
            false,
        ),
    ]
}

/// The `forward` rules accepting traffic from and to `network`.
pub fn forward_rules(family: IpFamily, network: &str) -> Vec<(String, bool)> {
    let f = family.nft();
    vec![
        (format!("{f} saddr {network} accept"), false),
        (format!("{f} daddr {network} accept"), false),
    ]
}

fn script_for(family: IpFamily, chain: &str, rules: &[(String, bool)]) -> String {
    let mut s = table_command(family);
    s.push_str(&chain_command(family, chain));
    for (r, _) in rules {
        s.push_str(&format!(
            "add rule {} {} {chain} {r}\n",
            family.nft(),
            family.nft_table()
        ));
    }
    s
}

/// What a write adds for the masquerade rules when the chain holds nothing
/// yet: the table, the `postrtg` chain and its rules.
pub fn masq_script(family: IpFamily, cluster: &str, pod: &str, fully_random: bool) -> String {
    script_for(
        family,
        POSTRTG_CHAIN,
        &masq_rules(family, cluster, pod, fully_random),
    )
}

/// What a write adds for the forward rules when the chain holds nothing
/// yet: the table, the `forward` chain and its rules.
pub fn forward_script(family: IpFamily, network: &str) -> String {
    script_for(family, FORWARD_CHAIN, &forward_rules(family, network))
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

/// One table as `nft -j list table` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableListing {
    /// The chains' names.
    pub chains: Vec<String>,
    /// The rules in listing order: (chain, handle, `expr` without handles).
    pub rules: Vec<(String, u64, Value)>,
}

impl TableListing {
    /// Parses `nft -j list table` output; `command` names it in errors.
    pub fn parse(json: &str, command: &str) -> Result<TableListing, TrafficError> {
        let doc: Value = serde_json::from_str(json).map_err(|source| TrafficError::Json {
            command: command.to_string(),
            source,
        })?;
        let items = doc
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or_else(|| TrafficError::Output {
                command: command.to_string(),
                reason: "no \"nftables\" array".to_string(),
            })?;
        let mut out = TableListing::default();
        for item in items {
            if let Some(c) = item.get("chain") {
                if let Some(name) = c.get("name").and_then(Value::as_str) {
                    out.chains.push(name.to_string());
                }
            } else if let Some(r) = item.get("rule") {
                let chain = r.get("chain").and_then(Value::as_str).unwrap_or_default();
                let handle = r.get("handle").and_then(Value::as_u64).unwrap_or_default();
                let mut expr = r.get("expr").cloned().unwrap_or(Value::Null);
                strip_handles(&mut expr);
                out.rules.push((chain.to_string(), handle, expr));
            }
        }
        Ok(out)
    }

    /// The rules of `chain`: (handle, expr).
    fn chain_rules<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = (u64, &'a Value)> + 'a {
        self.rules
            .iter()
            .filter(move |(c, _, _)| c == chain)
            .map(|(_, h, e)| (*h, e))
    }

    /// Whether `chain` exists and holds `want` in this order (other rules
    /// may sit in between).
    fn holds_in_order(&self, chain: &str, want: &[&Value]) -> bool {
        if !self.chains.iter().any(|c| c == chain) {
            return false;
        }
        let mut rest = self.chain_rules(chain);
        want.iter().all(|w| rest.any(|(_, e)| e == *w))
    }
}

/// `nft -j list table <family> <table>`: `None` when it cannot be listed
/// (typically: it does not exist).
async fn list_table(
    exec: &Exec,
    family: IpFamily,
    table: &str,
) -> Result<Option<TableListing>, TrafficError> {
    let out = exec
        .run(
            "nft",
            &["-j", "list", "table", family.nft(), table],
            None,
            Kind::Read,
        )
        .await?;
    if !out.success {
        debug!(
            "nftables table {table} cannot be listed: {}",
            report(&out.failure())
        );
        return Ok(None);
    }
    TableListing::parse(&out.stdout, &out.cmdline).map(Some)
}

/// Makes the scratch table names unique within the process.
static PROBE_SEQ: AtomicU64 = AtomicU64::new(0);

/// nft's listing (`expr`) of each rule text, learnt by writing them into a
/// scratch table that is deleted right away.
async fn probe(
    exec: &Exec,
    family: IpFamily,
    texts: &[String],
) -> Result<Vec<Value>, TrafficError> {
    let table = format!(
        "flannel-probe-{}-{}",
        std::process::id(),
        PROBE_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let f = family.nft();
    let mut script = format!("add table {f} {table}\nadd chain {f} {table} probe\n");
    for t in texts {
        script.push_str(&format!("add rule {f} {table} probe {t}\n"));
    }
    let out = exec
        .run("nft", &["-f", "-"], Some(&script), Kind::Read)
        .await?;
    if !out.success {
        return Err(out.failure());
    }
    let listed = list_table(exec, family, &table).await;
    let del = exec
        .run("nft", &["delete", "table", f, &table], None, Kind::Read)
        .await;
    match del {
        Ok(o) if !o.success => warn!(
            "Cannot delete the scratch nftables table {table}: {}",
            report(&o.failure())
        ),
        Err(e) => warn!(
            "Cannot delete the scratch nftables table {table}: {}",
            report(&e)
        ),
        Ok(_) => {}
    }
    let listed = listed?.ok_or_else(|| TrafficError::Output {
        command: format!("nft -j list table {f} {table}"),
        reason: "the scratch table just written cannot be listed".to_string(),
    })?;
    let exprs: Vec<Value> = listed
        .chain_rules("probe")
        .map(|(_, e)| e.clone())
        .collect();
    if exprs.len() != texts.len() {
        return Err(TrafficError::Output {
            command: format!("nft -j list table {f} {table}"),
            reason: format!("{} rules listed for {} written", exprs.len(), texts.len()),
        });
    }
    Ok(exprs)
}

/// Fingerprints learnt so far: (family, rule text) → expr.
type Fingerprints = HashMap<(IpFamily, String), Value>;

/// Learns the fingerprints of `texts` that are not known yet.
async fn learn(
    exec: &Exec,
    fps: &mut Fingerprints,
    family: IpFamily,
    texts: &[String],
) -> Result<(), TrafficError> {
    let mut missing: Vec<String> = Vec::new();
    for t in texts {
        if !fps.contains_key(&(family, t.clone())) && !missing.contains(t) {
            missing.push(t.clone());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let exprs = probe(exec, family, &missing).await?;
    for (t, e) in missing.into_iter().zip(exprs) {
        fps.insert((family, t), e);
    }
    Ok(())
}

/// The script lines that remove our rules (`unique`, `shared` exprs) from
/// `chain`: the chain itself when nothing else is in it, else our unique
/// rules by handle.
fn removal_lines(
    family: IpFamily,
    listing: &TableListing,
    chain: &str,
    unique: &[&Value],
    shared: &[&Value],
) -> Vec<String> {
    if !listing.chains.iter().any(|c| c == chain) {
        return Vec::new();
    }
    let head = format!("{} {} {chain}", family.nft(), family.nft_table());
    let mut rules = listing.chain_rules(chain);
    if rules.all(|(_, e)| unique.contains(&e) || shared.contains(&e)) {
        return vec![
            format!("flush chain {head}"),
            format!("delete chain {head}"),
        ];
    }
    listing
        .chain_rules(chain)
        .filter(|(_, e)| unique.contains(e))
        .map(|(h, _)| format!("delete rule {head} handle {h}"))
        .collect()
}

/// iptables mode's cleanup (§7.4): deletes the rules of `owned` from the
/// tables `ip flannel-ipv4` and `ip6 flannel-ipv6`, a chain when nothing of
/// another network is left in it, and the whole table when nothing of
/// another network is left in it (nothing to do without `nft`).
pub(crate) async fn remove_own_rules(exec: &Exec, owned: &Owned) -> Result<(), TrafficError> {
    let out = match exec.run("nft", &["list", "tables"], None, Kind::Read).await {
        Ok(o) => o,
        Err(e) if not_installed(&e) => {
            debug!("nft is not installed: no nftables rules to clean up");
            return Ok(());
        }
        Err(e) => {
            debug!("Cannot look for nftables rules to clean up: {}", report(&e));
            return Ok(());
        }
    };
    if !out.success {
        debug!("nftables cleanup: {}", report(&out.failure()));
        return Ok(());
    }
    let mut script = String::new();
    let mut done = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        let table = format!("table {} {}", family.nft(), family.nft_table());
        if !out.stdout.lines().any(|l| l.trim() == table) {
            continue;
        }
        let mut chains: Vec<(&str, Vec<(String, bool)>)> =
            vec![(POSTRTG_CHAIN, Vec::new()), (FORWARD_CHAIN, Vec::new())];
        for (f, n, s) in owned.masq.iter().filter(|m| m.0 == family) {
            for fr in [true, false] {
                chains[0].1.extend(masq_rules(*f, n, s, fr));
            }
        }
        for (f, n) in owned.forward.iter().filter(|m| m.0 == family) {
            chains[1].1.extend(forward_rules(*f, n));
        }
        let texts: Vec<String> = chains
            .iter()
            .flat_map(|(_, r)| r.iter().map(|(t, _)| t.clone()))
            .collect();
        let mut fps = Fingerprints::new();
        let listing = match learn(exec, &mut fps, family, &texts).await {
            Ok(()) => list_table(exec, family, family.nft_table()).await,
            Err(e) => Err(e),
        };
        let listing = match listing {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                warn!("Cannot clean up nftables rules: {}", report(&e));
                continue;
            }
        };
        let fp = |t: &String| &fps[&(family, t.clone())];
        let ours = |e: &Value| texts.iter().any(|t| fp(t) == e);
        let only_ours = listing
            .chains
            .iter()
            .all(|c| c == POSTRTG_CHAIN || c == FORWARD_CHAIN)
            && listing.rules.iter().all(|(_, _, e)| ours(e));
        if only_ours {
            script.push_str(&format!("delete {table}\n"));
            done.push(format!("deleted {table}"));
            continue;
        }
        for (chain, rules) in &chains {
            let unique: Vec<&Value> = rules.iter().filter(|r| !r.1).map(|r| fp(&r.0)).collect();
            let shared: Vec<&Value> = rules.iter().filter(|r| r.1).map(|r| fp(&r.0)).collect();
            let lines = removal_lines(family, &listing, chain, &unique, &shared);
            if !lines.is_empty() {
                done.push(format!("removed our rules from {table} chain {chain}"));
                script.push_str(&(lines.join("\n") + "\n"));
            }
        }
    }
    if script.is_empty() {
        return Ok(());
    }
    let del = exec
        .run("nft", &["-f", "-"], Some(&script), Kind::Write)
        .await?;
    if !del.success {
        return Err(TrafficError::step(
            "clean up the nftables rules",
            del.failure(),
        ));
    }
    info!(
        "nftables cleanup (left by nftables mode): {}",
        done.join(", ")
    );
    Ok(())
}

/// What flannel wants in one family's table.
#[derive(Debug, Clone, Default)]
struct Wanted {
    /// (cluster, pod) for `postrtg`.
    masq: Option<(String, String)>,
    /// The cluster network for `forward`.
    forward: Option<String>,
    /// Rules of ours to delete if present: (chain, text); cleared after a
    /// successful write.
    stale: Vec<(&'static str, String)>,
}

impl Wanted {
    /// Our chains and their rules, in order.
    fn chains(
        &self,
        family: IpFamily,
        fully_random: bool,
    ) -> Vec<(&'static str, Vec<(String, bool)>)> {
        let mut v = Vec::new();
        if let Some((c, p)) = &self.masq {
            v.push((POSTRTG_CHAIN, masq_rules(family, c, p, fully_random)));
        }
        if let Some(n) = &self.forward {
            v.push((FORWARD_CHAIN, forward_rules(family, n)));
        }
        v
    }

    /// Every rule text involved (wanted and stale).
    fn texts(&self, family: IpFamily, fully_random: bool) -> Vec<String> {
        self.chains(family, fully_random)
            .into_iter()
            .flat_map(|(_, r)| r.into_iter().map(|(t, _)| t))
            .chain(self.stale.iter().map(|(_, t)| t.clone()))
            .collect()
    }
}

#[derive(Debug, Default)]
struct State {
    fully_random: Option<bool>,
    fps: Fingerprints,
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

    /// `nft -f -` with `script`; `step` names it in the error.
    async fn apply(&self, script: &str, step: &'static str) -> Result<(), TrafficError> {
        let out = self
            .exec
            .run("nft", &["-f", "-"], Some(script), Kind::Write)
            .await
            .map_err(|e| TrafficError::step(step, e))?;
        if !out.success {
            return Err(TrafficError::step(step, out.failure()));
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
                Kind::Read,
            )
            .await
        {
            Ok(out) if out.success => true,
            Ok(out) => {
                info!(
                    "nftables: masquerade fully-random is not supported: {}",
                    report(&out.failure())
                );
                false
            }
            Err(e) => {
                info!(
                    "nftables: cannot probe masquerade fully-random: {}",
                    report(&e)
                );
                false
            }
        };
        state.fully_random = Some(ok);
        ok
    }

    /// Writes `families` in one transaction: for each, adds the table and
    /// our chains if missing, deletes our rules present (by handle) and adds
    /// them again. `listed` holds listings already made.
    async fn write(
        &self,
        state: &mut State,
        families: &[IpFamily],
        mut listed: HashMap<IpFamily, Option<TableListing>>,
        step: &'static str,
    ) -> Result<(), TrafficError> {
        let fully_random = self.fully_random(state).await;
        let mut script = String::new();
        for &family in families {
            let Some(w) = state.families.get(&family).cloned() else {
                continue;
            };
            learn(
                &self.exec,
                &mut state.fps,
                family,
                &w.texts(family, fully_random),
            )
            .await
            .map_err(|e| TrafficError::step(step, e))?;
            let listing = match listed.remove(&family) {
                Some(l) => l,
                None => list_table(&self.exec, family, family.nft_table()).await?,
            }
            .unwrap_or_default();
            let fp = |t: &String| &state.fps[&(family, t.clone())];
            script.push_str(&table_command(family));
            for (chain, rules) in w.chains(family, fully_random) {
                let head = format!("{} {} {chain}", family.nft(), family.nft_table());
                script.push_str(&chain_command(family, chain));
                let unique: Vec<&Value> = rules
                    .iter()
                    .filter(|r| !r.1)
                    .map(|r| fp(&r.0))
                    .chain(w.stale.iter().filter(|s| s.0 == chain).map(|s| fp(&s.1)))
                    .collect();
                let mut remaining = Vec::new();
                for (handle, expr) in listing.chain_rules(chain) {
                    if unique.contains(&expr) {
                        script.push_str(&format!("delete rule {head} handle {handle}\n"));
                    } else {
                        remaining.push(expr);
                    }
                }
                for (text, shared) in &rules {
                    if *shared && remaining.contains(&fp(text)) {
                        continue;
                    }
                    script.push_str(&format!("add rule {head} {text}\n"));
                }
            }
        }
        if script.is_empty() {
            return Ok(());
        }
        self.apply(&script, step).await?;
        for family in families {
            if let Some(w) = state.families.get_mut(family) {
                w.stale.clear();
            }
        }
        Ok(())
    }

    /// Our rules' exprs per chain of `family`, in order.
    fn wanted_exprs<'a>(
        state: &'a State,
        family: IpFamily,
        w: &Wanted,
        fully_random: bool,
    ) -> Option<Vec<(&'static str, Vec<&'a Value>)>> {
        w.chains(family, fully_random)
            .into_iter()
            .map(|(chain, rules)| {
                rules
                    .iter()
                    .map(|(t, _)| state.fps.get(&(family, t.clone())))
                    .collect::<Option<Vec<_>>>()
                    .map(|e| (chain, e))
            })
            .collect()
    }
}

#[async_trait]
impl TrafficManager for Nftables {
    fn mode(&self) -> &'static str {
        "nftables"
    }

    async fn cleanup_other_mode(&self, plan: &RulesPlan) -> Result<(), TrafficError> {
        info!("Cleaning-up iptables rules...");
        crate::iptables::remove_own_rules(&self.exec, &plan.owned()).await
    }

    async fn init(&self) -> Result<(), TrafficError> {
        info!("Starting flannel in nftables mode...");
        let script = table_command(IpFamily::V4) + &table_command(IpFamily::V6);
        self.apply(&script, "initialise tables flannel-ipv4 and flannel-ipv6")
            .await
    }

    async fn setup_masq(&self, v4: Option<Masq4>, v6: Option<Masq6>) -> Result<(), TrafficError> {
        let mut state = self.state.lock().await;
        let fully_random = self.fully_random(&mut state).await;
        let prev = self.options.previous;
        let wanted = [
            v4.map(|(n, s)| {
                let p = prev.network.zip(prev.subnet);
                (
                    IpFamily::V4,
                    n.to_string(),
                    s.to_string(),
                    p.map(|(a, b)| (a.to_string(), b.to_string())),
                )
            }),
            v6.map(|(n, s)| {
                let p = prev.ipv6_network.zip(prev.ipv6_subnet);
                (
                    IpFamily::V6,
                    n.to_string(),
                    s.to_string(),
                    p.map(|(a, b)| (a.to_string(), b.to_string())),
                )
            }),
        ];
        let mut families = Vec::new();
        for (family, net, sub, prev) in wanted.into_iter().flatten() {
            info!("nftables: setting up masking rules ({})", family.nft());
            let w = state.families.entry(family).or_default();
            // The rules a replaced set, or the previous run, may have left.
            let old = match w.masq.replace((net.clone(), sub.clone())) {
                Some(old) => Some(old),
                None => prev,
            };
            let now = masq_rules(family, &net, &sub, fully_random);
            let mut stale: Vec<(String, bool)> = masq_rules(family, &net, &sub, !fully_random);
            if let Some((pn, ps)) = old.filter(|o| *o != (net.clone(), sub.clone())) {
                for fr in [true, false] {
                    stale.extend(masq_rules(family, &pn, &ps, fr));
                }
            }
            for (t, shared) in stale {
                if !shared && !now.iter().any(|(n, _)| *n == t) && !w.stale.iter().any(|s| s.1 == t)
                {
                    w.stale.push((POSTRTG_CHAIN, t));
                }
            }
            families.push(family);
        }
        self.write(&mut state, &families, HashMap::new(), "setup masq rules")
            .await
    }

    async fn setup_forward(
        &self,
        v4: Option<Ip4Net>,
        v6: Option<Ip6Net>,
    ) -> Result<(), TrafficError> {
        let mut state = self.state.lock().await;
        let prev = self.options.previous;
        let wanted = [
            v4.map(|n| {
                (
                    IpFamily::V4,
                    n.to_string(),
                    prev.network.map(|p| p.to_string()),
                )
            }),
            v6.map(|n| {
                (
                    IpFamily::V6,
                    n.to_string(),
                    prev.ipv6_network.map(|p| p.to_string()),
                )
            }),
        ];
        let mut families = Vec::new();
        for (family, net, prev) in wanted.into_iter().flatten() {
            info!(
                "nftables: Changing default FORWARD chain policy to ACCEPT ({})",
                family.nft()
            );
            let w = state.families.entry(family).or_default();
            let old = match w.forward.replace(net.clone()) {
                Some(old) => Some(old),
                None => prev,
            };
            if let Some(old) = old.filter(|o| *o != net) {
                for (t, _) in forward_rules(family, &old) {
                    w.stale.push((FORWARD_CHAIN, t));
                }
            }
            families.push(family);
        }
        self.write(&mut state, &families, HashMap::new(), "setup forward rules")
            .await
    }

    async fn remove(&self, kind: RuleKind, family: IpFamily) -> Result<(), TrafficError> {
        let mut state = self.state.lock().await;
        let fully_random = self.fully_random(&mut state).await;
        let Some(w) = state.families.get_mut(&family) else {
            return Ok(());
        };
        let (chain, rules) = match kind {
            RuleKind::Masq => (
                POSTRTG_CHAIN,
                w.masq
                    .take()
                    .map(|(c, p)| masq_rules(family, &c, &p, fully_random)),
            ),
            RuleKind::Forward => (
                FORWARD_CHAIN,
                w.forward.take().map(|n| forward_rules(family, &n)),
            ),
        };
        let Some(mut rules) = rules else {
            return Ok(());
        };
        rules.extend(
            w.stale
                .iter()
                .filter(|s| s.0 == chain)
                .map(|s| (s.1.clone(), false)),
        );
        w.stale.retain(|s| s.0 != chain);
        let texts: Vec<String> = rules.iter().map(|r| r.0.clone()).collect();
        learn(&self.exec, &mut state.fps, family, &texts).await?;
        let Some(listing) = list_table(&self.exec, family, family.nft_table()).await? else {
            return Ok(());
        };
        let fp = |t: &String| &state.fps[&(family, t.clone())];
        let unique: Vec<&Value> = rules.iter().filter(|r| !r.1).map(|r| fp(&r.0)).collect();
        let shared: Vec<&Value> = rules.iter().filter(|r| r.1).map(|r| fp(&r.0)).collect();
        let lines = removal_lines(family, &listing, chain, &unique, &shared);
        if lines.is_empty() {
            return Ok(());
        }
        self.apply(&(lines.join("\n") + "\n"), "remove our nftables rules")
            .await?;
        info!(
            "nftables: removed our rules from table {} chain {chain}",
            family.nft_table()
        );
        Ok(())
    }

    async fn resync_once(&self) -> Result<bool, TrafficError> {
        let mut state = self.state.lock().await;
        let fully_random = self.fully_random(&mut state).await;
        let mut drifted = Vec::new();
        let mut listed = HashMap::new();
        let entries: Vec<(IpFamily, Wanted)> = state
            .families
            .iter()
            .map(|(f, w)| (*f, w.clone()))
            .collect();
        for (family, w) in &entries {
            if w.masq.is_none() && w.forward.is_none() {
                continue;
            }
            let listing = list_table(&self.exec, *family, family.nft_table()).await?;
            let fine = match (
                &listing,
                Nftables::wanted_exprs(&state, *family, w, fully_random),
            ) {
                (Some(l), Some(want)) => {
                    want.iter()
                        .all(|(chain, exprs)| l.holds_in_order(chain, exprs))
                        && w.stale.is_empty()
                }
                _ => false,
            };
            if !fine {
                debug!(
                    "nftables: table {} lacks some of our rules",
                    family.nft_table()
                );
                drifted.push(*family);
                listed.insert(*family, listing);
            }
        }
        if drifted.is_empty() {
            return Ok(false);
        }
        warn!("Some nftables rules are missing; deleting and recreating rules");
        self.write(&mut state, &drifted, listed, "recreate rules")
            .await?;
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
    fn listing_keeps_chains_and_rule_exprs_without_handles() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "flannel-ipv4", "handle": 2}},
            {"chain": {"family": "ip", "table": "flannel-ipv4", "name": "postrtg", "handle": 1}},
            {"chain": {"family": "ip", "table": "flannel-ipv4", "name": "other", "handle": 9}},
            {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "postrtg", "handle": 3, "expr": [{"return": null}]}},
            {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "other", "handle": 4, "expr": []}}]}"#;
        let l = TableListing::parse(json, "nft -j list table ip flannel-ipv4").unwrap();
        assert_eq!(l.chains, ["postrtg", "other"]);
        assert_eq!(l.rules.len(), 2);
        assert_eq!(l.rules[0].0, "postrtg");
        assert_eq!(l.rules[0].1, 3);
        assert!(!serde_json::to_string(&l.rules).unwrap().contains("handle"));
        let ret = serde_json::json!([{"return": null}]);
        assert!(l.holds_in_order("postrtg", &[&ret]));
        assert!(!l.holds_in_order("forward", &[]));
    }

    #[test]
    fn removal_deletes_the_chain_only_when_nothing_else_is_in_it() {
        let (a, b, mark) = (
            serde_json::json!(["a"]),
            serde_json::json!(["b"]),
            serde_json::json!(["mark"]),
        );
        let listing = TableListing {
            chains: vec!["postrtg".into()],
            rules: vec![
                ("postrtg".into(), 5, mark.clone()),
                ("postrtg".into(), 6, a.clone()),
                ("postrtg".into(), 7, b.clone()),
            ],
        };
        assert_eq!(
            removal_lines(IpFamily::V4, &listing, "postrtg", &[&a], &[&mark]),
            ["delete rule ip flannel-ipv4 postrtg handle 6"]
        );
        assert_eq!(
            removal_lines(IpFamily::V4, &listing, "postrtg", &[&a, &b], &[&mark]),
            [
                "flush chain ip flannel-ipv4 postrtg",
                "delete chain ip flannel-ipv4 postrtg"
            ]
        );
        assert!(removal_lines(IpFamily::V4, &listing, "forward", &[&a], &[]).is_empty());
    }
}
