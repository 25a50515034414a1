//! A small HTTP/1.1 client: one request per connection (the backend makes a
//! few calls per resync period, so pooling would buy nothing), plain HTTP or
//! HTTPS through rustls with the system's CA bundle. The connection is
//! driven inside the call, so nothing is spawned.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long one request may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the system's CA certificates are looked for, first found wins.
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A failed HTTP exchange.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL cannot be used.
    #[error("invalid URL {url}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Connecting, TLS or the exchange failed.
    #[error("{url}: {source}")]
    Io {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No answer within [`TIMEOUT`].
    #[error("{url}: no answer within {}s", TIMEOUT.as_secs())]
    Timeout {
        /// The URL.
        url: String,
    },
}

/// A parsed `http://` or `https://` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// Whether TLS is used.
    pub tls: bool,
    /// The host name or address.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The path prefix, without a trailing `/`.
    pub path: String,
}

impl BaseUrl {
    /// Parses `http(s)://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<BaseUrl, HttpError> {
        let bad = |reason| HttpError::Url {
            url: url.to_string(),
            reason,
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("only http:// and https:// are supported"));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let default = if tls { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                (h.to_string(), p.parse().map_err(|_| bad("invalid port"))?)
            }
            _ => (authority.to_string(), default),
        };
        Ok(BaseUrl {
            tls,
            host,
            port,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// `host` or `host:port` when the port is not the scheme's default: the
    /// `Host` header (which the TC3 signature covers).
    pub fn authority(&self) -> String {
        if self.port == if self.tls { 443 } else { 80 } {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The full URL of `path` (starting with `/`).
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}://{}{}{path}",
            if self.tls { "https" } else { "http" },
            self.authority(),
            self.path
        )
    }
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, Box<dyn std::error::Error + Send + Sync>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let bundle = CA_BUNDLES
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or("no CA certificate bundle found (looked in /etc/ssl/certs/ca-certificates.crt, /etc/pki/tls/certs/ca-bundle.crt, /etc/ssl/cert.pem)")?;
    for cert in CertificateDer::pem_file_iter(bundle)? {
        // A certificate rustls cannot use is skipped, as every TLS client does.
        let _ = roots.add(cert?);
    }
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

async fn exchange<S>(
    io: S,
    request: hyper::Request<Full<Bytes>>,
) -> Result<Response, Box<dyn std::error::Error + Send + Sync>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let work = async move {
        let resp = sender.send_request(request).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>(Response { status, body })
    };
    tokio::pin!(work);
    tokio::pin!(conn);
    // The connection future must be polled for the request to progress;
    // it ends when the server closes, after which the response is complete.
    tokio::select! {
        r = &mut work => Ok(r?),
        r = &mut conn => {
            r?;
            Ok(work.await?)
        }
    }
}

/// Sends `method` to `url` with `headers` and `body`; any status is a
/// [`Response`].
pub async fn send(
    base: &BaseUrl,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<Response, HttpError> {
    let url = base.url(path);
    let io_err = |source: Box<dyn std::error::Error + Send + Sync>| HttpError::Io {
        url: url.clone(),
        source,
    };
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(format!(
            "{}{path}",
            if base.path.is_empty() { "" } else { &base.path }
        ))
        .header("host", base.authority())
        .header("connection", "close");
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    let request = builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| io_err(e.into()))?;
    let attempt = async {
        let tcp = TcpStream::connect((base.host.trim_matches(['[', ']']), base.port)).await?;
        if base.tls {
            let name = rustls_pki_types::ServerName::try_from(
                base.host.trim_matches(['[', ']']).to_string(),
            )?;
            let tls = tls_connector()?.connect(name, tcp).await?;
            exchange(tls, request).await
        } else {
            exchange(tcp, request).await
        }
    };
    match tokio::time::timeout(TIMEOUT, attempt).await {
        Ok(r) => r.map_err(io_err),
        Err(_) => Err(HttpError::Timeout { url }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = BaseUrl::parse("https://vpc.tencentcloudapi.com").unwrap();
        assert_eq!(
            (u.tls, u.port, u.authority()),
            (true, 443, "vpc.tencentcloudapi.com".into())
        );
        let u = BaseUrl::parse("http://127.0.0.1:8080/md/").unwrap();
        assert_eq!(u.authority(), "127.0.0.1:8080");
        assert_eq!(
            u.url("/latest/meta-data/mac"),
            "http://127.0.0.1:8080/md/latest/meta-data/mac"
        );
        assert!(BaseUrl::parse("ftp://x").is_err());
    }

    #[tokio::test]
    async fn https_goes_through_tls_and_errors_name_the_url() {
        // A server that answers TLS with plain HTTP: the handshake must fail
        // (so TLS was attempted, with the system CA bundle loaded), and the
        // error names the URL.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        });
        let base = BaseUrl::parse(&format!("https://127.0.0.1:{port}")).unwrap();
        let e = send(&base, "POST", "/", &[], b"{}".to_vec())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("https://127.0.0.1:{port}/: ")),
            "{e}"
        );
        assert!(!e.contains("no CA certificate bundle"), "{e}");
        server.join().unwrap();
    }
}
