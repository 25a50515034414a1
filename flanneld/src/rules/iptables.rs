//! The iptables driver (§7.1–7.3): `FLANNEL-POSTRTG` in `nat`, `FLANNEL-FWD`
//! in `filter`, with the exact rule text of Go flannel.
//!
//! Each chain is written with one `iptables-restore --noflush --wait`
//! transaction per table:
//!
//! ```text
//! *nat
//! :FLANNEL-POSTRTG - [0:0]                       (creates or flushes the chain)
//! -D POSTROUTING ... -j FLANNEL-POSTRTG          (every existing jump)
//! -A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
//! -A FLANNEL-POSTRTG ...                         (the rules)
//! COMMIT
//! ```
//!
//! so the jump ends up appended after whatever else is in the built-in chain
//! (kube-proxy's rules), as with Go. The resync lists the own chain and the
//! built-in chain (`iptables -S <chain>`, two commands per table, cheap even
//! with a large kube-proxy `nat` table) and rewrites only when the own chain
//! differs from the expected text or the jump is missing.

use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};
use async_trait::async_trait;
use flannel_core::ip::{Ip4Net, Ip6Net};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::{CmdOutput, CommandStats, Exec, IpFamily, Masq4, Masq6, RulesOptions, TrafficManager};

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
}

impl Rule {
    fn new(table: &'static str, chain: &'static str, spec: &[&str]) -> Rule {
        Rule {
            table,
            chain,
            spec: spec.iter().map(|s| (*s).to_string()).collect(),
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
    vec![
        Rule::new("nat", "POSTROUTING", &with(&[], c, &["-j", POSTRTG_CHAIN])),
        rule(with(
            &["-m", "mark", "--mark", KUBE_PROXY_MARK],
            c,
            &["-j", "RETURN"],
        )),
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

/// One chain flannel owns, with the jump to it: what is written in one
/// transaction and compared by the resync.
#[derive(Debug, Clone)]
struct RuleSet {
    family: IpFamily,
    table: &'static str,
    builtin: &'static str,
    chain: &'static str,
    /// The jump (first) and the chain's rules.
    rules: Vec<Rule>,
    /// The jump as `iptables -S <builtin>` lists it.
    want_jump: String,
    /// The chain as `iptables -S <chain>` lists it (`-A` lines).
    want_chain: Vec<String>,
}

impl RuleSet {
    fn new(family: IpFamily, rules: Vec<Rule>) -> RuleSet {
        let jump = &rules[0];
        let chain = rules[1].chain;
        RuleSet {
            family,
            table: jump.table,
            builtin: jump.chain,
            chain,
            want_jump: jump.line("-A"),
            want_chain: rules[1..].iter().map(|r| r.line("-A")).collect(),
            rules,
        }
    }

    fn what(&self) -> String {
        format!(
            "{} chain {} (table {})",
            self.family.iptables(),
            self.chain,
            self.table
        )
    }
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
    async fn caps(&self, state: &mut State, family: IpFamily) -> Result<Caps> {
        if let Some(c) = state.caps.get(&family) {
            return Ok(*c);
        }
        let caps = probe_caps(&self.exec, family).await?;
        debug!("{} {:?}", family.iptables(), caps);
        state.caps.insert(family, caps);
        Ok(caps)
    }

    /// `iptables [-w] -t <table> -S <chain>`: the `-A` lines, or the
    /// command's failure text (a missing chain is a failure).
    async fn list(
        &self,
        caps: Caps,
        family: IpFamily,
        table: &str,
        chain: &str,
    ) -> Result<std::result::Result<Vec<String>, String>> {
        let mut args = Vec::with_capacity(5);
        if caps.wait {
            args.push("-w");
        }
        args.extend_from_slice(&["-t", table, "-S", chain]);
        let out = self
            .exec
            .run(family.iptables(), &args, None, false)
            .await
            .map_err(|e| anyhow!("cannot run `{} -S {chain}`: {e}", family.iptables()))?;
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

    /// Compares the installed chain and jump with `set`: `Some(reason)` when
    /// they differ, plus the built-in chain's listing when it was read.
    async fn check(
        &self,
        caps: Caps,
        set: &RuleSet,
    ) -> Result<(Option<String>, Option<Vec<String>>)> {
        let chain = match self.list(caps, set.family, set.table, set.chain).await? {
            Ok(lines) => lines,
            Err(e) => return Ok((Some(format!("{} cannot be listed: {e}", set.what())), None)),
        };
        if chain != set.want_chain {
            return Ok((
                Some(format!(
                    "{} holds {chain:?}, expected {:?}",
                    set.what(),
                    set.want_chain
                )),
                None,
            ));
        }
        let builtin = match self.list(caps, set.family, set.table, set.builtin).await? {
            Ok(lines) => lines,
            Err(e) => return Ok((Some(e), None)),
        };
        if !builtin.contains(&set.want_jump) {
            return Ok((
                Some(format!(
                    "{} chain {} has no `{}`",
                    set.family.iptables(),
                    set.builtin,
                    set.want_jump
                )),
                Some(builtin),
            ));
        }
        Ok((None, Some(builtin)))
    }

    /// Writes `set` in one transaction; `stale` are lines of a previous
    /// network/subnet to delete from the built-in chain if present.
    async fn write(
        &self,
        caps: Caps,
        set: &RuleSet,
        builtin: Option<Vec<String>>,
        stale: &[String],
    ) -> Result<()> {
        let builtin = match builtin {
            Some(b) => b,
            None => self
                .list(caps, set.family, set.table, set.builtin)
                .await?
                .map_err(|e| anyhow!("cannot list the {} chain: {e}", set.builtin))?,
        };
        let mut payload = format!("*{}\n:{} - [0:0]\n", set.table, set.chain);
        for line in &builtin {
            if jumps_to(line, set.chain) || stale.contains(line) {
                payload.push_str("-D");
                payload.push_str(&line[2..]);
                payload.push('\n');
            }
        }
        for rule in &set.rules {
            payload.push_str(&rule.line("-A"));
            payload.push('\n');
        }
        payload.push_str("COMMIT\n");
        restore(&self.exec, set.family, caps, &payload)
            .await
            .map_err(|e| anyhow!("writing {}: {e}", set.what()))
    }

    /// After a write: if iptables lists the rules in another spelling than
    /// ours (another iptables version), compare against its spelling from
    /// now on instead of rewriting every period.
    async fn adopt_listing(&self, caps: Caps, set: &mut RuleSet) -> Result<()> {
        if let Ok(lines) = self.list(caps, set.family, set.table, set.chain).await?
            && lines != set.want_chain
        {
            warn!(
                "{} lists as {lines:?} after writing {:?}; the resync compares against the listing",
                set.what(),
                set.want_chain
            );
            set.want_chain = lines;
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

    /// Installs `rules` (jump first) as the set for their table, deleting
    /// `stale` lines, and keeps it for the resync.
    async fn install(
        &self,
        state: &mut State,
        family: IpFamily,
        rules: Vec<Rule>,
        stale: Vec<String>,
    ) -> Result<()> {
        let caps = self.caps(state, family).await?;
        let mut set = RuleSet::new(family, rules);
        // Kept before writing, so the resync retries a failed first write.
        state
            .sets
            .retain(|s| !(s.family == family && s.table == set.table));
        state.sets.push(set.clone());
        self.write(caps, &set, None, &stale).await?;
        self.adopt_listing(caps, &mut set).await?;
        if let Some(s) = state
            .sets
            .iter_mut()
            .find(|s| s.family == family && s.table == set.table)
        {
            *s = set;
        }
        Ok(())
    }

    /// The masquerade rules of the previous network/subnet that live in the
    /// built-in chain (the own chain is flushed anyway) and are not among
    /// `current` (§7.2 step 1).
    fn stale_lines(
        &self,
        family: IpFamily,
        current: &[Rule],
        previous: Option<(String, String)>,
        random_fully: bool,
    ) -> Vec<String> {
        let Some((net, sub)) = previous else {
            return Vec::new();
        };
        let now: Vec<String> = current.iter().map(|r| r.line("-A")).collect();
        masq_rules(family, &net, &sub, random_fully)
            .into_iter()
            .filter(|r| r.chain != POSTRTG_CHAIN)
            .map(|r| r.line("-A"))
            .filter(|l| !now.contains(l))
            .collect()
    }

    async fn setup_masq_family(
        &self,
        state: &mut State,
        family: IpFamily,
        (net, sub): (String, String),
        previous: (Option<String>, Option<String>),
    ) -> Result<()> {
        let caps = self.caps(state, family).await?;
        let random = caps.random_fully && !self.options.fully_random_disable;
        let prev = match previous {
            (Some(pn), Some(ps)) if pn != net || ps != sub => {
                info!(
                    "Current network or subnet ({net}, {sub}) is not equal to previous one ({pn}, {ps}), \
                     trying to recycle old iptables rules"
                );
                Some((pn, ps))
            }
            _ => None,
        };
        let rules = masq_rules(family, &net, &sub, random);
        let stale = self.stale_lines(family, &rules, prev, random);
        match family {
            IpFamily::V4 => info!("Setting up masking rules"),
            IpFamily::V6 => info!("Setting up masking rules for IPv6"),
        }
        self.install(state, family, rules, stale).await
    }
}

/// `iptables --version`, parsed.
pub(crate) async fn probe_caps(exec: &Exec, family: IpFamily) -> Result<Caps> {
    let bin = family.iptables();
    let out = exec
        .run(bin, &["--version"], None, false)
        .await
        .map_err(|e| anyhow!("failed to setup IPTables. {bin} binary was not found: {e}"))?;
    if !out.success {
        bail!("{}", out.failure());
    }
    Caps::parse(&out.stdout).ok_or_else(|| {
        anyhow!(
            "cannot parse the version in `{bin} --version` output {:?}",
            out.stdout.trim()
        )
    })
}

/// `iptables-restore --noflush [--wait]` with `payload`; the error names
/// the failing line when iptables reports one.
pub(crate) async fn restore(
    exec: &Exec,
    family: IpFamily,
    caps: Caps,
    payload: &str,
) -> Result<()> {
    let mut args = vec!["--noflush"];
    if caps.restore_wait {
        args.push("--wait");
    }
    let bin = family.iptables_restore();
    let out = exec
        .run(bin, &args, Some(payload), true)
        .await
        .map_err(|e| anyhow!("cannot run `{bin}`: {e}"))?;
    if out.success {
        return Ok(());
    }
    bail!("{}{}", out.failure(), offending_line(&out, payload))
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

/// nftables mode's cleanup (§7.4, done properly): for each family whose
/// tools are installed, deletes every jump to `FLANNEL-POSTRTG` /
/// `FLANNEL-FWD` and the chains themselves, one restore per family.
pub(crate) async fn remove_flannel_chains(exec: &Exec) -> Result<()> {
    let ours = [POSTRTG_CHAIN, FWD_CHAIN];
    for family in [IpFamily::V4, IpFamily::V6] {
        let save = family.iptables_save();
        let out = match exec.run(save, &[], None, false).await {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                debug!("{save} is not installed: no iptables rules to clean up");
                continue;
            }
            Err(e) => {
                warn!("cannot run `{save}` to clean up iptables rules: {e}");
                continue;
            }
        };
        if !out.success {
            warn!("cleaning up iptables rules: {}", out.failure());
            continue;
        }
        let mut payload = String::new();
        let mut removed = Vec::new();
        let mut table = "";
        let mut chains: Vec<&str> = Vec::new();
        let mut jumps: Vec<&str> = Vec::new();
        for line in out.stdout.lines().chain(std::iter::once("*")) {
            if let Some(t) = line.strip_prefix('*') {
                if !chains.is_empty() || !jumps.is_empty() {
                    payload.push_str(&format!("*{table}\n"));
                    for j in &jumps {
                        payload.push_str(&format!("-D{}\n", &j[2..]));
                    }
                    for c in &chains {
                        payload.push_str(&format!("-F {c}\n"));
                    }
                    for c in &chains {
                        payload.push_str(&format!("-X {c}\n"));
                        removed.push(format!("{c} (table {table})"));
                    }
                    payload.push_str("COMMIT\n");
                }
                table = t;
                chains.clear();
                jumps.clear();
            } else if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("");
                if ours.contains(&name) {
                    chains.push(name);
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let from = rest.split_whitespace().next().unwrap_or("");
                if !ours.contains(&from) && ours.iter().any(|c| jumps_to(line, c)) {
                    jumps.push(line);
                }
            }
        }
        if payload.is_empty() {
            continue;
        }
        let caps = match probe_caps(exec, family).await {
            Ok(c) => c,
            Err(e) => {
                warn!("cleaning up iptables rules: {e:#}");
                continue;
            }
        };
        match restore(exec, family, caps, &payload).await {
            Ok(()) => info!(
                "Removed the {} chains {} and the jumps to them (left by iptables mode)",
                family.iptables(),
                removed.join(", ")
            ),
            Err(e) => warn!("cleaning up iptables rules: {e:#}"),
        }
    }
    Ok(())
}

#[async_trait]
impl TrafficManager for Iptables {
    fn mode(&self) -> &'static str {
        "iptables"
    }

    async fn cleanup_other_mode(&self) -> Result<()> {
        super::nftables::delete_flannel_tables(&self.exec).await
    }

    async fn init(&self) -> Result<()> {
        info!("Starting flannel in iptables mode...");
        Ok(())
    }

    async fn setup_masq(&self, v4: Option<Masq4>, v6: Option<Masq6>) -> Result<()> {
        let mut state = self.state.lock().await;
        let prev = self.options.previous;
        if let Some((net, sub)) = v4 {
            let previous = (
                prev.network.map(|n| n.to_string()),
                prev.subnet.map(|n| n.to_string()),
            );
            self.setup_masq_family(
                &mut state,
                IpFamily::V4,
                (net.to_string(), sub.to_string()),
                previous,
            )
            .await?;
        }
        if let Some((net, sub)) = v6 {
            let previous = (
                prev.ipv6_network.map(|n| n.to_string()),
                prev.ipv6_subnet.map(|n| n.to_string()),
            );
            self.setup_masq_family(
                &mut state,
                IpFamily::V6,
                (net.to_string(), sub.to_string()),
                previous,
            )
            .await?;
        }
        Ok(())
    }

    async fn setup_forward(&self, v4: Option<Ip4Net>, v6: Option<Ip6Net>) -> Result<()> {
        let mut state = self.state.lock().await;
        let mut first_err = None;
        if let Some(net) = v4 {
            info!("Changing default FORWARD chain policy to ACCEPT");
            let rules = forward_rules(&net.to_string());
            if let Err(e) = self
                .install(&mut state, IpFamily::V4, rules, Vec::new())
                .await
            {
                first_err.get_or_insert(e);
            }
        }
        if let Some(net) = v6 {
            info!("IPv6: Changing default FORWARD chain policy to ACCEPT");
            let rules = forward_rules(&net.to_string());
            if let Err(e) = self
                .install(&mut state, IpFamily::V6, rules, Vec::new())
                .await
            {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn resync_once(&self) -> Result<bool> {
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
            let (drift, builtin) = match self.check(caps, &set).await {
                Ok(r) => r,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let Some(reason) = drift else { continue };
            if !logged {
                warn!("Some iptables rules are missing; deleting and recreating rules");
                logged = true;
            }
            debug!("iptables drift: {reason}");
            match self.write(caps, &set, builtin, &[]).await {
                Ok(()) => rewrote = true,
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
            format!("{}{}", out.failure(), offending_line(&out, payload)),
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
}
