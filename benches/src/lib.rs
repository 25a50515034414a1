//! Shared helpers for the benchmark programs in `src/bin`: timing and the
//! report line format (figure, baseline, ratio).

use std::time::Duration;

/// One measured figure next to its baseline.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// Our value.
    pub value: f64,
    /// Unit of both values.
    pub unit: &'static str,
    /// What the baseline is.
    pub baseline_name: String,
    /// The baseline's value.
    pub baseline: f64,
}

impl Figure {
    /// `value / baseline`.
    pub fn ratio(&self) -> f64 {
        self.value / self.baseline
    }

    /// One JSON object, for `target/bench-report.json`.
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"name":"{}","value":{:.3},"unit":"{}","baseline_name":"{}","baseline_value":{:.3},"ratio":{:.3}}}"#,
            self.name,
            self.value,
            self.unit,
            self.baseline_name,
            self.baseline,
            self.ratio()
        )
    }

    /// One aligned table row.
    pub fn row(&self) -> String {
        format!(
            "{:<48} {:>10.2} {:<3} | {:<40} {:>10.2} {:<3} | x{:.2}",
            self.name,
            self.value,
            self.unit,
            self.baseline_name,
            self.baseline,
            self.unit,
            self.ratio()
        )
    }
}

/// The median of `samples` in milliseconds.
pub fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

/// Errors of the benchmark programs: a message.
pub type Res<T> = Result<T, String>;

/// Any displayable error as a [`Res`] message.
pub fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The flanneld binary: `$BENCH_FLANNELD`, or `flanneld` next to the running
/// benchmark (both are built into `target/release`).
pub fn flanneld_bin() -> Res<std::path::PathBuf> {
    let bin = match std::env::var_os("BENCH_FLANNELD") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::env::current_exe()
            .map_err(err)?
            .with_file_name("flanneld"),
    };
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release -p flanneld` (or set BENCH_FLANNELD)",
            bin.display()
        ))
    }
}

/// Runs `f` on a current-thread runtime in a thread inside `ns`.
pub fn in_ns<T: Send>(
    ns: &flannel_testutil::netns::NetNs,
    f: impl AsyncFnOnce() -> Res<T> + Send,
) -> Res<T> {
    ns.try_run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(err)?;
        rt.block_on(f())
    })
    .map_err(err)?
}

/// One flanneld started in a network namespace against etcd, killed on drop.
pub struct Daemon {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Daemon {
    /// Starts `bin` in `ns` on `eth0` with its subnet file and log in `dir`
    /// (the log is appended to across restarts).
    pub fn start(
        bin: &std::path::Path,
        ns: &flannel_testutil::netns::NetNs,
        dir: &std::path::Path,
        endpoint: &str,
    ) -> Res<Daemon> {
        use std::process::{Command, Stdio};
        let log = dir.join("flanneld.log");
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(err)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()])
            .arg(bin)
            .arg("--iface=eth0")
            .arg(format!(
                "--subnet-file={}",
                dir.join("subnet.env").display()
            ))
            .arg(format!("--etcd-endpoints={endpoint}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(err)?)
            .stderr(out);
        for (k, _) in std::env::vars() {
            if k.starts_with("FLANNELD_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1");
        let child = cmd.spawn().map_err(|e| format!("spawning flanneld: {e}"))?;
        Ok(Daemon { child, log })
    }

    /// The last 15 lines of the log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// An error with the log if flanneld has exited.
    pub fn check_alive(&mut self) -> Res<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!(
                "flanneld exited ({status}); log:\n{}",
                self.log_tail()
            )),
            _ => Ok(()),
        }
    }

    /// Polls (every millisecond) until `env` exists.
    pub fn wait_env(&mut self, env: &std::path::Path, timeout: Duration) -> Res<()> {
        let deadline = std::time::Instant::now() + timeout;
        while !env.is_file() {
            self.check_alive()?;
            if std::time::Instant::now() > deadline {
                return Err(format!("no subnet.env; log:\n{}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// VmRSS and VmHWM in MiB.
    pub fn rss_mib(&mut self) -> Res<(f64, f64)> {
        self.check_alive()?;
        let pid = self.child.id();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).map_err(err)?;
        if comm.trim() != "flanneld" {
            return Err(format!("pid {pid} is {comm:?}, not flanneld"));
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(err)?;
        let field = |name: &str| -> Res<f64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
                .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
