//! Soak: flanneld under continuous pod traffic while its world is shaken.
//!
//! Three network-namespace hosts with one pod each run the release
//! `flanneld` (vxlan) against a real etcd in the switch namespace: the e2e
//! suite's cluster (`flannel_testutil::cluster`). For the whole run every
//! pod pings every other pod (`ping -i 0.2`, 5 per second per pair, six
//! pairs) while a seeded random schedule, one disruption at a time with a
//! pause of 2–8 s between them:
//! - churns leases: adds fake nodes' leases to etcd (some with a TTL of a
//!   few seconds, so they also expire on their own) and deletes them;
//! - restarts etcd (SIGTERM, an outage of 1–8 s, started again on the same
//!   data directory);
//! - restarts the flanneld of host 2 or 3: SIGTERM and start, or now and
//!   then `kill -9` and start. Host 1's flanneld is never restarted, so its
//!   memory covers the whole run and every disruption.
//!
//! The run is bounded: it stops by itself after `MINUTES` (default 10) and
//! at most [`MAX_ACTIONS_PER_MIN`] disruptions a minute (etcd restarts and
//! flanneld restarts have lower caps). Afterwards it deletes the fake
//! leases, checks that every host dropped their routes and that all pods
//! still reach each other, and reports:
//! - pings sent and lost, overall and outside the seconds right after a
//!   `kill -9` (from the kill until [`KILL_WINDOW`] after the new flanneld
//!   wrote `subnet.env`), with each lost ping attributed to the disruption
//!   that preceded it;
//! - flanneld log lines per minute per host (and WARN/ERROR counts, and the
//!   most frequent messages);
//! - flanneld RSS per host at the start and the end (drift);
//! - the number of disruptions of each kind.
//!
//! Usage: `soak [MINUTES] [--seed N] [--report PATH]` (MINUTES may be a
//! fraction). The seed is printed first; the same seed replays the same
//! schedule. Prints a table, the figures as JSON lines (all of kind
//! `reference`: there is no other implementation to compare with, the
//! baselines give scale), and writes the whole report as JSON to PATH
//! (default `soak-report.json`). The flanneld binary is the `flanneld` next
//! to this program, or `$BENCH_FLANNELD`. Not part of the test suite:
//! `scripts/soak.sh [MINUTES]` builds and runs it.

use flannel_benches::{Figure, Kind, Res, err, flanneld_bin, print_figures};
use flannel_testutil::cluster::{Backing, Cluster, ping_counts, wait_until};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HOSTS: usize = 3;
/// Real nodes take subnets 10.244.1–99; fake nodes' leases use 200–254, so
/// they never collide with a real node's.
const CONFIG: &str = r#"{"Network": "10.244.0.0/16", "SubnetLen": 24, "SubnetMin": "10.244.1.0", "SubnetMax": "10.244.99.0", "Backend": {"Type": "vxlan"}}"#;
const SUBNETS: &str = "/coreos.com/network/subnets/";
const FAKE_FIRST: u8 = 200;
const FAKE_LAST: u8 = 254;
const MAX_FAKE_LEASES: usize = 30;
/// Seconds between two pings of one pair (5 per second).
const PING_INTERVAL: f64 = 0.2;
/// How long after a killed flanneld's successor is up lost pings still
/// count as the kill's.
const KILL_WINDOW: Duration = Duration::from_secs(5);
/// Limits of the schedule, per minute of soak.
const MAX_ACTIONS_PER_MIN: f64 = 15.0;
const MAX_ETCD_RESTARTS_PER_MIN: f64 = 2.0;
const MAX_FLANNELD_RESTARTS_PER_MIN: f64 = 5.0;
/// How long a restarted flanneld may take to write `subnet.env`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// splitmix64: a small, seedable generator, so a schedule can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Seconds since the epoch (ping's `-D` timestamps use the same clock).
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Action {
    LeaseAdd,
    LeaseDelete,
    EtcdRestart,
    FlanneldSigterm,
    FlanneldKill9,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::LeaseAdd => "lease additions",
            Action::LeaseDelete => "lease deletions",
            Action::EtcdRestart => "etcd restarts",
            Action::FlanneldSigterm => "flanneld SIGTERM restarts",
            Action::FlanneldKill9 => "flanneld kill -9 restarts",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Action::LeaseAdd => "lease_add",
            Action::LeaseDelete => "lease_delete",
            Action::EtcdRestart => "etcd_restart",
            Action::FlanneldSigterm => "flanneld_sigterm",
            Action::FlanneldKill9 => "flanneld_kill9",
        }
    }
}

/// One disruption: what, where, when (epoch seconds) and when the system
/// was back (the disruption's own work done: etcd serving, `subnet.env`
/// rewritten).
struct Event {
    action: Action,
    host: Option<usize>,
    start: f64,
    end: f64,
    note: String,
}

/// A fake node's lease in etcd.
struct FakeLease {
    key: String,
    ttl: Duration,
    /// When its TTL runs out, for the short-lived ones.
    expires: Option<Instant>,
}

/// `ping -D -i 0.2` from one pod to another, its output in a file.
struct Pinger {
    from: usize,
    to: usize,
    child: Child,
    out: PathBuf,
    started: f64,
}

/// What one pinger saw: sent count and the estimated send time of each
/// ping that got no reply.
struct PingResult {
    from: usize,
    to: usize,
    sent: u64,
    received: u64,
    lost_at: Vec<f64>,
}

impl Pinger {
    fn start(c: &Cluster, from: usize, to: usize) -> Res<Pinger> {
        let out = c
            .dir
            .path()
            .join(format!("ping-{}-{}.out", from + 1, to + 1));
        let file = fs::File::create(&out).map_err(err)?;
        let started = now();
        let child = Command::new("ip")
            .args(["netns", "exec", c.pod(from).ns.name()])
            .args(["ping", "-n", "-D", "-i", &PING_INTERVAL.to_string()])
            .arg(c.pod(to).v4.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(err)?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("spawning ping: {e}"))?;
        Ok(Pinger {
            from,
            to,
            child,
            out,
            started,
        })
    }

    /// Interrupts ping (SIGINT prints its statistics) and reads what it saw.
    fn stop(mut self) -> Res<PingResult> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let text = fs::read_to_string(&self.out).map_err(err)?;
        let (sent, received, lost_at) =
            parse_ping(&text, self.started).map_err(|e| format!("{}: {e}", self.out.display()))?;
        Ok(PingResult {
            from: self.from,
            to: self.to,
            sent,
            received,
            lost_at,
        })
    }
}

/// Reads `ping -D -i 0.2` output: (sent, received, estimated send time of
/// each ping that got no reply). `started` is when ping was started, for
/// losses before the first reply.
fn parse_ping(text: &str, started: f64) -> Res<(u64, u64, Vec<f64>)> {
    let (sent, received) = ping_counts(text).ok_or("no ping statistics")?;
    // seq -> reply time: "[1764264000.123456] 64 bytes from ...: icmp_seq=12 ..."
    let mut replies: BTreeMap<u64, f64> = BTreeMap::new();
    for l in text.lines().filter(|l| l.contains("bytes from")) {
        let ts = l
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .and_then(|(t, _)| t.parse::<f64>().ok());
        let seq = l
            .split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|s| s.parse::<u64>().ok());
        if let (Some(ts), Some(seq)) = (ts, seq) {
            replies.entry(seq).or_insert(ts);
        }
    }
    // The last ping sent may still be in flight when ping stops.
    let lost_at: Vec<f64> = (1..sent)
        .filter(|s| !replies.contains_key(s))
        .map(|s| {
            // The send time from the nearest answered ping (replies take
            // well under a millisecond here), or from the start.
            let below = replies.range(..s).next_back();
            let above = replies.range(s..).next();
            let near = match (below, above) {
                (Some(b), Some(a)) => Some(if s - b.0 <= a.0 - s { b } else { a }),
                (b, a) => b.or(a),
            };
            match near {
                Some((&n, &t)) => t + (s as f64 - n as f64) * PING_INTERVAL,
                None => started + (s - 1) as f64 * PING_INTERVAL,
            }
        })
        .collect();
    Ok((sent, received, lost_at))
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Soak {
    c: Cluster,
    rng: Rng,
    fakes: Vec<FakeLease>,
    events: Vec<Event>,
    counts: BTreeMap<Action, u64>,
    /// Fake leases written, deleted, and expired by their TTL.
    leases_added: u64,
    leases_deleted: u64,
    expired: u64,
    sigterm_unclean: Vec<String>,
    restart_secs: Vec<f64>,
    etcd_down_secs: f64,
    /// When the pings began (epoch seconds).
    soak_start: f64,
}

impl Soak {
    fn fake_value(n: u8) -> String {
        format!(
            r#"{{"PublicIP":"172.16.0.{n}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:dd:00:00:{n:02x}:01"}}}}"#
        )
    }

    /// Forgets the short-lived fake leases whose TTL has run out.
    fn reap_expired(&mut self) {
        let before = self.fakes.len();
        let t = Instant::now();
        self.fakes.retain(|f| f.expires.is_none_or(|e| e > t));
        self.expired += (before - self.fakes.len()) as u64;
    }

    fn lease_add(&mut self) -> String {
        let used: Vec<String> = self.fakes.iter().map(|f| f.key.clone()).collect();
        let free: Vec<u8> = (FAKE_FIRST..=FAKE_LAST)
            .filter(|n| !used.contains(&format!("{SUBNETS}10.244.{n}.0-24")))
            .collect();
        let room = MAX_FAKE_LEASES
            .saturating_sub(self.fakes.len())
            .min(free.len());
        let k = (self.rng.range(1, 5) as usize).min(room);
        let mut notes = Vec::new();
        let mut pool = free;
        for _ in 0..k {
            let n = pool.remove(self.rng.range(0, pool.len() as u64 - 1) as usize);
            let key = format!("{SUBNETS}10.244.{n}.0-24");
            // A third expire on their own after a few seconds.
            let short = self.rng.unit() < 0.33;
            let ttl = if short {
                self.rng.range(8, 20) as i64
            } else {
                3600
            };
            self.c.etcd_put_with_lease(&key, &Self::fake_value(n), ttl);
            notes.push(format!("10.244.{n}.0/24 (ttl {ttl} s)"));
            self.leases_added += 1;
            let ttl = Duration::from_secs(ttl as u64);
            self.fakes.push(FakeLease {
                key,
                ttl,
                // etcd checks expiry about twice a second: a margin, so a
                // lease is never forgotten here while etcd still has it.
                expires: short.then(|| Instant::now() + ttl + Duration::from_secs(1)),
            });
        }
        notes.join(", ")
    }

    fn lease_delete(&mut self) -> String {
        let k = (self.rng.range(1, 4) as usize).min(self.fakes.len());
        let mut notes = Vec::new();
        for _ in 0..k {
            let f = self
                .fakes
                .remove(self.rng.range(0, self.fakes.len() as u64 - 1) as usize);
            self.c.etcd_delete(&f.key);
            notes.push(f.key.trim_start_matches(SUBNETS).to_owned());
            self.leases_deleted += 1;
        }
        notes.join(", ")
    }

    fn etcd_restart(&mut self) -> Res<String> {
        let outage = Duration::from_millis(self.rng.range(1_000, 8_000));
        self.c.etcd_server().stop();
        let t = Instant::now();
        thread::sleep(outage);
        self.c
            .etcd_server()
            .restart()
            .map_err(|e| format!("restarting etcd: {e}"))?;
        self.etcd_down_secs += t.elapsed().as_secs_f64();
        // A restarted etcd gives every lease its whole TTL again.
        let restarted = Instant::now();
        for f in &mut self.fakes {
            if let Some(e) = &mut f.expires {
                *e = (*e).max(restarted + f.ttl + Duration::from_secs(1));
            }
        }
        Ok(format!("down {:.1} s", t.elapsed().as_secs_f64()))
    }

    /// Stops host `h`'s flanneld (SIGTERM, or `kill -9`) and starts it
    /// again; returns when the new one has written `subnet.env`.
    fn flanneld_restart(&mut self, h: usize, kill9: bool) -> Res<String> {
        let old = self.c.env_inode(h);
        let mut note = String::new();
        if kill9 {
            self.c.daemon(h).kill9();
        } else {
            match self.c.daemon(h).terminate(Duration::from_secs(10)) {
                Some(s) if s.success() => {}
                Some(s) => {
                    note = format!("exited with {s} on SIGTERM; ");
                    self.sigterm_unclean.push(format!("host {}: {s}", h + 1));
                }
                None => {
                    note = "still running 10 s after SIGTERM, killed; ".to_owned();
                    self.sigterm_unclean
                        .push(format!("host {}: no exit within 10 s", h + 1));
                }
            }
        }
        self.c.daemons[h] = None;
        let t = Instant::now();
        self.c.start(h, &[]);
        self.c.wait_env_within(h, old, START_TIMEOUT);
        let took = t.elapsed().as_secs_f64();
        self.restart_secs.push(took);
        Ok(format!("{note}subnet.env after {:.0} ms", took * 1000.0))
    }

    /// The next disruption, within the per-minute caps; `None` when every
    /// cap is reached.
    fn pick(&mut self, minutes: f64) -> Option<Action> {
        let n = |s: &Self, a: Action| s.counts.get(&a).copied().unwrap_or(0) as f64;
        let total: f64 = self.counts.values().sum::<u64>() as f64;
        if total >= (MAX_ACTIONS_PER_MIN * minutes).ceil() {
            return None;
        }
        let etcd_ok = n(self, Action::EtcdRestart) < (MAX_ETCD_RESTARTS_PER_MIN * minutes).ceil();
        let restarts = n(self, Action::FlanneldSigterm) + n(self, Action::FlanneldKill9);
        let flanneld_ok = restarts < (MAX_FLANNELD_RESTARTS_PER_MIN * minutes).ceil();
        for _ in 0..20 {
            let r = self.rng.unit();
            let a = if r < 0.5 {
                if self.fakes.len() >= MAX_FAKE_LEASES
                    || (!self.fakes.is_empty() && self.rng.unit() < 0.45)
                {
                    Action::LeaseDelete
                } else {
                    Action::LeaseAdd
                }
            } else if r < 0.65 {
                Action::EtcdRestart
            } else if r < 0.9 {
                Action::FlanneldSigterm
            } else {
                Action::FlanneldKill9
            };
            let ok = match a {
                Action::EtcdRestart => etcd_ok,
                Action::FlanneldSigterm | Action::FlanneldKill9 => flanneld_ok,
                _ => true,
            };
            if ok {
                return Some(a);
            }
        }
        Some(if self.fakes.len() >= MAX_FAKE_LEASES {
            Action::LeaseDelete
        } else {
            Action::LeaseAdd
        })
    }

    fn run_one(&mut self, a: Action) -> Res<()> {
        let start = now();
        let (host, note) = match a {
            Action::LeaseAdd => (None, self.lease_add()),
            Action::LeaseDelete => (None, self.lease_delete()),
            Action::EtcdRestart => (None, self.etcd_restart()?),
            Action::FlanneldSigterm | Action::FlanneldKill9 => {
                let h = self.rng.range(1, HOSTS as u64 - 1) as usize;
                (
                    Some(h),
                    self.flanneld_restart(h, a == Action::FlanneldKill9)?,
                )
            }
        };
        let end = now();
        let at = start - self.soak_start;
        eprintln!(
            "[{at:7.1} s] {}{}: {note}",
            a.name(),
            host.map(|h| format!(" (host {})", h + 1))
                .unwrap_or_default()
        );
        *self.counts.entry(a).or_default() += 1;
        self.events.push(Event {
            action: a,
            host,
            start,
            end,
            note,
        });
        Ok(())
    }
}

/// The route destination of a fake lease key (`.../10.244.228.0-24` →
/// `10.244.228.0/24`).
fn fake_dst(key: &str) -> String {
    key.trim_start_matches(SUBNETS).replace('-', "/")
}

/// The destinations of host `i`'s routes through `flannel.1` to fake
/// nodes' subnets, sorted.
fn fake_routes(c: &Cluster, i: usize) -> Vec<String> {
    let mut dsts: Vec<String> = c
        .routes(i, false)
        .lines()
        .filter(|l| l.contains("dev flannel.1"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|d| {
            d.strip_prefix("10.244.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<u8>().ok())
                .is_some_and(|n| n >= FAKE_FIRST)
        })
        .map(str::to_owned)
        .collect();
    dsts.sort();
    dsts
}

/// A log line without its timestamp, digits folded, for counting repeats.
fn message_shape(line: &str) -> String {
    let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
    let mut shape: String = rest
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    if let Some((cut, _)) = shape.char_indices().nth(160) {
        shape.truncate(cut);
        shape.push('…');
    }
    shape
}

struct HostReport {
    lines: usize,
    warn: usize,
    error: usize,
    rss_start: f64,
    rss_end: f64,
    uptime_end: f64,
}

fn rss(c: &mut Cluster, i: usize) -> Res<f64> {
    c.daemon(i)
        .memory()
        .map(|m| m.rss_mib)
        .map_err(|e| format!("host {}: {e}", i + 1))
}

fn soak(minutes: f64, seed: u64, report_path: &Path) -> Res<()> {
    let bin = flanneld_bin()?;
    let mut c = Cluster::new(&bin, "soak", HOSTS, false, Backing::Etcd, CONFIG);
    c.start_all();
    for i in 0..HOSTS {
        c.wait_env(i);
    }
    for i in 0..HOSTS {
        c.add_pod(i);
    }
    c.ping_all_pairs(false);
    thread::sleep(Duration::from_secs(2));

    let lines_before: Vec<usize> = (0..HOSTS).map(|i| c.log(i).lines().count()).collect();
    let rss_start: Vec<f64> = (0..HOSTS).map(|i| rss(&mut c, i)).collect::<Res<_>>()?;
    let mut pingers = Vec::new();
    for from in 0..HOSTS {
        for to in 0..HOSTS {
            if from != to {
                pingers.push(Pinger::start(&c, from, to)?);
            }
        }
    }
    let soak_start = now();
    let started = Instant::now();
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let mut s = Soak {
        c,
        rng: Rng(seed),
        fakes: Vec::new(),
        events: Vec::new(),
        counts: BTreeMap::new(),
        leases_added: 0,
        leases_deleted: 0,
        expired: 0,
        sigterm_unclean: Vec::new(),
        restart_secs: Vec::new(),
        etcd_down_secs: 0.0,
        soak_start,
    };
    let mut daemon_started: Vec<Instant> = vec![started; HOSTS];

    // ---- the schedule
    loop {
        let pause = Duration::from_millis(s.rng.range(2_000, 8_000));
        if started.elapsed() + pause >= duration {
            break;
        }
        thread::sleep(pause);
        s.reap_expired();
        let Some(a) = s.pick(minutes) else {
            eprintln!("every disruption cap reached; waiting for the end of the run");
            thread::sleep(duration.saturating_sub(started.elapsed()));
            break;
        };
        s.run_one(a)?;
        if let Some(e) = s.events.last()
            && let Some(h) = e.host
        {
            daemon_started[h] = Instant::now();
        }
    }
    thread::sleep(duration.saturating_sub(started.elapsed()));
    let soak_end = now();
    let soak_minutes = (soak_end - soak_start) / 60.0;
    // Settle a moment so the last pings are answered, then stop them.
    thread::sleep(Duration::from_secs(1));
    let results: Vec<PingResult> = pingers.into_iter().map(Pinger::stop).collect::<Res<_>>()?;

    let rss_end: Vec<f64> = (0..HOSTS).map(|i| rss(&mut s.c, i)).collect::<Res<_>>()?;
    let logs: Vec<Vec<String>> = (0..HOSTS)
        .map(|i| {
            s.c.log(i)
                .lines()
                .skip(lines_before[i])
                .map(str::to_owned)
                .collect()
        })
        .collect();

    // ---- after the run: once the short-lived fake leases have expired,
    // every host routes exactly the fake leases still in etcd; deleting
    // those removes their routes; the pods still reach each other.
    let last_expiry = s.fakes.iter().filter_map(|f| f.expires).max();
    if let Some(t) = last_expiry {
        thread::sleep(t.saturating_duration_since(Instant::now()) + Duration::from_secs(3));
    }
    s.reap_expired();
    let mut alive: Vec<String> = s.fakes.iter().map(|f| fake_dst(&f.key)).collect();
    alive.sort();
    let c = &s.c;
    let settled = |want: &[String], what: &str| -> Res<Duration> {
        let mut slowest = Duration::ZERO;
        for i in 0..HOSTS {
            let ((), took) = wait_until(Duration::from_secs(30), || {
                let have = fake_routes(c, i);
                if have == want {
                    Ok(())
                } else {
                    Err(format!("routes {have:?}, want {want:?}"))
                }
            })
            .map_err(|e| format!("host {}: {what}: {e}", i + 1))?;
            slowest = slowest.max(took);
        }
        Ok(slowest)
    };
    let check = settled(&alive, "fake leases in etcd after the run").and_then(|matched| {
        for f in &s.fakes {
            c.etcd_delete(&f.key);
        }
        let removed = settled(&[], "routes of the deleted fake leases")?;
        Ok((matched, removed))
    });
    c.ping_all_pairs(false);

    // ---- figures
    let windows: Vec<(f64, f64)> = s
        .events
        .iter()
        .filter(|e| e.action == Action::FlanneldKill9)
        .map(|e| (e.start, e.end + KILL_WINDOW.as_secs_f64()))
        .collect();
    let in_window = |t: f64| windows.iter().any(|&(a, b)| t >= a && t <= b);
    let window_secs = windows
        .iter()
        .fold(0.0, |sum, (a, b)| sum + (b.min(soak_end) - a));
    let sent: u64 = results.iter().map(|r| r.sent).sum();
    let lost_all: Vec<f64> = results
        .iter()
        .flat_map(|r| r.lost_at.iter().copied())
        .collect();
    let lost = lost_all.len() as u64;
    let lost_outside = lost_all.iter().filter(|&&t| !in_window(t)).count() as u64;
    // Pings sent outside the windows: the windows' share of each pair's run.
    let pairs = results.len() as f64;
    let sent_in_windows = (window_secs / PING_INTERVAL * pairs).round() as u64;
    let sent_outside = sent.saturating_sub(sent_in_windows).max(1);
    // Each lost ping to the latest disruption begun at most 30 s before it.
    let mut lost_by: BTreeMap<String, u64> = BTreeMap::new();
    for &t in &lost_all {
        let cause = s
            .events
            .iter()
            .rev()
            .find(|e| e.start <= t && t - e.start <= 30.0)
            .map_or("no disruption in the 30 s before".to_owned(), |e| {
                format!(
                    "{}{}",
                    e.action.key(),
                    e.host
                        .map(|h| format!(" (host {})", h + 1))
                        .unwrap_or_default()
                )
            });
        *lost_by.entry(cause).or_default() += 1;
    }

    let disruptions = s.events.len() as f64;
    let per_min = disruptions / soak_minutes;
    let hosts: Vec<HostReport> = (0..HOSTS)
        .map(|i| HostReport {
            lines: logs[i].len(),
            warn: logs[i].iter().filter(|l| l.contains(" WARN ")).count(),
            error: logs[i].iter().filter(|l| l.contains(" ERROR ")).count(),
            rss_start: rss_start[i],
            rss_end: rss_end[i],
            uptime_end: daemon_started[i].elapsed().as_secs_f64(),
        })
        .collect();
    let mut shapes: HashMap<String, usize> = HashMap::new();
    for l in logs.iter().flatten() {
        *shapes.entry(message_shape(l)).or_default() += 1;
    }
    let mut shapes: Vec<(String, usize)> = shapes.into_iter().collect();
    shapes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    shapes.truncate(8);

    let mut figures = vec![
        Figure {
            name: "soak pings lost".into(),
            kind: Kind::Reference,
            value: lost as f64,
            unit: "pkt",
            baseline_name: "soak pings sent".into(),
            baseline: sent.max(1) as f64,
        },
        Figure {
            name: "soak pings lost outside kill -9 windows".into(),
            kind: Kind::Reference,
            value: lost_outside as f64,
            unit: "pkt",
            baseline_name: "soak pings sent outside them (est.)".into(),
            baseline: sent_outside as f64,
        },
    ];
    for (i, h) in hosts.iter().enumerate() {
        figures.push(Figure {
            name: format!("soak flanneld log lines/min, host {}", i + 1),
            kind: Kind::Reference,
            value: h.lines as f64 / soak_minutes,
            unit: "/min",
            baseline_name: "soak disruptions/min (all hosts)".into(),
            baseline: per_min,
        });
    }
    for (i, h) in hosts.iter().enumerate() {
        let restarted = if i == 0 {
            "never restarted"
        } else {
            "last run"
        };
        figures.push(Figure {
            name: format!("soak RSS at end, host {} ({restarted})", i + 1),
            kind: Kind::Reference,
            value: h.rss_end,
            unit: "MiB",
            baseline_name: format!("soak RSS at start, host {}", i + 1),
            baseline: h.rss_start,
        });
    }

    // ---- report
    println!();
    println!(
        "soak: seed {seed}, {soak_minutes:.2} min, {HOSTS} hosts (vxlan, etcd), {} ping pairs at {:.0}/s each",
        results.len(),
        1.0 / PING_INTERVAL
    );
    println!("disruptions:");
    for a in [
        Action::LeaseAdd,
        Action::LeaseDelete,
        Action::EtcdRestart,
        Action::FlanneldSigterm,
        Action::FlanneldKill9,
    ] {
        println!(
            "  {:<28} {:>4}",
            a.name(),
            s.counts.get(&a).copied().unwrap_or(0)
        );
    }
    println!(
        "  fake leases: {} written, {} deleted, {} expired by their TTL",
        s.leases_added, s.leases_deleted, s.expired
    );
    println!(
        "  etcd down {:.1} s in all; flanneld restart -> subnet.env median {:.0} ms, max {:.0} ms; \
         unclean SIGTERM exits: {}",
        s.etcd_down_secs,
        median(&s.restart_secs) * 1000.0,
        s.restart_secs.iter().copied().fold(0.0, f64::max) * 1000.0,
        if s.sigterm_unclean.is_empty() {
            "none".to_owned()
        } else {
            s.sigterm_unclean.join(", ")
        }
    );
    println!("pings:");
    for r in &results {
        println!(
            "  pod {} -> pod {}: {} sent, {} received, {} lost",
            r.from + 1,
            r.to + 1,
            r.sent,
            r.received,
            r.lost_at.len()
        );
    }
    println!(
        "  all: {sent} sent, {lost} lost; outside the kill -9 windows ({:.1} s): {lost_outside} lost",
        window_secs
    );
    for (cause, n) in &lost_by {
        println!("  lost after {cause}: {n}");
    }
    println!("flanneld per host:");
    for (i, h) in hosts.iter().enumerate() {
        println!(
            "  host {}: {} log lines ({:.1}/min, {} WARN, {} ERROR); RSS {:.1} -> {:.1} MiB \
             (last process up {:.0} s)",
            i + 1,
            h.lines,
            h.lines as f64 / soak_minutes,
            h.warn,
            h.error,
            h.rss_start,
            h.rss_end,
            h.uptime_end
        );
    }
    println!("most frequent log messages (all hosts, digits as #):");
    for (shape, n) in &shapes {
        println!("  {n:>5}  {shape}");
    }
    match &check {
        Ok((matched, removed)) => println!(
            "after the run: every host routed exactly the {} fake leases left in etcd (within {:.1} s); \
             deleted, their routes were gone from every host within {:.1} s; all pod pairs reachable",
            alive.len(),
            matched.as_secs_f64(),
            removed.as_secs_f64()
        ),
        Err(e) => println!("after the run: FAILED: {e}"),
    }
    println!();
    print_figures(&figures);

    let report = json!({
        "seed": seed,
        "minutes": soak_minutes,
        "hosts": HOSTS,
        "ping_interval_s": PING_INTERVAL,
        "disruptions": s.counts.iter().map(|(a, n)| (a.key().to_owned(), json!(n)))
            .chain([
                ("leases_added".to_owned(), json!(s.leases_added)),
                ("leases_deleted".to_owned(), json!(s.leases_deleted)),
                ("leases_expired".to_owned(), json!(s.expired)),
            ])
            .collect::<serde_json::Map<_, _>>(),
        "etcd_down_s": s.etcd_down_secs,
        "flanneld_restart_to_env_ms": {
            "median": median(&s.restart_secs) * 1000.0,
            "max": s.restart_secs.iter().copied().fold(0.0, f64::max) * 1000.0,
        },
        "sigterm_unclean": s.sigterm_unclean,
        "pings": {
            "sent": sent,
            "lost": lost,
            "kill9_window_s": window_secs,
            "lost_outside_kill9_windows": lost_outside,
            "lost_by_preceding_disruption": lost_by,
            "pairs": results.iter().map(|r| json!({
                "from": r.from + 1, "to": r.to + 1, "sent": r.sent,
                "received": r.received, "lost": r.lost_at.len(),
            })).collect::<Vec<_>>(),
        },
        "flanneld": hosts.iter().enumerate().map(|(i, h)| json!({
            "host": i + 1,
            "restarted": i != 0,
            "log_lines": h.lines,
            "log_lines_per_min": h.lines as f64 / soak_minutes,
            "warn": h.warn,
            "error": h.error,
            "rss_start_mib": h.rss_start,
            "rss_end_mib": h.rss_end,
            "last_process_uptime_s": h.uptime_end,
        })).collect::<Vec<_>>(),
        "frequent_log_messages": shapes.iter().map(|(m, n)| json!({"count": n, "message": m}))
            .collect::<Vec<_>>(),
        "events": s.events.iter().map(|e| json!({
            "at_s": e.start - soak_start,
            "took_s": e.end - e.start,
            "kind": e.action.key(),
            "host": e.host.map(|h| h + 1),
            "note": e.note,
        })).collect::<Vec<_>>(),
        "check_after": match &check {
            Ok((matched, removed)) => json!({
                "ok": true,
                "fake_leases_left": alive.len(),
                "routes_matched_within_s": matched.as_secs_f64(),
                "routes_removed_within_s": removed.as_secs_f64(),
            }),
            Err(e) => json!({"ok": false, "error": e}),
        },
        "figures": figures.iter().map(|f| serde_json::from_str::<serde_json::Value>(&f.to_json())
            .unwrap_or(serde_json::Value::Null)).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&report).map_err(err)?;
    fs::write(report_path, text + "\n")
        .map_err(|e| format!("writing {}: {e}", report_path.display()))?;
    eprintln!("wrote {}", report_path.display());
    drop(s);
    check.map(drop)
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut minutes = 10.0;
    let mut seed = None;
    let mut report = PathBuf::from("soak-report.json");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seed" => seed = Some(args.next().ok_or("--seed needs a number")?.parse()?),
            "--report" => report = args.next().ok_or("--report needs a path")?.into(),
            "-h" | "--help" => {
                println!("usage: soak [MINUTES] [--seed N] [--report PATH]");
                return Ok(());
            }
            m => minutes = m.parse().map_err(|e| format!("MINUTES {m:?}: {e}"))?,
        }
    }
    if !(minutes > 0.0 && minutes <= 24.0 * 60.0) {
        return Err(format!("MINUTES must be above 0 and at most a day, not {minutes}").into());
    }
    let seed = seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!("soak: seed {seed} (replay with --seed {seed}), {minutes} min");
    soak(minutes, seed, &report)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_pings_get_their_send_times() {
        // seq 3 and 4 unanswered, 6 still in flight when ping stopped
        let text = "PING 10.244.5.2 (10.244.5.2) 56(84) bytes of data.
[100.000100] 64 bytes from 10.244.5.2: icmp_seq=1 ttl=63 time=0.1 ms
[100.200100] 64 bytes from 10.244.5.2: icmp_seq=2 ttl=63 time=0.1 ms
[100.800100] 64 bytes from 10.244.5.2: icmp_seq=5 ttl=63 time=0.1 ms
[100.800200] 64 bytes from 10.244.5.2: icmp_seq=5 ttl=63 time=0.2 ms (DUP!)

--- 10.244.5.2 ping statistics ---
6 packets transmitted, 3 received, +1 duplicates, 50% packet loss, time 1000ms
";
        let (sent, received, lost) = parse_ping(text, 99.9).unwrap();
        assert_eq!((sent, received), (6, 3));
        assert_eq!(lost.len(), 2);
        assert!((lost[0] - 100.4001).abs() < 1e-6, "{lost:?}");
        assert!((lost[1] - 100.6001).abs() < 1e-6, "{lost:?}");
        // nothing answered: times from the start
        let text = "4 packets transmitted, 0 received, 100% packet loss, time 600ms\n";
        let (_, _, lost) = parse_ping(text, 10.0).unwrap();
        assert_eq!(lost.len(), 3);
        assert!((lost[2] - 10.4).abs() < 1e-9, "{lost:?}");
        assert!(parse_ping("", 0.0).is_err());
    }
}
