//! Command-line and `FLANNELD_*` environment parsing of flanneld, checked
//! against Go flanneld's flags (behaviour reference §6.1, §6.2).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command as Process, Output};

use flanneld::cli::{
    CliError, Command, Options, RENEW_MARGIN_ERROR, SubnetManagerKind, parse_command_from,
    parse_from,
};

const BIN: &str = env!("CARGO_BIN_EXE_flanneld");

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(args: &[&str]) -> Result<Options, CliError> {
    parse_from(
        std::iter::once("flanneld").chain(args.iter().copied()),
        &no_env,
    )
}

fn parse_ok(args: &[&str]) -> Options {
    parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn parse_env(args: &[&str], env: &[(&str, &str)]) -> Result<Options, CliError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse_from(
        std::iter::once("flanneld").chain(args.iter().copied()),
        &move |k: &str| env.get(k).cloned(),
    )
}

fn invalid(r: Result<Options, CliError>) -> String {
    match r {
        Err(CliError::Invalid(msg)) => msg,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// Runs the binary with a clean `FLANNELD_*`-free environment.
fn run(args: &[&str]) -> Output {
    let mut cmd = Process::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("FLANNELD_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run flanneld")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

type Get = fn(&Options) -> String;
type GetBool = fn(&Options) -> bool;

/// Every value-taking flag, a sample value, and how to read it back.
const VALUE_FLAGS: &[(&str, &str, Get)] = &[
    ("etcd-endpoints", "http://e1:2379,http://e2:2379", |o| {
        o.etcd_endpoints.clone()
    }),
    ("etcd-prefix", "/my/net", |o| o.etcd_prefix.clone()),
    ("etcd-keyfile", "/k.pem", |o| o.etcd_keyfile.clone()),
    ("etcd-certfile", "/c.pem", |o| o.etcd_certfile.clone()),
    ("etcd-cafile", "/ca.pem", |o| o.etcd_cafile.clone()),
    ("etcd-username", "root", |o| o.etcd_username.clone()),
    ("etcd-password", "hunter2", |o| o.etcd_password.clone()),
    ("iface", "eth1", |o| o.iface.join("|")),
    ("iface-regex", "^en.*", |o| o.iface_regex.join("|")),
    ("iface-can-reach", "10.0.0.1", |o| o.iface_can_reach.clone()),
    ("subnet-file", "/tmp/s.env", |o| {
        o.subnet_file.display().to_string()
    }),
    ("public-ip", "192.0.2.1", |o| o.public_ip.clone()),
    ("public-ipv6", "2001:db8::1", |o| o.public_ipv6.clone()),
    ("subnet-lease-renew-margin", "30", |o| {
        o.subnet_lease_renew_margin.to_string()
    }),
    ("kube-api-url", "https://k:6443", |o| o.kube_api_url.clone()),
    ("kube-annotation-prefix", "example.com", |o| {
        o.kube_annotation_prefix.clone()
    }),
    ("kubeconfig-file", "/kc", |o| o.kubeconfig_file.clone()),
    ("healthz-ip", "127.0.0.1", |o| o.healthz_ip.clone()),
    ("healthz-port", "8471", |o| o.healthz_port.to_string()),
    ("iptables-resync", "17", |o| o.iptables_resync.to_string()),
    ("net-config-path", "/n.json", |o| {
        o.net_config_path.display().to_string()
    }),
    ("v", "4", |o| o.v.to_string()),
    ("vmodule", "main=3,foo*=1", |o| o.vmodule.clone()),
    ("log_backtrace_at", "main.go:42", |o| {
        o.log_backtrace_at.clone()
    }),
    ("local-store-dir", "/var/lib/fl", |o| {
        o.local_store_dir.display().to_string()
    }),
    ("subnet-manager", "kube", |o| {
        format!("{:?}", o.subnet_manager).to_lowercase()
    }),
];

/// Every boolean flag, its Go default, and how to read it back.
const BOOL_FLAGS: &[(&str, bool, GetBool)] = &[
    ("ip-masq", false, |o| o.ip_masq),
    ("ip-masq-fully-random-disable", false, |o| {
        o.ip_masq_fully_random_disable
    }),
    ("kube-subnet-mgr", false, |o| o.kube_subnet_mgr),
    ("iptables-forward-rules", true, |o| o.iptables_forward_rules),
    ("ip-blackhole-route", false, |o| o.ip_blackhole_route),
    ("set-node-network-unavailable", true, |o| {
        o.set_node_network_unavailable
    }),
];

#[test]
fn defaults_are_gos() {
    let o = parse_ok(&[]);
    assert_eq!(o, Options::default());
    assert_eq!(
        o.etcd_endpoints,
        "http://127.0.0.1:4001,http://127.0.0.1:2379"
    );
    assert_eq!(
        o.etcd_endpoint_list(),
        ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    );
    assert_eq!(o.etcd_prefix, "/coreos.com/network");
    for s in [
        &o.etcd_keyfile,
        &o.etcd_certfile,
        &o.etcd_cafile,
        &o.etcd_username,
        &o.etcd_password,
        &o.iface_can_reach,
        &o.public_ip,
        &o.public_ipv6,
        &o.kube_api_url,
        &o.kubeconfig_file,
        &o.vmodule,
        &o.log_backtrace_at,
    ] {
        assert_eq!(s, "");
    }
    assert!(o.iface.is_empty() && o.iface_regex.is_empty());
    assert_eq!(o.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
    assert_eq!(o.subnet_lease_renew_margin, 60);
    assert!(!o.ip_masq && !o.ip_masq_fully_random_disable && !o.kube_subnet_mgr);
    assert_eq!(o.kube_annotation_prefix, "flannel.alpha.coreos.com");
    assert!(!o.version);
    assert_eq!(o.healthz_ip, "0.0.0.0");
    assert_eq!(o.healthz_port, 0);
    assert_eq!(o.iptables_resync, 5);
    assert!(o.iptables_forward_rules);
    assert!(!o.ip_blackhole_route);
    assert_eq!(
        o.net_config_path,
        PathBuf::from("/etc/kube-flannel/net-conf.json")
    );
    assert!(o.set_node_network_unavailable);
    assert_eq!(o.v, 0);
    assert_eq!(o.local_store_dir, PathBuf::from("/run/flannel/local-store"));
    // Drop-in: no datastore flag means etcd at Go's default endpoints.
    assert_eq!(o.subnet_manager, SubnetManagerKind::Etcd);
    assert_eq!(
        o.etcd_endpoint_list(),
        ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    );
}

#[test]
fn every_value_flag_in_all_four_forms() {
    for &(name, value, get) in VALUE_FLAGS {
        for dashes in ["-", "--"] {
            let joined = format!("{dashes}{name}={value}");
            let flag = format!("{dashes}{name}");
            for args in [vec![joined.as_str()], vec![flag.as_str(), value]] {
                assert_eq!(get(&parse_ok(&args)), value, "{args:?}");
            }
        }
    }
}

#[test]
fn every_bool_flag_forms() {
    let truths = ["1", "t", "T", "TRUE", "true", "True"];
    let falses = ["0", "f", "F", "FALSE", "false", "False"];
    for &(name, default, get) in BOOL_FLAGS {
        assert_eq!(get(&parse_ok(&[])), default, "{name}");
        for dashes in ["-", "--"] {
            assert!(get(&parse_ok(&[&format!("{dashes}{name}")])), "{name}");
            for (words, want) in [(truths, true), (falses, false)] {
                for w in words {
                    let arg = format!("{dashes}{name}={w}");
                    assert_eq!(get(&parse_ok(&[&arg])), want, "{arg}");
                }
            }
            // A bool never consumes the next argument.
            let flag = format!("{dashes}{name}");
            let msg = invalid(parse(&[&flag, "false"]));
            assert!(msg.contains("'false'"), "{msg}");
            // Not Go booleans.
            for bad in ["yes", "", "on", "2"] {
                let arg = format!("{dashes}{name}={bad}");
                let msg = invalid(parse(&[&arg]));
                assert!(msg.contains(name), "{msg}");
            }
        }
    }
    // The space form leaves `false` as a stray argument: an error, not `false`.
    assert!(parse(&["-ip-masq", "false"]).is_err());
    assert!(!parse_ok(&["-iptables-forward-rules=false"]).iptables_forward_rules);
    assert!(!parse_ok(&["--set-node-network-unavailable=false"]).set_node_network_unavailable);
}

#[test]
fn values_may_start_with_a_dash_and_contain_equals() {
    assert_eq!(parse_ok(&["-etcd-prefix", "-x"]).etcd_prefix, "-x");
    assert_eq!(parse_ok(&["--etcd-prefix", "--x"]).etcd_prefix, "--x");
    assert_eq!(parse_ok(&["--etcd-prefix=a=b"]).etcd_prefix, "a=b");
    assert_eq!(parse_ok(&["--etcd-prefix="]).etcd_prefix, "");
    assert_eq!(parse_ok(&["-v", "-1"]).v, -1);
    assert_eq!(parse_ok(&["-healthz-port", "-5"]).healthz_port, -5);
}

#[test]
fn go_integer_syntax() {
    assert_eq!(parse_ok(&["--healthz-port=0x1f"]).healthz_port, 31);
    assert_eq!(parse_ok(&["--healthz-port=017"]).healthz_port, 15);
    assert_eq!(parse_ok(&["--iptables-resync=1_000"]).iptables_resync, 1000);
    assert!(parse(&["--v=0x1"]).is_err(), "klog -v is base 10");
}

#[test]
fn last_value_wins_and_repeatables_keep_order() {
    assert_eq!(
        parse_ok(&["-etcd-prefix=/a", "--etcd-prefix", "/b"]).etcd_prefix,
        "/b"
    );
    assert!(!parse_ok(&["-ip-masq", "-ip-masq=false"]).ip_masq);
    let o = parse_ok(&[
        "--iface",
        "a",
        "-iface=b",
        "--iface",
        "c",
        "--iface-regex=x",
        "-iface-regex",
        "y",
    ]);
    assert_eq!(o.iface, ["a", "b", "c"]);
    assert_eq!(o.iface_regex, ["x", "y"]);
}

#[test]
fn stray_arguments_and_bad_syntax_are_errors() {
    for args in [
        &["extra"][..],
        &["-ip-masq", "x"],
        &["---ip-masq"],
        &["-=x"],
        &["-"],
        &["--", "x"],
    ] {
        assert!(parse(args).is_err(), "{args:?}");
    }
    // `--` alone ends the flags, as in Go.
    assert_eq!(parse_ok(&["-v=3", "--"]).v, 3);
    // A value flag at the end with no value.
    assert!(invalid(parse(&["--etcd-prefix"])).contains("etcd-prefix"));
}

#[test]
fn bad_values_name_flag_and_value() {
    let msg = invalid(parse(&["--healthz-port=abc"]));
    assert!(msg.contains("healthz-port") && msg.contains("abc"), "{msg}");
    let msg = invalid(parse(&["-iptables-resync", "5s"]));
    assert!(
        msg.contains("iptables-resync") && msg.contains("5s"),
        "{msg}"
    );
    let msg = invalid(parse(&["--subnet-manager=consul"]));
    assert!(
        msg.contains("subnet-manager") && msg.contains("consul"),
        "{msg}"
    );
    let msg = invalid(parse(&["-vmodule=foo"]));
    assert!(
        msg.contains("vmodule") && msg.contains("filename=N"),
        "{msg}"
    );
    let msg = invalid(parse(&["-log_backtrace_at=main:1"]));
    assert!(msg.contains("log_backtrace_at"), "{msg}");
    let msg = invalid(parse(&["--no-such-flag"]));
    assert!(msg.contains("no-such-flag"), "{msg}");
}

#[test]
fn renew_margin_range() {
    for m in ["0", "1440", "-1"] {
        let arg = format!("--subnet-lease-renew-margin={m}");
        let msg = invalid(parse(&[&arg]));
        assert!(msg.contains(RENEW_MARGIN_ERROR), "{msg}");
        assert!(
            msg.contains("Invalid subnet-lease-renew-margin option, out of acceptable range"),
            "{msg}"
        );
    }
    assert_eq!(
        parse_ok(&["--subnet-lease-renew-margin=1"]).subnet_lease_renew_margin,
        1
    );
    assert_eq!(
        parse_ok(&["--subnet-lease-renew-margin=1439"]).subnet_lease_renew_margin,
        1439
    );
    // Also when it comes from the environment.
    let msg = invalid(parse_env(
        &[],
        &[("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "1440")],
    ));
    assert!(msg.contains(RENEW_MARGIN_ERROR), "{msg}");
}

#[test]
fn environment_mapping() {
    let o = parse_env(
        &[],
        &[
            ("FLANNELD_ETCD_ENDPOINTS", "http://e:2379"),
            ("FLANNELD_IFACE", "eth0,eth1"),
            ("FLANNELD_IFACE_CAN_REACH", "8.8.8.8"),
            ("FLANNELD_IP_MASQ", "true"),
            ("FLANNELD_IPTABLES_FORWARD_RULES", "false"),
            ("FLANNELD_V", "5"),
            ("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "10"),
            ("FLANNELD_KUBECONFIG_FILE", "/kc"),
            ("FLANNELD_LOCAL_STORE_DIR", "/ls"),
            ("FLANNELD_LOG_BACKTRACE_AT", "a.go:1"),
        ],
    )
    .unwrap();
    assert_eq!(o.etcd_endpoints, "http://e:2379");
    assert_eq!(o.iface, ["eth0,eth1"], "one element, no comma split");
    assert_eq!(o.iface_can_reach, "8.8.8.8");
    assert!(o.ip_masq);
    assert!(!o.iptables_forward_rules);
    assert_eq!(o.v, 5);
    assert_eq!(o.subnet_lease_renew_margin, 10);
    assert_eq!(o.kubeconfig_file, "/kc");
    assert_eq!(o.local_store_dir, PathBuf::from("/ls"));
    assert_eq!(o.log_backtrace_at, "a.go:1");
    assert_eq!(o.subnet_manager, SubnetManagerKind::Etcd);
}

#[test]
fn command_line_beats_environment() {
    let env = [
        ("FLANNELD_ETCD_PREFIX", "/env"),
        ("FLANNELD_IFACE", "env0"),
        ("FLANNELD_IP_MASQ", "true"),
        ("FLANNELD_HEALTHZ_PORT", "1"),
    ];
    let o = parse_env(
        &[
            "-etcd-prefix=/cli",
            "--iface",
            "cli0",
            "-ip-masq=false",
            "-healthz-port",
            "2",
        ],
        &env,
    )
    .unwrap();
    assert_eq!(o.etcd_prefix, "/cli");
    assert_eq!(o.iface, ["cli0"]);
    assert!(!o.ip_masq);
    assert_eq!(o.healthz_port, 2);
    // Even a bad env value is not looked at when the flag is on the command line.
    let o = parse_env(&["--healthz-port=3"], &[("FLANNELD_HEALTHZ_PORT", "abc")]).unwrap();
    assert_eq!(o.healthz_port, 3);
}

#[test]
fn empty_environment_values_are_ignored() {
    let o = parse_env(
        &[],
        &[
            ("FLANNELD_ETCD_PREFIX", ""),
            ("FLANNELD_IFACE", ""),
            ("FLANNELD_HEALTHZ_PORT", ""),
            ("FLANNELD_IPTABLES_FORWARD_RULES", ""),
        ],
    )
    .unwrap();
    assert_eq!(o, Options::default());
    assert_eq!(o.subnet_manager, SubnetManagerKind::Etcd);
}

#[test]
fn bad_environment_value_names_the_variable() {
    let msg = invalid(parse_env(&[], &[("FLANNELD_HEALTHZ_PORT", "abc")]));
    assert!(
        msg.contains("FLANNELD_HEALTHZ_PORT") && msg.contains("abc"),
        "{msg}"
    );
    let msg = invalid(parse_env(&[], &[("FLANNELD_IP_MASQ", "yes")]));
    assert!(
        msg.contains("FLANNELD_IP_MASQ") && msg.contains("yes"),
        "{msg}"
    );
}

#[test]
fn version_and_help_flags() {
    let version = flanneld::version::text();
    assert_eq!(
        parse(&["-version"]),
        Err(CliError::Version(version.clone()))
    );
    assert_eq!(parse(&["--version=true"]), Err(CliError::Version(version)));
    assert!(!parse_ok(&["--version=false"]).version);
    // FLANNELD_VERSION has no effect.
    assert!(parse_env(&[], &[("FLANNELD_VERSION", "true")]).is_ok());
    for h in ["-h", "--h", "-help", "--help"] {
        match parse(&[h]) {
            Err(CliError::Help(t)) => assert!(t.contains("Usage:"), "{t}"),
            other => panic!("{h}: {other:?}"),
        }
    }
}

#[test]
fn subnet_manager_selection() {
    let sm = |args: &[&str], env: &[(&str, &str)]| parse_env(args, env).unwrap().subnet_manager;
    use SubnetManagerKind::*;
    assert_eq!(sm(&[], &[]), Etcd);
    assert_eq!(sm(&["--kube-subnet-mgr"], &[]), Kube);
    assert_eq!(sm(&[], &[("FLANNELD_KUBE_SUBNET_MGR", "true")]), Kube);
    assert_eq!(sm(&["--kube-subnet-mgr=false"], &[]), Etcd);
    assert_eq!(sm(&["--subnet-manager=local"], &[]), Local);
    assert_eq!(sm(&[], &[("FLANNELD_SUBNET_MANAGER", "local")]), Local);
    assert_eq!(sm(&["-etcd-endpoints=http://x:2379"], &[]), Etcd);
    assert_eq!(sm(&["-etcd-password", "p"], &[]), Etcd);
    assert_eq!(sm(&[], &[("FLANNELD_ETCD_PREFIX", "/p")]), Etcd);
    assert_eq!(sm(&["-etcd-prefix=/p", "--kube-subnet-mgr"], &[]), Kube);
    assert_eq!(
        sm(&["-etcd-prefix=/p", "--subnet-manager=local"], &[]),
        Local
    );
    assert_eq!(sm(&[], &[("FLANNELD_SUBNET_MANAGER", "etcd")]), Etcd);
    assert_eq!(
        sm(&["--kube-subnet-mgr", "--subnet-manager=kube"], &[]),
        Kube
    );
    let msg = invalid(parse(&["--kube-subnet-mgr", "--subnet-manager=etcd"]));
    assert!(msg.contains("conflicts"), "{msg}");
}

#[test]
fn debug_never_prints_the_password() {
    let o = parse_ok(&["--etcd-password=s3cr3t-pw", "--etcd-username=alice"]);
    for text in [format!("{o:?}"), format!("{o:#?}")] {
        assert!(!text.contains("s3cr3t-pw"), "{text}");
        assert!(text.contains("***") && text.contains("alice"), "{text}");
    }
    assert!(!format!("{:?}", parse_ok(&[])).contains("***"));
}

#[test]
fn config_subcommand_only_first() {
    let cmd = |args: &[&str]| {
        parse_command_from(
            std::iter::once("flanneld").chain(args.iter().copied()),
            &no_env,
        )
    };
    assert_eq!(
        cmd(&["config", "check", "/etc/kube-flannel/net-conf.json"]),
        Ok(Command::ConfigCheck(PathBuf::from(
            "/etc/kube-flannel/net-conf.json"
        )))
    );
    assert!(matches!(cmd(&["-v=1"]), Ok(Command::Run(o)) if o.v == 1));
    assert!(matches!(cmd(&["config"]), Err(CliError::Invalid(_))));
    assert!(matches!(
        cmd(&["config", "check"]),
        Err(CliError::Invalid(_))
    ));
    assert!(matches!(
        cmd(&["config", "check", "a", "b"]),
        Err(CliError::Invalid(_))
    ));
    assert!(matches!(
        cmd(&["-v=1", "config", "check", "f"]),
        Err(CliError::Invalid(_))
    ));
    assert!(matches!(cmd(&["config", "--help"]), Err(CliError::Help(_))));
}

// ---- process level ----------------------------------------------------------

#[test]
fn process_prints_options_with_password_masked() {
    // The daemon logs its options at start, then waits for a network config
    // that never comes (an empty local store) until SIGTERM ends it cleanly.
    let store = std::env::temp_dir().join(format!("flanneld-cli-{}", std::process::id()));
    let child = Process::new(BIN)
        .args([
            "-ip-masq",
            "--etcd-password=topsecret",
            "-iface",
            "eth9",
            "--subnet-manager=local",
        ])
        .arg(format!("--local-store-dir={}", store.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn flanneld");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let term = Process::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let out = child.wait_with_output().expect("wait");
    let _ = std::fs::remove_dir_all(&store);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(" --ip-masq=true "), "{stderr}");
    assert!(stderr.contains(" --iface=eth9 "), "{stderr}");
    assert!(stderr.contains(" --etcd-password=*** "), "{stderr}");
    assert!(stderr.contains("Couldn't fetch network config"), "{stderr}");
    assert!(stderr.contains("Exiting cleanly"), "{stderr}");
    assert!(!stderr.contains("topsecret") && !text(&out.stdout).contains("topsecret"));
}

#[test]
fn process_bad_value_exits_2() {
    let out = run(&["--healthz-port=abc"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("healthz-port") && err.contains("abc"), "{err}");
}

#[test]
fn process_unknown_flag_exits_2() {
    for flag in ["--bogus-flag", "-bogus-flag", "-bogus-flag=1"] {
        let out = run(&[flag]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let err = text(&out.stderr);
        assert!(err.contains("bogus-flag"), "{err}");
    }
}

#[test]
fn process_bad_env_exits_2() {
    let out = Process::new(BIN)
        .env("FLANNELD_IPTABLES_RESYNC", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("FLANNELD_IPTABLES_RESYNC") && err.contains("soon"),
        "{err}"
    );
}

#[test]
fn process_help_lists_every_flag() {
    for h in ["--help", "-help", "-h"] {
        let out = run(&[h]);
        assert_eq!(out.status.code(), Some(0), "{h}");
        let help = text(&out.stdout);
        assert!(help.contains("Usage:"), "{help}");
        let names = VALUE_FLAGS
            .iter()
            .map(|f| f.0)
            .chain(BOOL_FLAGS.iter().map(|f| f.0))
            .chain(["version", "help"]);
        for name in names {
            assert!(
                help.contains(&format!("--{name}")),
                "{name} missing:\n{help}"
            );
        }
        assert!(help.contains("FLANNELD_"), "{help}");
        assert!(help.contains("config check"), "{help}");
    }
}

#[test]
fn process_version() {
    for v in ["--version", "-version"] {
        let out = run(&[v]);
        assert_eq!(out.status.code(), Some(0));
        let stdout = text(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 4, "{stdout}");
        assert_eq!(
            lines[0],
            format!("flanneld {}", env!("CARGO_PKG_VERSION")),
            "{stdout}"
        );
        // The commit git reports for this checkout (or `unknown` without git).
        let commit = lines[1].strip_prefix("git commit: ").expect(&stdout);
        assert!(
            commit == "unknown"
                || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{stdout}"
        );
        // The default build carries every backend and subnet manager that
        // exists as a feature of this crate.
        let backends = lines[2].strip_prefix("backends: ").expect(&stdout);
        let all: Vec<&str> = flanneld::backends::FEATURES.iter().map(|f| f.0).collect();
        assert_eq!(backends.split(' ').collect::<Vec<_>>(), all, "{stdout}");
        let managers = lines[3].strip_prefix("subnet managers: ").expect(&stdout);
        assert!(managers.starts_with("etcd local"), "{stdout}");
    }
}

#[test]
fn process_renew_margin_error() {
    for m in ["0", "1440"] {
        let out = run(&["-subnet-lease-renew-margin", m]);
        assert_ne!(out.status.code(), Some(0));
        assert!(text(&out.stderr).contains(RENEW_MARGIN_ERROR));
    }
}

#[test]
fn process_config_check() {
    let dir = std::env::temp_dir().join(format!("flanneld-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#,
    )
    .unwrap();
    let out = run(&["config", "check", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    assert!(json.contains(r#""SubnetLen":24"#), "{json}");
    assert!(json.contains(r#""Network":"10.244.0.0/16""#), "{json}");

    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"Network": "10.244.0.0/29"}"#).unwrap();
    let out = run(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("network is too small. Minimum useful network prefix is /28"),
        "{err}"
    );
    assert!(
        err.starts_with("error: ") && err.contains("bad.json"),
        "{err}"
    );

    let missing = dir.join("missing.json");
    let out = run(&["config", "check", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("missing.json"));

    let out = run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));

    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs the binary inside a fresh network namespace (so nothing listens on
/// 127.0.0.1:2379 or :4001 whatever else runs on this machine), with a
/// clean `FLANNELD_*`/`RUST_LOG`-free environment plus `env`, sends SIGTERM
/// after `wait`, and returns its output.
fn run_until_sigterm(args: &[&str], env: &[(&str, &str)], wait: std::time::Duration) -> Output {
    let ns = flannel_testutil::netns::NetNs::new("cli")
        .expect("a network namespace for flanneld (needs root and `ip`)");
    let mut cmd = Process::new("ip");
    // `ip netns exec` execs flanneld, so the child's pid is flanneld's.
    cmd.args(["netns", "exec", ns.name(), BIN]).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("FLANNELD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn flanneld");
    std::thread::sleep(wait);
    let term = Process::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success(), "flanneld exited before SIGTERM");
    child.wait_with_output().expect("wait")
}

#[test]
fn process_defaults_to_etcd_at_go_endpoints_and_stops_on_sigterm() {
    let out = run_until_sigterm(&[], &[], std::time::Duration::from_millis(1500));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("using etcd at http://127.0.0.1:4001,http://127.0.0.1:2379"),
        "{stderr}"
    );
    assert!(
        stderr.contains("waiting for etcd at http://127.0.0.1:4001,http://127.0.0.1:2379"),
        "{stderr}"
    );
    assert!(!stderr.contains("local store"), "{stderr}");
    assert!(stderr.contains("Exiting cleanly"), "{stderr}");
}

#[test]
fn process_warns_once_about_each_ignored_klog_flag() {
    // Long enough for several etcd connection attempts: the warnings belong
    // to the start, not to each attempt.
    let out = run_until_sigterm(
        &["-vmodule=x=1", "-log_backtrace_at=main.go:12"],
        &[],
        std::time::Duration::from_millis(2000),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.matches("waiting for etcd").count() >= 2, "{stderr}");
    for flag in ["-vmodule ", "-log_backtrace_at "] {
        let warning =
            format!("flag {flag}is accepted for compatibility with Go flanneld but has no effect");
        assert_eq!(stderr.matches(&warning).count(), 1, "{flag}: {stderr}");
    }
    // Through the environment too; not given at all: no warning.
    let out = run_until_sigterm(
        &[],
        &[("FLANNELD_VMODULE", "y=2")],
        std::time::Duration::from_millis(800),
    );
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.matches("flag -vmodule is accepted").count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("flag -log_backtrace_at"), "{stderr}");
}

#[test]
fn process_verbosity_raises_flannel_logs_but_not_dependencies() {
    // The etcd client's stack (tower, hyper) logs each connection attempt at
    // debug level, e.g. `connecting to 127.0.0.1:2379`.
    const DEPENDENCY_DEBUG: &str = "connecting to 127.0.0.1:2379";
    const FLANNEL_DEBUG: &str = "next etcd connection attempt in";
    let wait = std::time::Duration::from_millis(1200);

    let out = run_until_sigterm(&[], &[], wait);
    let stderr = text(&out.stderr);
    assert!(!stderr.contains(FLANNEL_DEBUG), "-v=0: {stderr}");

    let out = run_until_sigterm(&["-v=2"], &[], wait);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(FLANNEL_DEBUG), "-v=2: {stderr}");
    assert!(!stderr.contains(DEPENDENCY_DEBUG), "-v=2: {stderr}");
    assert!(!stderr.contains("DEBUG reconnect"), "-v=2: {stderr}");

    // RUST_LOG replaces the filter, dependencies included.
    let out = run_until_sigterm(&[], &[("RUST_LOG", "debug")], wait);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(DEPENDENCY_DEBUG),
        "RUST_LOG=debug: {stderr}"
    );
}

#[test]
fn process_config_check_shows_the_default_backend() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no-backend.json");
    std::fs::write(&file, r#"{"Network": "10.244.0.0/16"}"#).unwrap();
    let out = run(&["config", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    assert!(
        json.trim_end().ends_with(r#","Backend":{"Type":"vxlan"}}"#),
        "{json}"
    );
    serde_json::from_str::<serde_json::Value>(&json).expect("valid JSON");

    // A given Backend is printed as written (type and options).
    std::fs::write(
        &file,
        r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#,
    )
    .unwrap();
    let out = run(&["config", "check", file.to_str().unwrap()]);
    let json = text(&out.stdout);
    assert!(json.contains(r#""Backend":{"Type":"host-gw"}"#), "{json}");
    assert_eq!(json.matches("Backend").count(), 1, "{json}");
}
