//! TC3-HMAC-SHA256, Tencent Cloud API 3.0 request signing.
//!
//! The signature covers the method, the canonical headers (`content-type`,
//! `host`, `x-tc-action`), the SHA-256 of the body, the timestamp and the
//! credential scope `<UTC date>/<service>/tc3_request`; the key is derived
//! from the secret by HMAC-SHA256 over the date, the service and
//! `tc3_request`. HMAC and SHA-256 come from `ring`, already in the
//! dependency tree through rustls.

use ring::{digest, hmac};
use std::fmt;

/// The algorithm name in `Authorization` and the string to sign.
pub const ALGORITHM: &str = "TC3-HMAC-SHA256";

/// The content type every JSON request is sent and signed with.
pub const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// A secret value (a `SecretKey`): `Debug` and `Display` print `***`, so it
/// cannot reach a log line or an error by accident.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A key pair: the `SecretId` (not secret; it names the key in
/// `Authorization`) and the `SecretKey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `SecretId` (flannel's `AccessKeyID`).
    pub id: String,
    /// `SecretKey` (flannel's `AccessKeySecret`).
    pub secret: Secret,
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `Lowercase(HexEncode(SHA256(data)))`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// The UTC date (`2019-02-25`) of a Unix timestamp, as the credential scope
/// needs it.
pub fn utc_date(timestamp: i64) -> String {
    flannel_core::time::utc_date(timestamp)
}

/// The canonical request of a POST to `/` without a query string.
/// `headers` are `(name, value)` pairs already lower-cased by name, sorted
/// by name; returns the canonical request and the `SignedHeaders` list.
pub fn canonical_request(headers: &[(&str, &str)], payload: &[u8]) -> (String, String) {
    let mut canonical = String::new();
    for (name, value) in headers {
        canonical.push_str(&format!("{}:{}\n", name.to_ascii_lowercase(), value.trim()));
    }
    let signed: Vec<String> = headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    let signed = signed.join(";");
    (
        format!("POST\n/\n\n{canonical}\n{signed}\n{}", sha256_hex(payload)),
        signed,
    )
}

/// The string to sign for `canonical_request` at `timestamp` for `service`.
pub fn string_to_sign(canonical_request: &str, timestamp: i64, service: &str) -> String {
    format!(
        "{ALGORITHM}\n{timestamp}\n{}/{service}/tc3_request\n{}",
        utc_date(timestamp),
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The hex signature of `string_to_sign` with `secret`.
pub fn signature(secret: &Secret, timestamp: i64, service: &str, string_to_sign: &str) -> String {
    let date = utc_date(timestamp);
    let k_date = hmac_sha256(
        format!("TC3{}", secret.expose()).as_bytes(),
        date.as_bytes(),
    );
    let k_service = hmac_sha256(&k_date, service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"tc3_request");
    hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()))
}

/// The `Authorization` header value for a POST of `payload` with the given
/// signed `headers` (lower-case names, sorted).
pub fn authorization(
    credentials: &Credentials,
    service: &str,
    timestamp: i64,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> String {
    let (canonical, signed) = canonical_request(headers, payload);
    let sts = string_to_sign(&canonical, timestamp, service);
    format!(
        "{ALGORITHM} Credential={}/{}/{service}/tc3_request, SignedHeaders={signed}, Signature={}",
        credentials.id,
        utc_date(timestamp),
        signature(&credentials.secret, timestamp, service, &sts)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The worked example of Tencent's "Signature v3" documentation and SDK
    // demos: DescribeInstances on cvm, ap-guangzhou, at 1551113065.
    const PAYLOAD: &str =
        r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
    const HOST: &str = "cvm.tencentcloudapi.com";

    #[test]
    fn published_vector_without_action_header() {
        let headers = [("content-type", CONTENT_TYPE), ("host", HOST)];
        assert_eq!(
            sha256_hex(PAYLOAD.as_bytes()),
            "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        let (canonical, signed) = canonical_request(&headers, PAYLOAD.as_bytes());
        assert_eq!(
            canonical,
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\ncontent-type;host\n35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        assert_eq!(signed, "content-type;host");
        let sts = string_to_sign(&canonical, 1551113065, "cvm");
        assert_eq!(
            sts,
            "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
        let creds = Credentials {
            id: "AKID**********************0123456789EXAMPLE".into(),
            secret: Secret::new("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE"),
        };
        assert_eq!(
            authorization(&creds, "cvm", 1551113065, &headers, PAYLOAD.as_bytes()),
            "TC3-HMAC-SHA256 Credential=AKID**********************0123456789EXAMPLE/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host, Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
        // The older edition of the same page, with a masked key.
        let s = signature(
            &Secret::new("Gu5t9xGARNpq86cd98joQYCN3*******"),
            1551113065,
            "cvm",
            &sts,
        );
        assert_eq!(
            s,
            "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"
        );
    }

    #[test]
    fn published_vector_with_action_header() {
        // The current edition signs x-tc-action too; its key is 32 `*`.
        let headers = [
            ("content-type", CONTENT_TYPE),
            ("host", HOST),
            ("x-tc-action", "describeinstances"),
        ];
        let creds = Credentials {
            id: "AKID********************************".into(),
            secret: Secret::new("*".repeat(32)),
        };
        assert_eq!(
            authorization(&creds, "cvm", 1551113065, &headers, PAYLOAD.as_bytes()),
            "TC3-HMAC-SHA256 Credential=AKID********************************/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host;x-tc-action, Signature=10b1a37a7301a02ca19a647ad722d5e43b4b3cff309d421d85b46093f6ab6c4f"
        );
    }

    #[test]
    fn dates_and_secrets() {
        assert_eq!(utc_date(0), "1970-01-01");
        // 00:44 in UTC+8 is still the 25th in UTC.
        assert_eq!(utc_date(1551113065), "2019-02-25");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        let c = Credentials {
            id: "AKID1".into(),
            secret: s,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
