//! [`FakeNetlink`]: an in-memory, recording [`NetOps`] for unit tests of
//! backend logic without root (feature `fake`).
//!
//! It keeps links, addresses, routes, neighbours and FDB entries the way the
//! kernel would for flannel's use (replace semantics by key, deletes of
//! missing objects succeed), records every call as a line of text, and can
//! be told to fail calls whose text contains a given string.
//!
//! ```
//! use flannel_netlink::{fake::FakeNetlink, NetOps, Route};
//! # tokio_test_block_on(async {
//! let nl = FakeNetlink::new();
//! let eth0 = nl.add_link("eth0", 1500);
//! let mut r = Route::unicast("10.5.3.0".parse().unwrap(), 24);
//! r.gateway = Some("192.168.1.3".parse().unwrap());
//! r.oif = Some(eth0);
//! nl.replace_route(&r).await.unwrap();
//! assert_eq!(nl.calls(), ["route replace 10.5.3.0/24 via 192.168.1.3 dev if2"]);
//! nl.fail_on("route replace");
//! assert!(nl.replace_route(&r).await.is_err());
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let w = std::task::Waker::noop(); let mut cx = std::task::Context::from_waker(w);
//! #     let mut f = std::pin::pin!(f);
//! #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//! ```

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::{
    AddrInfo, EnsuredLink, Family, FdbEntry, IpipInfo, IpipSpec, LinkInfo, Mac, NeighInfo, NetOps,
    NetlinkError, Route, VxlanInfo, VxlanSpec, format_mac, random_vtep_mac,
};

#[derive(Default)]
struct State {
    links: BTreeMap<u32, LinkInfo>,
    next_index: u32,
    addrs: Vec<AddrInfo>,
    routes: Vec<Route>,
    neigh: BTreeMap<(u32, IpAddr), NeighInfo>,
    fdb: BTreeMap<u32, Vec<FdbEntry>>,
    route_get: BTreeMap<IpAddr, Vec<Route>>,
    ipip: BTreeMap<u32, IpipInfo>,
    fail: Vec<String>,
    calls: Vec<String>,
    /// Link kinds this kernel does not have (`ip link add` → EOPNOTSUPP).
    missing_kinds: Vec<String>,
}

/// The in-memory kernel (see the module docs).
pub struct FakeNetlink {
    state: Mutex<State>,
}

impl Default for FakeNetlink {
    fn default() -> Self {
        FakeNetlink::new()
    }
}

impl FakeNetlink {
    /// An empty kernel with only `lo` (index 1).
    pub fn new() -> FakeNetlink {
        let fake = FakeNetlink {
            state: Mutex::new(State {
                next_index: 1,
                ..State::default()
            }),
        };
        fake.add_link("lo", 65536);
        fake
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an up, non-vxlan link and returns its index (not recorded).
    pub fn add_link(&self, name: &str, mtu: u32) -> u32 {
        let mut s = self.state();
        let index = s.next_index;
        s.next_index += 1;
        s.links.insert(
            index,
            LinkInfo {
                index,
                name: name.to_string(),
                mtu,
                mac: Some(random_vtep_mac()),
                up: true,
                kind: Some("veth".into()),
                vxlan: None,
            },
        );
        index
    }

    /// Adds a down ipip link with the given ends and returns its index (not
    /// recorded), as an earlier run or an administrator would leave it.
    pub fn add_ipip_link(&self, name: &str, info: IpipInfo, mtu: u32) -> u32 {
        let index = self.add_link(name, mtu);
        let mut s = self.state();
        if let Some(l) = s.links.get_mut(&index) {
            l.kind = Some("ipip".into());
            l.mac = None;
            l.up = false;
        }
        s.ipip.insert(index, info);
        index
    }

    /// Deletes a link as an administrator would: its addresses, routes,
    /// neighbours and FDB entries go with it (not recorded).
    pub fn delete_link(&self, name: &str) {
        let mut s = self.state();
        let Some(index) = s.links.values().find(|l| l.name == name).map(|l| l.index) else {
            return;
        };
        s.links.remove(&index);
        s.ipip.remove(&index);
        s.addrs.retain(|a| a.index != index);
        s.routes.retain(|r| r.oif != Some(index));
        s.neigh.retain(|(i, _), _| *i != index);
        s.fdb.remove(&index);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// The calls so far, forgetting them.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.state().calls)
    }

    /// The calls that changed something (no listings), forgetting all.
    pub fn take_writes(&self) -> Vec<String> {
        self.take_calls()
            .into_iter()
            .filter(|c| !c.contains(" list") && !c.starts_with("link show"))
            .collect()
    }

    /// Makes every later call whose text contains `pattern` fail with
    /// `EPERM`.
    pub fn fail_on(&self, pattern: &str) {
        self.state().fail.push(pattern.to_string());
    }

    /// Makes this kernel lack link type `kind`: creating one fails with
    /// `EOPNOTSUPP`, as on a kernel without the module.
    pub fn lack_link_kind(&self, kind: &str) {
        self.state().missing_kinds.push(kind.to_string());
    }

    /// Stops failing calls.
    pub fn clear_failures(&self) {
        self.state().fail.clear();
    }

    /// What `ip route get <dst>` answers from now on.
    pub fn set_route_get(&self, dst: IpAddr, routes: Vec<Route>) {
        self.state().route_get.insert(dst, routes);
    }

    /// The routes now (not recorded).
    pub fn routes_now(&self) -> Vec<Route> {
        self.state().routes.clone()
    }

    /// Adds a route as someone else would (not recorded).
    pub fn insert_route(&self, route: Route) {
        let mut s = self.state();
        s.routes.retain(|r| r.key() != route.key());
        s.routes.push(route);
    }

    /// Deletes routes to `dst/prefix` as an administrator would (not
    /// recorded).
    pub fn remove_route(&self, dst: IpAddr, prefix: u8) {
        self.state()
            .routes
            .retain(|r| !(r.dst == dst && r.prefix == prefix));
    }

    /// The neighbours of `index` now (not recorded).
    pub fn neighbours_now(&self, index: u32) -> Vec<NeighInfo> {
        let s = self.state();
        s.neigh
            .iter()
            .filter(|((i, _), _)| *i == index)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Deletes a neighbour as an administrator would (not recorded).
    pub fn remove_neigh(&self, index: u32, ip: IpAddr) {
        self.state().neigh.remove(&(index, ip));
    }

    /// The FDB entries of `index` now (not recorded).
    pub fn fdb_now(&self, index: u32) -> Vec<FdbEntry> {
        self.state().fdb.get(&index).cloned().unwrap_or_default()
    }

    /// Deletes an FDB entry as an administrator would (not recorded).
    pub fn remove_fdb(&self, index: u32, mac: Mac) {
        if let Some(v) = self.state().fdb.get_mut(&index) {
            v.retain(|f| f.mac != mac);
        }
    }

    /// Records `call`, failing it when a failure pattern matches.
    fn record(&self, call: String) -> Result<(), NetlinkError> {
        let mut s = self.state();
        let fail = s.fail.iter().any(|p| call.contains(p.as_str()));
        s.calls.push(call.clone());
        if fail {
            return Err(NetlinkError::Kernel {
                object: call,
                source: io::Error::from_raw_os_error(1),
                detail: None,
            });
        }
        Ok(())
    }
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

#[async_trait::async_trait]
impl NetOps for FakeNetlink {
    async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        self.record(format!("link show {name}"))?;
        Ok(self
            .state()
            .links
            .values()
            .find(|l| l.name == name)
            .cloned())
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        self.record(format!("link show if{index}"))?;
        Ok(self.state().links.get(&index).cloned())
    }

    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<EnsuredLink, NetlinkError> {
        let existing = self
            .state()
            .links
            .values()
            .find(|l| l.name == spec.name)
            .cloned();
        let mut recreated_because = None;
        if let Some(l) = existing {
            match spec.incompatibility(&l) {
                None => {
                    self.record(format!("link reuse vxlan {}", spec.name))?;
                    return Ok(EnsuredLink {
                        link: l,
                        created: false,
                        recreated_because: None,
                    });
                }
                Some(why) => {
                    self.record(format!("link del {}", spec.name))?;
                    self.delete_link(&spec.name);
                    recreated_because = Some(why);
                }
            }
        }
        self.record(format!("link add vxlan {} id {}", spec.name, spec.vni))?;
        let mut s = self.state();
        let index = s.next_index;
        s.next_index += 1;
        let link = LinkInfo {
            index,
            name: spec.name.clone(),
            mtu: spec.mtu.unwrap_or(1450),
            mac: Some(spec.mac.unwrap_or_else(random_vtep_mac)),
            up: false,
            kind: Some("vxlan".into()),
            vxlan: Some(VxlanInfo {
                vni: spec.vni,
                vtep_index: spec.vtep_index,
                local: spec.local,
                port: Some(spec.port.filter(|p| *p > 0).unwrap_or(8472)),
                learning: spec.learning,
                gbp: spec.gbp,
            }),
        };
        s.links.insert(index, link.clone());
        Ok(EnsuredLink {
            link,
            created: true,
            recreated_because,
        })
    }

    async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.record(format!("link set if{index} up"))?;
        match self.state().links.get_mut(&index) {
            Some(l) => {
                l.up = true;
                Ok(())
            }
            None => Err(NetlinkError::NotFound {
                object: format!("link if{index}"),
            }),
        }
    }

    async fn addresses(&self, index: u32) -> Result<Vec<AddrInfo>, NetlinkError> {
        self.record(format!("addr list dev if{index}"))?;
        Ok(self
            .state()
            .addrs
            .iter()
            .filter(|a| a.index == index)
            .cloned()
            .collect())
    }

    async fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        self.record(format!("addr add {addr}/{prefix} dev if{index}"))?;
        let mut s = self.state();
        if !s
            .addrs
            .iter()
            .any(|a| a.index == index && a.addr == addr && a.prefix == prefix)
        {
            s.addrs.push(AddrInfo {
                index,
                addr,
                prefix,
                permanent: true,
                deprecated: false,
                temporary: false,
                scope: 0,
            });
        }
        Ok(())
    }

    async fn del_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        self.record(format!("addr del {addr}/{prefix} dev if{index}"))?;
        self.state()
            .addrs
            .retain(|a| !(a.index == index && a.addr == addr && a.prefix == prefix));
        Ok(())
    }

    async fn routes(&self, family: Family) -> Result<Vec<Route>, NetlinkError> {
        self.record(format!("route list {}", family_name(family)))?;
        Ok(self
            .state()
            .routes
            .iter()
            .filter(|r| r.family() == family)
            .cloned()
            .collect())
    }

    async fn route_get(&self, dst: IpAddr) -> Result<Vec<Route>, NetlinkError> {
        self.record(format!("route get {dst}"))?;
        Ok(self
            .state()
            .route_get
            .get(&dst)
            .cloned()
            .unwrap_or_default())
    }

    async fn replace_route(&self, route: &Route) -> Result<(), NetlinkError> {
        self.record(format!("route replace {route}"))?;
        let mut s = self.state();
        s.routes.retain(|r| r.key() != route.key());
        s.routes.push(route.clone());
        Ok(())
    }

    async fn del_route(&self, route: &Route) -> Result<(), NetlinkError> {
        self.record(format!("route del {route}"))?;
        self.state().routes.retain(|r| {
            !(r.key() == route.key()
                && route.oif.is_none_or(|o| r.oif == Some(o))
                && route.gateway.is_none_or(|g| r.gateway == Some(g)))
        });
        Ok(())
    }

    async fn neighbours(&self, index: u32) -> Result<Vec<NeighInfo>, NetlinkError> {
        self.record(format!("neigh list dev if{index}"))?;
        Ok(self.neighbours_now(index))
    }

    async fn replace_neigh(&self, index: u32, ip: IpAddr, mac: Mac) -> Result<(), NetlinkError> {
        self.record(format!(
            "neigh replace {ip} lladdr {} dev if{index}",
            format_mac(&mac)
        ))?;
        self.state().neigh.insert(
            (index, ip),
            NeighInfo {
                ip,
                mac: Some(mac),
                permanent: true,
            },
        );
        Ok(())
    }

    async fn del_neigh(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        self.record(format!("neigh del {ip} dev if{index}"))?;
        self.state().neigh.remove(&(index, ip));
        Ok(())
    }

    async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        self.record(format!("fdb list dev if{index}"))?;
        Ok(self.fdb_now(index))
    }

    async fn replace_fdb(&self, index: u32, mac: Mac, dst: IpAddr) -> Result<(), NetlinkError> {
        self.record(format!(
            "fdb replace {} dev if{index} dst {dst}",
            format_mac(&mac)
        ))?;
        let mut s = self.state();
        let v = s.fdb.entry(index).or_default();
        v.retain(|f| !(f.mac == mac && f.dst == Some(dst)));
        v.push(FdbEntry {
            mac,
            dst: Some(dst),
            permanent: true,
        });
        Ok(())
    }

    async fn del_fdb(&self, index: u32, mac: Mac, dst: IpAddr) -> Result<(), NetlinkError> {
        self.record(format!(
            "fdb del {} dev if{index} dst {dst}",
            format_mac(&mac)
        ))?;
        if let Some(v) = self.state().fdb.get_mut(&index) {
            v.retain(|f| !(f.mac == mac && f.dst == Some(dst)));
        }
        Ok(())
    }

    async fn disable_accept_ra(&self, name: &str) -> Result<(), NetlinkError> {
        self.record(format!("sysctl net.ipv6.conf.{name}.accept_ra=0"))
    }

    async fn ensure_ipip(&self, spec: &IpipSpec) -> Result<EnsuredLink, NetlinkError> {
        let existing = self
            .state()
            .links
            .values()
            .find(|l| l.name == spec.name)
            .cloned();
        let mut recreated_because = None;
        if let Some(l) = existing {
            if l.kind.as_deref() != Some("ipip") {
                self.record(format!("link add ipip {} (exists)", spec.name))?;
                return Err(NetlinkError::WrongKind {
                    name: spec.name.clone(),
                    wanted: "ipip",
                });
            }
            let have = self.state().ipip.get(&l.index).copied().unwrap_or_default();
            match spec.incompatibility(&have) {
                None => {
                    self.record(format!("link reuse ipip {}", spec.name))?;
                    if l.mtu != spec.mtu {
                        self.record(format!("link set if{} mtu {}", l.index, spec.mtu))?;
                    }
                    let mut s = self.state();
                    let link = s.links.get_mut(&l.index).expect("link just found");
                    link.mtu = spec.mtu;
                    return Ok(EnsuredLink {
                        link: link.clone(),
                        created: false,
                        recreated_because: None,
                    });
                }
                Some(why) => {
                    self.record(format!("link del {}", spec.name))?;
                    self.delete_link(&spec.name);
                    recreated_because = Some(why);
                }
            }
        }
        self.record(format!("link add ipip {} local {}", spec.name, spec.local))?;
        let index = self.add_ipip_link(
            &spec.name,
            IpipInfo {
                local: Some(spec.local),
                remote: None,
            },
            spec.mtu,
        );
        let link = self.state().links[&index].clone();
        Ok(EnsuredLink {
            link,
            created: true,
            recreated_because,
        })
    }

    async fn ensure_wireguard(&self, name: &str, mtu: u32) -> Result<EnsuredLink, NetlinkError> {
        let existing = self
            .state()
            .links
            .values()
            .find(|l| l.name == name)
            .cloned();
        let mut recreated_because = None;
        if let Some(l) = existing {
            if l.kind.as_deref() == Some("wireguard") {
                self.record(format!("link reuse wireguard {name}"))?;
                let mut s = self.state();
                let link = s.links.get_mut(&l.index).expect("present");
                link.mtu = mtu;
                return Ok(EnsuredLink {
                    link: link.clone(),
                    created: false,
                    recreated_because: None,
                });
            }
            self.record(format!("link del {name}"))?;
            self.delete_link(name);
            recreated_because = Some(format!(
                "link type: wireguard vs {}",
                l.kind.as_deref().unwrap_or("device")
            ));
        }
        let call = format!("link add {name} mtu {mtu} type wireguard");
        if self.state().missing_kinds.iter().any(|k| k == "wireguard") {
            self.state().calls.push(call.clone());
            return Err(NetlinkError::Kernel {
                object: call,
                source: io::Error::from_raw_os_error(95),
                detail: Some("Unknown device type".into()),
            });
        }
        self.record(call)?;
        let mut s = self.state();
        let index = s.next_index;
        s.next_index += 1;
        let link = LinkInfo {
            index,
            name: name.to_string(),
            mtu,
            mac: None,
            up: false,
            kind: Some("wireguard".into()),
            vxlan: None,
        };
        s.links.insert(index, link.clone());
        Ok(EnsuredLink {
            link,
            created: true,
            recreated_because,
        })
    }

    async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        self.record(format!("link del if{index}"))?;
        let name = self.state().links.get(&index).map(|l| l.name.clone());
        if let Some(name) = name {
            FakeNetlink::delete_link(self, &name);
        }
        Ok(())
    }
}
