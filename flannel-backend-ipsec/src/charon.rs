//! strongSwan's IKE daemon `charon`: where it is, starting and stopping it,
//! and reaching its VICI socket.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::vici::{Client, ViciError};

/// Go's VICI socket.
pub const DEFAULT_VICI_URI: &str = "unix:///var/run/charon.vici";

/// Where Go looks for charon after `$PATH`, in order.
pub const SEARCH_PATHS: [&str; 4] = [
    "/usr/lib/strongswan/charon",
    "/usr/lib/ipsec/charon",
    "/usr/libexec/strongswan/charon",
    "/usr/libexec/ipsec/charon",
];

/// How charon is reached: the host-context extension flanneld fills from
/// `--charon-executable-path` and `--charon-vici-uri`.
///
/// * `executable` set: that binary is started (and connected to at
///   `vici_uri`, or [`DEFAULT_VICI_URI`]);
/// * only `vici_uri` set: an already running charon is used and left
///   running (it may outlive flanneld's restarts);
/// * neither: charon is looked up as Go does ([`find_charon`]), started,
///   and reached at [`DEFAULT_VICI_URI`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CharonSettings {
    /// `--charon-executable-path`.
    pub executable: Option<PathBuf>,
    /// `--charon-vici-uri`.
    pub vici_uri: Option<String>,
}

impl CharonSettings {
    /// Whether flanneld starts (and owns) charon.
    pub fn starts_charon(&self) -> bool {
        self.executable.is_some() || self.vici_uri.is_none()
    }

    /// The VICI URI to connect to.
    pub fn uri(&self) -> &str {
        self.vici_uri.as_deref().unwrap_or(DEFAULT_VICI_URI)
    }
}

/// The first `charon` of `$PATH` (`path`), then [`SEARCH_PATHS`].
pub fn find_charon(path: Option<OsString>) -> Option<PathBuf> {
    let in_path = path
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("charon"));
    in_path
        .chain(SEARCH_PATHS.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Errors around charon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CharonError {
    /// No charon binary.
    #[error(
        "the ipsec backend needs strongSwan's charon and found none in $PATH or {}: install \
         strongswan-charon (Debian) or pass --charon-executable-path / --charon-vici-uri",
        SEARCH_PATHS.join(", ")
    )]
    NotFound,
    /// Spawning failed.
    #[error("starting charon ({path}): {source}")]
    Spawn {
        /// The binary.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// charon exited before its socket answered.
    #[error("charon ({path}) exited with {status} before its VICI socket answered")]
    Exited {
        /// The binary.
        path: String,
        /// Its exit status.
        status: String,
    },
    /// The VICI socket did not answer in time.
    #[error("charon's VICI socket did not answer within {waited:?}: {source}")]
    Unreachable {
        /// How long we tried.
        waited: Duration,
        /// The last error.
        #[source]
        source: ViciError,
    },
}

/// A charon process flanneld started.
#[derive(Debug)]
pub struct CharonProcess {
    child: Child,
    path: PathBuf,
}

impl CharonProcess {
    /// Starts `path` with flanneld's stdout and stderr (as Go does). If
    /// flanneld dies without stopping it, tokio's kill-on-drop ends it.
    pub fn spawn(path: &Path) -> Result<CharonProcess, CharonError> {
        info!("starting charon: {}", path.display());
        let child = Command::new(path)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CharonError::Spawn {
                path: path.display().to_string(),
                source,
            })?;
        Ok(CharonProcess {
            child,
            path: path.to_owned(),
        })
    }

    /// The exit status, once charon has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("an unknown status ({e})")),
        }
    }

    /// The binary.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SIGTERM, then waits up to `grace` for charon to exit (SIGKILL after).
    pub async fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(_) => info!("charon stopped"),
            Err(_) => {
                warn!("charon did not stop within {grace:?} of SIGTERM; killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}

/// Connects to `uri`, retrying every second (Go's loop) for up to
/// `timeout`; gives up early when `process` exits.
pub async fn connect(
    uri: &str,
    mut process: Option<&mut CharonProcess>,
    timeout: Duration,
) -> Result<Client, CharonError> {
    let start = Instant::now();
    loop {
        let err = match Client::connect(uri).await {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        if let Some(p) = process.as_deref_mut()
            && let Some(status) = p.exited()
        {
            return Err(CharonError::Exited {
                path: p.path().display().to_string(),
                status,
            });
        }
        if start.elapsed() >= timeout {
            return Err(CharonError::Unreachable {
                waited: timeout,
                source: err,
            });
        }
        tokio::time::sleep(Duration::from_millis(250).min(timeout)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_search() {
        let d = CharonSettings::default();
        assert!(d.starts_charon());
        assert_eq!(d.uri(), DEFAULT_VICI_URI);
        let attach = CharonSettings {
            executable: None,
            vici_uri: Some("unix:///run/x/charon.vici".into()),
        };
        assert!(!attach.starts_charon());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("charon"), "").unwrap();
        assert_eq!(
            find_charon(Some(dir.path().as_os_str().to_owned())),
            Some(dir.path().join("charon"))
        );
        assert!(
            CharonError::NotFound
                .to_string()
                .contains("/usr/lib/ipsec/charon")
        );
    }
}
