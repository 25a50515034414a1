//! The runner's contract with backends, measured: a driver keeps moving
//! packets while a 5,000-lease resync runs, and a failing resync backs off
//! to its cap with a bounded number of log lines.

use flannel_core::backend::{BackendError, Driver, Network, RetryPolicy};
use flannel_core::config::NetConfig;
use flannel_core::event::{LeaseEvent, LeaseWatchResult};
use flannel_core::key::SubnetKey;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::manager::{AcquireRequest, LeaseStream, ManagerError, SubnetManager};
use flannel_core::reconcile::{Object, plan};
use flannel_subnet::runner::{Runner, RunnerOptions, thread_executor};
use flannel_testutil::logs::Logs;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn lease(i: u32) -> Lease {
    let key: SubnetKey = format!("10.{}.{}.0-24", 100 + i / 256, i % 256)
        .parse()
        .unwrap();
    Lease::new(
        key,
        LeaseAttrs::new([192, 168, (i / 256) as u8, (i % 256) as u8].into()),
    )
}

/// A subnet manager whose watch delivers the given snapshots, `gap` apart,
/// then nothing.
struct Snapshots {
    leases: Vec<Lease>,
    count: usize,
    gap: Duration,
}

#[async_trait::async_trait]
impl SubnetManager for Snapshots {
    fn name(&self) -> &'static str {
        "test"
    }
    async fn get_network_config(&self) -> Result<NetConfig, ManagerError> {
        Ok(NetConfig::parse(r#"{"Network":"10.0.0.0/8"}"#).unwrap())
    }
    async fn acquire_lease(&self, _: &AcquireRequest) -> Result<Lease, ManagerError> {
        Err(ManagerError::Unavailable("not in this test".into()))
    }
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, ManagerError> {
        Ok(lease.clone())
    }
    async fn watch_lease(&self, _: SubnetKey) -> Result<LeaseStream, ManagerError> {
        Ok(Box::pin(futures_util::stream::pending()))
    }
    async fn watch_leases(&self) -> Result<LeaseStream, ManagerError> {
        let (leases, gap) = (self.leases.clone(), self.gap);
        let snaps = futures_util::stream::unfold(0usize, move |n| {
            let leases = leases.clone();
            async move {
                if n > 0 {
                    tokio::time::sleep(gap).await;
                }
                Some((Ok(LeaseWatchResult::Snapshot(leases)), n + 1))
            }
        });
        use futures_util::StreamExt;
        Ok(Box::pin(
            snaps
                .take(self.count)
                .chain(futures_util::stream::pending()),
        ))
    }
}

#[derive(Clone, PartialEq)]
struct Want(SubnetKey);
impl Object for Want {
    type Key = String;
    fn key(&self) -> String {
        self.0.to_string()
    }
    fn satisfies(&self, _: &Want) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("route {}", self.0)
    }
}

/// A udp-like network: its driver forwards datagrams from one socket to
/// another; its resync computes the desired state of every lease and then
/// holds its thread for `hold`, standing in for the netlink round trips of
/// a real 5,000-lease resync (~200 ms measured on vxlan).
struct UdpLike {
    lease: Lease,
    socket: Option<UdpSocket>,
    forward_to: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    hold: Duration,
    resyncs: Arc<Mutex<Vec<(Instant, Instant)>>>,
}

#[async_trait::async_trait]
impl Network for UdpLike {
    fn lease(&self) -> &Lease {
        &self.lease
    }
    fn mtu(&self) -> u32 {
        1472
    }
    async fn handle_events(&mut self, _: &[LeaseEvent], _: &[&Lease]) -> Result<(), BackendError> {
        Ok(())
    }
    async fn resync(&mut self, leases: &[&Lease]) -> Result<(), BackendError> {
        let started = Instant::now();
        let desired: Vec<Want> = leases.iter().map(|l| Want(l.key())).collect();
        let p = plan(&desired, &[], |_| true);
        assert_eq!(p.add.len(), leases.len());
        while started.elapsed() < self.hold {
            std::hint::spin_loop();
        }
        self.resyncs.lock().unwrap().push((started, Instant::now()));
        Ok(())
    }
    fn take_driver(&mut self) -> Option<Driver> {
        let socket = self.socket.take()?;
        socket.set_nonblocking(true).unwrap();
        let (to, stop) = (self.forward_to, self.stop.clone());
        Some(Box::pin(async move {
            let socket = tokio::net::UdpSocket::from_std(socket)
                .map_err(|e| BackendError::datapath("udp socket", e))?;
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(20), socket.recv(&mut buf)).await {
                    Ok(Ok(n)) => {
                        let _ = socket.send_to(&buf[..n], to).await;
                    }
                    Ok(Err(e)) => return Err(BackendError::datapath("udp recv", e)),
                    Err(_) => {}
                }
            }
            Ok(())
        }))
    }
    async fn shutdown(&mut self) -> Result<(), BackendError> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Runs the udp-like network under a runner on a single-threaded runtime
/// (as flanneld's) with two 5,000-lease resyncs, sends a datagram every
/// millisecond through its driver, and returns the longest gap between
/// arrivals while a resync ran, with the resync durations.
fn longest_stall(with_executor: bool) -> (Duration, Vec<Duration>) {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let driver_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let driver_addr = driver_socket.local_addr().unwrap();
    let resyncs = Arc::new(Mutex::new(Vec::new()));
    let mut net = UdpLike {
        lease: lease(9999),
        socket: Some(driver_socket),
        forward_to: rx.local_addr().unwrap(),
        stop: Arc::new(AtomicBool::new(false)),
        hold: Duration::from_millis(300),
        resyncs: resyncs.clone(),
    };
    let manager = Arc::new(Snapshots {
        leases: (0..5000).map(lease).collect(),
        count: 2,
        gap: Duration::from_millis(600),
    });
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let done = done.clone();
        std::thread::spawn(move || {
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) && n < 5000 {
                let _ = tx.send_to(&n.to_be_bytes(), driver_addr);
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let arrivals = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut at = Vec::new();
            let mut buf = [0u8; 64];
            while !done.load(Ordering::Relaxed) {
                if rx.recv(&mut buf).is_ok() {
                    at.push(Instant::now());
                }
            }
            at
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut runner = Runner::new(manager).with_options(RunnerOptions::default());
        if with_executor {
            runner = runner.with_executor(thread_executor("test-datapath"));
        }
        runner
            .run(&mut net, tokio::time::sleep(Duration::from_millis(1500)))
            .await
            .unwrap();
    });
    done.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let at = arrivals.join().unwrap();
    let resyncs = resyncs.lock().unwrap().clone();
    assert_eq!(resyncs.len(), 2, "two snapshots, two resyncs");
    let mut longest = Duration::ZERO;
    for (start, end) in &resyncs {
        // The gaps between arrivals that overlap the resync, including the
        // first arrival after it.
        let during: Vec<Instant> = at
            .iter()
            .copied()
            .filter(|t| *t >= *start)
            .take_while(|t| *t <= *end + Duration::from_millis(100))
            .collect();
        let mut prev = at
            .iter()
            .rev()
            .copied()
            .find(|t| *t < *start)
            .unwrap_or(*start);
        for t in during {
            longest = longest.max(t - prev);
            prev = t;
        }
    }
    (longest, resyncs.iter().map(|(s, e)| *e - *s).collect())
}

#[test]
fn a_driver_keeps_moving_packets_during_a_5000_lease_resync() {
    let (inline, _) = longest_stall(false);
    let (apart, took) = longest_stall(true);
    println!(
        "resyncs of 5000 leases took {:?}; longest stall of the driver: {:.1} ms on the executor, {:.1} ms polled inline",
        took,
        apart.as_secs_f64() * 1e3,
        inline.as_secs_f64() * 1e3
    );
    assert!(
        inline >= Duration::from_millis(250),
        "polled inside the runner's task, the driver waits for the resync ({inline:?})"
    );
    // Blocked by the resync, the driver would stall for all of its 300 ms;
    // 250 ms leaves room for a busy machine's scheduling delays.
    assert!(
        apart < Duration::from_millis(250),
        "on the executor the driver must not wait for the 300 ms resync; longest stall {apart:?}"
    );
}

/// A network whose resync fails until `healthy` is set.
struct Failing {
    lease: Lease,
    healthy: Arc<AtomicBool>,
    attempts: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Network for Failing {
    fn lease(&self) -> &Lease {
        &self.lease
    }
    fn mtu(&self) -> u32 {
        1500
    }
    async fn handle_events(&mut self, _: &[LeaseEvent], _: &[&Lease]) -> Result<(), BackendError> {
        Ok(())
    }
    async fn resync(&mut self, _: &[&Lease]) -> Result<(), BackendError> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if self.healthy.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(BackendError::datapath(
                "route 10.5.3.0/24 via 192.168.1.3 dev eth0",
                "Network is unreachable (os error 101)",
            ))
        }
    }
    fn resync_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(10))
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_resync_backs_off_to_its_cap_with_bounded_log_lines() {
    let out = Logs::default();
    let _guard = out.install(tracing::Level::INFO);

    let healthy = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let mut net = Failing {
        lease: lease(9999),
        healthy: healthy.clone(),
        attempts: attempts.clone(),
    };
    let policy = RetryPolicy::default();
    let runner = Runner::new(Arc::new(Snapshots {
        leases: vec![lease(1)],
        count: 1,
        gap: Duration::ZERO,
    }));
    let status = runner.status().clone();
    let failing_for = Duration::from_secs(30 * 60);
    let heal = {
        let healthy = healthy.clone();
        let status = status.clone();
        async move {
            tokio::time::sleep(failing_for).await;
            let delay = status.retry_delay_millis.load(Ordering::Relaxed);
            let failures = status.consecutive_failures.load(Ordering::Relaxed);
            healthy.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(300)).await;
            (delay, failures)
        }
    };
    let (run, (delay_at_cap, failures)) = tokio::join!(
        runner.run(
            &mut net,
            tokio::time::sleep(failing_for + Duration::from_secs(300))
        ),
        heal
    );
    run.unwrap();
    let text = out.text();
    let failure_lines = text
        .lines()
        .filter(|l| l.contains("resync of 1 leases failed"))
        .count();
    let tried = attempts.load(Ordering::Relaxed);
    println!(
        "30 min of failing resyncs: {failures} attempts, {failure_lines} log lines, last delay {} ms (cap {} ms ±20 %)",
        delay_at_cap,
        policy.max.as_millis()
    );
    // 1 s, 2 s, 4 s, … 64 s, then 120 s ±20 %: about 21 attempts in 30 min
    // (not 180 at a fixed 10 s, nor 1,800 at 1 s).
    assert!((15..=30).contains(&failures), "{failures} attempts");
    let cap = policy.max.as_millis() as u64;
    assert!(
        (cap * 8 / 10..=cap * 12 / 10).contains(&delay_at_cap),
        "the delay reached its cap: {delay_at_cap} ms"
    );
    assert!(
        failure_lines as u64 <= failures && failure_lines <= 1 + 30 * 60 / 30,
        "{failure_lines} lines for {failures} failures:\n{text}"
    );
    assert!(failure_lines >= 2, "failures are still reported:\n{text}");
    assert!(
        text.contains(&format!("in step again after {failures} failed attempts")),
        "recovery is logged:\n{text}"
    );
    assert_eq!(status.consecutive_failures.load(Ordering::Relaxed), 0);
    assert!(
        tried > failures,
        "periodic resyncs resume after the recovery"
    );
}
