//! Flannel's node annotations: the prefix rules, what a node writes for each
//! backend type, the update filter and the stored VTEP MAC, all as Go's
//! `pkg/subnet/kube/annotations.go` and `kube.go` do them. Pure functions: no
//! I/O, tested without an API server.

use flannel_core::gojson;
use flannel_core::ip::GoIp;
use flannel_core::lease::LeaseAttrs;
use std::collections::BTreeMap;

/// The default `--kube-annotation-prefix`.
pub const DEFAULT_PREFIX: &str = "flannel.alpha.coreos.com";

/// A `--kube-annotation-prefix` that Go flannel rejects (its error texts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    /// More than one `/`.
    #[error("subnet/kube: prefix can contain at most single slash")]
    TooManySlashes,
    /// Not `fqdn/[0-9a-z-_]*` after normalisation.
    #[error("subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*")]
    Format,
}

/// The full annotation names for one prefix (Go's `annotations` struct).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// The normalised prefix: ends in `/` or `-`.
    pub prefix: String,
    /// `kube-subnet-manager`: `"true"` on nodes flannel manages.
    pub subnet_kube_managed: String,
    /// `backend-data`: the backend's IPv4 data (raw JSON text).
    pub backend_data: String,
    /// `backend-v6-data`: the backend's IPv6 data.
    pub backend_v6_data: String,
    /// `backend-type`.
    pub backend_type: String,
    /// `public-ip`.
    pub public_ip: String,
    /// `public-ipv6`.
    pub public_ipv6: String,
    /// `public-ip-overwrite`: set by the user, replaces `public-ip`.
    pub public_ip_overwrite: String,
    /// `public-ipv6-overwrite`: set by the user, replaces `public-ipv6`.
    pub public_ipv6_overwrite: String,
    /// `node-public-ip`: set by the user, used as `--public-ip`.
    pub node_public_ip: String,
    /// `node-public-ipv6`: set by the user, used as `--public-ipv6`.
    pub node_public_ipv6: String,
}

fn label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

/// Go's `(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$`, which is
/// anchored only at the end: the part before the slash must *end* in two
/// dot-separated labels (a longer match only extends to the left), and the
/// part after it is empty or lowercase label characters ending in `-`.
fn prefix_matches(prefix: &str) -> bool {
    let Some((domain, rest)) = prefix.split_once('/') else {
        return false;
    };
    let rest_ok =
        rest.is_empty() || (rest.len() >= 2 && rest.ends_with('-') && rest.chars().all(label_char));
    let last = domain.chars().rev().take_while(|&c| label_char(c)).count();
    let before = &domain[..domain.len() - last];
    let second = before
        .strip_suffix('.')
        .map(|b| b.chars().rev().take_while(|&c| label_char(c)).count());
    rest_ok && last > 0 && second.is_some_and(|n| n > 0)
}

impl Annotations {
    /// Normalises `prefix` as Go's `newAnnotations`: at most one `/`; none
    /// → `/` appended; not ending in `/` or `-` → `-` appended; the result
    /// must look like `fqdn/[0-9a-z-_]*`.
    ///
    /// ```
    /// use flannel_subnet::kube::Annotations;
    /// let a = Annotations::new("flannel.alpha.coreos.com/prefix").unwrap();
    /// assert_eq!(a.backend_type, "flannel.alpha.coreos.com/prefix-backend-type");
    /// assert!(Annotations::new("org.COM").is_err());
    /// ```
    pub fn new(prefix: &str) -> Result<Annotations, PrefixError> {
        let mut p = prefix.to_string();
        match p.matches('/').count() {
            0 => p.push('/'),
            1 => {}
            _ => return Err(PrefixError::TooManySlashes),
        }
        if !p.ends_with('/') && !p.ends_with('-') {
            p.push('-');
        }
        if !prefix_matches(&p) {
            return Err(PrefixError::Format);
        }
        let name = |s: &str| format!("{p}{s}");
        Ok(Annotations {
            subnet_kube_managed: name("kube-subnet-manager"),
            backend_data: name("backend-data"),
            backend_v6_data: name("backend-v6-data"),
            backend_type: name("backend-type"),
            public_ip: name("public-ip"),
            public_ipv6: name("public-ipv6"),
            public_ip_overwrite: name("public-ip-overwrite"),
            public_ipv6_overwrite: name("public-ipv6-overwrite"),
            node_public_ip: name("node-public-ip"),
            node_public_ipv6: name("node-public-ipv6"),
            prefix: p,
        })
    }
}

/// A node's annotations.
pub type NodeAnnotations = BTreeMap<String, String>;

fn get<'a>(a: &'a NodeAnnotations, key: &str) -> &'a str {
    a.get(key).map_or("", String::as_str)
}

/// True when `a` marks the node as managed by flannel (the
/// `kube-subnet-manager` annotation is exactly `"true"`).
pub fn is_managed(names: &Annotations, a: &NodeAnnotations) -> bool {
    get(a, &names.subnet_kube_managed) == "true"
}

/// The backend data as Go's `json.RawMessage.MarshalJSON` gives it: the raw
/// text, or `null` when absent.
fn raw_or_null(data: Option<&gojson::RawJson>) -> &str {
    data.map_or("null", |d| d.get())
}

fn v6_text(attrs: &LeaseAttrs) -> String {
    attrs
        .public_ipv6
        .map_or_else(|| "<nil>".to_string(), |ip| GoIp(ip).to_string())
}

/// The annotations a node must change so that they describe `attrs`, as Go's
/// `AcquireLease` decides it; `None` when they already do (Go then patches
/// nothing). `Some` of an empty map is a rewrite that changes nothing (a
/// `public-ip-overwrite` makes Go rewrite at every start); Go still sends its
/// empty patch `{}`.
///
/// The rewrite happens when backend data, backend type or public IP differ,
/// `kube-subnet-manager` is not `true`, or an overwrite is set to another
/// address (and the same for IPv6 when we have a public IPv6 address). It
/// then sets: `backend-type` (empty for udp, alloc and tencent-vpc);
/// `backend-data` and `public-ip` (the overwrite when set) unless this is
/// vxlan without IPv4 data; `backend-v6-data` and
/// `public-ipv6` for vxlan with IPv6 data, wireguard with IPv6 data and
/// address, host-gw and extension with an IPv6 address; and
/// `kube-subnet-manager: "true"`. Only values that differ from the node's
/// are returned, which is what Go's two-way strategic merge patch carries.
pub fn annotation_changes(
    names: &Annotations,
    current: &NodeAnnotations,
    attrs: &LeaseAttrs,
) -> Option<BTreeMap<String, String>> {
    let bd = raw_or_null(attrs.backend_data.as_ref());
    let v6bd = raw_or_null(attrs.backend_v6_data.as_ref());
    let ty = attrs.backend_type.as_str();
    let ip4 = attrs.public_ip.to_string();
    let ip6 = v6_text(attrs);
    let g = |k: &String| get(current, k);
    let v4_stale = g(&names.backend_data) != bd
        || g(&names.backend_type) != ty
        || g(&names.public_ip) != ip4
        || g(&names.subnet_kube_managed) != "true"
        || (!g(&names.public_ip_overwrite).is_empty() && g(&names.public_ip_overwrite) != ip4);
    let v6_stale = attrs.public_ipv6.is_some()
        && (g(&names.backend_v6_data) != v6bd
            || g(&names.backend_type) != ty
            || g(&names.public_ipv6) != ip6
            || g(&names.subnet_kube_managed) != "true"
            || (!g(&names.public_ipv6_overwrite).is_empty()
                && g(&names.public_ipv6_overwrite) != ip6));
    if !v4_stale && !v6_stale {
        return None;
    }
    let mut next = current.clone();
    next.insert(names.backend_type.clone(), ty.to_string());
    // Go: `(vxlan && bd != null) || (wireguard && bd != null) || type != vxlan`,
    // which reduces to this: only an IPv4-less vxlan node skips the block.
    if ty != "vxlan" || bd != "null" {
        next.insert(names.backend_data.clone(), bd.to_string());
        let overwrite = g(&names.public_ip_overwrite);
        if !overwrite.is_empty() {
            if g(&names.public_ip) != overwrite {
                tracing::info!(
                    "Overriding public ip with '{overwrite}' from node annotation '{}'",
                    names.public_ip_overwrite
                );
                next.insert(names.public_ip.clone(), overwrite.to_string());
            }
        } else {
            next.insert(names.public_ip.clone(), ip4);
        }
    }
    let has_v6 = attrs.public_ipv6.is_some();
    if (ty == "vxlan" && v6bd != "null")
        || (ty == "wireguard" && v6bd != "null" && has_v6)
        || (ty == "host-gw" && has_v6)
        || (ty == "extension" && has_v6)
    {
        next.insert(names.backend_v6_data.clone(), v6bd.to_string());
        let overwrite = g(&names.public_ipv6_overwrite);
        if !overwrite.is_empty() {
            if g(&names.public_ipv6) != overwrite {
                tracing::info!(
                    "Overriding public ipv6 with '{overwrite}' from node annotation '{}'",
                    names.public_ipv6_overwrite
                );
                next.insert(names.public_ipv6.clone(), overwrite.to_string());
            }
        } else {
            next.insert(names.public_ipv6.clone(), ip6);
        }
    }
    next.insert(names.subnet_kube_managed.clone(), "true".to_string());
    Some(
        next.into_iter()
            .filter(|(k, v)| current.get(k) != Some(v))
            .collect(),
    )
}

/// The strategic merge patch body Go sends for annotation changes:
/// `{"metadata":{"annotations":{...}}}` with keys sorted and strings escaped
/// as Go's `json.Marshal` does; `{}` when nothing changes.
pub fn annotations_patch(changes: &BTreeMap<String, String>) -> String {
    if changes.is_empty() {
        return "{}".to_string();
    }
    let mut out = String::from("{\"metadata\":{\"annotations\":{");
    for (i, (k, v)) in changes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        gojson::write_string(&mut out, k);
        out.push(':');
        gojson::write_string(&mut out, v);
    }
    out.push_str("}}}");
    out
}

/// The `NetworkUnavailable=False` patch Go's `CompleteLease` sends, with
/// both timestamps `now` (RFC 3339, seconds, UTC, as `metav1.Time`).
pub fn network_unavailable_patch(now: &str) -> String {
    format!(
        "{{\"status\":{{\"conditions\":[{{\"type\":\"NetworkUnavailable\",\"status\":\"False\",\
         \"lastHeartbeatTime\":\"{now}\",\"lastTransitionTime\":\"{now}\",\"reason\":\"FlannelIsUp\",\
         \"message\":\"Flannel is running on this node\"}}]}}}}"
    )
}

/// `t` as `metav1.Time` marshals: `2006-01-02T15:04:05Z` in UTC.
pub fn rfc3339_seconds(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    flannel_core::time::rfc3339_utc(secs)
}

/// The annotation values Go's update filter compares (backend data, type
/// and public address per family). Kept for every node the watch has seen,
/// so that an update is judged against the node's previous state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relevant {
    /// `backend-data`.
    pub backend_data: Option<String>,
    /// `backend-v6-data`.
    pub backend_v6_data: Option<String>,
    /// `backend-type`.
    pub backend_type: Option<String>,
    /// `public-ip`.
    pub public_ip: Option<String>,
    /// `public-ipv6`.
    pub public_ipv6: Option<String>,
}

impl Relevant {
    /// Picks the compared values out of a node's annotations.
    pub fn of(names: &Annotations, a: &NodeAnnotations) -> Relevant {
        let pick = |k: &String| a.get(k).cloned();
        Relevant {
            backend_data: pick(&names.backend_data),
            backend_v6_data: pick(&names.backend_v6_data),
            backend_type: pick(&names.backend_type),
            public_ip: pick(&names.public_ip),
            public_ipv6: pick(&names.public_ipv6),
        }
    }
}

/// Go's update filter: an updated node is an event only if something a lease
/// carries changed. It starts as changed; with IPv4 enabled and IPv4 data,
/// type and public IP unchanged it is unchanged; *then*, with IPv6 enabled and
/// the IPv6 values unchanged, it is unchanged too. So in dual stack a change
/// counts only when both families changed (or the type did): an unchanged
/// part of one family hides a change of the other, as in Go. PodCIDR
/// changes do not count. A missing annotation equals an empty one, as in Go's maps.
pub fn update_changed(old: &Relevant, new: &Relevant, ipv4: bool, ipv6: bool) -> bool {
    let same = |a: &Option<String>, b: &Option<String>| {
        a.as_deref().unwrap_or("") == b.as_deref().unwrap_or("")
    };
    let mut changed = true;
    if ipv4
        && same(&old.backend_data, &new.backend_data)
        && same(&old.backend_type, &new.backend_type)
        && same(&old.public_ip, &new.public_ip)
    {
        changed = false;
    }
    if ipv6
        && same(&old.backend_v6_data, &new.backend_v6_data)
        && same(&old.backend_type, &new.backend_type)
        && same(&old.public_ipv6, &new.public_ipv6)
    {
        changed = false;
    }
    changed
}

/// What [`update_changed`] compares, packed to be kept per node by the
/// watch: for each enabled family its three values (data, type, public
/// address), each written as a little-endian `u32` length and the bytes, so
/// two packs are equal exactly when the values are. A missing annotation
/// packs like an empty one (Go reads annotations from a map), and three
/// empty values pack to nothing, so a node without flannel's annotations
/// costs no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Compared {
    v4: Box<[u8]>,
    v6: Box<[u8]>,
}

fn pack(values: [&str; 3]) -> Box<[u8]> {
    if values.iter().all(|v| v.is_empty()) {
        return Box::default();
    }
    let mut out = Vec::with_capacity(12 + values.iter().map(|v| v.len()).sum::<usize>());
    for v in values {
        // Annotation values are far below 4 GiB (the API server caps all of
        // a node's annotations at 256 KiB).
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.into_boxed_slice()
}

impl Compared {
    /// The values of `a` that Go's filter compares in the enabled families.
    pub(crate) fn of(names: &Annotations, a: &NodeAnnotations, ipv4: bool, ipv6: bool) -> Self {
        let ty = get(a, &names.backend_type);
        Compared {
            v4: if ipv4 {
                pack([get(a, &names.backend_data), ty, get(a, &names.public_ip)])
            } else {
                Box::default()
            },
            v6: if ipv6 {
                pack([
                    get(a, &names.backend_v6_data),
                    ty,
                    get(a, &names.public_ipv6),
                ])
            } else {
                Box::default()
            },
        }
    }

    /// The bytes the pack holds on the heap.
    #[cfg(test)]
    pub(crate) fn heap_len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// [`update_changed`] over packs made with the same families.
    pub(crate) fn changed(&self, new: &Compared, ipv4: bool, ipv6: bool) -> bool {
        let mut changed = true;
        if ipv4 && self.v4 == new.v4 {
            changed = false;
        }
        if ipv6 && self.v6 == new.v6 {
            changed = false;
        }
        changed
    }
}

/// The VTEP MAC in a `backend-data` annotation, read as Go's
/// `GetStoredMacAddresses` does: `"` and `}` trimmed from both ends, split
/// on `:"`, and the second part taken when there are exactly two.
pub fn stored_mac(backend_data: &str) -> Option<String> {
    let trimmed = backend_data.trim_matches(|c| c == '"' || c == '}');
    let parts: Vec<&str> = trimmed.split(":\"").collect();
    (parts.len() == 2 && !parts[1].is_empty()).then(|| parts[1].to_string())
}

/// `EVENT_QUEUE_DEPTH` parsed as Go does: unset or empty → 5000; not an
/// integer → `env EVENT_QUEUE_DEPTH=<v> format error: <strconv error>`;
/// zero or negative → 5000.
pub fn event_queue_depth(value: Option<&str>) -> Result<usize, String> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_EVENT_QUEUE_DEPTH);
    };
    let n = go_atoi(v).map_err(|e| format!("env EVENT_QUEUE_DEPTH={v} format error: {e}"))?;
    Ok(if n > 0 {
        usize::try_from(n).unwrap_or(usize::MAX)
    } else {
        DEFAULT_EVENT_QUEUE_DEPTH
    })
}

/// The default of `EVENT_QUEUE_DEPTH`.
pub const DEFAULT_EVENT_QUEUE_DEPTH: usize = 5000;

/// Go's `strconv.Atoi` on a 64-bit platform, with its error texts.
fn go_atoi(s: &str) -> Result<i64, String> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "strconv.Atoi: parsing {}: invalid syntax",
            go_quote(s)
        ));
    }
    s.strip_prefix('+')
        .unwrap_or(s)
        .parse::<i64>()
        .map_err(|_| format!("strconv.Atoi: parsing {}: value out of range", go_quote(s)))
}

/// Go's `strconv.Quote` for the texts it can meet here (printable ASCII and
/// common escapes).
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_core::gojson::RawJson;
    use std::net::Ipv4Addr;

    #[test]
    fn prefix_table_from_go() {
        // pkg/subnet/kube/annotations_test.go
        let ok = [
            (
                "flannel.alpha.coreos.com",
                "flannel.alpha.coreos.com/backend-type",
            ),
            (
                "flannel.alpha.coreos.com/",
                "flannel.alpha.coreos.com/backend-type",
            ),
            (
                "flannel.alpha.coreos.com/prefix",
                "flannel.alpha.coreos.com/prefix-backend-type",
            ),
            (
                "flannel.alpha.coreos.com/prefix-",
                "flannel.alpha.coreos.com/prefix-backend-type",
            ),
            ("org.com", "org.com/backend-type"),
            ("org9.com", "org9.com/backend-type"),
            ("org.com/9", "org.com/9-backend-type"),
        ];
        for (prefix, want) in ok {
            let a = Annotations::new(prefix).unwrap_or_else(|e| panic!("{prefix}: {e}"));
            assert_eq!(a.backend_type, want, "{prefix}");
        }
        for bad in ["org", "org/", "org/prefix", "org.COM", "org.com/PREFIX"] {
            assert_eq!(
                Annotations::new(bad).unwrap_err().to_string(),
                "subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*",
                "{bad}"
            );
        }
        assert_eq!(
            Annotations::new("a.b/c/d").unwrap_err().to_string(),
            "subnet/kube: prefix can contain at most single slash"
        );
        // Unanchored at the start, as Go's regex: only the tail must match.
        assert!(Annotations::new("Some.example.com").is_ok());
        assert!(Annotations::new("a..b").is_err());
        assert!(Annotations::new("org.com/-").is_err());
    }

    #[test]
    fn every_name_for_the_default_prefix() {
        let a = Annotations::new(DEFAULT_PREFIX).unwrap();
        let p = "flannel.alpha.coreos.com/";
        assert_eq!(a.prefix, p);
        for (got, suffix) in [
            (&a.subnet_kube_managed, "kube-subnet-manager"),
            (&a.backend_data, "backend-data"),
            (&a.backend_v6_data, "backend-v6-data"),
            (&a.backend_type, "backend-type"),
            (&a.public_ip, "public-ip"),
            (&a.public_ipv6, "public-ipv6"),
            (&a.public_ip_overwrite, "public-ip-overwrite"),
            (&a.public_ipv6_overwrite, "public-ipv6-overwrite"),
            (&a.node_public_ip, "node-public-ip"),
            (&a.node_public_ipv6, "node-public-ipv6"),
        ] {
            assert_eq!(*got, format!("{p}{suffix}"));
        }
    }

    fn attrs(ty: &str, bd: Option<&str>, v6: Option<(&str, Option<&str>)>) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::new(10, 0, 0, 1),
            public_ipv6: v6.map(|(ip, _)| ip.parse().unwrap()),
            backend_type: ty.into(),
            backend_data: bd.map(|d| RawJson::new(d).unwrap()),
            backend_v6_data: v6.and_then(|(_, d)| d.map(|d| RawJson::new(d).unwrap())),
        }
    }

    fn patch_for(a: &LeaseAttrs) -> String {
        let names = Annotations::new(DEFAULT_PREFIX).unwrap();
        annotations_patch(&annotation_changes(&names, &NodeAnnotations::new(), a).unwrap())
    }

    #[test]
    fn annotation_bytes_per_backend_type() {
        let vx = r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}"#;
        assert_eq!(
            patch_for(&attrs("vxlan", Some(vx), None)),
            r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"aa:bb:cc:dd:ee:01\"}","flannel.alpha.coreos.com/backend-type":"vxlan","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"10.0.0.1"}}}"#
        );
        // host-gw: no backend data, written as `null`.
        assert_eq!(
            patch_for(&attrs("host-gw", None, None)),
            r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"null","flannel.alpha.coreos.com/backend-type":"host-gw","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"10.0.0.1"}}}"#
        );
        // udp, alloc and tencent-vpc publish no type: `""`.
        let untyped = r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"null","flannel.alpha.coreos.com/backend-type":"","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"10.0.0.1"}}}"#;
        assert_eq!(patch_for(&attrs("", None, None)), untyped);
        // Dual-stack vxlan: both blocks.
        let vx6 = r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}"#;
        assert_eq!(
            patch_for(&attrs("vxlan", Some(vx), Some(("fd00::1", Some(vx6))))),
            r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"aa:bb:cc:dd:ee:01\"}","flannel.alpha.coreos.com/backend-type":"vxlan","flannel.alpha.coreos.com/backend-v6-data":"{\"VNI\":1,\"VtepMAC\":\"aa:bb:cc:dd:ee:02\"}","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"10.0.0.1","flannel.alpha.coreos.com/public-ipv6":"fd00::1"}}}"#
        );
        // IPv6-only vxlan: no IPv4 block (its data is null).
        let mut v6only = attrs("vxlan", None, Some(("fd00::1", Some(vx6))));
        v6only.public_ip = Ipv4Addr::UNSPECIFIED;
        assert_eq!(
            patch_for(&v6only),
            r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-type":"vxlan","flannel.alpha.coreos.com/backend-v6-data":"{\"VNI\":1,\"VtepMAC\":\"aa:bb:cc:dd:ee:02\"}","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ipv6":"fd00::1"}}}"#
        );
        // Dual-stack host-gw: v6 block with `null` data.
        assert_eq!(
            patch_for(&attrs("host-gw", None, Some(("fd00::1", None)))),
            r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"null","flannel.alpha.coreos.com/backend-type":"host-gw","flannel.alpha.coreos.com/backend-v6-data":"null","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"10.0.0.1","flannel.alpha.coreos.com/public-ipv6":"fd00::1"}}}"#
        );
        // wireguard with IPv6 data and address.
        let wg = r#"{"PublicKey":"k+/=","Port":51820}"#;
        let wg6 = r#"{"PublicKey":"k+/=","Port":51821}"#;
        let p = patch_for(&attrs("wireguard", Some(wg), Some(("fd00::1", Some(wg6)))));
        assert!(p.contains(r#""flannel.alpha.coreos.com/backend-v6-data":"{\"PublicKey\":\"k+/=\",\"Port\":51821}""#), "{p}");
    }

    #[test]
    fn unchanged_node_needs_no_patch_and_overwrites_apply() {
        let names = Annotations::new(DEFAULT_PREFIX).unwrap();
        let a = attrs("host-gw", None, None);
        let mut node = NodeAnnotations::new();
        node.extend(annotation_changes(&names, &node.clone(), &a).unwrap());
        assert_eq!(annotation_changes(&names, &node, &a), None);
        // A user's overwrite differs from our address: rewrite, publishing
        // the overwrite.
        node.insert(names.public_ip_overwrite.clone(), "172.18.0.2".into());
        let changes = annotation_changes(&names, &node, &a).unwrap();
        assert_eq!(
            annotations_patch(&changes),
            r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":"172.18.0.2"}}}"#
        );
        node.extend(changes);
        // Go compares public-ip to our own address, so a node with an
        // overwrite is patched again at each start (with nothing new).
        let again = annotation_changes(&names, &node, &a).unwrap();
        assert_eq!(annotations_patch(&again), "{}");
    }

    #[test]
    fn condition_patch_bytes() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_293_895);
        assert_eq!(rfc3339_seconds(t), "2026-11-21T20:44:55Z");
        assert_eq!(
            rfc3339_seconds(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            network_unavailable_patch("2026-11-27T20:44:55Z"),
            r#"{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","lastHeartbeatTime":"2026-11-27T20:44:55Z","lastTransitionTime":"2026-11-27T20:44:55Z","reason":"FlannelIsUp","message":"Flannel is running on this node"}]}}"#
        );
    }

    fn rel(bd: &str, ty: &str, ip: &str, bd6: &str, ip6: &str) -> Relevant {
        let s = |v: &str| (!v.is_empty()).then(|| v.to_string());
        Relevant {
            backend_data: s(bd),
            backend_type: s(ty),
            public_ip: s(ip),
            backend_v6_data: s(bd6),
            public_ipv6: s(ip6),
        }
    }

    #[test]
    fn update_filter_like_go() {
        let base = rel("d", "vxlan", "1.1.1.1", "d6", "fd::1");
        // Nothing changed: no event in any stack.
        for (v4, v6) in [(true, false), (false, true), (true, true)] {
            assert!(!update_changed(&base, &base.clone(), v4, v6));
        }
        // An IPv4 change is an event in IPv4 mode...
        let v4c = rel("d2", "vxlan", "1.1.1.1", "d6", "fd::1");
        assert!(update_changed(&base, &v4c, true, false));
        // ...but hidden by an unchanged IPv6 part in dual stack (Go's order).
        assert!(!update_changed(&base, &v4c, true, true));
        // An IPv6 change counts in v6-only, but in dual stack the unchanged
        // IPv4 part already made it "unchanged": both must change.
        let v6c = rel("d", "vxlan", "1.1.1.1", "d6", "fd::2");
        assert!(!update_changed(&base, &v6c, true, true));
        assert!(update_changed(&base, &v6c, false, true));
        let both = rel("d2", "vxlan", "1.1.1.1", "d6", "fd::2");
        assert!(update_changed(&base, &both, true, true));
        assert!(!update_changed(&base, &v6c, true, false));
        // A type change counts everywhere.
        let tc = rel("d", "host-gw", "1.1.1.1", "d6", "fd::1");
        assert!(update_changed(&base, &tc, true, true));
        // Absent equals empty.
        assert!(!update_changed(
            &Relevant::default(),
            &rel("", "", "", "", ""),
            true,
            true
        ));
        // Neither family enabled: everything is a change (Go's initial true).
        assert!(update_changed(&base, &base.clone(), false, false));
    }

    /// A node's annotations holding the given compared values (`None`:
    /// the annotation is absent).
    fn annotated(names: &Annotations, values: &[Option<String>; 5]) -> NodeAnnotations {
        let keys = [
            &names.backend_data,
            &names.backend_type,
            &names.public_ip,
            &names.backend_v6_data,
            &names.public_ipv6,
        ];
        keys.iter()
            .zip(values)
            .filter_map(|(k, v)| Some(((*k).clone(), v.clone()?)))
            .collect()
    }

    proptest::proptest! {
        /// The packed form the watch keeps per node decides exactly as
        /// `update_changed` over the full values, in every stack.
        #[test]
        fn packed_filter_agrees_with_update_changed(
            old in proptest::array::uniform5(proptest::option::of("|a|ab|\\x00|\\x00\\x00\\x00\\x00")),
            new in proptest::array::uniform5(proptest::option::of("|a|ab|\\x00|\\x00\\x00\\x00\\x00")),
        ) {
            let names = Annotations::new(DEFAULT_PREFIX).unwrap();
            let (a, b) = (annotated(&names, &old), annotated(&names, &new));
            for (v4, v6) in [(true, false), (false, true), (true, true), (false, false)] {
                let want = update_changed(&Relevant::of(&names, &a), &Relevant::of(&names, &b), v4, v6);
                let got = Compared::of(&names, &a, v4, v6).changed(&Compared::of(&names, &b, v4, v6), v4, v6);
                proptest::prop_assert_eq!(got, want, "v4 {} v6 {}", v4, v6);
            }
        }
    }

    #[test]
    fn packed_filter_allocates_nothing_without_annotations() {
        let names = Annotations::new(DEFAULT_PREFIX).unwrap();
        let c = Compared::of(&names, &NodeAnnotations::new(), true, true);
        assert_eq!((c.v4.len(), c.v6.len()), (0, 0));
        // Values that run into each other are told apart by their lengths.
        let one = annotated(
            &names,
            &[Some("ab".into()), Some("c".into()), None, None, None],
        );
        let two = annotated(
            &names,
            &[Some("a".into()), Some("bc".into()), None, None, None],
        );
        assert!(Compared::of(&names, &one, true, false).changed(
            &Compared::of(&names, &two, true, false),
            true,
            false
        ));
    }

    #[test]
    fn stored_mac_string_split_like_go() {
        assert_eq!(
            stored_mac(r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#).as_deref(),
            Some("c6:d2:32:6f:8f:44")
        );
        assert_eq!(stored_mac("null"), None);
        assert_eq!(stored_mac(""), None);
        assert_eq!(stored_mac(r#"{"VNI":1}"#), None);
        // Not JSON parsing: wireguard data yields Go's nonsense, which the
        // vxlan backend then refuses as a MAC.
        assert_eq!(
            stored_mac(r#"{"PublicKey":"abc","Port":51820}"#).as_deref(),
            Some(r#"abc","Port":51820"#)
        );
    }

    #[test]
    fn event_queue_depth_parsing() {
        assert_eq!(event_queue_depth(None), Ok(5000));
        assert_eq!(event_queue_depth(Some("")), Ok(5000));
        assert_eq!(event_queue_depth(Some("100")), Ok(100));
        assert_eq!(event_queue_depth(Some("+7")), Ok(7));
        assert_eq!(event_queue_depth(Some("0")), Ok(5000));
        assert_eq!(event_queue_depth(Some("-3")), Ok(5000));
        assert_eq!(
            event_queue_depth(Some("abc")).unwrap_err(),
            r#"env EVENT_QUEUE_DEPTH=abc format error: strconv.Atoi: parsing "abc": invalid syntax"#
        );
        assert_eq!(
            event_queue_depth(Some(" 5")).unwrap_err(),
            r#"env EVENT_QUEUE_DEPTH= 5 format error: strconv.Atoi: parsing " 5": invalid syntax"#
        );
        assert_eq!(
            event_queue_depth(Some("99999999999999999999")).unwrap_err(),
            r#"env EVENT_QUEUE_DEPTH=99999999999999999999 format error: strconv.Atoi: parsing "99999999999999999999": value out of range"#
        );
    }
}
