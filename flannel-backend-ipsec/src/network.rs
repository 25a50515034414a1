//! [`IpsecNetwork`]: charon's connections and the XFRM policies as a
//! function of the leases.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use flannel_core::backend::{BackendError, Network, RegisterContext, follow_renewal};
use flannel_core::event::LeaseEvent;
use flannel_core::ip::Ip4Net;
use flannel_core::lease::{Lease, LeaseAttrs};
use tracing::{info, warn};

use crate::charon::{self, CharonError, CharonProcess, CharonSettings, find_charon};
use crate::options::{IpsecOptions, TYPE};
use crate::vici::{Client, Message, ViciError};
use crate::xfrm::{Policy, REQID, Xfrm, XfrmError, peer_policies};

/// How often the policies and connections are checked (and charon's
/// health, when flanneld runs it).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

/// How long to wait for charon's socket at start.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Go's IKE proposal for the connections.
pub const IKE_PROPOSAL: &str = "aes256-sha256-modp4096";

/// One remote ipsec peer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// Its subnet.
    pub subnet: Ip4Net,
    /// Its public address.
    pub ip: Ipv4Addr,
}

/// The peers of `leases`: ipsec leases with an IPv4 subnet inside
/// `network`.
pub fn peers(leases: &[&Lease], network: Option<Ip4Net>) -> Vec<Peer> {
    leases
        .iter()
        .filter(|l| l.attrs.backend_type == TYPE)
        .filter_map(|l| {
            let subnet = l.subnet?;
            network
                .is_none_or(|n| n.contains(subnet.addr()))
                .then_some(Peer {
                    subnet,
                    ip: l.attrs.public_ip,
                })
        })
        .collect()
}

/// Go's connection name: `<ownIP>-<ownSubnet>-<remoteSubnet>-<remoteIP>`.
pub fn conn_name(own_ip: Ipv4Addr, own: Ip4Net, peer: &Peer) -> String {
    format!("{own_ip}-{own}-{}-{}", peer.subnet, peer.ip)
}

/// Go's child SA name: `<ownSubnet>-<remoteSubnet>`.
pub fn child_name(own: Ip4Net, peer: &Peer) -> String {
    format!("{own}-{}", peer.subnet)
}

/// The `load-conn` message for `peer`, with Go's parameters.
pub fn load_conn(own_ip: Ipv4Addr, own: Ip4Net, peer: &Peer, options: &IpsecOptions) -> Message {
    let child = Message::new()
        .list("local_ts", [own.to_string()])
        .list("remote_ts", [peer.subnet.to_string()])
        .list("esp_proposals", [options.esp_proposal.clone()])
        .kv("start_action", "start")
        .kv("close_action", "trap")
        .kv("dpd_action", "restart")
        .kv("mode", "tunnel")
        .kv("reqid", REQID.to_string())
        .kv("rekey_time", "1h")
        .kv("policies", "no");
    let conn = Message::new()
        .list("local_addrs", [own_ip.to_string()])
        .list("remote_addrs", [peer.ip.to_string()])
        .list("proposals", [IKE_PROPOSAL])
        .kv("version", "2")
        .kv("keyingtries", "0")
        .kv("encap", if options.udp_encap { "true" } else { "false" })
        .section("local", Message::new().kv("auth", "psk"))
        .section("remote", Message::new().kv("auth", "psk"))
        .section(
            "children",
            Message::new().section(&child_name(own, peer), child),
        );
    Message::new().section(&conn_name(own_ip, own, peer), conn)
}

/// The `load-shared` message: the PSK for `owner`. The `id` makes a
/// repeated load replace the secret instead of adding a copy.
fn load_shared(options: &IpsecOptions, owner: Ipv4Addr) -> Message {
    Message::new()
        .kv("id", format!("flannel-{owner}"))
        .kv("type", "IKE")
        .kv("data", options.psk.expose())
        .list("owners", [owner.to_string()])
}

fn vici_err(object: String, e: ViciError) -> BackendError {
    BackendError::datapath(object, e)
}

fn xfrm_err(e: XfrmError) -> BackendError {
    BackendError::datapath("xfrm", e)
}

fn charon_err(e: CharonError) -> BackendError {
    BackendError::Refused(e.to_string())
}

/// The ipsec network (see the crate docs).
pub struct IpsecNetwork {
    lease: Lease,
    own_ip: Ipv4Addr,
    own: Ip4Net,
    network: Option<Ip4Net>,
    mtu: u32,
    options: IpsecOptions,
    settings: CharonSettings,
    process: Option<CharonProcess>,
    vici: Client,
    xfrm: Xfrm,
    /// Connections loaded into charon, by name.
    conns: BTreeMap<String, Peer>,
    /// Peers whose PSK owner entry is loaded.
    shared: BTreeSet<Ipv4Addr>,
    /// Whether a first full pass (stale connections of an attached charon
    /// removed) ran.
    swept: bool,
}

impl IpsecNetwork {
    /// Starts or attaches to charon, loads our PSK, acquires the lease.
    pub async fn register(
        ctx: &RegisterContext<'_>,
        settings: CharonSettings,
    ) -> Result<IpsecNetwork, BackendError> {
        let options = IpsecOptions::parse(ctx.config.backend.as_ref())?;
        info!(
            "IPSec config: UDPEncap={} ESPProposal={}",
            options.udp_encap, options.esp_proposal
        );
        if ctx.config.enable_ipv6 {
            return Err(BackendError::Refused(
                "the ipsec backend supports IPv4 only; set EnableIPv6 to false".into(),
            ));
        }
        let iface = ctx.ext_iface;
        let own_ip = iface.ext_addr.ok_or_else(|| {
            BackendError::Refused(format!(
                "the ipsec backend needs an IPv4 address, and {} has none",
                iface.name
            ))
        })?;
        // The socket lives in flanneld's namespace: open it before any
        // await can move us to another thread.
        let xfrm = Xfrm::open().map_err(xfrm_err)?;
        let mut process = if settings.starts_charon() {
            let path = match &settings.executable {
                Some(p) => p.clone(),
                None => find_charon(std::env::var_os("PATH"))
                    .ok_or_else(|| charon_err(CharonError::NotFound))?,
            };
            Some(CharonProcess::spawn(&path).map_err(charon_err)?)
        } else {
            info!("using the running charon at {}", settings.uri());
            None
        };
        let mut vici = charon::connect(settings.uri(), process.as_mut(), CONNECT_TIMEOUT)
            .await
            .map_err(charon_err)?;
        vici.request("load-shared", &load_shared(&options, own_ip))
            .await
            .map_err(|e| vici_err(format!("the PSK for {own_ip}"), e))?;
        let attrs = LeaseAttrs {
            backend_type: TYPE.to_string(),
            ..LeaseAttrs::new(own_ip)
        };
        let lease = ctx.acquire_lease(attrs).await?;
        let own = lease.subnet.ok_or_else(|| {
            BackendError::Refused("IPv4 is enabled but the lease has no IPv4".into())
        })?;
        Ok(IpsecNetwork {
            lease,
            own_ip,
            own,
            network: ctx.config.network,
            mtu: options.mtu(iface),
            options,
            settings,
            process,
            vici,
            xfrm,
            conns: BTreeMap::new(),
            shared: BTreeSet::new(),
            swept: false,
        })
    }

    /// Whether a kernel policy is ours: reqid 11, one side our subnet, the
    /// other inside the network.
    fn owns(&self, p: &Policy) -> bool {
        let other = if p.src == self.own { p.dst } else { p.src };
        p.reqid == REQID
            && (p.src == self.own || p.dst == self.own)
            && self.network.is_none_or(|n| n.contains(other.addr()))
    }

    /// Makes the policies match `peers`: adds missing ones, deletes ours
    /// that belong to no peer.
    fn sync_policies(&mut self, peers: &[Peer]) -> Vec<BackendError> {
        let mut errors = Vec::new();
        let want: BTreeSet<Policy> = peers
            .iter()
            .flat_map(|p| peer_policies(self.own, self.own_ip, p.subnet, p.ip))
            .collect();
        let have: BTreeSet<Policy> = match self.xfrm.policies() {
            Ok(ps) => ps.into_iter().filter(|p| self.owns(p)).collect(),
            Err(e) => return vec![xfrm_err(e)],
        };
        for p in have.difference(&want) {
            info!("removing the stale {p}");
            if let Err(e) = self.xfrm.delete(p) {
                errors.push(xfrm_err(e));
            }
        }
        for p in want.difference(&have) {
            if let Err(e) = self.xfrm.update(p) {
                errors.push(xfrm_err(e));
            }
        }
        errors
    }

    /// Loads connections of new peers, unloads those of gone peers.
    async fn sync_conns(&mut self, peers: &[Peer]) -> Vec<BackendError> {
        let mut errors = Vec::new();
        let want: BTreeMap<String, Peer> = peers
            .iter()
            .map(|p| (conn_name(self.own_ip, self.own, p), p.clone()))
            .collect();
        if !self.swept {
            // An attached charon may hold connections of leases that are
            // gone (flanneld was down meanwhile): ours start with our
            // address and subnet.
            match self.vici.request("get-conns", &Message::new()).await {
                Ok(m) => {
                    let prefix = format!("{}-{}-", self.own_ip, self.own);
                    for name in m.get_list("conns").unwrap_or_default() {
                        if name.starts_with(&prefix) && !want.contains_key(name) {
                            self.conns.insert(
                                name.clone(),
                                Peer {
                                    subnet: self.own,
                                    ip: self.own_ip,
                                },
                            );
                        }
                    }
                    self.swept = true;
                }
                Err(e) => errors.push(vici_err("VICI get-conns".into(), e)),
            }
        }
        let stale: Vec<String> = self
            .conns
            .keys()
            .filter(|n| !want.contains_key(*n))
            .cloned()
            .collect();
        for name in stale {
            info!("unloading the IKE connection {name}");
            match self
                .vici
                .request("unload-conn", &Message::new().kv("name", name.clone()))
                .await
            {
                Ok(_) => {
                    self.conns.remove(&name);
                }
                Err(ViciError::Failed { .. }) => {
                    // Already gone from charon.
                    self.conns.remove(&name);
                }
                Err(e) => errors.push(vici_err(format!("unloading {name}"), e)),
            }
        }
        let live: BTreeSet<Ipv4Addr> = peers.iter().map(|p| p.ip).collect();
        self.shared.retain(|ip| live.contains(ip));
        for (name, peer) in want {
            if self.conns.contains_key(&name) {
                continue;
            }
            if !self.shared.contains(&peer.ip) {
                match self
                    .vici
                    .request("load-shared", &load_shared(&self.options, peer.ip))
                    .await
                {
                    Ok(_) => {
                        self.shared.insert(peer.ip);
                    }
                    Err(e) => {
                        errors.push(vici_err(format!("the PSK for {}", peer.ip), e));
                        continue;
                    }
                }
            }
            let msg = load_conn(self.own_ip, self.own, &peer, &self.options);
            match self.vici.request("load-conn", &msg).await {
                Ok(_) => {
                    info!("loaded the IKE connection {name}");
                    self.conns.insert(name, peer);
                }
                Err(e) => errors.push(vici_err(format!("loading {name}"), e)),
            }
        }
        errors
    }

    /// Restarts charon when flanneld runs it and it died, reloading our
    /// PSK and every connection.
    async fn check_charon(&mut self) -> Result<(), BackendError> {
        let Some(p) = self.process.as_mut() else {
            return Ok(());
        };
        let Some(status) = p.exited() else {
            return Ok(());
        };
        warn!("charon exited with {status}; restarting it");
        let path = p.path().to_owned();
        let mut fresh = CharonProcess::spawn(&path).map_err(charon_err)?;
        self.vici = charon::connect(self.settings.uri(), Some(&mut fresh), CONNECT_TIMEOUT)
            .await
            .map_err(charon_err)?;
        self.process = Some(fresh);
        self.conns.clear();
        self.shared.clear();
        self.vici
            .request("load-shared", &load_shared(&self.options, self.own_ip))
            .await
            .map_err(|e| vici_err(format!("the PSK for {}", self.own_ip), e))?;
        Ok(())
    }

    async fn apply(&mut self, leases: &[&Lease]) -> Result<(), BackendError> {
        let peers = peers(leases, self.network);
        let mut errors = Vec::new();
        if let Err(e) = self.check_charon().await {
            errors.push(e);
        }
        errors.extend(self.sync_policies(&peers));
        errors.extend(self.sync_conns(&peers).await);
        BackendError::collect(errors)
    }
}

#[async_trait::async_trait]
impl Network for IpsecNetwork {
    fn lease(&self) -> &Lease {
        &self.lease
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    async fn handle_events(
        &mut self,
        events: &[LeaseEvent],
        leases: &[&Lease],
    ) -> Result<(), BackendError> {
        for e in events {
            info!("{}", e.describe(TYPE));
        }
        self.apply(leases).await
    }

    async fn resync(&mut self, leases: &[&Lease]) -> Result<(), BackendError> {
        self.apply(leases).await
    }

    fn resync_interval(&self) -> Option<Duration> {
        Some(RESYNC_INTERVAL)
    }

    async fn lease_changed(&mut self, lease: &Lease) -> Result<(), BackendError> {
        follow_renewal(&mut self.lease, lease, TYPE)
    }

    async fn shutdown(&mut self) -> Result<(), BackendError> {
        // Policies and an attached charon stay (zero-downtime restart); a
        // charon we started cannot outlive us, as in Go.
        if let Some(p) = self.process.as_mut() {
            p.stop(Duration::from_secs(5)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vici::Value;
    use flannel_core::gojson::RawJson;

    #[test]
    fn connection_as_go_names_and_loads_it() {
        let key = "k".repeat(96);
        let raw = RawJson::new(&format!(r#"{{"PSK":"{key}"}}"#)).unwrap();
        let options = IpsecOptions::parse(Some(&raw)).unwrap();
        let own: Ip4Net = "10.50.1.0/24".parse().unwrap();
        let peer = Peer {
            subnet: "10.50.2.0/24".parse().unwrap(),
            ip: [10, 0, 0, 2].into(),
        };
        let own_ip = [10, 0, 0, 1].into();
        assert_eq!(
            conn_name(own_ip, own, &peer),
            "10.0.0.1-10.50.1.0/24-10.50.2.0/24-10.0.0.2"
        );
        assert_eq!(child_name(own, &peer), "10.50.1.0/24-10.50.2.0/24");
        let m = load_conn(own_ip, own, &peer, &options);
        let Value::Section(conn) = &m.0[0].1 else {
            panic!("a section")
        };
        assert_eq!(conn.get_list("proposals").unwrap(), [IKE_PROPOSAL]);
        assert_eq!(conn.str("version"), Some("2"));
        assert_eq!(conn.str("encap"), Some("false"));
        let Some((_, Value::Section(children))) = conn.0.iter().find(|(k, _)| k == "children")
        else {
            panic!("children")
        };
        let Value::Section(child) = &children.0[0].1 else {
            panic!("a child")
        };
        for (k, v) in [
            ("start_action", "start"),
            ("close_action", "trap"),
            ("dpd_action", "restart"),
            ("mode", "tunnel"),
            ("reqid", "11"),
            ("rekey_time", "1h"),
            ("policies", "no"),
        ] {
            assert_eq!(child.str(k), Some(v), "{k}");
        }
        assert_eq!(
            child.get_list("esp_proposals").unwrap(),
            ["aes128gcm16-sha256-prfsha256-ecp256"]
        );
        let shared = load_shared(&options, own_ip);
        assert_eq!(shared.str("data"), Some(key.as_str()));
        assert!(!format!("{shared:?}").contains(&key));
    }

    #[test]
    fn peers_of_ipsec_leases_inside_the_network() {
        let l = |key: &str, t: &str| {
            Lease::new(
                key.parse().unwrap(),
                LeaseAttrs::from_json(&format!(
                    r#"{{"PublicIP":"10.0.0.9","PublicIPv6":null,"BackendType":"{t}"}}"#
                ))
                .unwrap(),
            )
        };
        let (a, b, c) = (
            l("10.50.2.0-24", "ipsec"),
            l("10.50.3.0-24", "vxlan"),
            l("192.168.0.0-24", "ipsec"),
        );
        let ps = peers(&[&a, &b, &c], Some("10.50.0.0/16".parse().unwrap()));
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0].subnet.to_string(), "10.50.2.0/24");
    }
}
