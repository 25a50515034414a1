//! flanneld's start-up while etcd is unreachable, with the real binary:
//! endpoint URLs are checked before any connection attempt (exit 2), the
//! "no certificate" warning is printed once, `/healthz` is served during
//! the wait (`/readyz` 503), and SIGTERM ends the wait at once, even while a
//! request hangs on an etcd that accepts connections but never answers.
//!
//! The process tests run flanneld in a network namespace of their own (root
//! and `ip` needed; a missing one fails the test naming it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use flannel_testutil::cluster::http_get;
use flannel_testutil::netns::NetNs;

const BIN: &str = env!("CARGO_BIN_EXE_flanneld");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn clean(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("FLANNELD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env("NO_COLOR", "1")
}

/// Starts flanneld in `ns` with `args` (and `--subnet-file` in a temp dir).
fn spawn_in(ns: &NetNs, args: &[&str], dir: &tempfile::TempDir) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name(), BIN])
        .arg(format!(
            "--subnet-file={}",
            dir.path().join("subnet.env").display()
        ))
        .args(args);
    clean(&mut cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip netns exec flanneld")
}

/// SIGTERM, then the output and how long the exit took.
fn terminate(child: Child) -> (Output, Duration) {
    let t = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill (procps)");
    assert!(status.success(), "flanneld exited before SIGTERM");
    let out = child.wait_with_output().expect("wait for flanneld");
    (out, t.elapsed())
}

fn ns(hint: &str) -> NetNs {
    NetNs::new(hint).expect("a network namespace for flanneld (needs root and `ip`)")
}

#[test]
fn bad_endpoints_exit_2_before_connecting() {
    for (endpoints, rule) in [
        ("not-a-url", "must be host:port"),
        (":99999", "host is missing"),
        ("http://127.0.0.1:99999", "from 1 to 65535"),
        ("ftp://x", "ftp:// is not supported"),
        ("http://127.0.0.1:2379,ftp://x", "ftp:// is not supported"),
    ] {
        for by_env in [false, true] {
            let mut cmd = Command::new(BIN);
            clean(&mut cmd);
            if by_env {
                cmd.env("FLANNELD_ETCD_ENDPOINTS", endpoints);
            } else {
                cmd.arg(format!("--etcd-endpoints={endpoints}"));
            }
            let t = Instant::now();
            let out = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .expect("run flanneld");
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{endpoints}: {err}");
            let entry = endpoints.rsplit(',').next().unwrap();
            assert!(
                err.contains(&format!("\"{entry}\"")) && err.contains(rule),
                "{endpoints}: the error must name the entry and the rule: {err}"
            );
            assert!(!err.contains("using etcd"), "{endpoints}: connected: {err}");
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        }
    }
}

/// Waiting for an etcd that refuses connections: the insecure warning is
/// printed once however often the connection is retried, `/healthz` is 200
/// and `/readyz` 503 during the wait, and SIGTERM exits 0 within a second.
#[test]
fn waiting_for_etcd_warns_once_and_serves_health() {
    let ns = ns("start");
    let dir = tempfile::tempdir().unwrap();
    let port = 10271;
    let child = spawn_in(
        &ns,
        &[
            // Nothing listens on these in a fresh namespace: refused.
            "--etcd-endpoints=http://127.0.0.1:2379,http://127.0.0.1:4001",
            "--healthz-ip=127.0.0.1",
            &format!("--healthz-port={port}"),
        ],
        &dir,
    );
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let t = Instant::now();
    let healthz = loop {
        match http_get(&ns, addr, "/healthz") {
            Ok(r) => break r,
            Err(e) if t.elapsed() < Duration::from_secs(5) => {
                let _ = e;
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("/healthz not served while waiting for etcd: {e}"),
        }
    };
    eprintln!("/healthz served {:?} after start", t.elapsed());
    assert_eq!(healthz, (200, "flanneld is running".to_string()));
    let (code, body) = http_get(&ns, addr, "/readyz").expect("GET /readyz");
    assert_eq!(code, 503, "{body}");
    // Connection attempts at 0, 0.5, 1.5 and 3.5 s.
    thread::sleep(Duration::from_millis(4000));
    let (code, _) = http_get(&ns, addr, "/healthz").expect("GET /healthz");
    assert_eq!(code, 200);
    let (out, took) = terminate(child);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
    let waits = err.matches("waiting for etcd").count();
    let warnings = err.matches("no certificate provided").count();
    eprintln!("{waits} connection attempts, {warnings} insecure warning(s); exit in {took:?}");
    assert!(waits >= 3, "expected several attempts: {err}");
    assert_eq!(warnings, 1, "{err}");
}

/// An etcd that accepts connections and never answers (hung): SIGTERM
/// during a connection attempt exits 0 within a second (the attempt's own
/// time bound is 5 s).
#[test]
fn sigterm_during_a_hung_etcd_request_exits_at_once() {
    let ns = ns("hung");
    // A listener in the namespace: the kernel completes the handshake, and
    // nobody ever answers.
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:23790").expect("bind"));
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_in(&ns, &["--etcd-endpoints=http://127.0.0.1:23790"], &dir);
    // Inside the first attempt's 5 s bound.
    thread::sleep(Duration::from_millis(1500));
    let (out, took) = terminate(child);
    drop(listener);
    let err = text(&out.stderr);
    eprintln!("exit {took:?} after SIGTERM");
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(took < Duration::from_secs(1), "exit took {took:?}: {err}");
    assert!(err.contains("Exiting cleanly"), "{err}");
}
