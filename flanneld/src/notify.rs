//! systemd readiness notification (`Type=notify`): `READY=1` once `/readyz`
//! would answer 200, `STATUS=` lines saying what flanneld waits for (shown
//! by `systemctl status flanneld`), `STOPPING=1` on shutdown.
//!
//! The protocol is one datagram per message to the unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), so no
//! library is needed. Without `NOTIFY_SOCKET` (not under systemd) nothing is
//! sent; a socket that cannot be reached is warned about once and otherwise
//! ignored: notification never stops flanneld.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::health::{Health, READY_BODY};

/// How often readiness is checked for the notifications.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A connection to systemd's notification socket.
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// True once a send failed (warned about once).
    failed: AtomicBool,
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`, or `None` when it is unset or empty
    /// (not started by systemd with `Type=notify`).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty())?;
        Notifier::new(&path.to_string_lossy())
    }

    /// A notifier for the socket `path` (`@name`: abstract); `None` (after a
    /// warning) when no socket can be made.
    pub fn new(path: &str) -> Option<Notifier> {
        let addr = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())
            }
            None => SocketAddr::from_pathname(path),
        };
        let made = addr.and_then(|addr| Ok((UnixDatagram::unbound()?, addr)));
        match made {
            Ok((sock, addr)) => Some(Notifier {
                sock,
                addr,
                failed: AtomicBool::new(false),
            }),
            Err(e) => {
                warn!("sd_notify: cannot use NOTIFY_SOCKET {path}: {e}");
                None
            }
        }
    }

    /// Tells systemd flanneld is shutting down (`STOPPING=1`).
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping (datapath and lease are kept)");
    }

    /// Sends one message (`READY=1`, `STATUS=...`); a failure is warned
    /// about the first time only.
    pub fn send(&self, message: &str) {
        match self.sock.send_to_addr(message.as_bytes(), &self.addr) {
            Ok(_) => debug!("sd_notify: sent {message}"),
            Err(e) => {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    warn!("sd_notify: cannot notify systemd: {e}");
                }
            }
        }
    }
}

/// Follows `health`'s readiness until `stop` turns true: `STATUS=` with the
/// reason whenever it changes, and `READY=1` (with `STATUS=flanneld is
/// ready`) the first time it is ready. `STOPPING=1` is sent by whoever
/// receives the stop signal ([`Notifier::stopping`]), so it goes out even
/// when the daemon returns before this task runs again.
pub async fn follow(notifier: Arc<Notifier>, health: Arc<Health>, mut stop: watch::Receiver<bool>) {
    let mut last_status = String::new();
    let mut ready_sent = false;
    loop {
        let ready = health.readiness();
        let status = match &ready {
            Ok(()) => READY_BODY.to_string(),
            Err(why) => format!("waiting: {why}"),
        };
        if ready.is_ok() && !ready_sent {
            notifier.send(&format!("READY=1\nSTATUS={status}"));
            ready_sent = true;
        } else if status != last_status {
            notifier.send(&format!("STATUS={status}"));
        }
        last_status = status;
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}
