//! The iptables driver (§7.1–7.3): `FLANNEL-POSTRTG` in `nat`, `FLANNEL-FWD`
//! in `filter`, with the exact rule text of Go flannel.
//!
//! Each rule set (one family, one table) is written with one
//! `iptables-restore --noflush --wait` transaction:
//!
//! ```text
//! *nat
//! -N FLANNEL-POSTRTG                             (only when it is missing)
//! -D POSTROUTING ... -j FLANNEL-POSTRTG          (every existing jump)
//! -D FLANNEL-POSTRTG ...                         (our rules that are present)
//! -A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
//! -A FLANNEL-POSTRTG ...                         (our rules)
//! COMMIT
//! ```
//!
//! so the jump ends up appended after whatever else is in the built-in chain
//! (kube-proxy's rules), as with Go, and the rules of other networks in the
//! same chain stay where they are. The chain is never declared with
//! `:FLANNEL-POSTRTG - [0:0]`: under `--noflush` that line flushes an
//! existing chain, which would delete the other networks' rules. The
//! kube-proxy mark rule, the same for every network, is appended only when
//! the chain has none.
//!
//! The resync lists the own chain and the built-in chain (`iptables -S
//! <chain>`, two commands per table, cheap even with a large kube-proxy
//! `nat` table) and rewrites only when our rules are not all there in order
//! (other rules may sit in between) or the jump is missing.

use std::collections::HashMap;

use async_trait::async_trait;
use flannel_core::ip::{Ip4Net, Ip6Net};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::exec::{CmdOutput, Exec, Kind, not_installed};
use crate::plan::Owned;
use crate::{
    CommandStats, IpFamily, Masq4, Masq6, RuleKind, RulesOptions, RulesPlan, TrafficError,
    TrafficManager, report,
};

/// The masquerade chain (table `nat`).
pub const POSTRTG_CHAIN: &str = "FLANNEL-POSTRTG";
/// The forward chain (table `filter`).
pub const FWD_CHAIN: &str = "FLANNEL-FWD";
/// Comment on every masquerade rule.
pub const MASQ_COMMENT: &str = "flanneld masq";
/// Comment on every forward rule.
pub const FWD_COMMENT: &str = "flanneld forward";
/// kube-proxy's masquerade mark, as `--mark` takes it.
pub const KUBE_PROXY_MARK: &str = "0x4000/0x4000";

impl IpFamily {
    /// `iptables` or `ip6tables`.
    pub fn iptables(self) -> &'static str {
        match self {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        }
    }

    /// `iptables-restore` or `ip6tables-restore`.
    pub fn iptables_restore(self) -> &'static str {
        match self {
            IpFamily::V4 => "iptables-restore",
            IpFamily::V6 => "ip6tables-restore",
        }
    }

    /// `iptables-save` or `ip6tables-save`.
    pub fn iptables_save(self) -> &'static str {
        match self {
            IpFamily::V4 => "iptables-save",
            IpFamily::V6 => "ip6tables-save",
        }
    }
}

/// One rule: Go's `IPTablesRule` (the action is always `-A`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `nat` or `filter`.
    pub table: &'static str,
    /// The chain it is appended to.
    pub chain: &'static str,
    /// The rule specification, one token per argument.
    pub spec: Vec<String>,
    /// The rule is the same for every network (the kube-proxy mark rule):
    /// one copy serves all networks in the chain.
    pub shared: bool,
}

impl Rule {
    fn new(table: &'static str, chain: &'static str, spec: &[&str]) -> Rule {
        Rule {
            table,
            chain,
            spec: spec.iter().map(|s| (*s).to_string()).collect(),
            shared: false,
        }
    }

    /// `<action> <chain> <spec>` with the `--comment` value in double
    /// quotes: the line `iptables -S` prints for the rule (action `-A`) and
    /// the line `iptables-restore` reads (Go's `iptables_restore.go`).
    pub fn line(&self, action: &str) -> String {
        let mut out = format!("{action} {}", self.chain);
        let mut quote = false;
        for tok in &self.spec {
            out.push(' ');
            if quote {
                out.push('"');
                out.push_str(tok);
                out.push('"');
            } else {
                out.push_str(tok);
            }
            quote = tok == "--comment";
        }
        out
    }
}

/// The masquerade rules of §7.1, the `POSTROUTING` jump first, for cluster
/// network `cluster` and own subnet `pod`.
pub fn masq_rules(family: IpFamily, cluster: &str, pod: &str, random_fully: bool) -> Vec<Rule> {
    let c = MASQ_COMMENT;
    let masq: &[&str] = if random_fully {
        &["-j", "MASQUERADE", "--random-fully"]
    } else {
        &["-j", "MASQUERADE"]
    };
    fn with<'a>(head: &[&'a str], c: &'a str, tail: &[&'a str]) -> Vec<&'a str> {
        let mut v = head.to_vec();
        v.extend_from_slice(&["-m", "comment", "--comment", c]);
        v.extend_from_slice(tail);
        v
    }
    let rule = |spec: Vec<&str>| Rule::new("nat", POSTRTG_CHAIN, &spec);
    let mut mark = rule(with(
        &["-m", "mark", "--mark", KUBE_PROXY_MARK],
        c,
        &["-j", "RETURN"],
    ));
    mark.shared = true;
    vec![
        Rule::new("nat", "POSTROUTING", &with(&[], c, &["-j", POSTRTG_CHAIN])),
        mark,
        rule(with(&["-s", pod, "-d", cluster], c, &["-j", "RETURN"])),
        rule(with(&["-s", cluster, "-d", pod], c, &["-j", "RETURN"])),
        rule(with(&["!", "-s", cluster, "-d", pod], c, &["-j", "RETURN"])),
        rule(with(
            &["-s", cluster, "!", "-d", family.multicast()],
            c,
            masq,
        )),
        rule(with(&["!", "-s", cluster, "-d", cluster], c, masq)),
    ]
}

/// The forward rules of §7.3, the `FORWARD` jump first.
pub fn forward_rules(network: &str) -> Vec<Rule> {
    let c = FWD_COMMENT;
    vec![
        Rule::new(
            "filter",
            "FORWARD",
            &["-m", "comment", "--comment", c, "-j", FWD_CHAIN],
        ),
        Rule::new(
            "filter",
            FWD_CHAIN,
            &[
                "-s",
                network,
                "-m",
                "comment",
                "--comment",
                c,
                "-j",
                "ACCEPT",
            ],
        ),
        Rule::new(
            "filter",
            FWD_CHAIN,
            &[
                "-d",
                network,
                "-m",
                "comment",
                "--comment",
                c,
                "-j",
                "ACCEPT",
            ],
        ),
    ]
}

/// Whether an `iptables -S`/`iptables-save` rule line jumps (`-j`) or goes
/// (`-g`) to `chain`.
pub fn jumps_to(line: &str, chain: &str) -> bool {
    let toks: Vec<&str> = line.split_whitespace().collect();
    toks.windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain)
}

/// The first of `want` that `listing` does not hold in this order (other
/// lines may sit in between), or `None` when all are there in order.
pub fn missing_in_order<'a>(listing: &[String], want: &'a [String]) -> Option<&'a String> {
    let mut rest = listing.iter();
    want.iter().find(|w| !rest.any(|l| l == *w))
}

/// `-A CHAIN spec` (a listing line) as `-D CHAIN spec`.
fn delete_line(line: &str) -> String {
    format!("-D{}", line.strip_prefix("-A").unwrap_or(line))
}

/// What an iptables binary supports, from `iptables --version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// The version (`1.8.9` → `(1, 8, 9)`).
    pub version: (u32, u32, u32),
    /// `-w` on commands (≥ 1.4.20).
    pub wait: bool,
    /// `iptables-restore --wait` (≥ 1.6.2).
    pub restore_wait: bool,
    /// `MASQUERADE --random-fully` (≥ 1.6.2, go-iptables `HasRandomFully`).
    pub random_fully: bool,
}

impl Caps {
    /// Parses `iptables v1.8.9 (nf_tables)`.
    pub fn parse(version_output: &str) -> Option<Caps> {
        let tok = version_output
            .split_whitespace()
            .find_map(|t| t.strip_prefix('v'))?;
        let mut parts = tok.split('.').map(|p| {
            p.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u32>()
        });
        let major = parts.next()?.ok()?;
        let minor = parts.next().and_then(|p| p.ok()).unwrap_or(0);
        let patch = parts.next().and_then(|p| p.ok()).unwrap_or(0);
        let v = (major, minor, patch);
        Some(Caps {
            version: v,
            wait: v >= (1, 4, 20),
            restore_wait: v >= (1, 6, 2),
            random_fully: v >= (1, 6, 2),
        })
    }
}

/// One family's rules in one table: the jump from the built-in chain and
/// our rules in the flannel chain. What is written in one transaction and
/// checked by the resync.
#[derive(Debug, Clone)]
struct RuleSet {
    family: IpFamily,
    kind: RuleKind,
    table: &'static str,
    builtin: &'static str,
    chain: &'static str,
    jump: Rule,
    /// Our rules in the flannel chain, in order.
    rules: Vec<Rule>,
    /// The jump as `iptables -S <builtin>` lists it.
    want_jump: String,
    /// Our rules as `iptables -S <chain>` lists them.
    want: Vec<String>,
    /// Lines of ours to delete if present (a previous network or subnet, a
    /// replaced set); cleared after a successful write.
    stale: Vec<String>,
}

impl RuleSet {
    fn new(family: IpFamily, kind: RuleKind, mut rules: Vec<Rule>) -> RuleSet {
        let jump = rules.remove(0);
        RuleSet {
            family,
            kind,
            table: jump.table,
            builtin: jump.chain,
            chain: rules[0].chain,
            want_jump: jump.line("-A"),
            want: rules.iter().map(|r| r.line("-A")).collect(),
            jump,
            rules,
            stale: Vec::new(),
        }
    }

    /// Our lines that no other network has (deleted before re-appending).
    fn unique(&self) -> Vec<String> {
        self.want
            .iter()
            .zip(&self.rules)
            .filter(|(_, r)| !r.shared)
            .map(|(l, _)| l.clone())
            .chain(self.stale.iter().cloned())
            .collect()
    }

    /// Our lines that every network has.
    fn shared(&self) -> Vec<String> {
        self.want
            .iter()
            .zip(&self.rules)
            .filter(|(_, r)| r.shared)
            .map(|(l, _)| l.clone())
            .collect()
    }

    fn error(&self, action: &'static str, source: TrafficError) -> TrafficError {
        TrafficError::Chain {
            action,
            tool: self.family.iptables(),
            table: self.table.to_string(),
            chain: self.chain.to_string(),
            source: Box::new(source),
        }
    }
}

/// A chain's `-A` lines, or `None` when it cannot be listed (missing).
type Listing = Option<Vec<String>>;

/// What [`Iptables::check`] found.
struct Checked {
    drift: Option<String>,
    chain: Listing,
    builtin: Option<Vec<String>>,
}

/// The lines (between `*table` and `COMMIT`) that remove our rules from
/// `chain`: `unique` lines are deleted; when nothing but `shared` lines
/// would be left, the jumps to the chain (found in `other_lines`, the
/// table's other rules) and the chain itself go too. Empty when there is
/// nothing of ours.
fn removal_lines(
    chain: &str,
    chain_lines: &[String],
    other_lines: &[String],
    unique: &[String],
    shared: &[String],
) -> Vec<String> {
    let ours = |l: &String| unique.contains(l) || shared.contains(l);
    if chain_lines.iter().all(ours) {
        let mut out: Vec<String> = other_lines
            .iter()
            .filter(|l| jumps_to(l, chain))
            .map(|l| delete_line(l))
            .collect();
        out.push(format!("-F {chain}"));
        out.push(format!("-X {chain}"));
        return out;
    }
    chain_lines
        .iter()
        .filter(|l| unique.contains(l))
        .map(|l| delete_line(l))
        .collect()
}

#[derive(Debug, Default)]
struct State {
    caps: HashMap<IpFamily, Caps>,
    sets: Vec<RuleSet>,
}

/// The iptables driver.
#[derive(Debug)]
pub struct Iptables {
    options: RulesOptions,
    exec: Exec,
    state: Mutex<State>,
}

impl Iptables {
    /// A driver with `options`; no command runs until a method is called.
    pub fn new(options: RulesOptions) -> Iptables {
        Iptables {
            options,
            exec: Exec::default(),
            state: Mutex::new(State::default()),
        }
    }

    /// The binary's capabilities, probed once per family.
    async fn caps(&self, state: &mut State, family: IpFamily) -> Result<Caps, TrafficError> {
        if let Some(c) = state.caps.get(&family) {
            return Ok(*c);
        }
        let caps = probe_caps(&self.exec, family).await?;
        debug!(
            "{} is version {}.{}.{}",
            family.iptables(),
            caps.version.0,
            caps.version.1,
            caps.version.2
        );
        state.caps.insert(family, caps);
        Ok(caps)
    }

    /// `iptables [-w] -t <table> -S <chain>`: the `-A` lines, or the
    /// command's failure (a missing chain is a failure).
    async fn list(
        &self,
        caps: Caps,
        family: IpFamily,
        table: &str,
        chain: &str,
    ) -> Result<Result<Vec<String>, TrafficError>, TrafficError> {
        let mut args = Vec::with_capacity(5);
        if caps.wait {
            args.push("-w");
        }
        args.extend_from_slice(&["-t", table, "-S", chain]);
        let out = self
            .exec
            .run(family.iptables(), &args, None, Kind::Read)
            .await?;
        Ok(if out.success {
            Ok(out
                .stdout
                .lines()
                .filter(|l| l.starts_with("-A "))
                .map(str::to_string)
                .collect())
        } else {
            Err(out.failure())
        })
    }

    /// Our chain, `None` when it cannot be listed.
    async fn list_chain(&self, caps: Caps, set: &RuleSet) -> Result<Listing, TrafficError> {
        Ok(
            match self.list(caps, set.family, set.table, set.chain).await? {
                Ok(lines) => Some(lines),
                Err(e) => {
                    debug!("{} cannot be listed: {}", set.chain, report(&e));
                    None
                }
            },
        )
    }

    /// Looks for our rules (in order) and the jump.
    async fn check(&self, caps: Caps, set: &RuleSet) -> Result<Checked, TrafficError> {
        let chain = self.list_chain(caps, set).await?;
        let Some(lines) = &chain else {
            return Ok(Checked {
                drift: Some(format!("{} cannot be listed", set.chain)),
                chain,
                builtin: None,
            });
        };
        if let Some(missing) = missing_in_order(lines, &set.want) {
            return Ok(Checked {
                drift: Some(format!(
                    "{} {} lacks `{missing}` (or holds it out of order)",
                    set.family.iptables(),
                    set.chain
                )),
                chain,
                builtin: None,
            });
        }
        let builtin = self
            .list(caps, set.family, set.table, set.builtin)
            .await?
            .map_err(|e| set.error("listing", e))?;
        let drift = (!builtin.contains(&set.want_jump)).then(|| {
            format!(
                "{} chain {} has no `{}`",
                set.family.iptables(),
                set.builtin,
                set.want_jump
            )
        });
        Ok(Checked {
            drift,
            chain,
            builtin: Some(builtin),
        })
    }

    /// Writes `set` in one transaction (see the module documentation).
    /// Returns how many of our rules were appended to the chain (the
    /// shared rule is not when the chain has one).
    async fn write(
        &self,
        caps: Caps,
        set: &RuleSet,
        chain: Option<Listing>,
        builtin: Option<Vec<String>>,
    ) -> Result<usize, TrafficError> {
        let chain = match chain {
            Some(c) => c,
            None => self.list_chain(caps, set).await?,
        };
        let builtin = match builtin {
            Some(b) => b,
            None => self
                .list(caps, set.family, set.table, set.builtin)
                .await?
                .map_err(|e| set.error("listing", e))?,
        };
        let mut payload = format!("*{}\n", set.table);
        if chain.is_none() {
            payload.push_str(&format!("-N {}\n", set.chain));
        }
        for line in builtin.iter().filter(|l| jumps_to(l, set.chain)) {
            payload.push_str(&delete_line(line));
            payload.push('\n');
        }
        let unique = set.unique();
        let present = chain.unwrap_or_default();
        let mut remaining = Vec::with_capacity(present.len());
        for line in present {
            if unique.contains(&line) {
                payload.push_str(&delete_line(&line));
                payload.push('\n');
            } else {
                remaining.push(line);
            }
        }
        payload.push_str(&set.jump.line("-A"));
        payload.push('\n');
        let mut appended = 0;
        for (rule, want) in set.rules.iter().zip(&set.want) {
            if rule.shared && remaining.contains(want) {
                continue;
            }
            payload.push_str(&rule.line("-A"));
            payload.push('\n');
            appended += 1;
        }
        payload.push_str("COMMIT\n");
        restore(&self.exec, set.family, caps, &payload)
            .await
            .map_err(|e| set.error("writing", e))?;
        Ok(appended)
    }

    /// After a write: if iptables lists our rules in another spelling than
    /// ours (another iptables version), compare against its spelling from
    /// now on instead of rewriting every period. Our `appended` rules are
    /// the chain's last lines.
    async fn adopt_listing(
        &self,
        caps: Caps,
        set: &mut RuleSet,
        appended: usize,
    ) -> Result<(), TrafficError> {
        if let Some(lines) = self.list_chain(caps, set).await?
            && appended <= lines.len()
            && appended <= set.want.len()
        {
            let listed = &lines[lines.len() - appended..];
            let first = set.want.len() - appended;
            if listed != &set.want[first..] {
                warn!(
                    "{} {} lists our rules as `{}` after writing `{}`; the resync compares \
                     against the listing",
                    set.family.iptables(),
                    set.chain,
                    listed.join("`, `"),
                    set.want[first..].join("`, `")
                );
                set.want.splice(first.., listed.iter().cloned());
            }
        }
        if let Ok(lines) = self.list(caps, set.family, set.table, set.builtin).await?
            && !lines.contains(&set.want_jump)
            && let Some(l) = lines.iter().rev().find(|l| jumps_to(l, set.chain))
        {
            warn!(
                "{} lists the jump as `{l}` after writing `{}`",
                set.family.iptables(),
                set.want_jump
            );
            set.want_jump = l.clone();
        }
        Ok(())
    }

    /// Installs `rules` (jump first) as the `kind` set of `family`,
    /// deleting `stale` lines and the lines of the set it replaces, and
    /// keeps it for the resync.
    async fn install(
        &self,
        state: &mut State,
        family: IpFamily,
        kind: RuleKind,
        rules: Vec<Rule>,
        stale: Vec<String>,
    ) -> Result<(), TrafficError> {
        let caps = self.caps(state, family).await?;
        let mut set = RuleSet::new(family, kind, rules);
        set.stale = stale;
        if let Some(old) = state
            .sets
            .iter()
            .find(|s| s.family == family && s.kind == kind)
        {
            for line in old.unique() {
                if !set.want.contains(&line) && !set.stale.contains(&line) {
                    set.stale.push(line);
                }
            }
        }
        // Kept before writing, so the resync retries a failed first write.
        state
            .sets
            .retain(|s| !(s.family == family && s.kind == kind));
        state.sets.push(set.clone());
        let appended = self.write(caps, &set, None, None).await?;
        set.stale.clear();
        self.adopt_listing(caps, &mut set, appended).await?;
        if let Some(s) = state
            .sets
            .iter_mut()
            .find(|s| s.family == family && s.kind == kind)
        {
            *s = set;
        }
        Ok(())
    }

    async fn setup_masq_family(
        &self,
        state: &mut State,
        family: IpFamily,
        (net, sub): (String, String),
        previous: (Option<String>, Option<String>),
    ) -> Result<(), TrafficError> {
        let caps = self.caps(state, family).await?;
        let random = caps.random_fully && !self.options.fully_random_disable;
        let replacing = state
            .sets
            .iter()
            .any(|s| s.family == family && s.kind == RuleKind::Masq);
        // The previous run's rules matter only for the first install; a
        // replaced set's own lines are deleted by `install`.
        let prev = match previous {
            (Some(pn), Some(ps)) if !replacing && (pn != net || ps != sub) => {
                info!(
                    "Current network or subnet ({net}, {sub}) is not equal to previous one ({pn}, {ps}), \
                     trying to recycle old iptables rules"
                );
                Some((pn, ps))
            }
            _ => None,
        };
        let rules = masq_rules(family, &net, &sub, random);
        let now: Vec<String> = rules.iter().map(|r| r.line("-A")).collect();
        // A previous run may have written the other `--random-fully`
        // spelling, and the previous network's rules in either.
        let stale: Vec<String> = prev
            .iter()
            .flat_map(|(pn, ps)| {
                let (pn, ps) = (pn.clone(), ps.clone());
                [true, false].map(move |rf| masq_rules(family, &pn, &ps, rf))
            })
            .chain(std::iter::once(masq_rules(family, &net, &sub, !random)))
            .flatten()
            .filter(|r| r.chain == POSTRTG_CHAIN && !r.shared)
            .map(|r| r.line("-A"))
            .filter(|l| !now.contains(l))
            .collect();
        match family {
            IpFamily::V4 => info!("Setting up masking rules"),
            IpFamily::V6 => info!("Setting up masking rules for IPv6"),
        }
        self.install(state, family, RuleKind::Masq, rules, stale)
            .await
    }
}

/// `iptables --version`, parsed.
pub(crate) async fn probe_caps(exec: &Exec, family: IpFamily) -> Result<Caps, TrafficError> {
    let bin = family.iptables();
    let out = exec.run(bin, &["--version"], None, Kind::Read).await?;
    if !out.success {
        return Err(out.failure());
    }
    Caps::parse(&out.stdout).ok_or_else(|| TrafficError::Output {
        command: out.cmdline.clone(),
        reason: format!("no version in {:?}", out.stdout.trim()),
    })
}

/// `iptables-restore --noflush [--wait]` with `payload`; the error names
/// the failing line when iptables reports one.
pub(crate) async fn restore(
    exec: &Exec,
    family: IpFamily,
    caps: Caps,
    payload: &str,
) -> Result<(), TrafficError> {
    let mut args = vec!["--noflush"];
    if caps.restore_wait {
        args.push("--wait");
    }
    let bin = family.iptables_restore();
    let out = exec.run(bin, &args, Some(payload), Kind::Write).await?;
    if out.success {
        return Ok(());
    }
    Err(out.failure_with(&offending_line(&out, payload)))
}

/// `; line 3 is: -A ...` when stderr names a line of `payload`.
fn offending_line(out: &CmdOutput, payload: &str) -> String {
    let Some(pos) = out.stderr.find("line ") else {
        return String::new();
    };
    let digits: String = out.stderr[pos + 5..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    match digits.parse::<usize>() {
        Ok(n) if n >= 1 => payload
            .lines()
            .nth(n - 1)
            .map(|l| format!("; line {n} is `{l}`"))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Our lines (unique, shared) in `chain` for the networks of `owned`, in
/// both `--random-fully` spellings.
fn owned_lines(owned: &Owned, family: IpFamily, chain: &str) -> (Vec<String>, Vec<String>) {
    let mut rules: Vec<Rule> = Vec::new();
    for (f, n, s) in &owned.masq {
        if *f == family {
            for rf in [true, false] {
                rules.extend(masq_rules(family, n, s, rf));
            }
        }
    }
    for (f, n) in &owned.forward {
        if *f == family {
            rules.extend(forward_rules(n));
        }
    }
    let (mut unique, mut shared) = (Vec::new(), Vec::new());
    for r in rules.into_iter().filter(|r| r.chain == chain) {
        let l = r.line("-A");
        let v = if r.shared { &mut shared } else { &mut unique };
        if !v.contains(&l) {
            v.push(l);
        }
    }
    (unique, shared)
}

/// nftables mode's cleanup (§7.4, done properly): for each family whose
/// tools are installed, deletes the rules of `owned` from `FLANNEL-POSTRTG`
/// and `FLANNEL-FWD`, and a chain with the jumps to it when nothing of
/// another network is left in it; one restore per family.
pub(crate) async fn remove_own_rules(exec: &Exec, owned: &Owned) -> Result<(), TrafficError> {
    let chains = [POSTRTG_CHAIN, FWD_CHAIN];
    for family in [IpFamily::V4, IpFamily::V6] {
        let save = family.iptables_save();
        let out = match exec.run(save, &[], None, Kind::Read).await {
            Ok(o) => o,
            Err(e) if not_installed(&e) => {
                debug!("{save} is not installed: no iptables rules to clean up");
                continue;
            }
            Err(e) => {
                warn!("Cannot clean up iptables rules: {}", report(&e));
                continue;
            }
        };
        if !out.success {
            warn!("Cannot clean up iptables rules: {}", report(&out.failure()));
            continue;
        }
        // table → (declared chains, -A lines)
        let mut tables: Vec<(&str, Vec<&str>, Vec<String>)> = Vec::new();
        for line in out.stdout.lines() {
            if let Some(t) = line.strip_prefix('*') {
                tables.push((t, Vec::new(), Vec::new()));
            } else if let Some((_, declared, lines)) = tables.last_mut() {
                if let Some(decl) = line.strip_prefix(':') {
                    declared.push(decl.split_whitespace().next().unwrap_or(""));
                } else if line.starts_with("-A ") {
                    lines.push(line.to_string());
                }
            }
        }
        let mut payload = String::new();
        let mut touched = Vec::new();
        for (table, declared, lines) in &tables {
            let mut body = Vec::new();
            for chain in chains.iter().filter(|c| declared.contains(c)) {
                let prefix = format!("-A {chain} ");
                let (mine, others): (Vec<String>, Vec<String>) =
                    lines.iter().cloned().partition(|l| l.starts_with(&prefix));
                let (unique, shared) = owned_lines(owned, family, chain);
                let r = removal_lines(chain, &mine, &others, &unique, &shared);
                if !r.is_empty() {
                    touched.push(format!("{chain} (table {table})"));
                }
                body.extend(r);
            }
            if !body.is_empty() {
                payload.push_str(&format!("*{table}\n{}\nCOMMIT\n", body.join("\n")));
            }
        }
        if payload.is_empty() {
            continue;
        }
        let caps = match probe_caps(exec, family).await {
            Ok(c) => c,
            Err(e) => {
                warn!("Cannot clean up iptables rules: {}", report(&e));
                continue;
            }
        };
        match restore(exec, family, caps, &payload).await {
            Ok(()) => info!(
                "Removed our {} rules from {} (left by iptables mode)",
                family.iptables(),
                touched.join(", ")
            ),
            Err(e) => warn!("Cannot clean up iptables rules: {}", report(&e)),
        }
    }
    Ok(())
}

#[async_trait]
impl TrafficManager for Iptables {
    fn mode(&self) -> &'static str {
        "iptables"
    }

    async fn cleanup_other_mode(&self, plan: &RulesPlan) -> Result<(), TrafficError> {
        crate::nftables::remove_own_rules(&self.exec, &plan.owned()).await
    }

    async fn init(&self) -> Result<(), TrafficError> {
        info!("Starting flannel in iptables mode...");
        Ok(())
    }

    async fn setup_masq(&self, v4: Option<Masq4>, v6: Option<Masq6>) -> Result<(), TrafficError> {
        let mut state = self.state.lock().await;
        let prev = self.options.previous;
        let families = [
            v4.map(|(n, s)| {
                let p = (
                    prev.network.map(|x| x.to_string()),
                    prev.subnet.map(|x| x.to_string()),
                );
                (IpFamily::V4, (n.to_string(), s.to_string()), p)
            }),
            v6.map(|(n, s)| {
                let p = (
                    prev.ipv6_network.map(|x| x.to_string()),
                    prev.ipv6_subnet.map(|x| x.to_string()),
                );
                (IpFamily::V6, (n.to_string(), s.to_string()), p)
            }),
        ];
        for (family, current, previous) in families.into_iter().flatten() {
            self.setup_masq_family(&mut state, family, current, previous)
                .await?;
        }
        Ok(())
    }

    async fn setup_forward(
        &self,
        v4: Option<Ip4Net>,
        v6: Option<Ip6Net>,
    ) -> Result<(), TrafficError> {
        let mut state = self.state.lock().await;
        let mut first_err = None;
        let prev = self.options.previous;
        let wanted = [
            (
                IpFamily::V4,
                v4.map(|n| n.to_string()),
                prev.network.map(|n| n.to_string()),
            ),
            (
                IpFamily::V6,
                v6.map(|n| n.to_string()),
                prev.ipv6_network.map(|n| n.to_string()),
            ),
        ];
        for (family, net, prev) in wanted {
            let Some(net) = net else { continue };
            match family {
                IpFamily::V4 => info!("Changing default FORWARD chain policy to ACCEPT"),
                IpFamily::V6 => info!("IPv6: Changing default FORWARD chain policy to ACCEPT"),
            }
            let replacing = state
                .sets
                .iter()
                .any(|s| s.family == family && s.kind == RuleKind::Forward);
            let stale: Vec<String> = prev
                .filter(|p| !replacing && *p != net)
                .map(|p| forward_rules(&p))
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.chain == FWD_CHAIN)
                .map(|r| r.line("-A"))
                .collect();
            let rules = forward_rules(&net);
            if let Err(e) = self
                .install(&mut state, family, RuleKind::Forward, rules, stale)
                .await
            {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn remove(&self, kind: RuleKind, family: IpFamily) -> Result<(), TrafficError> {
        let mut state = self.state.lock().await;
        let Some(pos) = state
            .sets
            .iter()
            .position(|s| s.family == family && s.kind == kind)
        else {
            return Ok(());
        };
        let set = state.sets.remove(pos);
        let caps = self.caps(&mut state, family).await?;
        let Some(chain) = self.list_chain(caps, &set).await? else {
            return Ok(());
        };
        let builtin = self
            .list(caps, family, set.table, set.builtin)
            .await?
            .map_err(|e| set.error("listing", e))?;
        let lines = removal_lines(set.chain, &chain, &builtin, &set.unique(), &set.shared());
        if lines.is_empty() {
            return Ok(());
        }
        let payload = format!("*{}\n{}\nCOMMIT\n", set.table, lines.join("\n"));
        restore(&self.exec, family, caps, &payload)
            .await
            .map_err(|e| set.error("removing our rules from", e))?;
        info!(
            "Removed our {} rules from {} (table {})",
            family.iptables(),
            set.chain,
            set.table
        );
        Ok(())
    }

    async fn resync_once(&self) -> Result<bool, TrafficError> {
        let mut state = self.state.lock().await;
        let mut rewrote = false;
        let mut logged = false;
        let mut first_err = None;
        for i in 0..state.sets.len() {
            let family = state.sets[i].family;
            let caps = match self.caps(&mut state, family).await {
                Ok(c) => c,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let set = state.sets[i].clone();
            let checked = match self.check(caps, &set).await {
                Ok(c) => c,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let Some(reason) = checked.drift else {
                continue;
            };
            if !logged {
                warn!("Some iptables rules are missing; deleting and recreating rules");
                logged = true;
            }
            debug!("iptables drift: {reason}");
            match self
                .write(caps, &set, Some(checked.chain), checked.builtin)
                .await
            {
                Ok(_) => {
                    rewrote = true;
                    state.sets[i].stale.clear();
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(rewrote),
        }
    }

    fn stats(&self) -> CommandStats {
        self.exec.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_line_quotes_the_comment() {
        // Go's iptables_restore_test.go.
        let r = Rule::new(
            "nat",
            "INPUT",
            &[
                "-s",
                "127.0.0.1",
                "!",
                "-d",
                "224.0.0.0/4",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "MASQUERADE",
                "--random-fully",
            ],
        );
        assert_eq!(
            r.line("-A"),
            r#"-A INPUT -s 127.0.0.1 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#
        );
    }

    #[test]
    fn masq_rules_text() {
        let lines: Vec<String> = masq_rules(IpFamily::V4, "10.244.0.0/16", "10.244.7.0/24", false)
            .iter()
            .map(|r| r.line("-A"))
            .collect();
        assert_eq!(
            lines,
            [
                r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#,
                r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.244.7.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE"#,
                r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE"#,
            ]
        );
    }

    #[test]
    fn versions() {
        let c = Caps::parse("iptables v1.8.9 (nf_tables)\n").unwrap();
        assert_eq!(c.version, (1, 8, 9));
        assert!(c.wait && c.restore_wait && c.random_fully);
        let c = Caps::parse("iptables v1.6.1").unwrap();
        assert!(c.wait && !c.restore_wait && !c.random_fully);
        let c = Caps::parse("iptables v1.4.19.1").unwrap();
        assert!(!c.wait);
        assert!(Caps::parse("garbage").is_none());
    }

    #[test]
    fn restore_errors_quote_the_failing_line() {
        let out = CmdOutput {
            cmdline: "iptables-restore --noflush --wait".into(),
            success: false,
            status: "exit status: 2".into(),
            stdout: String::new(),
            stderr: "iptables-restore v1.8.9 (nf_tables): line 3: RULE_APPEND failed".into(),
        };
        let payload = "*nat\n:FLANNEL-POSTRTG - [0:0]\n-A FLANNEL-POSTRTG -j NOPE\nCOMMIT\n";
        assert_eq!(
            out.failure_with(&offending_line(&out, payload)).to_string(),
            "`iptables-restore --noflush --wait` failed (exit status: 2): iptables-restore v1.8.9 \
             (nf_tables): line 3: RULE_APPEND failed; line 3 is `-A FLANNEL-POSTRTG -j NOPE`"
        );
    }

    #[test]
    fn jump_detection() {
        assert!(jumps_to(
            r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#,
            POSTRTG_CHAIN
        ));
        assert!(jumps_to("-A FORWARD -g FLANNEL-FWD", FWD_CHAIN));
        assert!(!jumps_to("-A FORWARD -j FLANNEL-FWDX", FWD_CHAIN));
    }

    #[test]
    fn our_rules_may_be_interleaved_but_not_reordered() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let want = l(&["m", "a1", "a2"]);
        assert_eq!(
            missing_in_order(&l(&["m", "b1", "a1", "b2", "a2"]), &want),
            None
        );
        assert_eq!(
            missing_in_order(&l(&["a1", "m", "a2"]), &want).map(String::as_str),
            Some("a1")
        );
        assert_eq!(
            missing_in_order(&l(&["m", "a2"]), &want).map(String::as_str),
            Some("a1")
        );
    }

    #[test]
    fn removal_keeps_other_networks_and_the_chain_they_use() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let chain = l(&["-A FLANNEL-FWD -s A", "-A FLANNEL-FWD -s B"]);
        let jumps = l(&["-A FORWARD -j FLANNEL-FWD", "-A FORWARD -j DROP"]);
        assert_eq!(
            removal_lines(FWD_CHAIN, &chain, &jumps, &l(&["-A FLANNEL-FWD -s A"]), &[]),
            ["-D FLANNEL-FWD -s A"]
        );
        assert_eq!(
            removal_lines(
                FWD_CHAIN,
                &chain,
                &jumps,
                &l(&["-A FLANNEL-FWD -s A", "-A FLANNEL-FWD -s B"]),
                &[]
            ),
            [
                "-D FORWARD -j FLANNEL-FWD",
                "-F FLANNEL-FWD",
                "-X FLANNEL-FWD"
            ]
        );
    }
}
