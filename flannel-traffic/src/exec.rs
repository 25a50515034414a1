//! Running the packet-filter tools.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::{CommandStats, TrafficError};

/// How long one packet-filter command may take before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The result of one command.
#[derive(Debug)]
pub(crate) struct CmdOutput {
    /// The command line, for messages.
    pub cmdline: String,
    /// Whether it exited with status 0.
    pub success: bool,
    /// `exit status: N` or the signal.
    pub status: String,
    /// Standard output.
    pub stdout: String,
    /// Standard error, trimmed.
    pub stderr: String,
}

impl CmdOutput {
    /// The command's failure as an error.
    pub fn failure(&self) -> TrafficError {
        self.failure_with("")
    }

    /// Like [`CmdOutput::failure`], with `detail` appended to the error
    /// output.
    pub fn failure_with(&self, detail: &str) -> TrafficError {
        let stderr = if self.stderr.is_empty() {
            "no error output"
        } else {
            &self.stderr
        };
        TrafficError::Failed {
            command: self.cmdline.clone(),
            status: self.status.clone(),
            stderr: format!("{stderr}{detail}"),
        }
    }
}

/// Whether a command changes rules (counted in [`CommandStats::writes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Reads only (listings, version, `nft -c`, the fingerprint probe,
    /// which adds and removes a private scratch table and no rule of any
    /// network).
    Read,
    /// Changes flannel's rules.
    Write,
}

/// Runs the packet-filter tools and counts the runs.
#[derive(Debug, Default)]
pub(crate) struct Exec {
    commands: AtomicU64,
    writes: AtomicU64,
}

impl Exec {
    pub(crate) fn stats(&self) -> CommandStats {
        CommandStats {
            commands: self.commands.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }

    /// Runs `program args` with `stdin` (if any) and collects its output.
    /// An `Err` means the program could not be run at all (its source is
    /// `NotFound` when it is not installed) or timed out.
    pub(crate) async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
        kind: Kind,
    ) -> Result<CmdOutput, TrafficError> {
        self.commands.fetch_add(1, Ordering::Relaxed);
        if kind == Kind::Write {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        let cmdline = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let spawn_err = |source| TrafficError::Spawn {
            command: cmdline.clone(),
            source,
        };
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await.map_err(spawn_err)?;
            drop(pipe);
        }
        let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                spawn_err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("it did not finish in {} s", COMMAND_TIMEOUT.as_secs()),
                ))
            })?
            .map_err(spawn_err)?;
        Ok(CmdOutput {
            cmdline,
            success: out.status.success(),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether `e` says the program is not installed.
pub(crate) fn not_installed(e: &TrafficError) -> bool {
    matches!(e, TrafficError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}
