//! What the configuration asks of the packet filter and the routes.

use std::time::Duration;

use flannel_core::config::NetConfig;
use flannel_core::ip::{Ip4Net, Ip6Net};
use flannel_core::lease::Lease;
use flannel_core::subnet_env::EnvFile;

use crate::{IpFamily, Masq4, Masq6};

/// The switches of the traffic rules (flanneld: `--ip-masq`,
/// `--iptables-forward-rules`, `--ip-blackhole-route`, `--iptables-resync`,
/// `--ip-masq-fully-random-disable` and net-conf `EnableNFTables`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficConfig {
    /// Install the masquerade rules.
    pub ip_masq: bool,
    /// Install the FORWARD accept rules.
    pub forward_rules: bool,
    /// Keep a blackhole route for each own subnet.
    pub blackhole_route: bool,
    /// How often the rules and the blackhole route are checked (at least
    /// one second; see [`resync_period`]).
    pub resync_period: Duration,
    /// No `--random-fully` / `fully-random` on the masquerade rules.
    pub fully_random_disable: bool,
    /// Use nftables (`nft`) instead of iptables.
    pub nftables: bool,
}

impl Default for TrafficConfig {
    /// flanneld's defaults: no masquerading, forward rules, no blackhole
    /// route, a 5 s resync, iptables.
    fn default() -> Self {
        TrafficConfig {
            ip_masq: false,
            forward_rules: true,
            blackhole_route: false,
            resync_period: Duration::from_secs(5),
            fully_random_disable: false,
            nftables: false,
        }
    }
}

/// The previous run's values from `subnet.env` (read *before* the file is
/// rewritten), used to delete rules of a previous network/subnet (§7.2 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Previous {
    /// `FLANNEL_NETWORK`.
    pub network: Option<Ip4Net>,
    /// `FLANNEL_SUBNET`, masked to its network.
    pub subnet: Option<Ip4Net>,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_network: Option<Ip6Net>,
    /// `FLANNEL_IPV6_SUBNET`, masked to its network.
    pub ipv6_subnet: Option<Ip6Net>,
}

impl Previous {
    /// The previous values in a parsed `subnet.env` (absent or unparsable
    /// entries are `None`).
    pub fn from_env(env: &EnvFile) -> Previous {
        Previous {
            network: env.previous_network().0,
            subnet: env.previous_subnet().0,
            ipv6_network: env.previous_ipv6_network().0,
            ipv6_subnet: env.previous_ipv6_subnet().0,
        }
    }
}

/// What one network on this host asks of the packet filter and the routes:
/// derived from a [`TrafficConfig`], the network config and the own lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesPlan {
    /// Use nftables.
    pub nftables: bool,
    /// The IPv4 cluster network and own subnet, when IPv4 is enabled and
    /// the lease has a subnet (whether or not any rule is wanted: a mode
    /// switch cleans up this network's rules of the other mode).
    pub v4: Option<Masq4>,
    /// The IPv6 cluster network and own subnet.
    pub v6: Option<Masq6>,
    /// Masquerade rules are wanted.
    pub masq: bool,
    /// Forward rules are wanted.
    pub forward: bool,
    /// Blackhole routes are wanted.
    pub blackhole: bool,
    /// The resync period (at least one second).
    pub period: Duration,
    /// No `--random-fully`.
    pub fully_random_disable: bool,
    /// The previous network and subnets (see [`Previous`]).
    pub previous: Previous,
}

impl RulesPlan {
    /// The plan for `config`, the network config `net` and the own
    /// `lease`; `previous` is what `subnet.env` held before this run
    /// rewrites it ([`Previous::default`] when unknown).
    pub fn new(
        config: &TrafficConfig,
        net: &NetConfig,
        lease: &Lease,
        previous: Previous,
    ) -> RulesPlan {
        let net4 = net.network.filter(|_| net.enable_ipv4);
        let net6 = net.ipv6_network.filter(|_| net.enable_ipv6);
        RulesPlan {
            nftables: config.nftables,
            v4: net4.zip(lease.subnet),
            v6: net6.zip(lease.ipv6_subnet),
            masq: config.ip_masq,
            forward: config.forward_rules,
            blackhole: config.blackhole_route,
            period: config.resync_period.max(Duration::from_secs(1)),
            fully_random_disable: config.fully_random_disable,
            previous,
        }
    }

    /// The same plan for another lease (the runner's lease changed): the
    /// current subnets become the previous ones.
    pub fn for_lease(&self, lease: &Lease) -> RulesPlan {
        RulesPlan {
            v4: self.v4.map(|(n, _)| n).zip(lease.subnet),
            v6: self.v6.map(|(n, _)| n).zip(lease.ipv6_subnet),
            previous: Previous {
                network: self.v4.map(|(n, _)| n),
                subnet: self.v4.map(|(_, s)| s),
                ipv6_network: self.v6.map(|(n, _)| n),
                ipv6_subnet: self.v6.map(|(_, s)| s),
            },
            ..self.clone()
        }
    }

    /// IPv4 masquerade input, when wanted.
    pub fn masq_v4(&self) -> Option<Masq4> {
        self.v4.filter(|_| self.masq)
    }

    /// IPv6 masquerade input, when wanted.
    pub fn masq_v6(&self) -> Option<Masq6> {
        self.v6.filter(|_| self.masq)
    }

    /// The IPv4 network to accept in FORWARD, when wanted.
    pub fn forward_v4(&self) -> Option<Ip4Net> {
        self.v4.map(|(n, _)| n).filter(|_| self.forward)
    }

    /// The IPv6 network to accept in FORWARD, when wanted.
    pub fn forward_v6(&self) -> Option<Ip6Net> {
        self.v6.map(|(n, _)| n).filter(|_| self.forward)
    }

    /// The IPv4 subnet to blackhole, when wanted.
    pub fn blackhole_v4(&self) -> Option<Ip4Net> {
        self.v4.map(|(_, s)| s).filter(|_| self.blackhole)
    }

    /// The IPv6 subnet to blackhole, when wanted.
    pub fn blackhole_v6(&self) -> Option<Ip6Net> {
        self.v6.map(|(_, s)| s).filter(|_| self.blackhole)
    }

    /// Whether any packet-filter rule is wanted.
    pub fn any_rules(&self) -> bool {
        (self.masq || self.forward) && (self.v4.is_some() || self.v6.is_some())
    }

    /// The rules this network owns, in text, for removing them: the current
    /// and the previous network and subnet of each family.
    pub(crate) fn owned(&self) -> Owned {
        let mut owned = Owned::default();
        let prev4 = self.previous.network.zip(self.previous.subnet);
        let prev6 = self.previous.ipv6_network.zip(self.previous.ipv6_subnet);
        for (n, s) in self.v4.into_iter().chain(prev4) {
            owned.add(IpFamily::V4, n.to_string(), s.to_string());
        }
        for (n, s) in self.v6.into_iter().chain(prev6) {
            owned.add(IpFamily::V6, n.to_string(), s.to_string());
        }
        owned
    }
}

/// The (network, subnet) pairs whose rules one daemon owns.
#[derive(Debug, Clone, Default)]
pub(crate) struct Owned {
    /// (family, cluster network, own subnet).
    pub masq: Vec<(IpFamily, String, String)>,
    /// (family, cluster network).
    pub forward: Vec<(IpFamily, String)>,
}

impl Owned {
    fn add(&mut self, family: IpFamily, network: String, subnet: String) {
        if !self.forward.contains(&(family, network.clone())) {
            self.forward.push((family, network.clone()));
        }
        let m = (family, network, subnet);
        if !self.masq.contains(&m) {
            self.masq.push(m);
        }
    }
}

/// `--iptables-resync` as a period; Go would spin on 0 or less, we use 1 s.
pub fn resync_period(seconds: i64) -> Duration {
    if seconds < 1 {
        tracing::warn!("--iptables-resync={seconds} is not a positive number of seconds; using 1");
        Duration::from_secs(1)
    } else {
        Duration::from_secs(seconds.unsigned_abs())
    }
}
