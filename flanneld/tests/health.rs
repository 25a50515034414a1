//! `/healthz`, `/readyz` and `/metrics` over real HTTP on 127.0.0.1 (no root).

use flannel_core::config::NetConfig;
use flannel_core::ip::Ip4Net;
use flannel_core::key::SubnetKey;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_subnet::runner::RunnerStatus;
use flannel_traffic::RulesStatus;
use flanneld::health::{self, Health, RunnerCounters, RunnerView, mark_progress};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A runner whose sync state, lease and progress the test controls; the
/// counters come from a real [`RunnerStatus`].
#[derive(Default)]
struct FakeRunner {
    status: RunnerStatus,
    in_sync: AtomicBool,
    lease: Mutex<Option<Lease>>,
    stalled: AtomicBool,
}

impl RunnerView for FakeRunner {
    fn in_sync(&self) -> bool {
        self.in_sync.load(Ordering::Relaxed)
    }
    fn since_progress(&self) -> Duration {
        if self.stalled.load(Ordering::Relaxed) {
            Duration::from_secs(3600)
        } else {
            Duration::ZERO
        }
    }
    fn lease(&self) -> Option<Lease> {
        self.lease.lock().unwrap().clone()
    }
    fn counters(&self) -> RunnerCounters {
        self.status.counters()
    }
}

struct Server {
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

fn start(health: Arc<Health>) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(health::serve(listener, health));
    Server { addr, _rt: rt }
}

struct Reply {
    code: u16,
    headers: HashMap<String, String>,
    body: String,
}

fn raw(addr: SocketAddr, request: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap();
    assert!(status.starts_with("HTTP/1.1 "), "{status}");
    let code = status[9..12].parse().unwrap();
    let headers: HashMap<_, _> = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_ascii_lowercase(), v.to_string())
        })
        .collect();
    assert_eq!(headers["content-length"], body.len().to_string());
    Reply {
        code,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n"),
    )
}

fn lease(expires_in: Option<Duration>) -> Lease {
    let net: Ip4Net = "10.5.7.0/24".parse().unwrap();
    let mut l = Lease::new(
        SubnetKey::new(Some(net), None).unwrap(),
        LeaseAttrs::new(Ipv4Addr::new(192, 168, 1, 10)),
    );
    l.expiration = expires_in.map(|d| SystemTime::now() + d);
    l
}

#[test]
fn healthz_turns_500_when_a_loop_stalls_and_recovers() {
    let h = Arc::new(Health::new().with_liveness_limit(Duration::from_millis(200)));
    let srv = start(h.clone());
    let r = get(srv.addr, "/healthz");
    assert_eq!((r.code, r.body.as_str()), (200, "flanneld is running"));
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");

    // An extra loop (e.g. the rule resync) that keeps beating stays healthy.
    let beat = Arc::new(AtomicU64::new(0));
    h.register_loop("rule resync", beat.clone());
    mark_progress(&beat);
    assert_eq!(get(srv.addr, "/healthz").code, 200);
    std::thread::sleep(Duration::from_millis(350));
    let r = get(srv.addr, "/healthz");
    assert_eq!(r.code, 500, "{}", r.body);
    assert!(
        r.body
            .starts_with("flanneld is not healthy: rule resync has made no progress"),
        "{}",
        r.body
    );
    mark_progress(&beat);
    assert_eq!(get(srv.addr, "/healthz").code, 200);

    // A loop with a longer limit of its own is not hung yet.
    let slow = Arc::new(AtomicU64::new(0));
    h.register_loop_with_limit("route check", slow, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(250));
    mark_progress(&beat);
    assert_eq!(get(srv.addr, "/healthz").code, 200);

    // The real runner status: its progress stamp ages past the limit.
    let status = Arc::new(RunnerStatus::default());
    h.set_runner(status);
    std::thread::sleep(Duration::from_millis(250));
    mark_progress(&beat);
    let r = get(srv.addr, "/healthz");
    assert_eq!(r.code, 500);
    assert!(
        r.body.contains("the lease loop has made no progress"),
        "{}",
        r.body
    );
    let m = metrics(srv.addr);
    assert_eq!(m["flannel_healthy"], "0");
}

#[test]
fn healthz_default_limit_tolerates_a_fresh_runner() {
    let h = Arc::new(Health::new());
    // The daemon's wiring.
    h.set_runner(Arc::new(RunnerStatus::default()));
    h.set_subnet_file_written(true);
    let srv = start(h.clone());
    assert_eq!(get(srv.addr, "/healthz").code, 200);
    // RunnerStatus starts out of sync and without a lease.
    let r = get(srv.addr, "/readyz");
    assert_eq!(r.code, 503);
    assert_eq!(r.body, "flanneld is not ready yet: no subnet lease held");
    h.set_lease(&lease(Some(Duration::from_secs(3600))));
    let r = get(srv.addr, "/readyz");
    assert_eq!(
        r.body,
        "flanneld is not ready yet: datastore watch not in sync"
    );
}

#[test]
fn readyz_is_two_way() {
    let h = Arc::new(Health::new());
    let srv = start(h.clone());
    let not_ready = |why: &str| format!("flanneld is not ready yet: {why}");
    let check = |code: u16, body: &str| {
        let r = get(srv.addr, "/readyz");
        assert_eq!((r.code, r.body.as_str()), (code, body));
    };

    check(503, &not_ready("no subnet lease held"));
    h.set_lease(&lease(Some(Duration::from_secs(86400))));
    check(503, &not_ready("subnet file not written"));
    h.set_subnet_file_written(true);
    check(503, &not_ready("lease watch not started"));
    let runner = Arc::new(FakeRunner::default());
    h.set_runner(runner.clone());
    check(503, &not_ready("datastore watch not in sync"));
    h.set_gate("rules programmed", false);
    h.set_gate("routes programmed", false);
    runner.in_sync.store(true, Ordering::Relaxed);
    check(503, &not_ready("waiting for rules programmed"));
    h.set_gate("rules programmed", true);
    check(503, &not_ready("waiting for routes programmed"));
    h.set_gate("routes programmed", true);
    check(200, "flanneld is ready");
    assert_eq!(metrics(srv.addr)["flannel_ready"], "1");

    // Loss of sync, then recovery.
    runner.in_sync.store(false, Ordering::Relaxed);
    check(503, &not_ready("datastore watch not in sync"));
    assert_eq!(metrics(srv.addr)["flannel_ready"], "0");
    runner.in_sync.store(true, Ordering::Relaxed);
    check(200, "flanneld is ready");

    // A gate closing, then reopening.
    h.set_gate("rules programmed", false);
    check(503, &not_ready("waiting for rules programmed"));
    h.set_gate("rules programmed", true);
    check(200, "flanneld is ready");

    // The runner's lease takes precedence; an expired one is not held.
    *runner.lease.lock().unwrap() = Some(lease(None));
    check(200, "flanneld is ready");
    let mut expired = lease(None);
    expired.expiration = Some(SystemTime::now() - Duration::from_secs(1));
    *runner.lease.lock().unwrap() = Some(expired);
    check(503, &not_ready("the subnet lease has expired"));
    *runner.lease.lock().unwrap() = Some(lease(Some(Duration::from_secs(60))));
    check(200, "flanneld is ready");

    // A stalled runner is a liveness problem, not a readiness one.
    runner.stalled.store(true, Ordering::Relaxed);
    assert_eq!(get(srv.addr, "/healthz").code, 500);
    check(200, "flanneld is ready");
}

/// Parses the exposition, checking its shape; returns sample → value.
fn metrics(addr: SocketAddr) -> HashMap<String, String> {
    let r = get(addr, "/metrics");
    assert_eq!(r.code, 200);
    assert!(
        r.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.headers
    );
    let mut samples = HashMap::new();
    let mut typed = HashMap::new();
    for line in r.body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["gauge", "counter"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            assert!(typed.insert(name.to_string(), kind.to_string()).is_none());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "{line}");
            let labels = &series[name_end + 1..series.len() - 1];
            for pair in labels.split(',') {
                let (k, v) = pair.split_once('=').unwrap();
                assert!(
                    !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                    "{line}"
                );
            }
        }
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        assert!(v.is_finite() || v.is_nan(), "{line}");
        assert!(typed.contains_key(name), "no TYPE before {line}");
        samples.insert(series.to_string(), value.to_string());
    }
    // Every family has HELP and TYPE.
    for name in typed.keys() {
        assert!(r.body.contains(&format!("# HELP {name} ")), "{name}");
    }
    samples
}

#[test]
fn metrics_exposition() {
    let h = Arc::new(Health::new());
    let srv = start(h.clone());
    // Before anything is known: zeros, no lease expiry, no subnet total.
    let m = metrics(srv.addr);
    assert_eq!(
        m[&format!(
            "flannel_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )],
        "1"
    );
    assert_eq!(m["flannel_ready"], "0");
    assert_eq!(m["flannel_healthy"], "1");
    assert_eq!(m["flannel_subnets_used"], "0");
    assert!(!m.contains_key("flannel_subnets_total"));
    assert!(!m.contains_key("flannel_lease_expiry_timestamp_seconds"));
    // No rules yet: the rule counters are announced as zero.
    assert_eq!(m["flannel_rule_rewrites_total"], "0");
    assert_eq!(m["flannel_rule_resync_failures_total"], "0");

    let rules = Arc::new(RulesStatus::default());
    h.set_rules_status(rules.clone());
    rules.rewrites.store(6, Ordering::Relaxed);
    rules.failures.store(2, Ordering::Relaxed);

    let cfg = NetConfig::parse(r#"{"Network": "10.5.0.0/16", "SubnetLen": 24}"#).unwrap();
    h.set_config(&cfg);
    let runner = Arc::new(FakeRunner::default());
    let expiry = SystemTime::now() + Duration::from_secs(3600);
    let mut l = lease(None);
    l.expiration = Some(expiry);
    *runner.lease.lock().unwrap() = Some(l);
    h.set_runner(runner.clone());
    let s = &runner.status;
    s.events.store(17, Ordering::Relaxed);
    s.resyncs.store(3, Ordering::Relaxed);
    s.watch_errors.store(2, Ordering::Relaxed);
    s.reconcile_errors.store(1, Ordering::Relaxed);
    s.renewals.store(4, Ordering::Relaxed);
    s.reacquisitions.store(5, Ordering::Relaxed);
    s.known_leases.store(9, Ordering::Relaxed);
    s.last_resync_micros.store(1_500_000, Ordering::Relaxed);
    s.consecutive_failures.store(6, Ordering::Relaxed);
    s.retry_delay_millis.store(64_000, Ordering::Relaxed);

    let m = metrics(srv.addr);
    let expect = [
        ("flannel_leases_known", "9"),
        ("flannel_datastore_reconnects_total", "2"),
        ("flannel_lease_events_total", "17"),
        ("flannel_reconcile_errors_total", "1"),
        ("flannel_resyncs_total", "3"),
        ("flannel_last_resync_duration_seconds", "1.5"),
        ("flannel_datapath_consecutive_failures", "6"),
        ("flannel_datapath_retry_delay_seconds", "64"),
        ("flannel_lease_renewals_total", "4"),
        ("flannel_lease_reacquisitions_total", "5"),
        // 10.5.1.0/24 ..= 10.5.255.0/24 (SubnetMin defaults to the second).
        ("flannel_subnets_total", "255"),
        ("flannel_subnets_used", "10"),
        ("flannel_ready", "0"),
        ("flannel_rule_rewrites_total", "6"),
        ("flannel_rule_resync_failures_total", "2"),
    ];
    for (name, value) in expect {
        assert_eq!(m.get(name).map(String::as_str), Some(value), "{name}");
    }
    let exp: f64 = m["flannel_lease_expiry_timestamp_seconds"].parse().unwrap();
    let want = expiry.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((exp - want).abs() < 0.001, "{exp} vs {want}");

    // A reservation has no expiry sample; explicit bounds size the network.
    *runner.lease.lock().unwrap() = Some(lease(None));
    let cfg = NetConfig::parse(
        r#"{"Network": "10.5.0.0/16", "SubnetLen": 26, "SubnetMin": "10.5.0.64", "SubnetMax": "10.5.3.192"}"#,
    )
    .unwrap();
    h.set_config(&cfg);
    let m = metrics(srv.addr);
    assert!(!m.contains_key("flannel_lease_expiry_timestamp_seconds"));
    assert_eq!(m["flannel_subnets_total"], "15");
}

#[test]
fn methods_paths_and_malformed_requests() {
    let h = Arc::new(Health::new());
    let srv = start(h);
    let r = get(srv.addr, "/nope");
    assert_eq!((r.code, r.body.as_str()), (404, "404 page not found\n"));
    let r = get(srv.addr, "/healthz?verbose=1");
    assert_eq!(r.code, 200);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = raw(
            srv.addr,
            &format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
        );
        assert_eq!(r.code, 405, "{path}");
        assert_eq!(r.headers["allow"], "GET, HEAD");
    }
    // HEAD: headers (with the GET body's length) and no body.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("Content-Length: 19\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\n"), "{out}");

    let r = raw(srv.addr, "garbage\r\n\r\n");
    assert_eq!(r.code, 400);
    // HTTP/1.0 and a bare-LF client work too.
    let r = raw(srv.addr, "GET /readyz HTTP/1.0\n\n");
    assert_eq!(r.code, 503);

    // A client that sends nothing is dropped after the timeout; meanwhile
    // other requests are served.
    let idle = TcpStream::connect(srv.addr).unwrap();
    assert_eq!(get(srv.addr, "/healthz").code, 200);
    drop(idle);
    // Many concurrent clients.
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let addr = srv.addr;
            std::thread::spawn(move || get(addr, "/metrics").code)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
}
