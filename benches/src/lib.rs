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
