//! Shared helpers for the benchmark programs in `src/bin`: timing and the
//! report line format (figure, kind, baseline, ratio). The programs that run
//! flanneld use `flannel_testutil::cluster`, the e2e tests' cluster; the
//! footprint programs share their `main` ([`cluster_main`]), their route
//! wait ([`wait_routes`]) and their memory reading ([`settled_memory`]).

use std::time::{Duration, Instant};

use flannel_netlink::{Family, Netlink};
use flannel_testutil::cluster::{Backing, Cluster, Memory};

/// What a figure's ratio to its baseline means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Like for like: the baseline does the same job by other means (the
    /// same kernel state, the same traffic over the same rules); the ratio is
    /// our overhead (above 1) or gain (below 1).
    Comparison,
    /// Ours against ours under another load (RSS with N leases against RSS
    /// with none): the ratio is growth, not an overhead.
    Growth,
    /// The baseline is a floor or a smaller operation given for scale (the
    /// raw etcd read inside an acquisition, the watch delivery a route
    /// waits for, two `ip` commands against a whole flanneld start): the
    /// ratio says how far above that floor we are, not how we compare with
    /// another implementation.
    Reference,
}

impl Kind {
    /// `comparison`, `growth` or `reference`, as in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Comparison => "comparison",
            Kind::Growth => "growth",
            Kind::Reference => "reference",
        }
    }
}

/// One measured figure next to its baseline.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// What the ratio to the baseline means.
    pub kind: Kind,
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

    /// One JSON object, for `target/bench-report.json`. A ratio that is
    /// not a number (a zero baseline) is `null`, which JSON can carry.
    pub fn to_json(&self) -> String {
        let ratio = self.ratio();
        let ratio = if ratio.is_finite() {
            format!("{ratio:.3}")
        } else {
            "null".to_owned()
        };
        format!(
            r#"{{"name":"{}","kind":"{}","value":{:.3},"unit":"{}","baseline_name":"{}","baseline_value":{:.3},"ratio":{ratio}}}"#,
            self.name,
            self.kind.as_str(),
            self.value,
            self.unit,
            self.baseline_name,
            self.baseline,
        )
    }

    /// One aligned table row.
    pub fn row(&self) -> String {
        format!(
            "{:<48} {:<10} {:>10.2} {:<3} | {:<40} {:>10.2} {:<3} | x{:.2}",
            self.name,
            self.kind.as_str(),
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

/// Prints the figures the way every program ends: one table row each, then
/// one JSON line each (what `scripts/bench.sh` collects).
pub fn print_figures(figures: &[Figure]) {
    for f in figures {
        println!("{}", f.row());
    }
    for f in figures {
        println!("{}", f.to_json());
    }
}

/// The `main` of a program measuring flanneld on a cluster: the first
/// argument is the load size N (`default_n` without one); a cluster of
/// `hosts` network-namespace hosts named after `tag`, on `backing` with the
/// network configuration `config`, runs [`flanneld_bin`]; `bench` measures
/// on it with N. The cluster is stopped before the figures are printed, so
/// its teardown messages come before them.
pub fn cluster_main(
    tag: &str,
    hosts: usize,
    backing: Backing,
    config: &str,
    default_n: usize,
    bench: impl FnOnce(&mut Cluster, usize) -> Res<Vec<Figure>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(default_n);
    let bin = flanneld_bin()?;
    let mut c = Cluster::new(&bin, tag, hosts, false, backing, config);
    let figures = bench(&mut c, n)?;
    drop(c);
    print_figures(&figures);
    Ok(())
}

/// Waits until `dev` on host `i` (0-based) carries at least `n` IPv4 routes,
/// dumping the routes over netlink every 10 ms; returns how long that took.
/// Fails after `timeout`, with the count reached and the end of the host's
/// flanneld log.
pub fn wait_routes(c: &Cluster, i: usize, dev: &str, n: usize, timeout: Duration) -> Res<Duration> {
    let start = Instant::now();
    let res = in_ns(c.host(i), async move || {
        let (nl, conn) = Netlink::connect().map_err(err)?;
        tokio::spawn(conn);
        let mut count = 0;
        while start.elapsed() < timeout {
            if let Some(link) = nl.link_by_name(dev).await.map_err(err)? {
                let routes = nl.routes(Family::V4).await.map_err(err)?;
                count = routes.iter().filter(|r| r.oif == Some(link.index)).count();
                if count >= n {
                    return Ok(start.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("{count} of {n} routes on {dev} after {timeout:?}"))
    });
    res.map_err(|e| format!("host {}: {e}; flanneld log:\n{}", i + 1, c.log_tail(i, 15)))
}

/// The memory of host `i`'s flanneld, read `settle` from now: the pause
/// lets the work that programmed the routes finish and free its buffers, so
/// the reading is the steady state, not a peak.
pub fn settled_memory(c: &mut Cluster, i: usize, settle: Duration) -> Res<Memory> {
    std::thread::sleep(settle);
    c.daemon(i).memory().map_err(err)
}
