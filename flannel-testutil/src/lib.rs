//! Test support for flannel-rs.
//!
//! The main item is [`etcd::EtcdServer`]: a real, single-member etcd (the
//! Debian `etcd-server` package, `/usr/bin/etcd`, v3.4) started per test on
//! free loopback ports with a private temporary data directory, optionally
//! with client TLS and client-certificate authentication.
//!
//! [`netns`] builds network-namespace test "hosts" ([`netns::Topology`]),
//! and, with the `cluster` feature, `cluster::Cluster` runs real `flanneld`
//! processes on them (against such an etcd or the embedded local store) with
//! pods attached through the `flannel` CNI plugin: the end-to-end harness of
//! flanneld's e2e and reliability tests and of the benchmark programs.
//!
//! [`logs::Logs`] captures a test's `tracing` output for assertions.
//!
//! Nothing here is meant for production code; this crate is `publish = false`.
//!
//! Features: `cluster` (off by default) adds the `cluster` module; it
//! pulls in `etcd-client` and `tokio`; `tencent` adds fakes of Tencent Cloud's VPC API and metadata service (`tencent` module);
//! `kube` adds `kube::FakeApiServer`, a fake Kubernetes API server
//! (Nodes and Pods over the real HTTP/JSON list/watch/patch protocol).

use std::path::PathBuf;
use std::time::Duration;

#[cfg(feature = "cluster")]
pub mod cluster;
pub mod etcd;
#[cfg(feature = "kube")]
pub mod kube;
pub mod logs;
pub mod netns;
#[cfg(feature = "tencent")]
pub mod tencent;

/// Errors returned by the test utilities.
#[derive(Debug, thiserror::Error)]
pub enum TestUtilError {
    /// The etcd binary is not installed.
    #[error(
        "etcd binary {path} not found: install the `etcd-server` Debian package \
         (`apt-get install -y etcd-server`) or point FLANNEL_TEST_ETCD_BIN at an etcd v3.4 binary"
    )]
    EtcdMissing {
        /// The path that was looked up.
        path: PathBuf,
    },

    /// An I/O operation failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Generating the test certificates failed.
    #[error("certificate generation failed: {0}")]
    Cert(String),

    /// etcd was started but did not become ready in time.
    #[error(
        "etcd did not become ready within {timeout:?} (last problem: {reason}); etcd log tail:\n{log_tail}"
    )]
    NotReady {
        /// How long we waited.
        timeout: Duration,
        /// The last readiness probe failure.
        reason: String,
        /// The last lines of etcd's log.
        log_tail: String,
    },

    /// etcd exited before it became ready.
    #[error("etcd exited before becoming ready ({status}); etcd log tail:\n{log_tail}")]
    Exited {
        /// The exit status, as text.
        status: String,
        /// The last lines of etcd's log.
        log_tail: String,
    },

    /// An operation needs a stopped/running server but found the other state,
    /// or a port could not be reused on restart.
    #[error("invalid etcd server state: {0}")]
    State(String),
}

impl TestUtilError {
    /// Builds a [`TestUtilError::Io`] with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TestUtilError::Io {
            context: context.into(),
            source,
        }
    }
}
