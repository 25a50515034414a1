//! Nodes to leases, as Go's `nodeToLease` and `AcquireLease` read them.
//! Pure functions over [`SlimNode`].

use super::annotations::{Annotations, NodeAnnotations};
use super::node::SlimNode;
use flannel_core::gojson::RawJson;
use flannel_core::ip::{Family, Ip4Net, Ip6Net, IpError, parse_cidr_go};
use flannel_core::lease::{Lease, LeaseAttrs};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A node that cannot be turned into a lease; the text is Go's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NodeError(pub String);

impl From<IpError> for NodeError {
    fn from(e: IpError) -> Self {
        NodeError(e.to_string())
    }
}

/// The node's name (empty when it has none).
pub fn node_name(node: &SlimNode) -> &str {
    node.name()
}

/// The node's annotations (empty when it has none).
pub fn node_annotations(node: &SlimNode) -> &NodeAnnotations {
    static EMPTY: NodeAnnotations = NodeAnnotations::new();
    node.metadata.annotations.as_ref().unwrap_or(&EMPTY)
}

fn pod_cidr(node: &SlimNode) -> &str {
    node.pod_cidr.as_deref().unwrap_or("")
}

fn pod_cidrs(node: &SlimNode) -> &[String] {
    &node.pod_cidrs
}

/// Go's `net.ParseCIDR`, masked: an IPv4 or an IPv6 network.
fn parse(text: &str) -> Result<Net, NodeError> {
    Ok(match parse_cidr_go(text)? {
        (IpAddr::V4(a), len) => Net::V4(Ip4Net::new(a, len)?),
        (IpAddr::V6(a), len) => Net::V6(Ip6Net::new(a, len)?),
    })
}

#[derive(Clone, Copy)]
enum Net {
    V4(Ip4Net),
    V6(Ip6Net),
}

/// Go's `containsCIDR(a, b)`: `b` is no larger than `a` and starts inside it.
///
/// ```
/// use flannel_subnet::kube::contains_cidr;
/// let net: flannel_core::Ip4Net = "10.244.0.0/16".parse().unwrap();
/// assert!(contains_cidr(&net, &"10.244.255.0/24".parse().unwrap()));
/// assert!(!contains_cidr(&net, &"10.244.0.0/15".parse().unwrap()));
/// ```
pub fn contains_cidr<F: Family>(
    a: &flannel_core::ip::Cidr<F>,
    b: &flannel_core::ip::Cidr<F>,
) -> bool {
    a.contains_net(b)
}

fn too_many(name: &str) -> NodeError {
    NodeError(format!(
        "node \"{name}\" pod cidrs should be IPv4/IPv6 only or dualstack"
    ))
}

/// The node's pod networks as `AcquireLease` reads them: `spec.podCIDR`
/// must be set (`node "<n>" pod cidr not assigned`); with no `podCIDRs` it
/// is the one network, else each of the one or two `podCIDRs` goes to its
/// family; three or more are an error.
pub fn own_pod_cidrs(node: &SlimNode) -> Result<(Option<Ip4Net>, Option<Ip6Net>), NodeError> {
    let name = node_name(node);
    if pod_cidr(node).is_empty() {
        return Err(NodeError(format!("node \"{name}\" pod cidr not assigned")));
    }
    let list = pod_cidrs(node);
    let texts: Vec<&str> = match list.len() {
        0 => vec![pod_cidr(node)],
        1 | 2 => list.iter().map(String::as_str).collect(),
        _ => return Err(too_many(name)),
    };
    let (mut v4, mut v6) = (None, None);
    for t in texts {
        match parse(t)? {
            Net::V4(n) => v4 = Some(n),
            Net::V6(n) => v6 = Some(n),
        }
    }
    Ok((v4, v6))
}

/// One family's pod network as `nodeToLease` picks it: `spec.podCIDR` when
/// `podCIDRs` is empty, else the first entry of that family.
fn family_cidr<T>(
    node: &SlimNode,
    pick: impl Fn(Net) -> Option<T>,
    family: &str,
) -> Result<T, NodeError> {
    let list = pod_cidrs(node);
    let found = match list.len() {
        0 => pick(parse(pod_cidr(node))?),
        1 | 2 => {
            let mut found = None;
            for t in list {
                if let Some(n) = pick(parse(t)?) {
                    found = Some(n);
                    break;
                }
            }
            found
        }
        _ => return Err(too_many(node_name(node))),
    };
    found.ok_or_else(|| NodeError(format!("missing {family} address on n.Spec.PodCIDRs")))
}

/// Raw backend data from an annotation: absent stays absent; text that is
/// not JSON is dropped (Go keeps it and the backend then fails to decode it,
/// skipping the lease the same way).
fn backend_data(text: Option<&String>) -> Option<RawJson> {
    text.and_then(|t| RawJson::new(t).ok())
}

/// Go's `nodeToLease`: for each enabled family the public address (`public-ip`,
/// parse errors abort), the backend data and the pod network; the backend
/// type from `backend-type`. The lease has no expiry (Kubernetes leases do
/// not expire) and its `asof` is the node's resourceVersion.
pub fn node_to_lease(
    names: &Annotations,
    node: &SlimNode,
    ipv4: bool,
    ipv6: bool,
) -> Result<Lease, NodeError> {
    let a = node_annotations(node);
    let text = |k: &String| a.get(k).map_or("", String::as_str);
    let mut attrs = LeaseAttrs::default();
    let (mut subnet, mut ipv6_subnet) = (None, None);
    if ipv4 {
        attrs.public_ip = Ipv4Addr::parse_go(text(&names.public_ip))?;
        attrs.backend_data = backend_data(a.get(&names.backend_data));
        subnet = Some(family_cidr(
            node,
            |n| match n {
                Net::V4(n) => Some(n),
                Net::V6(_) => None,
            },
            "IPv4",
        )?);
    }
    if ipv6 {
        attrs.public_ipv6 = Some(Ipv6Addr::parse_go(text(&names.public_ipv6))?);
        attrs.backend_v6_data = backend_data(a.get(&names.backend_v6_data));
        ipv6_subnet = Some(family_cidr(
            node,
            |n| match n {
                Net::V6(n) => Some(n),
                Net::V4(_) => None,
            },
            "IPv6",
        )?);
    }
    attrs.backend_type = text(&names.backend_type).to_string();
    if subnet.is_none() && ipv6_subnet.is_none() {
        return Err(NodeError("none defined stack".into()));
    }
    Ok(Lease {
        subnet,
        ipv6_subnet,
        attrs,
        expiration: None,
        asof: resource_version(node),
    })
}

/// The node's resourceVersion as a number (0 when it is not one; the API
/// server's versions are opaque but numeric in practice).
pub fn resource_version(node: &SlimNode) -> i64 {
    node.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::annotations::DEFAULT_PREFIX;
    use k8s_openapi::api::core::v1::{Node, NodeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, cidr: &str, cidrs: &[&str], ann: &[(&str, &str)]) -> SlimNode {
        let p = "flannel.alpha.coreos.com/";
        SlimNode::from(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some("42".into()),
                annotations: Some(
                    ann.iter()
                        .map(|(k, v)| (format!("{p}{k}"), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: (!cidr.is_empty()).then(|| cidr.into()),
                pod_cidrs: (!cidrs.is_empty())
                    .then(|| cidrs.iter().map(|s| s.to_string()).collect()),
                ..NodeSpec::default()
            }),
            status: None,
        })
    }

    fn names() -> Annotations {
        Annotations::new(DEFAULT_PREFIX).unwrap()
    }

    #[test]
    fn contains_cidr_table_from_go() {
        // pkg/subnet/kube/kube_test.go TestContainsCIDR
        let v4: Ip4Net = "10.244.0.0/16".parse().unwrap();
        for (b, want) in [
            ("10.244.0.0/16", true),
            ("10.244.0.0/24", true),
            ("10.244.255.0/24", true),
            ("10.244.0.0/15", false),
            ("192.168.0.0/24", false),
        ] {
            assert_eq!(contains_cidr(&v4, &b.parse().unwrap()), want, "{b}");
        }
        let v6: Ip6Net = "2001:0db8:1234::/48".parse().unwrap();
        for (b, want) in [
            ("2001:0db8:1234::/48", true),
            ("2001:0db8:1234::/64", true),
            ("2001:0db8:1234:ffff::/64", true),
            ("2001:0db8:1234::/47", false),
            ("fe02::/32", false),
        ] {
            assert_eq!(contains_cidr(&v6, &b.parse().unwrap()), want, "{b}");
        }
    }

    #[test]
    fn node_to_lease_v4_v6_dual() {
        let vx = r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}"#;
        let n = node(
            "n1",
            "10.244.1.0/24",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &[
                ("backend-data", vx),
                ("backend-v6-data", vx),
                ("backend-type", "vxlan"),
                ("public-ip", "192.168.1.10"),
                ("public-ipv6", "fd00::10"),
                ("kube-subnet-manager", "true"),
            ],
        );
        let l = node_to_lease(&names(), &n, true, false).unwrap();
        assert_eq!(l.key().to_string(), "10.244.1.0-24");
        assert_eq!(l.attrs.public_ip.to_string(), "192.168.1.10");
        assert_eq!(l.attrs.public_ipv6, None);
        assert_eq!(l.attrs.backend_type, "vxlan");
        assert_eq!(l.attrs.backend_data.as_ref().unwrap().get(), vx);
        assert_eq!((l.expiration, l.asof), (None, 42));
        let l = node_to_lease(&names(), &n, false, true).unwrap();
        assert_eq!(l.subnet, None);
        assert_eq!(l.ipv6_subnet.unwrap().to_string(), "fd00:10:244:1::/64");
        assert_eq!(l.attrs.public_ipv6.unwrap().to_string(), "fd00::10");
        let l = node_to_lease(&names(), &n, true, true).unwrap();
        assert!(l.has_ipv4() && l.has_ipv6());
        // podCIDRs empty: spec.podCIDR, masked.
        let n = node("n2", "10.244.2.7/24", &[], &[("public-ip", "1.2.3.4")]);
        let l = node_to_lease(&names(), &n, true, false).unwrap();
        assert_eq!(l.subnet.unwrap().to_string(), "10.244.2.0/24");
        assert_eq!(l.attrs.backend_data, None);
        assert_eq!(l.attrs.backend_type, "");
        // host-gw's `null` data stays the raw null.
        let n = node(
            "n3",
            "10.244.3.0/24",
            &[],
            &[("public-ip", "1.2.3.4"), ("backend-data", "null")],
        );
        assert!(
            node_to_lease(&names(), &n, true, false)
                .unwrap()
                .attrs
                .backend_data
                .unwrap()
                .is_null()
        );
    }

    #[test]
    fn node_to_lease_errors_are_gos() {
        let err =
            |n: &SlimNode, v4, v6| node_to_lease(&names(), n, v4, v6).unwrap_err().to_string();
        let n = node("bad", "10.244.1.0/24", &[], &[("public-ip", "not-an-ip")]);
        assert_eq!(err(&n, true, false), "invalid IP address format");
        let n = node("bad", "10.244.1.0/24", &[], &[]);
        assert_eq!(err(&n, true, false), "invalid IP address format");
        let n = node(
            "three",
            "10.244.1.0/24",
            &["10.244.1.0/24", "fd00::/64", "10.9.0.0/24"],
            &[("public-ip", "1.2.3.4")],
        );
        assert_eq!(
            err(&n, true, false),
            "node \"three\" pod cidrs should be IPv4/IPv6 only or dualstack"
        );
        let n = node(
            "v6only",
            "fd00::/64",
            &["fd00::/64"],
            &[("public-ip", "1.2.3.4")],
        );
        assert_eq!(
            err(&n, true, false),
            "missing IPv4 address on n.Spec.PodCIDRs"
        );
        let n = node(
            "v4only",
            "10.244.1.0/24",
            &["10.244.1.0/24"],
            &[("public-ipv6", "fd00::1")],
        );
        assert_eq!(
            err(&n, false, true),
            "missing IPv6 address on n.Spec.PodCIDRs"
        );
        let n = node("nocidr", "", &[], &[("public-ip", "1.2.3.4")]);
        assert_eq!(err(&n, true, false), "invalid CIDR address: ");
        let n = node("garbage", "10.244.1.0/33", &[], &[("public-ip", "1.2.3.4")]);
        assert_eq!(err(&n, true, false), "invalid CIDR address: 10.244.1.0/33");
    }

    #[test]
    fn own_pod_cidrs_rules() {
        let n = node("n", "", &[], &[]);
        assert_eq!(
            own_pod_cidrs(&n).unwrap_err().to_string(),
            "node \"n\" pod cidr not assigned"
        );
        let n = node("n", "10.244.1.0/24", &[], &[]);
        assert_eq!(
            own_pod_cidrs(&n).unwrap(),
            (Some("10.244.1.0/24".parse().unwrap()), None)
        );
        let n = node("n", "fd00::/64", &[], &[]);
        assert_eq!(
            own_pod_cidrs(&n).unwrap(),
            (None, Some("fd00::/64".parse().unwrap()))
        );
        let n = node("n", "fd00::/64", &["fd00::/64", "10.244.1.0/24"], &[]);
        assert_eq!(
            own_pod_cidrs(&n).unwrap(),
            (
                Some("10.244.1.0/24".parse().unwrap()),
                Some("fd00::/64".parse().unwrap())
            )
        );
        let n = node(
            "n",
            "10.1.0.0/24",
            &["10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"],
            &[],
        );
        assert_eq!(
            own_pod_cidrs(&n).unwrap_err().to_string(),
            "node \"n\" pod cidrs should be IPv4/IPv6 only or dualstack"
        );
    }
}
