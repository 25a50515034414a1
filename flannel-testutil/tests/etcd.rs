//! Integration tests for `flannel_testutil::etcd::EtcdServer` against the real
//! etcd binary.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use flannel_testutil::TestUtilError;
use flannel_testutil::etcd::{ETCD_BIN_ENV, EtcdServer};

/// Environment variable telling a re-executed test binary which child role to play.
const CHILD_ROLE_ENV: &str = "FLANNEL_TESTUTIL_CHILD_ROLE";

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).expect("chunk size");
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&body[start..start + size]);
        body = &body[start + size + 2..];
    }
}

/// A hand-written HTTP/1.1 POST to etcd's JSON gateway; returns (status, body).
fn post_json(server: &EtcdServer, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(server.client_addr()).expect("connect to etcd");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n{body}",
        port = server.client_port(),
        len = body.len(),
    );
    stream.write_all(request.as_bytes()).expect("write request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let raw_body = &response[split + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(raw_body)
    } else {
        raw_body.to_vec()
    };
    let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "response body is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, json)
}

fn put(server: &EtcdServer, key: &str, value: &str) {
    let body = serde_json::json!({
        "key": base64(key.as_bytes()),
        "value": base64(value.as_bytes()),
    });
    let (status, json) = post_json(server, "/v3/kv/put", &body.to_string());
    assert_eq!(status, 200, "put failed: {json}");
}

/// Returns the base64 value stored under `key`, if any.
fn get_b64(server: &EtcdServer, key: &str) -> Option<String> {
    let body = serde_json::json!({ "key": base64(key.as_bytes()) });
    let (status, json) = post_json(server, "/v3/kv/range", &body.to_string());
    assert_eq!(status, 200, "range failed: {json}");
    let kvs = json.get("kvs")?.as_array()?;
    assert_eq!(kvs.len(), 1, "unexpected range result: {json}");
    assert_eq!(kvs[0]["key"], base64(key.as_bytes()));
    Some(
        kvs[0]["value"]
            .as_str()
            .expect("value is a string")
            .to_owned(),
    )
}

fn curl_health(url: &str, ca: &Path, client: Option<(&Path, &Path)>) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "10", "--cacert"])
        .arg(ca);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.arg(url).output().expect("run curl")
}

/// Whether `pid` is a live (not reaped, not zombie) process.
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: "pid (comm) STATE ..."; comm may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[test]
fn plain_put_get_stop_restart() {
    let mut server = EtcdServer::start().expect("start etcd");
    eprintln!(
        "plain etcd ready in {:?} at {}",
        server.last_startup(),
        server.endpoint()
    );
    assert!(server.is_running());
    assert!(!server.is_tls());
    assert_eq!(
        server.endpoint(),
        format!("http://127.0.0.1:{}", server.client_port())
    );
    assert_eq!(server.endpoints(), vec![server.endpoint()]);

    let value = "{\"Network\":\"10.5.0.0/16\",\"Backend\":{\"Type\":\"vxlan\"}}";
    put(&server, "/coreos.com/network/config", value);
    assert_eq!(
        get_b64(&server, "/coreos.com/network/config").as_deref(),
        Some(base64(value.as_bytes()).as_str())
    );
    assert_eq!(get_b64(&server, "/coreos.com/network/missing"), None);

    let endpoint = server.endpoint();
    let pid = server.pid().expect("pid");
    server.stop();
    assert!(!server.is_running());
    assert!(!pid_alive(pid), "etcd pid {pid} still alive after stop");
    let err = TcpStream::connect(server.client_addr()).expect_err("port must refuse after stop");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    server.stop(); // idempotent

    server.restart().expect("restart etcd");
    eprintln!("plain etcd restarted in {:?}", server.last_startup());
    assert!(server.is_running());
    assert_eq!(server.endpoint(), endpoint);
    assert_eq!(
        get_b64(&server, "/coreos.com/network/config").as_deref(),
        Some(base64(value.as_bytes()).as_str())
    );

    // restart() on a running server stops it first.
    server.restart().expect("restart running etcd");
    assert_eq!(
        get_b64(&server, "/coreos.com/network/config").as_deref(),
        Some(base64(value.as_bytes()).as_str())
    );
    assert!(server.log_tail(20).len() < 1_000_000);
}

#[test]
fn tls_requires_right_ca_and_client_cert() {
    let server = EtcdServer::start_tls().expect("start etcd with TLS");
    eprintln!(
        "TLS etcd ready in {:?} at {}",
        server.last_startup(),
        server.endpoint()
    );
    assert!(server.is_tls());
    assert_eq!(
        server.endpoint(),
        format!("https://127.0.0.1:{}", server.client_port())
    );
    for file in [
        server.ca_file(),
        server.cert_file(),
        server.key_file(),
        server.wrong_ca_file(),
        server.wrong_cert_file(),
        server.wrong_key_file(),
        server.server_cert_file(),
        server.server_key_file(),
    ] {
        assert!(file.is_file(), "{} missing", file.display());
    }
    let health = format!("{}/health", server.endpoint());
    let client = Some((server.cert_file(), server.key_file()));

    let ok = curl_health(&health, server.ca_file(), client);
    assert!(
        ok.status.success(),
        "curl with the right CA failed: {}\netcd log:\n{}",
        String::from_utf8_lossy(&ok.stderr),
        server.log_tail(20)
    );
    let body = String::from_utf8_lossy(&ok.stdout);
    assert!(body.contains("\"health\":\"true\""), "body: {body}");

    // The server certificate is also valid for `localhost`.
    let port = server.client_port();
    let localhost = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--resolve"])
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(server.ca_file())
        .arg("--cert")
        .arg(server.cert_file())
        .arg("--key")
        .arg(server.key_file())
        .arg(format!("https://localhost:{port}/health"))
        .output()
        .expect("run curl");
    assert!(
        localhost.status.success(),
        "curl via localhost failed: {}",
        String::from_utf8_lossy(&localhost.stderr)
    );

    let wrong_ca = curl_health(&health, server.wrong_ca_file(), client);
    assert!(
        !wrong_ca.status.success(),
        "curl with the wrong CA succeeded"
    );

    let no_client_cert = curl_health(&health, server.ca_file(), None);
    assert!(
        !no_client_cert.status.success(),
        "curl without a client certificate succeeded"
    );

    let wrong_client = curl_health(
        &health,
        server.ca_file(),
        Some((server.wrong_cert_file(), server.wrong_key_file())),
    );
    assert!(
        !wrong_client.status.success(),
        "curl with a client certificate from the wrong CA succeeded"
    );

    let plain = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}/health"))
        .stderr(Stdio::null())
        .output()
        .expect("run curl");
    assert!(
        !plain.status.success(),
        "plain HTTP to the TLS port succeeded"
    );
}

#[test]
fn tls_server_restarts() {
    let mut server = EtcdServer::start_tls().expect("start etcd with TLS");
    server.stop();
    assert!(!server.is_running());
    server.restart().expect("restart TLS etcd");
    let health = format!("{}/health", server.endpoint());
    let ok = curl_health(
        &health,
        server.ca_file(),
        Some((server.cert_file(), server.key_file())),
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn parallel_servers_get_different_ports() {
    let handles: Vec<_> = (0..2)
        .map(|_| thread::spawn(|| EtcdServer::start().expect("start etcd")))
        .collect();
    let servers: Vec<EtcdServer> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let (a, b) = (&servers[0], &servers[1]);
    assert_ne!(a.endpoint(), b.endpoint());
    let ports_a = [a.client_port(), a.peer_port(), a.metrics_port()];
    let ports_b = [b.client_port(), b.peer_port(), b.metrics_port()];
    for port in ports_a {
        assert!(
            !ports_b.contains(&port),
            "port {port} shared: {ports_a:?} {ports_b:?}"
        );
    }
    assert_ne!(a.dir(), b.dir());

    // The two are independent clusters.
    put(a, "k", "from-a");
    put(b, "k", "from-b");
    assert_eq!(get_b64(a, "k"), Some(base64(b"from-a")));
    assert_eq!(get_b64(b, "k"), Some(base64(b"from-b")));
}

#[test]
fn drop_on_panic_kills_etcd_and_removes_dir() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = thread::spawn(move || {
        let server = EtcdServer::start().expect("start etcd");
        tx.send((server.pid().expect("pid"), server.dir().to_path_buf()))
            .expect("send");
        panic!("simulated test failure while etcd runs");
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    let (pid, dir) = rx.recv().expect("pid and dir");
    assert!(!pid_alive(pid), "etcd pid {pid} survived a panic");
    assert!(!dir.exists(), "{} survived a panic", dir.display());
}

/// Runs this test binary again, filtered to `test_name`, with `role` set.
fn run_child(test_name: &str, role: &str, extra_env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE_ENV, role);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("run child test process")
}

#[test]
fn missing_binary_names_the_debian_package() {
    if std::env::var_os(CHILD_ROLE_ENV).is_some_and(|r| r == "missing") {
        let err = EtcdServer::start().expect_err("start must fail without etcd");
        assert!(matches!(err, TestUtilError::EtcdMissing { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("etcd-server"), "{message}");
        assert!(message.contains("/nonexistent/etcd"), "{message}");
        let err = EtcdServer::start_tls().expect_err("start_tls must fail without etcd");
        assert!(err.to_string().contains("etcd-server"), "{err}");
        println!("CHILD-OK: {message}");
        return;
    }
    let out = run_child(
        "missing_binary_names_the_debian_package",
        "missing",
        &[(ETCD_BIN_ENV, "/nonexistent/etcd")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn watchdog_kills_etcd_when_the_test_process_aborts() {
    if std::env::var_os(CHILD_ROLE_ENV).is_some_and(|r| r == "abort") {
        let server = EtcdServer::start().expect("start etcd");
        println!("ETCD-PID {}", server.pid().expect("pid"));
        println!("ETCD-DIR {}", server.dir().display());
        std::io::stdout().flush().expect("flush");
        // No unwinding, no Drop: only the watchdog can clean up.
        std::process::abort();
    }
    let out = run_child(
        "watchdog_kills_etcd_when_the_test_process_aborts",
        "abort",
        &[],
    );
    assert!(!out.status.success(), "child should have aborted");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid: u32 = stdout
        .lines()
        .find_map(|l| l.split_once("ETCD-PID ").map(|(_, pid)| pid))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in child output: {stdout}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    // The orphaned etcd is reparented to init (or a subreaper), which reaps it.
    while pid_alive(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    // abort() skipped the TempDir cleanup; do it here.
    if let Some(dir) = stdout
        .lines()
        .find_map(|l| l.split_once("ETCD-DIR ").map(|(_, dir)| dir))
    {
        let _ = std::fs::remove_dir_all(dir.trim());
    }
    assert!(
        !pid_alive(pid),
        "etcd pid {pid} outlived its aborted test process"
    );
}

#[test]
fn early_exit_reports_the_log_tail() {
    if let Some(bin) = std::env::var_os(CHILD_ROLE_ENV).and_then(|r| {
        r.to_str()
            .and_then(|r| r.strip_prefix("fake:"))
            .map(str::to_owned)
    }) {
        assert_eq!(std::env::var(ETCD_BIN_ENV).as_deref(), Ok(bin.as_str()));
        let err = EtcdServer::start().expect_err("fake etcd exits at once");
        assert!(matches!(err, TestUtilError::Exited { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("fake etcd: boom"), "{message}");
        assert!(message.contains("exit status: 3"), "{message}");
        println!("CHILD-OK");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("fake-etcd");
    std::fs::write(&script, "#!/bin/sh\necho \"fake etcd: boom\" >&2\nexit 3\n").expect("write");
    let chmod = Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .expect("chmod");
    assert!(chmod.success());
    let script = script.to_str().expect("utf-8 path");
    let out = run_child(
        "early_exit_reports_the_log_tail",
        &format!("fake:{script}"),
        &[(ETCD_BIN_ENV, script)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn start_in_netns_serves_other_namespaces_over_a_link() {
    use flannel_testutil::netns::{NetNs, veth_pair};
    use std::net::{IpAddr, Ipv4Addr};

    let server_ns = NetNs::new("etcd-srv").expect("create the server namespace");
    let client_ns = NetNs::new("etcd-cli").expect("create the client namespace");
    veth_pair(&server_ns, "eth0", &client_ns, "eth0").expect("veth pair");
    server_ns
        .ip(&["addr", "add", "10.213.0.1/24", "dev", "eth0"])
        .expect("server address");
    client_ns
        .ip(&["addr", "add", "10.213.0.2/24", "dev", "eth0"])
        .expect("client address");

    let listen = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 1));
    let mut server = EtcdServer::start_in_netns(server_ns.name(), listen).expect("start etcd");
    eprintln!(
        "netns etcd ready in {:?} at {}",
        server.last_startup(),
        server.endpoint()
    );
    assert_eq!(server.netns(), Some(server_ns.name()));
    assert_eq!(server.listen_ip(), listen);
    assert!(!server.is_tls());
    assert_eq!(
        server.endpoint(),
        format!("http://10.213.0.1:{}", server.client_port())
    );
    assert_eq!(server.client_addr().ip(), listen);

    // etcd is not in our namespace: our loopback does not serve its port.
    let err = TcpStream::connect(("127.0.0.1", server.client_port()))
        .expect_err("etcd must not listen in the test's own namespace");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

    // Another namespace reaches it over the veth link.
    let value = "{\"Network\":\"10.244.0.0/16\"}";
    client_ns.run(|| put(&server, "/coreos.com/network/config", value));
    let got = client_ns.run(|| get_b64(&server, "/coreos.com/network/config"));
    assert_eq!(got, Some(base64(value.as_bytes())));

    // stop/restart keep the namespace, address, port and data.
    let pid = server.pid().expect("pid");
    server.stop();
    assert!(!pid_alive(pid), "etcd pid {pid} still alive after stop");
    server.restart().expect("restart etcd in the namespace");
    assert_eq!(server.netns(), Some(server_ns.name()));
    let got = client_ns.run(|| get_b64(&server, "/coreos.com/network/config"));
    assert_eq!(got, Some(base64(value.as_bytes())));

    // Drop kills it.
    let pid = server.pid().expect("pid");
    drop(server);
    assert!(!pid_alive(pid), "etcd pid {pid} survived drop");
}

#[test]
fn start_in_netns_reports_a_bad_address_or_namespace() {
    use flannel_testutil::netns::NetNs;
    use std::net::{IpAddr, Ipv4Addr};

    let ns = NetNs::new("etcd-bad").expect("create a namespace");
    // 10.213.9.9 is not configured in the namespace: etcd cannot bind it.
    let err = EtcdServer::start_in_netns(ns.name(), IpAddr::V4(Ipv4Addr::new(10, 213, 9, 9)))
        .expect_err("binding an address the namespace lacks must fail");
    assert!(matches!(err, TestUtilError::Exited { .. }), "{err:?}");
    assert!(err.to_string().contains("10.213.9.9"), "{err}");

    let err = EtcdServer::start_in_netns("flt-no-such-netns", IpAddr::V4(Ipv4Addr::LOCALHOST))
        .expect_err("a missing namespace must fail");
    assert!(matches!(err, TestUtilError::Exited { .. }), "{err:?}");
    assert!(err.to_string().contains("flt-no-such-netns"), "{err}");
}
