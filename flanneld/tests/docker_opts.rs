//! `dist/mk-docker-opts.sh` (which runs `flanneld mk-docker-opts`) on the
//! cases of Go flannel's own test of its script (`dist/mk_docker_opts_test.go`:
//! the same `sample_subnet.env`, flags and expected files), plus the cases
//! it documents without a test: `FLANNEL_IPMASQ=true` inverted, a bad
//! `FLANNEL_IPMASQ`, extra `DOCKER_OPT_*` variables, an existing combined
//! value, the usage text, and exit 1 when the routing table already has a
//! `via` route for the subnet (in a network namespace of its own: root and
//! `ip` needed).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flannel_testutil::netns::NetNs;

const BIN: &str = env!("CARGO_BIN_EXE_flanneld");

/// Go's `dist/sample_subnet.env`.
const SAMPLE: &str = "FLANNEL_NETWORK=10.1.0.0/16
FLANNEL_SUBNET=10.1.74.1/24
FLANNEL_MTU=1472
FLANNEL_IPMASQ=false
";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/mk-docker-opts.sh")
}

/// The script with `flanneld` found on PATH (as installed), an environment
/// free of the variables it reads, plus `env`.
fn command(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(script());
    for (k, _) in std::env::vars() {
        if k.starts_with("DOCKER_OPT") || k.starts_with("FLANNEL") {
            cmd.env_remove(k);
        }
    }
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path).envs(env.iter().copied());
    cmd
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(subnet_env: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("subnet.env"), subnet_env).unwrap();
        Case { dir }
    }
    fn input(&self) -> String {
        self.dir.path().join("subnet.env").display().to_string()
    }
    fn output_path(&self) -> PathBuf {
        self.dir.path().join("docker_opts.env")
    }
    /// Runs the script with `-f`/`-d` in the temp dir and `flags`.
    fn run(&self, flags: &[&str], env: &[(&str, &str)]) -> Output {
        let out = self.output_path();
        command(env)
            .args(["-f", &self.input(), "-d", out.to_str().unwrap()])
            .args(flags)
            .output()
            .expect("run dist/mk-docker-opts.sh")
    }
    fn output(&self) -> String {
        std::fs::read_to_string(self.output_path()).expect("the docker env file")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn go_test_cases_give_go_output() {
    let all = "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\n\
               DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
               DOCKER_OPT_MTU=\"--mtu=1472\"\n";
    let combined = "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n";
    let cases: [(&[&str], String); 5] = [
        (&[], format!("{all}{combined}")),
        (&["-i"], all.to_string()),
        (&["-c"], combined.to_string()),
        (
            &["-k", "CUSTOM_KEY"],
            format!("{all}CUSTOM_KEY=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"),
        ),
        (
            &["-m"],
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\n\
             DOCKER_OPT_MTU=\"--mtu=1472\"\n\
             DOCKER_OPTS=\" --bip=10.1.74.1/24 --mtu=1472\"\n"
                .to_string(),
        ),
    ];
    let case = Case::new(SAMPLE);
    for (flags, want) in cases {
        let out = case.run(flags, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{flags:?}: {}",
            text(&out.stderr)
        );
        // Byte for byte (Go's test compares ignoring blank lines and
        // trailing blanks; there are none here).
        assert_eq!(case.output(), want, "{flags:?}");
    }
}

#[test]
fn ip_masq_is_inverted_and_checked() {
    let case = Case::new("FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n");
    let out = case.run(&["-i"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        case.output()
            .contains("DOCKER_OPT_IPMASQ=\"--ip-masq=false\"\n"),
        "{}",
        case.output()
    );

    let case = Case::new("FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_IPMASQ=yes\n");
    let out = case.run(&[], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "Invalid value of FLANNEL_IPMASQ: yes\n");
    assert!(!case.output_path().exists(), "written despite the error");
    // -m skips the check, as in Go's script.
    assert_eq!(case.run(&["-m"], &[]).status.code(), Some(0));
}

/// Variables the script sees besides the file: other `DOCKER_OPT_*` ones go
/// into the output in name order, the combined variable keeps its value,
/// and the file's values win over the environment's.
#[test]
fn environment_variables() {
    let case = Case::new(SAMPLE);
    let out = case.run(
        &[],
        &[
            ("DOCKER_OPT_DNS", "--dns=10.1.0.10"),
            ("DOCKER_OPTS", "--debug"),
            ("FLANNEL_MTU", "9000"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        case.output(),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\n\
         DOCKER_OPT_DNS=\"--dns=10.1.0.10\"\n\
         DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
         DOCKER_OPT_MTU=\"--mtu=1472\"\n\
         DOCKER_OPTS=\"--debug  --bip=10.1.74.1/24 --dns=10.1.0.10 --ip-masq=true --mtu=1472\"\n"
    );
    // No flannel file: only the environment (an empty DOCKER_OPTS= line
    // when there is nothing at all, as Go's script writes).
    let out = command(&[])
        .args(["-f", "/nonexistent/subnet.env", "-d"])
        .arg(case.output_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(case.output(), "DOCKER_OPTS=\"\"\n");
}

#[test]
fn usage_goes_to_stderr_with_status_1() {
    for flags in [&["-h"][..], &["-?"], &["-z"], &["-f"]] {
        let out = command(&[]).args(flags).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{flags:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("Generate Docker daemon options based on flannel env file")
                && err.contains("\t-m\tDo not output --ip-masq (useful for older Docker version)"),
            "{flags:?}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
}

/// A `via` route for the subnet's network already in the table: the file
/// is written, then exit 1 naming the route (Go's message). A `dev` route
/// for it (Docker's own bridge) is fine.
#[test]
fn existing_via_route_for_the_subnet_fails() {
    let ns = NetNs::new("dockopt").expect("a network namespace (needs root and `ip`)");
    let tag = ns.name().chars().rev().take(6).collect::<String>();
    let (a, b) = (format!("dka{tag}"), format!("dkb{tag}"));
    ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])
        .expect("veth pair");
    ns.ip(&["addr", "add", "192.168.77.1/24", "dev", &a])
        .unwrap();
    ns.ip(&["link", "set", &a, "up"]).unwrap();
    ns.ip(&["link", "set", &b, "up"]).unwrap();
    ns.ip(&["route", "add", "10.1.75.0/24", "via", "192.168.77.2"])
        .expect("a via route");
    ns.ip(&["route", "add", "10.1.74.0/24", "dev", &a]).unwrap();

    let run_in_ns = |subnet: &str| {
        let case = Case::new(&format!("FLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1450\n"));
        let out = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(script())
            .args(["-f", &case.input(), "-d"])
            .arg(case.output_path())
            .env("FLANNELD", BIN)
            .output()
            .expect("ip netns exec");
        (case, out)
    };
    let (case, out) = run_in_ns("10.1.75.1/24");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "Your routing table already contains the subnet: 10.1.75.0/24 via 192.168.77.2 dev dka"
            .to_string()
            + &tag
            + "\n"
    );
    assert!(case.output().contains("--bip=10.1.75.1/24"));

    let (_case, out) = run_in_ns("10.1.74.1/24");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
