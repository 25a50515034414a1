//! The crate's error type.

use std::net::IpAddr;

use flannel_netlink::NetlinkError;

/// Everything that can go wrong while programming packet-filter rules or
/// the blackhole route. Each variant names the command, chain or route.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrafficError {
    /// A tool could not be started, fed or waited for (typically: it is
    /// not installed, or it did not finish in time).
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool ran and exited with an error.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// `exit status: N` or the signal.
        status: String,
        /// Its error output (for `iptables-restore`, followed by the
        /// payload line it complains about).
        stderr: String,
    },
    /// A tool's output could not be understood.
    #[error("cannot understand the output of `{command}`: {reason}")]
    Output {
        /// The command line.
        command: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `nft -j` printed something that is not JSON.
    #[error("cannot parse the JSON output of `{command}`")]
    Json {
        /// The command line.
        command: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A step on one chain failed.
    #[error("{action} {tool} chain {chain} (table {table})")]
    Chain {
        /// What was being done: `writing`, `listing`, `removing our rules from`.
        action: &'static str,
        /// `iptables`, `ip6tables` or `nft`.
        tool: &'static str,
        /// The table (`nat`, `filter`, `ip flannel-ipv4`, ...).
        table: String,
        /// The chain.
        chain: String,
        /// What failed.
        #[source]
        source: Box<TrafficError>,
    },
    /// A step of the setup failed (`setup masq rules`, `initialise the
    /// nftables tables`, ...).
    #[error("failed to {step}")]
    Step {
        /// The step, as a verb phrase.
        step: &'static str,
        /// What failed.
        #[source]
        source: Box<TrafficError>,
    },
    /// A plan asked to switch between iptables and nftables at run time;
    /// the mode is chosen once, at [`crate::Rules::setup`].
    #[error("cannot switch the packet-filter mode from {from} to {to} at run time")]
    ModeChange {
        /// The running mode.
        from: &'static str,
        /// The mode the new plan asks for.
        to: &'static str,
    },
    /// A netlink request about a blackhole route failed.
    #[error("{action} blackhole route {dst}/{prefix}")]
    Route {
        /// `listing routes to check`, `adding`, `deleting`.
        action: &'static str,
        /// The route's destination.
        dst: IpAddr,
        /// Its prefix length.
        prefix: u8,
        /// The netlink error.
        #[source]
        source: NetlinkError,
    },
    /// The plan wants blackhole routes but the [`crate::Rules`] handle was
    /// built without a netlink handle.
    #[error("blackhole routes are wanted but no netlink handle was given")]
    NoNetlink,
}

impl TrafficError {
    pub(crate) fn step(step: &'static str, source: TrafficError) -> TrafficError {
        TrafficError::Step {
            step,
            source: Box::new(source),
        }
    }
}

/// `error: cause: cause` — the error and its sources on one line, for logs.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
