//! flannel's packet-filter rules and blackhole route (behaviour reference
//! §7, §0 steps 16–19): the masquerade rules, the FORWARD accept rules,
//! their periodic resync, and the blackhole route of the own subnet.
//!
//! [`TrafficManager`] is the interface; the drivers are [`Iptables`]
//! (`iptables`/`ip6tables` + `iptables-restore`, rule text byte-identical to
//! Go flannel's `iptables -S` output), [`Nftables`] (`nft`) and [`Noop`].
//! [`Rules`] owns a driver and a [`RulesPlan`]: it sets the rules up, keeps
//! them with [`Rules::resync_loop`] and [`Rules::blackhole_loop`] (plain
//! futures that end when the shutdown future given to them completes; the
//! caller spawns them), and moves them to another lease with
//! [`Rules::update`]. [`RulesStatus`] reports progress and whether the rules
//! are programmed, for a health endpoint.
//!
//! # Several networks on one host
//!
//! Every flannel network on a host (several daemons with their own
//! `-etcd-prefix`/`-subnet-file`) shares the chains `FLANNEL-POSTRTG` and
//! `FLANNEL-FWD` (nftables: the `postrtg` and `forward` chains of
//! `flannel-ipv4`/`flannel-ipv6`). A driver owns only its own rules, found
//! by their text (nftables: their JSON listing without handles):
//!
//! * the check looks for our rules, in order, and the jump; other rules in
//!   the chain are ignored;
//! * a write deletes our rules that are present and appends them again (Go's
//!   bootstrap), creating a chain only when it is missing, never flushing it;
//! * the kube-proxy mark rule, the same for every network, is added only when
//!   the chain has none (it then precedes the rules of every network);
//! * removing our rules (a mode switch, a network that went away) removes the
//!   chain and the jump only when no other network's rule is left in it.
//!
//! With one network the rules are exactly Go flannel's.
//!
//! Both real drivers drive the command-line tools rather than netlink, write
//! each table in one transaction (`iptables-restore --noflush`, `nft -f -`),
//! and resync by *reading* the current rules once per table and comparing
//! them in memory: a period without drift costs one or two listing commands
//! per table and no write. Rules are never removed on shutdown (zero-downtime
//! restarts keep the datapath).
//!
//! Differences from Go flannel, on purpose:
//! * nftables rule 4 is `ip saddr != N ip daddr S return` (Go's
//!   `ip saddr != S ip daddr N return` stops host→cluster masquerading);
//!   the iptables rules are unchanged.
//! * Switching to nftables removes our rules from `FLANNEL-POSTRTG` (nat) and
//!   `FLANNEL-FWD` (filter), and the chains with their jumps when they hold
//!   nothing else (Go's cleanup looks for `FLANNEL-FWD` in `nat` and cannot
//!   delete a referenced chain).
//! * nftables rules are resynced like the iptables ones and the nftables
//!   tables are not deleted on shutdown.
//! * Rules in flannel's chains that are not ours are left alone (Go flushes
//!   the chains at startup).
//! * A forward-rule failure at startup is logged and retried by the resync
//!   (as in Go); a masquerade-rule failure is returned (flanneld exits 1, as
//!   in Go).
//!
//! # Features
//!
//! None. Linux only; needs `iptables`/`iptables-restore`/`iptables-save`
//! (and the `ip6tables` ones for IPv6) or `nft`, and `CAP_NET_ADMIN`.
//!
//! # Example: masquerade for a custom node agent
//!
//! A node agent that got the lease `10.5.7.0/24` of the cluster network
//! `10.5.0.0/16` installs the masquerade rules, keeps them until shutdown,
//! and moves them when its lease changes:
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use flannel_core::config::NetConfig;
//! use flannel_core::lease::Lease;
//! use flannel_traffic::{Previous, Rules, RulesPlan, TrafficConfig};
//!
//! # async fn agent(net: NetConfig, lease: Lease, next: Lease) -> Result<(), flannel_traffic::TrafficError> {
//! let config = TrafficConfig {
//!     ip_masq: true,
//!     forward_rules: false,
//!     resync_period: Duration::from_secs(10),
//!     ..TrafficConfig::default()
//! };
//! let plan = RulesPlan::new(&config, &net, &lease, Previous::default());
//! let rules = Arc::new(Rules::new(plan, None).on_programmed(|ok| {
//!     if !ok {
//!         eprintln!("masquerade rules are not in place");
//!     }
//! }));
//! rules.setup().await?;
//!
//! let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
//! let keeper = tokio::spawn({
//!     let rules = rules.clone();
//!     async move { rules.resync_loop(async { let _ = stop_rx.await; }).await }
//! });
//!
//! // The lease changed: install the new subnet's rules, delete the old ones.
//! let plan = rules.plan().for_lease(&next);
//! rules.update(plan).await?;
//!
//! let _ = stop_tx.send(());
//! keeper.await.ok();
//! # Ok(())
//! # }
//! ```

pub mod iptables;
pub mod nftables;

mod error;
mod exec;
mod plan;
mod rules;

use std::fmt;

use async_trait::async_trait;
use flannel_core::ip::{Ip4Net, Ip6Net};

pub use error::{TrafficError, report};
pub use iptables::Iptables;
pub use nftables::Nftables;
pub use plan::{Previous, RulesPlan, TrafficConfig, resync_period};
pub use rules::{Blackhole, Rules, RulesStatus, ensure_blackhole};

/// IPv4 masquerade input: (cluster network `N`, own lease subnet `S`).
pub type Masq4 = (Ip4Net, Ip4Net);
/// IPv6 masquerade input: (cluster network `N`, own lease subnet `S`).
pub type Masq6 = (Ip6Net, Ip6Net);

/// An address family of the packet filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4 (`iptables`, nft family `ip`).
    V4,
    /// IPv6 (`ip6tables`, nft family `ip6`).
    V6,
}

impl IpFamily {
    /// The multicast range that is never masqueraded.
    pub fn multicast(self) -> &'static str {
        match self {
            IpFamily::V4 => "224.0.0.0/4",
            IpFamily::V6 => "ff00::/8",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// A kind of rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RuleKind {
    /// The masquerade rules (`FLANNEL-POSTRTG`, nft `postrtg`).
    Masq,
    /// The forward accept rules (`FLANNEL-FWD`, nft `forward`).
    Forward,
}

/// Options shared by the drivers.
#[derive(Debug, Clone, Default)]
pub struct RulesOptions {
    /// No `--random-fully` / `fully-random`.
    pub fully_random_disable: bool,
    /// The previous network and subnets (see [`Previous`]).
    pub previous: Previous,
}

/// How many commands a driver has run (a test, benchmark and metrics hook).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandStats {
    /// Every command run (listings, probes and writes).
    pub commands: u64,
    /// Commands that change rules (`iptables-restore`, `nft -f`).
    pub writes: u64,
}

/// A packet-filter driver: Go's `trafficmngr.TrafficManager`. A driver
/// owns only the rules it installs (see the crate documentation).
#[async_trait]
pub trait TrafficManager: Send + Sync + fmt::Debug {
    /// `iptables`, `nftables` or `none`.
    fn mode(&self) -> &'static str;

    /// Removes what the *other* mode left behind for the networks and
    /// subnets of `plan` (current and previous), §7.4; a chain or table is
    /// removed only when no other network's rule is left in it. Never
    /// fatal in practice: problems are logged and `Ok` is returned unless
    /// the driver cannot work at all.
    async fn cleanup_other_mode(&self, plan: &RulesPlan) -> Result<(), TrafficError>;

    /// Prepares the driver (nftables: creates both flannel tables).
    async fn init(&self) -> Result<(), TrafficError>;

    /// Installs the masquerade rules for each given family, replacing (and
    /// deleting) the ones this driver installed for that family before;
    /// they are then kept by [`TrafficManager::resync_once`].
    async fn setup_masq(&self, v4: Option<Masq4>, v6: Option<Masq6>) -> Result<(), TrafficError>;

    /// Installs the forward accept rules for each given cluster network,
    /// replacing the ones installed before for that family; they are then
    /// kept by the resync even if this first write fails.
    async fn setup_forward(
        &self,
        v4: Option<Ip4Net>,
        v6: Option<Ip6Net>,
    ) -> Result<(), TrafficError>;

    /// Deletes the rules of `kind` this driver installed for `family` and
    /// stops keeping them (a no-op when there are none).
    async fn remove(&self, kind: RuleKind, family: IpFamily) -> Result<(), TrafficError>;

    /// Checks every installed rule set once and rewrites the sets whose
    /// rules are missing or out of order. Returns whether anything was
    /// rewritten.
    async fn resync_once(&self) -> Result<bool, TrafficError>;

    /// Commands run so far.
    fn stats(&self) -> CommandStats;
}

/// A driver that does nothing (no packet filter available or wanted).
#[derive(Debug, Default, Clone, Copy)]
pub struct Noop;

#[async_trait]
impl TrafficManager for Noop {
    fn mode(&self) -> &'static str {
        "none"
    }
    async fn cleanup_other_mode(&self, _plan: &RulesPlan) -> Result<(), TrafficError> {
        Ok(())
    }
    async fn init(&self) -> Result<(), TrafficError> {
        Ok(())
    }
    async fn setup_masq(&self, _v4: Option<Masq4>, _v6: Option<Masq6>) -> Result<(), TrafficError> {
        Ok(())
    }
    async fn setup_forward(
        &self,
        _v4: Option<Ip4Net>,
        _v6: Option<Ip6Net>,
    ) -> Result<(), TrafficError> {
        Ok(())
    }
    async fn remove(&self, _kind: RuleKind, _family: IpFamily) -> Result<(), TrafficError> {
        Ok(())
    }
    async fn resync_once(&self) -> Result<bool, TrafficError> {
        Ok(false)
    }
    fn stats(&self) -> CommandStats {
        CommandStats::default()
    }
}

/// The driver for a mode: `nftables` → [`Nftables`], otherwise
/// [`Iptables`].
pub fn driver(nftables: bool, options: RulesOptions) -> std::sync::Arc<dyn TrafficManager> {
    if nftables {
        std::sync::Arc::new(Nftables::new(options))
    } else {
        std::sync::Arc::new(Iptables::new(options))
    }
}
