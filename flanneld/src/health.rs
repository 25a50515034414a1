//! `--healthz-ip`/`--healthz-port`: `/healthz` (liveness) and `/readyz`
//! (readiness) over plain HTTP/1.1, Go flannel's bodies and codes.

use flannel_subnet::runner::RunnerStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info};

/// What the endpoints report.
#[derive(Default)]
pub struct Health {
    /// Set once subnet.env is written (Go's readiness).
    pub ready: AtomicBool,
    /// The runner's progress, once it runs.
    pub runner: std::sync::Mutex<Option<Arc<RunnerStatus>>>,
}

/// A loop that has not made progress for this long is considered hung.
pub const LIVENESS_LIMIT: Duration = Duration::from_secs(60);

impl Health {
    fn answer(&self, path: &str) -> (u16, &'static str) {
        let runner = self
            .runner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match path {
            "/healthz" => match runner {
                Some(r) if r.since_progress() > LIVENESS_LIMIT => {
                    (500, "flanneld is not making progress")
                }
                _ => (200, "flanneld is running"),
            },
            "/readyz" => {
                let synced = runner.is_none_or(|r| r.in_sync());
                if self.ready.load(Ordering::Relaxed) && synced {
                    (200, "flanneld is ready")
                } else {
                    (503, "flanneld is not ready yet")
                }
            }
            _ => (404, "404 page not found"),
        }
    }
}

/// Serves until the listener fails; the caller spawns it.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    info!(
        "health server listening on {:?}",
        listener.local_addr().ok()
    );
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or(path);
            let (code, body) = health.answer(path);
            let reason = match code {
                200 => "OK",
                404 => "Not Found",
                503 => "Service Unavailable",
                _ => "Internal Server Error",
            };
            let resp = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = sock.write_all(resp.as_bytes()).await {
                debug!("health response: {e}");
            }
        });
    }
}
