//! The built `flannel` binary against fake delegate plugins (shell scripts
//! that record what they were given). Needs no root.

use serde_json::{Value, json};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

struct Setup {
    dir: tempfile::TempDir,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Setup {
    /// A temp dir with `subnet.env`, `bin/<name>` fake plugins and a data dir.
    fn new(plugins: &[(&str, &str)]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("subnet.env"), SUBNET_ENV).unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        for (name, body) in plugins {
            let p = dir.path().join("bin").join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Setup { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self, extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"0.3.1","name":"cni-flannel","type":"flannel","subnetFile":"{}","dataDir":"{}"{extra}}}"#,
            self.path("subnet.env").display(),
            self.path("data").display()
        )
    }

    fn run(&self, command: &str, netns: &str, stdin: &str) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flannel"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "ctr-1.a_b")
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", "K8S_POD_NAME=p;IgnoreUnknown=1")
            .env(
                "CNI_PATH",
                format!("/nonexistent:{}", self.path("bin").display()),
            )
            .env("RECORD", self.path("record").display().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    fn record(&self, what: &str) -> Option<String> {
        std::fs::read_to_string(Path::new(&format!(
            "{}.{what}",
            self.path("record").display()
        )))
        .ok()
    }
}

/// A delegate that records its stdin and environment per command and prints
/// a 0.3.1 result on ADD.
const RECORDING_BRIDGE: &str = r#"cat > "$RECORD.stdin.$CNI_COMMAND"
env > "$RECORD.env.$CNI_COMMAND"
echo "bridge says hi" >&2
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{"cniVersion":"0.3.1","interfaces":[{"name":"cni0"}],"ips":[{"version":"4","address":"10.1.17.2/24","gateway":"10.1.17.1"}],"dns":{}}'
fi"#;

#[test]
fn add_then_del_through_the_delegate() {
    let s = Setup::new(&[("bridge", RECORDING_BRIDGE)]);
    let conf = s.config(r#","delegate":{"hairpinMode":true,"isDefaultGateway":true}"#);
    let add = s.run("ADD", "/nonexistent/netns", &conf);
    assert_eq!(add.code, 0, "{} {}", add.stdout, add.stderr);
    // the result is printed again, indented like Go's Result.Print
    assert_eq!(
        add.stdout,
        "{\n    \"cniVersion\": \"0.3.1\",\n    \"interfaces\": [\n        {\n            \"name\": \"cni0\"\n        }\n    ],\n    \"ips\": [\n        {\n            \"version\": \"4\",\n            \"address\": \"10.1.17.2/24\",\n            \"gateway\": \"10.1.17.1\"\n        }\n    ],\n    \"dns\": {}\n}"
    );
    assert!(add.stderr.contains("bridge says hi"), "{}", add.stderr);
    // the saved file is exactly what the delegate got
    let saved = std::fs::read_to_string(s.path("data/ctr-1.a_b")).unwrap();
    assert_eq!(
        saved,
        r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
    );
    assert_eq!(s.record("stdin.ADD").unwrap(), saved);
    let mode = std::fs::metadata(s.path("data/ctr-1.a_b"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // the delegate sees our environment, CNI_COMMAND set for it
    let env = s.record("env.ADD").unwrap();
    for line in [
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=ctr-1.a_b",
        "CNI_NETNS=/nonexistent/netns",
        "CNI_IFNAME=eth0",
        "CNI_ARGS=K8S_POD_NAME=p;IgnoreUnknown=1",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in {env}");
    }

    // DEL needs neither subnet.env nor the original delegate settings
    std::fs::remove_file(s.path("subnet.env")).unwrap();
    let del = s.run("DEL", "", &s.config(""));
    assert_eq!((del.code, del.stdout.as_str()), (0, ""), "{}", del.stderr);
    assert_eq!(s.record("stdin.DEL").unwrap(), saved);
    assert!(
        s.record("env.DEL")
            .unwrap()
            .lines()
            .any(|l| l == "CNI_COMMAND=DEL")
    );
    assert!(!s.path("data/ctr-1.a_b").exists());

    // a second DEL does not call the delegate and succeeds
    std::fs::remove_file(format!("{}.stdin.DEL", s.path("record").display())).unwrap();
    let again = s.run("DEL", "", &s.config(""));
    assert_eq!((again.code, again.stdout.as_str()), (0, ""));
    assert!(s.record("stdin.DEL").is_none());

    // CHECK is a no-op success
    let check = s.run(
        "CHECK",
        "/nonexistent/netns",
        &s.config("").replace("0.3.1", "0.4.0"),
    );
    assert_eq!((check.code, check.stdout.as_str()), (0, ""));
}

#[test]
fn delegate_errors_pass_through_unchanged() {
    let s = Setup::new(&[
        (
            "bridge",
            r#"printf '{"cniVersion":"0.3.1","code":11,"msg":"try again <later>","details":"busy"}'; exit 1"#,
        ),
        ("silent", "echo 'went wrong' >&2; exit 3"),
        ("mute", "exit 3"),
    ]);
    let out = s.run("ADD", "/nonexistent", &s.config(""));
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stdout,
        "{\n    \"code\": 11,\n    \"msg\": \"try again \\u003clater\\u003e\",\n    \"details\": \"busy\"\n}"
    );
    // the file stays so that DEL can clean up
    assert!(s.path("data/ctr-1.a_b").exists());

    let out = s.run(
        "ADD",
        "/nonexistent",
        &s.config(r#","delegate":{"type":"silent"}"#),
    );
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v,
        json!({"code": 0, "msg": "netplugin failed: \"went wrong\\n\""})
    );
    let out = s.run(
        "ADD",
        "/nonexistent",
        &s.config(r#","delegate":{"type":"mute"}"#),
    );
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v,
        json!({"code": 0, "msg": "netplugin failed with no error message: exit status 3"})
    );
    let out = s.run(
        "ADD",
        "/nonexistent",
        &s.config(r#","delegate":{"type":"macvlan"}"#),
    );
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v,
        json!({"code": 999, "msg": format!("failed to delegate add: failed to find plugin \"macvlan\" in path [/nonexistent {}]", s.path("bin").display())})
    );

    // DEL reports the delegate's error unchanged and keeps the file, so
    // the runtime's retry reaches the delegate again
    assert_eq!(s.run("ADD", "/nonexistent", &s.config("")).code, 1);
    let saved = std::fs::read(s.path("data/ctr-1.a_b")).unwrap();
    for _ in 0..2 {
        let del = s.run("DEL", "", &s.config(""));
        assert_eq!(del.code, 1);
        assert!(del.stdout.contains("\"code\": 11"), "{}", del.stdout);
        assert_eq!(std::fs::read(s.path("data/ctr-1.a_b")).unwrap(), saved);
    }
}

/// A delegate whose first DEL fails (a CNI error on stdout, as a real
/// plugin reports one) and whose later DELs succeed, counting its calls.
const BRIDGE_FAILING_FIRST_DEL: &str = r#"cat > "$RECORD.stdin.$CNI_COMMAND"
echo x >> "$RECORD.calls.$CNI_COMMAND"
if [ "$CNI_COMMAND" = DEL ] && [ "$(wc -l < "$RECORD.calls.DEL")" -eq 1 ]; then
  printf '{"cniVersion":"0.3.1","code":11,"msg":"device busy, try again"}'
  exit 1
fi
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{"cniVersion":"0.3.1","ips":[],"dns":{}}'
fi"#;

#[test]
fn a_failed_del_keeps_the_saved_config_until_a_retry_succeeds() {
    let s = Setup::new(&[("bridge", BRIDGE_FAILING_FIRST_DEL)]);
    let add = s.run("ADD", "/nonexistent/netns", &s.config(""));
    assert_eq!(add.code, 0, "{} {}", add.stdout, add.stderr);
    let saved = std::fs::read_to_string(s.path("data/ctr-1.a_b")).unwrap();

    let first = s.run("DEL", "", &s.config(""));
    assert_eq!(first.code, 1, "the first DEL must fail: {}", first.stdout);
    let v: Value = serde_json::from_str(&first.stdout).unwrap();
    assert_eq!(v, json!({"code": 11, "msg": "device busy, try again"}));
    assert_eq!(
        std::fs::read_to_string(s.path("data/ctr-1.a_b")).unwrap(),
        saved,
        "the saved config must survive a failed DEL"
    );

    // the retry gives the delegate the same config, and only its success
    // removes the file
    let retry = s.run("DEL", "", &s.config(""));
    assert_eq!(
        (retry.code, retry.stdout.as_str()),
        (0, ""),
        "{}",
        retry.stderr
    );
    assert_eq!(s.record("stdin.DEL").unwrap(), saved);
    assert_eq!(s.record("calls.DEL").unwrap().lines().count(), 2);
    assert!(!s.path("data/ctr-1.a_b").exists());

    // idempotent: a third DEL succeeds without calling the delegate
    let again = s.run("DEL", "", &s.config(""));
    assert_eq!((again.code, again.stdout.as_str()), (0, ""));
    assert_eq!(s.record("calls.DEL").unwrap().lines().count(), 2);
}

#[test]
fn result_without_version_gets_the_config_version() {
    let s = Setup::new(&[("bridge", r#"cat >/dev/null; printf '{"ips":[],"dns":{}}'"#)]);
    let out = s.run("ADD", "/nonexistent", &s.config(""));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(
        out.stdout,
        "{\n    \"cniVersion\": \"0.3.1\",\n    \"ips\": [],\n    \"dns\": {}\n}"
    );
    let s = Setup::new(&[("bridge", "cat >/dev/null; printf 'not json'")]);
    let out = s.run("ADD", "/nonexistent", &s.config(""));
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v["msg"],
        json!(
            "failed to delegate add: failed to unmarshal raw result: invalid character 'o' in literal null (expecting 'u') result not json"
        )
    );
    assert_eq!(v["code"], json!(999));
}

#[test]
fn own_netns_is_refused_after_the_result() {
    let s = Setup::new(&[("bridge", RECORDING_BRIDGE)]);
    let out = s.run("ADD", "/proc/self/ns/net", &s.config(""));
    assert_eq!(out.code, 1);
    let (result, error) = out.stdout.split_at(out.stdout.find("}{").unwrap() + 1);
    assert!(result.contains("10.1.17.2/24"));
    assert_eq!(
        error,
        "{\n    \"code\": 8,\n    \"msg\": \"plugin's netns and netns from CNI_NETNS should not be the same\"\n}"
    );
}

#[test]
fn version_and_about() {
    let s = Setup::new(&[]);
    let v = s.run("VERSION", "", "");
    assert_eq!(v.code, 0);
    let parsed: Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(
        parsed,
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    let about = s.run("", "", "");
    assert_eq!((about.code, about.stdout.as_str()), (0, ""));
    assert!(about.stderr.contains(
        "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
    ));
}
