//! External interface selection (`--iface`, `--iface-regex`,
//! `--iface-can-reach`, `--public-ip`, default-route interface), as Go
//! flannel's `LookupExtIface`.

use crate::cli::Options;
use anyhow::{Context, Result, anyhow, bail};
use flannel_core::backend::ExternalInterface;
use flannel_core::config::Stack;
use flannel_netlink::{AddrInfo, Family, LinkInfo, Netlink};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tracing::{info, warn};

/// Address preference of Go flannel: global before link-local, permanent
/// before dynamic, non-temporary before temporary; deprecated never.
fn pick<T>(addrs: &[AddrInfo], index: u32, want: impl Fn(IpAddr) -> Option<T>) -> Option<T> {
    let mut cands: Vec<(&AddrInfo, T)> = addrs
        .iter()
        .filter(|a| a.index == index && !a.deprecated)
        .filter_map(|a| want(a.addr).map(|t| (a, t)))
        .filter(|(a, _)| match a.addr {
            IpAddr::V4(v) => !v.is_loopback() && !v.is_multicast() && !v.is_unspecified(),
            IpAddr::V6(v) => !v.is_loopback() && !v.is_multicast() && !v.is_unspecified(),
        })
        .collect();
    cands.sort_by_key(|(a, _)| {
        let link_local = match a.addr {
            IpAddr::V4(v) => v.is_link_local(),
            IpAddr::V6(v) => v.segments()[0] & 0xffc0 == 0xfe80,
        };
        (link_local, !a.permanent, a.temporary)
    });
    cands.into_iter().next().map(|(_, t)| t)
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    }
}

fn v6(ip: IpAddr) -> Option<Ipv6Addr> {
    match ip {
        IpAddr::V6(v) => Some(v),
        IpAddr::V4(_) => None,
    }
}

struct Found {
    link: LinkInfo,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
}

async fn complete(
    nl: &Netlink,
    link: LinkInfo,
    stack: Stack,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
) -> Result<Found> {
    let addrs = nl.all_addresses().await?;
    let need4 = stack != Stack::Ipv6;
    let need6 = stack != Stack::Ipv4;
    let v4 =
        match v4 {
            Some(a) => Some(a),
            None if need4 => Some(pick(&addrs, link.index, self::v4).ok_or_else(|| {
                anyhow!("failed to find IPv4 address for interface {}", link.name)
            })?),
            None => None,
        };
    let v6 =
        match v6 {
            Some(a) => Some(a),
            None if need6 => Some(pick(&addrs, link.index, self::v6).ok_or_else(|| {
                anyhow!("failed to find IPv6 address for interface {}", link.name)
            })?),
            None => None,
        };
    if link.mtu == 0 {
        bail!("failed to determine MTU for {} interface", link.name);
    }
    Ok(Found { link, v4, v6 })
}

/// `ifname` is an IP: the interface that has it; else an interface name.
async fn by_name_or_ip(nl: &Netlink, spec: &str, stack: Stack) -> Result<Found> {
    if let Ok(ip) = spec.parse::<IpAddr>() {
        let addrs = nl.all_addresses().await?;
        let a = addrs.iter().find(|a| a.addr == ip).ok_or_else(|| {
            anyhow!("error looking up interface {spec}: no interface has this address")
        })?;
        let link = nl
            .link_by_index(a.index)
            .await?
            .ok_or_else(|| anyhow!("error looking up interface {spec}"))?;
        return complete(nl, link, stack, v4(ip), v6(ip)).await;
    }
    let link = nl
        .link_by_name(spec)
        .await?
        .ok_or_else(|| anyhow!("error looking up interface {spec}: no such interface"))?;
    complete(nl, link, stack, None, None).await
}

async fn by_regex(nl: &Netlink, pattern: &str, stack: Stack) -> Result<Found> {
    let re =
        regex::Regex::new(pattern).with_context(|| format!("invalid --iface-regex {pattern:?}"))?;
    let links = nl.links().await?;
    let addrs = nl.all_addresses().await?;
    // First an interface with a matching address, then one with a matching name.
    for link in &links {
        let hit4 = addrs
            .iter()
            .any(|a| a.index == link.index && a.addr.is_ipv4() && re.is_match(&a.addr.to_string()));
        let hit6 = addrs
            .iter()
            .any(|a| a.index == link.index && a.addr.is_ipv6() && re.is_match(&a.addr.to_string()));
        let hit = match stack {
            Stack::Ipv4 => hit4,
            Stack::Ipv6 => hit6,
            Stack::Dual => hit4 && hit6,
        };
        if hit {
            let want4 = addrs
                .iter()
                .filter(|a| a.index == link.index)
                .find_map(|a| v4(a.addr).filter(|x| re.is_match(&x.to_string())));
            let want6 = addrs
                .iter()
                .filter(|a| a.index == link.index)
                .find_map(|a| v6(a.addr).filter(|x| re.is_match(&x.to_string())));
            return complete(nl, link.clone(), stack, want4, want6).await;
        }
    }
    if let Some(link) = links.iter().find(|l| re.is_match(&l.name)) {
        return complete(nl, link.clone(), stack, None, None).await;
    }
    let avail: Vec<String> = links
        .iter()
        .map(|l| {
            let ips: Vec<String> = addrs
                .iter()
                .filter(|a| a.index == l.index)
                .map(|a| a.addr.to_string())
                .collect();
            format!("{}:[{}]", l.name, ips.join(" "))
        })
        .collect();
    bail!(
        "could not match pattern {pattern} to any of the available network interfaces ({})",
        avail.join(", ")
    )
}

async fn by_can_reach(nl: &Netlink, target: &str, stack: Stack) -> Result<Found> {
    let ip: IpAddr = target
        .parse()
        .with_context(|| format!("invalid --iface-can-reach address {target:?}"))?;
    let routes = nl.route_get(ip).await?;
    let r = routes
        .first()
        .ok_or_else(|| anyhow!("no route to {target}"))?;
    let oif = r
        .oif
        .ok_or_else(|| anyhow!("route to {target} has no output interface"))?;
    let link = nl
        .link_by_index(oif)
        .await?
        .ok_or_else(|| anyhow!("interface {oif} vanished"))?;
    let src = r.prefsrc;
    complete(nl, link, stack, src.and_then(v4), src.and_then(v6)).await
}

async fn by_default_route(nl: &Netlink, stack: Stack) -> Result<Found> {
    let mut link4 = None;
    let mut link6 = None;
    for (family, slot, label) in [
        (Family::V4, &mut link4, ""),
        (Family::V6, &mut link6, " v6"),
    ] {
        let wanted = match family {
            Family::V4 => stack != Stack::Ipv6,
            Family::V6 => stack != Stack::Ipv4,
        };
        if !wanted {
            continue;
        }
        let routes = nl.routes(family).await?;
        let default = routes
            .iter()
            .find(|r| r.prefix == 0)
            .ok_or_else(|| anyhow!("unable to find{label} default route"))?;
        let oif = default.oif.ok_or_else(|| {
            anyhow!("found{label} default route but could not determine interface")
        })?;
        *slot = Some(oif);
    }
    if let (Some(a), Some(b)) = (link4, link6)
        && a != b
    {
        bail!(
            "v6 default route interface {b} must be the same with v4 default route interface {a}"
        );
    }
    let index = link4
        .or(link6)
        .ok_or_else(|| anyhow!("unable to find default route"))?;
    let link = nl
        .link_by_index(index)
        .await?
        .ok_or_else(|| anyhow!("default route interface {index} vanished"))?;
    complete(nl, link, stack, None, None).await
}

/// Chooses the external interface and the public addresses as flanneld does.
pub async fn select(
    nl: &Netlink,
    opts: &Options,
    stack: Stack,
    stored: (Option<Ipv4Addr>, Option<Ipv6Addr>),
) -> Result<ExternalInterface> {
    let public_ip: Option<Ipv4Addr> = match stored.0 {
        Some(ip) => Some(ip),
        None if !opts.public_ip.is_empty() => Some(
            opts.public_ip
                .parse()
                .map_err(|_| anyhow!("invalid public IP address: {}", opts.public_ip))?,
        ),
        None => None,
    };
    let public_ipv6: Option<Ipv6Addr> = match stored.1 {
        Some(ip) => Some(ip),
        None if !opts.public_ipv6.is_empty() => Some(
            opts.public_ipv6
                .parse()
                .map_err(|_| anyhow!("invalid public IPv6 address: {}", opts.public_ipv6))?,
        ),
        None => None,
    };
    let found = if opts.iface.is_empty()
        && opts.iface_regex.is_empty()
        && opts.iface_can_reach.is_empty()
    {
        let r = if let Some(ip) = public_ip {
            by_name_or_ip(nl, &ip.to_string(), stack).await
        } else if let Some(ip) = public_ipv6 {
            by_name_or_ip(nl, &ip.to_string(), stack).await
        } else {
            by_default_route(nl, stack).await
        };
        r.context("Failed to find any valid interface to use")?
    } else {
        let mut found = None;
        for spec in &opts.iface {
            match by_name_or_ip(nl, spec, stack).await {
                Ok(f) => {
                    found = Some(f);
                    break;
                }
                Err(e) => warn!("Could not find valid interface matching {spec}: {e:#}"),
            }
        }
        if found.is_none() {
            for re in &opts.iface_regex {
                match by_regex(nl, re, stack).await {
                    Ok(f) => {
                        found = Some(f);
                        break;
                    }
                    Err(e) => warn!("Could not find valid interface matching {re}: {e:#}"),
                }
            }
        }
        if found.is_none() && !opts.iface_can_reach.is_empty() {
            match by_can_reach(nl, &opts.iface_can_reach, stack).await {
                Ok(f) => found = Some(f),
                Err(e) => warn!(
                    "Could not find valid interface matching {}: {e:#}",
                    opts.iface_can_reach
                ),
            }
        }
        found.ok_or_else(|| anyhow!("Failed to find interface to use that matches the interfaces and/or regexes provided"))?
    };
    let shown: Vec<String> = found
        .v4
        .map(|a| a.to_string())
        .into_iter()
        .chain(found.v6.map(|a| a.to_string()))
        .collect();
    info!(
        "Using interface with name {} and address {}",
        found.link.name,
        shown.join(", ")
    );
    match (public_ip, found.v4) {
        (Some(p), _) => info!("Using {p} as external address"),
        (None, Some(a)) => info!("Defaulting external address to interface address ({a})"),
        _ => {}
    }
    if let (Some(p), None) = (public_ipv6, found.v6) {
        info!("Using {p} as external IPv6 address");
    }
    Ok(ExternalInterface {
        name: found.link.name.clone(),
        index: found.link.index,
        mtu: found.link.mtu,
        iface_addr: found.v4,
        iface_v6_addr: found.v6,
        ext_addr: public_ip.or(found.v4),
        ext_v6_addr: public_ipv6.or(found.v6),
    })
}
