//! systemd notification with the real binary and a real unix datagram
//! socket as `NOTIFY_SOCKET` (what systemd gives a `Type=notify` service):
//! `STATUS=waiting: ...` first, `READY=1` only once `/readyz` answers 200,
//! `STOPPING=1` on SIGTERM; and a socket nobody listens on is harmless.
//!
//! flanneld runs on a one-host netns topology with the local store and the
//! alloc backend (root and `ip` needed; a missing one fails naming it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flannel_testutil::cluster::http_get;
use flannel_testutil::netns::{Host, Topology};

const BIN: &str = env!("CARGO_BIN_EXE_flanneld");
const HEALTHZ_PORT: u16 = 10289;

fn spawn(host: &Host, dir: &Path, notify_socket: &Path) -> Child {
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(
        store.join("config"),
        r#"{"Network": "10.58.0.0/16", "Backend": {"Type": "alloc"}}"#,
    )
    .unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", host.ns.name(), BIN])
        .arg("--iface=eth0")
        .arg("--subnet-manager=local")
        .arg(format!("--local-store-dir={}", store.display()))
        .arg(format!(
            "--subnet-file={}",
            dir.join("subnet.env").display()
        ))
        .arg("--healthz-ip=127.0.0.1")
        .arg(format!("--healthz-port={HEALTHZ_PORT}"));
    for (k, _) in std::env::vars() {
        if k.starts_with("FLANNELD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .env("NOTIFY_SOCKET", notify_socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip netns exec flanneld")
}

fn sigterm(child: Child) -> String {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill (procps)");
    assert!(status.success(), "flanneld exited before SIGTERM");
    let out = child.wait_with_output().expect("wait for flanneld");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    err
}

fn readyz(host: &Host) -> Option<(u16, String)> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), HEALTHZ_PORT);
    http_get(&host.ns, addr, "/readyz").ok()
}

#[test]
fn ready_only_when_readyz_is_ok_then_stopping() {
    let topo = Topology::builder()
        .hosts(1)
        .name_hint("notify")
        .build()
        .expect("a one-host netns topology (needs root and `ip`)");
    let host = topo.host(0);
    let dir = tempfile::tempdir().unwrap();

    // 1. A listening socket: what systemd does.
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let child = spawn(host, dir.path(), &sock_path);
    let mut buf = [0u8; 4096];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv();
    assert!(first.starts_with("STATUS=waiting: "), "{first}");
    let t = Instant::now();
    let ready = loop {
        let m = recv();
        assert!(!m.contains("STOPPING"), "{m}");
        if m.contains("READY=1") {
            break m;
        }
        assert!(m.starts_with("STATUS=waiting: "), "{m}");
    };
    assert_eq!(ready, "READY=1\nSTATUS=flanneld is ready");
    // /readyz already said so when READY=1 was sent.
    assert_eq!(
        readyz(host),
        Some((200, "flanneld is ready".to_string())),
        "READY=1 was sent while /readyz is not ready"
    );
    eprintln!("READY=1 {:?} after the first status", t.elapsed());
    let err = sigterm(child);
    let stopping = recv();
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping}\n{err}");
    assert!(!err.contains("sd_notify"), "{err}");

    // 2. NOTIFY_SOCKET naming a socket nobody listens on: flanneld gets
    //    ready all the same and warns once.
    let missing = dir.path().join("nobody.sock");
    let child = spawn(host, dir.path(), &missing);
    let t = Instant::now();
    loop {
        match readyz(host) {
            Some((200, _)) => break,
            _ if t.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            other => panic!("flanneld not ready with a dead NOTIFY_SOCKET: {other:?}"),
        }
    }
    let err = sigterm(child);
    assert_eq!(
        err.matches("sd_notify: cannot notify systemd").count(),
        1,
        "{err}"
    );
}
