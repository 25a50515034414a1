//! flanneld's command line: every flag of Go flanneld with Go's names, types
//! and defaults, Go `flag` syntax, and the `FLANNELD_*` environment mapping.
//!
//! # Syntax
//!
//! As with Go's `flag` package, `-flag` and `--flag` are the same flag, and a
//! value is given as `-flag=value` or `-flag value`. Boolean flags take a value
//! only after `=` (`-ip-masq`, `-ip-masq=false`; the accepted words are Go's
//! `strconv.ParseBool`'s: `1 0 t f T F true false TRUE FALSE True False`), so
//! `-ip-masq false` sets `ip-masq` and leaves `false` as a stray argument, which
//! is an error. Integers follow Go's `strconv.ParseInt(s, 0, 64)` (`0x1f`,
//! `0o17`, `017`, `0b101`, `1_000`). A flag given twice keeps the last value,
//! except the repeatable `--iface` and `--iface-regex`, which keep every value
//! in order.
//!
//! Implementation: the arguments are normalised first (`-flag` becomes
//! `--flag`, and `--flag value` of a value-taking flag becomes
//! `--flag=value`, so a value may start with `-`), then parsed by clap; boolean
//! flags are clap options with an optional value that requires `=`.
//!
//! # Environment
//!
//! For every flag not given on the command line, `FLANNELD_` + the flag name
//! upper-cased with `-` and `.` replaced by `_` is consulted
//! (`FLANNELD_ETCD_ENDPOINTS`, `FLANNELD_IP_MASQ`, `FLANNELD_V`, ...). Empty
//! values are ignored; a repeatable flag takes the whole value as one element;
//! `FLANNELD_VERSION` has no effect.
//!
//! # Deliberate differences from Go
//!
//! * An unknown flag or a bad value is an error (exit status 2); Go prints the
//!   usage and exits 0.
//! * A bad `FLANNELD_*` value is an error naming the variable; Go logs
//!   `Failed to set flag FLANNELD from env` and carries on.
//! * `--help` and `--version` print to stdout (Go: stderr).
//! * [`Options`]' `Debug` output never shows the etcd password (Go logs it).
//! * Two flags of our own: `--local-store-dir` and `--subnet-manager`.
//! * `flanneld config check FILE` validates a `net-conf.json`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};
use flannel_netlink::iface::{IfaceError, IfaceSelection};

/// Default of `--etcd-endpoints`.
pub const DEFAULT_ETCD_ENDPOINTS: &str = "http://127.0.0.1:4001,http://127.0.0.1:2379";
/// Default of `--etcd-prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/coreos.com/network";
/// Default of `--subnet-file`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Default of `--subnet-lease-renew-margin`, in minutes.
pub const DEFAULT_SUBNET_LEASE_RENEW_MARGIN: i64 = 60;
/// Default of `--kube-annotation-prefix`.
pub const DEFAULT_KUBE_ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";
/// Default of `--healthz-ip`.
pub const DEFAULT_HEALTHZ_IP: &str = "0.0.0.0";
/// Default of `--iptables-resync`, in seconds.
pub const DEFAULT_IPTABLES_RESYNC: i64 = 5;
/// Default of `--net-config-path`.
pub const DEFAULT_NET_CONFIG_PATH: &str = "/etc/kube-flannel/net-conf.json";
/// Default of `--local-store-dir`.
pub const DEFAULT_LOCAL_STORE_DIR: &str = "/run/flannel/local-store";
/// Prefix of the environment variables that supply flags.
pub const ENV_PREFIX: &str = "FLANNELD_";

/// Go's message for a `--subnet-lease-renew-margin` outside `1..=1439`.
pub const RENEW_MARGIN_ERROR: &str =
    "Invalid subnet-lease-renew-margin option, out of acceptable range";

/// Where leases are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubnetManagerKind {
    /// A store on this host only (`--local-store-dir`); single-node setups and tests.
    Local,
    /// etcd v3 (`--etcd-*`), shared with Go flanneld.
    Etcd,
    /// Kubernetes node objects (`--kube-subnet-mgr`).
    Kube,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon.
    Run(Box<Options>),
    /// `flanneld config check FILE`: validate a network configuration file.
    ConfigCheck(PathBuf),
    /// `flanneld mk-docker-opts [-f FILE] [-d FILE] [-i] [-c] [-m] [-k KEY]`:
    /// Docker daemon options from `subnet.env` (see [`crate::docker_opts`]).
    MkDockerOpts(crate::docker_opts::DockerOptsArgs),
}

/// Why parsing did not produce a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// `--help` was given; the usage text (print it, exit 0).
    Help(String),
    /// `--version` was given; the version line (print it, exit 0).
    Version(String),
    /// A bad command line or `FLANNELD_*` value; the message (exit 2).
    Invalid(String),
    /// A usage text for stderr with exit status 1 (`mk-docker-opts -h` or a
    /// bad flag of it, as Go's script).
    Usage(String),
}

impl CliError {
    /// The exit status for this outcome: 0 for help and version, 2 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Help(_) | CliError::Version(_) => 0,
            CliError::Invalid(_) => 2,
            CliError::Usage(_) => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Help(s)
            | CliError::Version(s)
            | CliError::Invalid(s)
            | CliError::Usage(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for CliError {}

/// The effective flanneld options: command line, then `FLANNELD_*`
/// environment, then Go's defaults. Field names are the flag names with `-`
/// replaced by `_`; string flags whose Go default is empty stay `String`
/// (empty = unset, as in Go).
///
/// `Debug` masks `etcd_password`.
#[derive(Clone, PartialEq, Eq)]
pub struct Options {
    /// `--etcd-endpoints`: comma-separated etcd URLs (see [`Options::etcd_endpoint_list`]).
    pub etcd_endpoints: String,
    /// `--etcd-prefix`: etcd key prefix of the network.
    pub etcd_prefix: String,
    /// `--etcd-keyfile`: TLS client key file.
    pub etcd_keyfile: String,
    /// `--etcd-certfile`: TLS client certificate file.
    pub etcd_certfile: String,
    /// `--etcd-cafile`: TLS CA file.
    pub etcd_cafile: String,
    /// `--etcd-username`: etcd user.
    pub etcd_username: String,
    /// `--etcd-password`: etcd password (never printed).
    pub etcd_password: String,
    /// `--iface` (repeatable): interface names or IP addresses, in order.
    pub iface: Vec<String>,
    /// `--iface-regex` (repeatable): interface name/address regexes, in order.
    pub iface_regex: Vec<String>,
    /// `--iface-can-reach`: pick the interface routing to this address.
    pub iface_can_reach: String,
    /// `--subnet-file`: where `subnet.env` is written.
    pub subnet_file: PathBuf,
    /// `--public-ip`: external IPv4 address (validated later, as in Go).
    pub public_ip: String,
    /// `--public-ipv6`: external IPv6 address (validated later, as in Go).
    pub public_ipv6: String,
    /// `--subnet-lease-renew-margin`: minutes before expiry to renew (1..=1439).
    pub subnet_lease_renew_margin: i64,
    /// `--ip-masq`: install masquerade rules.
    pub ip_masq: bool,
    /// `--ip-masq-fully-random-disable`: no `--random-fully` on masquerade rules.
    pub ip_masq_fully_random_disable: bool,
    /// `--kube-subnet-mgr`: use the Kubernetes API (see [`Options::subnet_manager`]).
    pub kube_subnet_mgr: bool,
    /// `--kube-api-url`: Kubernetes API server URL.
    pub kube_api_url: String,
    /// `--kube-annotation-prefix`: prefix of flannel's node annotations.
    pub kube_annotation_prefix: String,
    /// `--kubeconfig-file`: kubeconfig path.
    pub kubeconfig_file: String,
    /// `--version`: always `false` in a returned `Options` (it yields [`CliError::Version`]).
    pub version: bool,
    /// `--healthz-ip`: address of the health endpoint.
    pub healthz_ip: String,
    /// `--healthz-port`: port of the health endpoint; 0 (or less) disables it.
    pub healthz_port: i64,
    /// `--iptables-resync`: seconds between rule checks (also the blackhole-route period).
    pub iptables_resync: i64,
    /// `--iptables-forward-rules`: install FORWARD accept rules (default true).
    pub iptables_forward_rules: bool,
    /// `--ip-blackhole-route`: keep a blackhole route for the own subnet.
    pub ip_blackhole_route: bool,
    /// `--net-config-path`: `net-conf.json` path (kube mode).
    pub net_config_path: PathBuf,
    /// `--set-node-network-unavailable`: patch the node condition (kube mode, default true).
    pub set_node_network_unavailable: bool,
    /// `-v`: log verbosity (klog level).
    pub v: i32,
    /// `-vmodule`: per-file verbosity, `pattern=N,...` (klog syntax, validated).
    pub vmodule: String,
    /// `-log_backtrace_at`: `file.go:N` (klog syntax, validated).
    pub log_backtrace_at: String,
    /// `--charon-executable-path`: the charon binary the ipsec backend
    /// starts (empty: `$PATH`, then Go's list).
    pub charon_executable_path: String,
    /// `--charon-vici-uri`: the VICI socket of charon; given alone, a
    /// running charon is used instead of starting one.
    pub charon_vici_uri: String,
    /// `--local-store-dir` (ours): directory of the local subnet manager's store.
    pub local_store_dir: PathBuf,
    /// `--subnet-manager` (ours), effective: as given, else `kube` with
    /// `--kube-subnet-mgr`, else `etcd` (Go flanneld's datastore, at
    /// `--etcd-endpoints`); the local store only when asked for.
    pub subnet_manager: SubnetManagerKind,
}

impl Default for Options {
    /// Go's defaults (what `flanneld` with no flags and no environment gets).
    fn default() -> Options {
        Options {
            etcd_endpoints: DEFAULT_ETCD_ENDPOINTS.into(),
            etcd_prefix: DEFAULT_ETCD_PREFIX.into(),
            etcd_keyfile: String::new(),
            etcd_certfile: String::new(),
            etcd_cafile: String::new(),
            etcd_username: String::new(),
            etcd_password: String::new(),
            iface: Vec::new(),
            iface_regex: Vec::new(),
            iface_can_reach: String::new(),
            subnet_file: DEFAULT_SUBNET_FILE.into(),
            public_ip: String::new(),
            public_ipv6: String::new(),
            subnet_lease_renew_margin: DEFAULT_SUBNET_LEASE_RENEW_MARGIN,
            ip_masq: false,
            ip_masq_fully_random_disable: false,
            kube_subnet_mgr: false,
            kube_api_url: String::new(),
            kube_annotation_prefix: DEFAULT_KUBE_ANNOTATION_PREFIX.into(),
            kubeconfig_file: String::new(),
            version: false,
            healthz_ip: DEFAULT_HEALTHZ_IP.into(),
            healthz_port: 0,
            iptables_resync: DEFAULT_IPTABLES_RESYNC,
            iptables_forward_rules: true,
            ip_blackhole_route: false,
            net_config_path: DEFAULT_NET_CONFIG_PATH.into(),
            set_node_network_unavailable: true,
            v: 0,
            vmodule: String::new(),
            log_backtrace_at: String::new(),
            charon_executable_path: String::new(),
            charon_vici_uri: String::new(),
            local_store_dir: DEFAULT_LOCAL_STORE_DIR.into(),
            subnet_manager: SubnetManagerKind::Etcd,
        }
    }
}

impl Options {
    /// Every option as `(flag name, value as text)`, in the order of Go's
    /// flags, with the etcd password masked (`***`).
    fn rendered(&self) -> Vec<(&'static str, String)> {
        let s = |v: &String| v.clone();
        let p = |v: &PathBuf| v.display().to_string();
        let password = if self.etcd_password.is_empty() {
            String::new()
        } else {
            "***".to_string()
        };
        vec![
            ("etcd-endpoints", s(&self.etcd_endpoints)),
            ("etcd-prefix", s(&self.etcd_prefix)),
            ("etcd-keyfile", s(&self.etcd_keyfile)),
            ("etcd-certfile", s(&self.etcd_certfile)),
            ("etcd-cafile", s(&self.etcd_cafile)),
            ("etcd-username", s(&self.etcd_username)),
            ("etcd-password", password),
            ("iface", self.iface.join(",")),
            ("iface-regex", self.iface_regex.join(",")),
            ("iface-can-reach", s(&self.iface_can_reach)),
            ("subnet-file", p(&self.subnet_file)),
            ("public-ip", s(&self.public_ip)),
            ("public-ipv6", s(&self.public_ipv6)),
            (
                "subnet-lease-renew-margin",
                self.subnet_lease_renew_margin.to_string(),
            ),
            ("ip-masq", self.ip_masq.to_string()),
            (
                "ip-masq-fully-random-disable",
                self.ip_masq_fully_random_disable.to_string(),
            ),
            ("kube-subnet-mgr", self.kube_subnet_mgr.to_string()),
            ("kube-api-url", s(&self.kube_api_url)),
            ("kube-annotation-prefix", s(&self.kube_annotation_prefix)),
            ("kubeconfig-file", s(&self.kubeconfig_file)),
            ("version", self.version.to_string()),
            ("healthz-ip", s(&self.healthz_ip)),
            ("healthz-port", self.healthz_port.to_string()),
            ("iptables-resync", self.iptables_resync.to_string()),
            (
                "iptables-forward-rules",
                self.iptables_forward_rules.to_string(),
            ),
            ("ip-blackhole-route", self.ip_blackhole_route.to_string()),
            ("net-config-path", p(&self.net_config_path)),
            (
                "set-node-network-unavailable",
                self.set_node_network_unavailable.to_string(),
            ),
            ("v", self.v.to_string()),
            ("vmodule", s(&self.vmodule)),
            ("log_backtrace_at", s(&self.log_backtrace_at)),
            ("charon-executable-path", s(&self.charon_executable_path)),
            ("charon-vici-uri", s(&self.charon_vici_uri)),
            ("local-store-dir", p(&self.local_store_dir)),
            (
                "subnet-manager",
                format!("{:?}", self.subnet_manager).to_lowercase(),
            ),
        ]
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Options");
        for (name, value) in self.rendered() {
            d.field(name, &value);
        }
        d.finish()
    }
}

/// The options as flags (`--etcd-prefix=/coreos.com/network …`), for the
/// start-up log line; the etcd password shows as `***`.
impl fmt::Display for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.rendered().into_iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "--{name}={value}")?;
        }
        Ok(())
    }
}

impl Options {
    /// Parses the process's arguments and `FLANNELD_*` environment.
    pub fn parse_env_and_args() -> Result<Options, CliError> {
        parse_from(std::env::args_os(), &process_env)
    }

    /// The interface flags as the typed input of
    /// [`flannel_netlink::iface::select`]; fails on a `--public-ip` or
    /// `--public-ipv6` that is not an address of its family (Go's
    /// `invalid public IP address: <x>`).
    pub fn iface_selection(&self) -> Result<IfaceSelection, IfaceError> {
        Ok(IfaceSelection {
            ifaces: self.iface.clone(),
            regexes: self.iface_regex.clone(),
            can_reach: Some(self.iface_can_reach.clone()).filter(|s| !s.is_empty()),
            public_ip: IfaceSelection::parse_public_ip(&self.public_ip)?,
            public_ipv6: IfaceSelection::parse_public_ipv6(&self.public_ipv6)?,
        })
    }

    /// The flags that were given (on the command line or through
    /// `FLANNELD_*`) but have no effect here, by their Go names: klog's
    /// `vmodule` and `log_backtrace_at`. flanneld warns about each once at
    /// start.
    pub fn ignored_flags(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.vmodule.is_empty() {
            out.push("vmodule");
        }
        if !self.log_backtrace_at.is_empty() {
            out.push("log_backtrace_at");
        }
        out
    }

    /// `--etcd-endpoints` split on `,`, as Go's `strings.Split` does.
    pub fn etcd_endpoint_list(&self) -> Vec<&str> {
        self.etcd_endpoints.split(',').collect()
    }
}

impl Command {
    /// Parses the process's arguments and `FLANNELD_*` environment.
    pub fn parse_env_and_args() -> Result<Command, CliError> {
        parse_command_from(std::env::args_os(), &process_env)
    }
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

const AFTER_HELP: &str = "\
Flags may be written -flag or --flag; values as -flag=value or -flag value.
Boolean flags take a value only after '=' (-ip-masq, -ip-masq=false).
Every flag not given on the command line is read from FLANNELD_<NAME> (name
upper-cased, '-' and '.' become '_'), e.g. FLANNELD_ETCD_ENDPOINTS,
FLANNELD_IP_MASQ, FLANNELD_V; empty values are ignored. A bad value in such a
variable is an error (Go flanneld ignores it).

--subnet-manager defaults to 'kube' with --kube-subnet-mgr, else to 'etcd'
(at --etcd-endpoints, by default http://127.0.0.1:4001,http://127.0.0.1:2379).
The embedded local store is used only with --subnet-manager=local.

flanneld config check FILE
    Validate a net-conf.json and print it with defaults filled in.

flanneld mk-docker-opts [-f FILE] [-d FILE] [-i] [-c] [-m] [-k KEY]
    Write Docker daemon options (--bip, --mtu, --ip-masq) from subnet.env to
    /run/docker_opts.env, as Go flannel's mk-docker-opts.sh does (-h for more).";

/// The clap view of the flags; converted into [`Options`].
#[derive(Parser, Debug)]
#[command(
    name = "flanneld",
    about = "flannel: a layer-3 overlay network for containers",
    override_usage = "flanneld [OPTION]...\n       flanneld config check FILE\n       flanneld mk-docker-opts [-f FILE] [-d FILE] [-i] [-c] [-m] [-k KEY]",
    after_help = AFTER_HELP,
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true,
    color = clap::ColorChoice::Never,
    max_term_width = 100
)]
struct Flags {
    /// a comma-delimited list of etcd endpoints
    #[arg(long, value_name = "URLS", default_value = DEFAULT_ETCD_ENDPOINTS)]
    etcd_endpoints: String,
    /// etcd prefix
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_ETCD_PREFIX)]
    etcd_prefix: String,
    /// SSL key file used to secure etcd communication
    #[arg(long, value_name = "FILE")]
    etcd_keyfile: Option<String>,
    /// SSL certification file used to secure etcd communication
    #[arg(long, value_name = "FILE")]
    etcd_certfile: Option<String>,
    /// SSL Certificate Authority file used to secure etcd communication
    #[arg(long, value_name = "FILE")]
    etcd_cafile: Option<String>,
    /// username for BasicAuth to etcd
    #[arg(long, value_name = "USER")]
    etcd_username: Option<String>,
    /// password for BasicAuth to etcd
    #[arg(long, value_name = "PASSWORD")]
    etcd_password: Option<String>,
    /// interface to use (IP or name) for inter-host communication; may be repeated
    #[arg(long, value_name = "IFACE", action = ArgAction::Append)]
    iface: Vec<String>,
    /// regex expression to match the first interface to use (IP or name) for inter-host
    /// communication; may be repeated
    #[arg(long, value_name = "REGEX", action = ArgAction::Append)]
    iface_regex: Vec<String>,
    /// detect interface to use (IP or name) for inter-host communication based on which will
    /// be used for the provided IP
    #[arg(long, value_name = "IP")]
    iface_can_reach: Option<String>,
    /// filename where env variables (subnet, MTU, ...) will be written to
    #[arg(long, value_name = "FILE", default_value = DEFAULT_SUBNET_FILE)]
    subnet_file: PathBuf,
    /// IP accessible by other nodes for inter-host communication
    #[arg(long, value_name = "IP")]
    public_ip: Option<String>,
    /// IPv6 accessible by other nodes for inter-host communication
    #[arg(long, value_name = "IP")]
    public_ipv6: Option<String>,
    /// subnet lease renewal margin, in minutes, ranging from 1 to 1439
    #[arg(long, value_name = "MINUTES", default_value = "60", value_parser = parse_go_int)]
    subnet_lease_renew_margin: i64,
    /// setup IP masquerade rule for traffic destined outside of overlay network
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          action = ArgAction::Set, value_parser = parse_go_bool)]
    ip_masq: bool,
    /// disable fully random source port mapping in IP masquerade rules
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          action = ArgAction::Set, value_parser = parse_go_bool)]
    ip_masq_fully_random_disable: bool,
    /// contact the Kubernetes API for subnet assignment instead of etcd
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          action = ArgAction::Set, value_parser = parse_go_bool)]
    kube_subnet_mgr: bool,
    /// Kubernetes API server URL; not needed if flannel runs in a pod
    #[arg(long, value_name = "URL")]
    kube_api_url: Option<String>,
    /// Kubernetes annotation prefix; may contain a single '/' (a node annotation key is
    /// <prefix>/<name>)
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_KUBE_ANNOTATION_PREFIX)]
    kube_annotation_prefix: String,
    /// kubeconfig file location; not needed if flannel runs in a pod
    #[arg(long, value_name = "FILE")]
    kubeconfig_file: Option<String>,
    /// print version and exit
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          action = ArgAction::Set, value_parser = parse_go_bool)]
    version: bool,
    /// the IP address for the healthz server to listen on
    #[arg(long, value_name = "IP", default_value = DEFAULT_HEALTHZ_IP)]
    healthz_ip: String,
    /// the port for the healthz server to listen on (0 to disable)
    #[arg(long, value_name = "PORT", default_value = "0", value_parser = parse_go_int)]
    healthz_port: i64,
    /// resync period for iptables rules, in seconds
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_go_int)]
    iptables_resync: i64,
    /// add default accept rules to the FORWARD chain in iptables
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true",
          action = ArgAction::Set, value_parser = parse_go_bool)]
    iptables_forward_rules: bool,
    /// add a blackhole route for this node's subnet
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          action = ArgAction::Set, value_parser = parse_go_bool)]
    ip_blackhole_route: bool,
    /// path to the network configuration file (Kubernetes mode)
    #[arg(long, value_name = "FILE", default_value = DEFAULT_NET_CONFIG_PATH)]
    net_config_path: PathBuf,
    /// set the node's NetworkUnavailable condition once the network is ready (Kubernetes mode)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true",
          action = ArgAction::Set, value_parser = parse_go_bool)]
    set_node_network_unavailable: bool,
    /// number for the log level verbosity
    #[arg(long = "v", value_name = "LEVEL", default_value = "0", value_parser = parse_klog_level)]
    v: i32,
    /// comma-separated list of pattern=N settings for file-filtered logging
    #[arg(long, value_name = "PATTERN=N,...", value_parser = parse_vmodule)]
    vmodule: Option<String>,
    /// when logging hits line file:N, emit a stack trace
    #[arg(long = "log_backtrace_at", value_name = "FILE:N", value_parser = parse_backtrace_at)]
    log_backtrace_at: Option<String>,
    /// path to the charon executable (ipsec backend; default: $PATH, then strongSwan's
    /// usual locations)
    #[arg(long, value_name = "FILE")]
    charon_executable_path: Option<String>,
    /// charon's VICI socket URI (ipsec backend), e.g. unix:///var/run/charon.vici; given
    /// without --charon-executable-path, a running charon is used instead of starting one
    #[arg(long, value_name = "URI")]
    charon_vici_uri: Option<String>,
    /// directory of the local subnet manager's lease store (not in Go flanneld)
    #[arg(long, value_name = "DIR", default_value = DEFAULT_LOCAL_STORE_DIR)]
    local_store_dir: PathBuf,
    /// where leases live: local, etcd or kube (not in Go flanneld); default: kube with
    /// --kube-subnet-mgr, else etcd
    #[arg(long, value_name = "KIND", value_enum)]
    subnet_manager: Option<SubnetManagerKind>,
    /// print this help and exit
    #[arg(long, alias = "h", action = ArgAction::HelpShort)]
    help: Option<bool>,
}

/// Parses the daemon's flags. `args` starts with the program name, as
/// `std::env::args_os()` does; `env` looks up environment variables.
pub fn parse_from<I, S>(args: I, env: &dyn Fn(&str) -> Option<String>) -> Result<Options, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let args = utf8_args(args)?;
    parse_flags(&args, env)
}

/// Like [`parse_from`], but also recognises the subcommands `config check
/// FILE` and `mk-docker-opts ...` as the first arguments.
pub fn parse_command_from<I, S>(
    args: I,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if args.get(1).is_some_and(|a| a == "config") {
        return parse_config_command(&args[2..]);
    }
    if args.get(1).is_some_and(|a| a == "mk-docker-opts") {
        let rest = utf8_args(args[2..].to_vec())?;
        return match crate::docker_opts::DockerOptsArgs::parse(&rest) {
            Ok(a) => Ok(Command::MkDockerOpts(a)),
            Err(why) => Err(CliError::Usage(format!(
                "{}{}",
                why.map(|w| format!("flanneld mk-docker-opts: {w}\n"))
                    .unwrap_or_default(),
                crate::docker_opts::USAGE
            ))),
        };
    }
    let args = utf8_args(args)?;
    parse_flags(&args, env).map(|o| Command::Run(Box::new(o)))
}

const CONFIG_USAGE: &str = "Usage: flanneld config check FILE\n\n\
Validates a network configuration (net-conf.json) and prints it with the defaults filled in.\n";

fn parse_config_command(rest: &[OsString]) -> Result<Command, CliError> {
    if rest
        .iter()
        .any(|a| a == "--help" || a == "-h" || a == "-help")
    {
        return Err(CliError::Help(CONFIG_USAGE.into()));
    }
    match rest {
        [check, file] if check == "check" => Ok(Command::ConfigCheck(PathBuf::from(file))),
        _ => Err(CliError::Invalid(format!(
            "error: expected 'config check FILE'\n\n{CONFIG_USAGE}"
        ))),
    }
}

fn utf8_args<I, S>(args: I) -> Result<Vec<String>, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    args.into_iter()
        .map(|a| {
            a.into().into_string().map_err(|a| {
                CliError::Invalid(format!("error: argument is not valid UTF-8: {a:?}"))
            })
        })
        .collect()
}

fn command() -> clap::Command {
    Flags::command()
}

/// One flag as documented (the manual page and the documentation site's
/// flag table are generated from these, so they cannot drift from the
/// parser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagDoc {
    /// The flag name without dashes (`etcd-endpoints`, `v`).
    pub name: String,
    /// The value's placeholder (`URLS`, `BOOL`); empty for `--help`.
    pub value_name: String,
    /// The default as Go prints it (`""` for an empty string default).
    pub default: String,
    /// The help text.
    pub help: String,
    /// The `FLANNELD_*` variable that sets it (empty for `--help` and
    /// `--version`, which no variable sets).
    pub env: String,
    /// A boolean flag: `-flag` alone means true; a value needs `=`.
    pub boolean: bool,
    /// The flag may be given more than once (each value kept).
    pub repeatable: bool,
}

/// Every flag flanneld accepts, in `--help` order.
pub fn flag_docs() -> Vec<FlagDoc> {
    command()
        .get_arguments()
        .filter_map(|a| {
            let name = a.get_long()?.to_owned();
            let boolean = a.is_require_equals_set();
            let defaults: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let default = match (defaults.first(), name.as_str()) {
                (_, "help") => String::new(),
                (Some(d), _) => d.clone(),
                (None, _) if matches!(a.get_action(), ArgAction::Append) => String::new(),
                (None, _) => "\"\"".to_owned(),
            };
            let value_name = a
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| v.to_string())
                .unwrap_or_default();
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let env = if matches!(name.as_str(), "help" | "version") {
                String::new()
            } else {
                env_var_name(&name)
            };
            Some(FlagDoc {
                repeatable: matches!(a.get_action(), ArgAction::Append),
                value_name: if name == "help" {
                    String::new()
                } else {
                    value_name
                },
                name,
                default,
                help,
                env,
                boolean,
            })
        })
        .collect()
}

/// The text after the flag list in `--help` (syntax, environment,
/// subcommands), for the manual page.
pub const HELP_NOTES: &str = AFTER_HELP;

fn clap_error(e: clap::Error) -> CliError {
    let text = e.render().to_string();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            CliError::Help(text)
        }
        ErrorKind::DisplayVersion => CliError::Version(text),
        _ => CliError::Invalid(text),
    }
}

/// The environment variable for a flag: `FLANNELD_` + upper-cased name with
/// `-` and `.` replaced by `_`.
pub fn env_var_name(flag: &str) -> String {
    let mut name = String::from(ENV_PREFIX);
    name.extend(flag.chars().map(|c| match c {
        '-' | '.' => '_',
        c => c.to_ascii_uppercase(),
    }));
    name
}

fn parse_flags(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Options, CliError> {
    let cmd = command();
    let prog = args.first().map_or("flanneld", String::as_str);
    let user = normalise(&cmd, args.get(1..).unwrap_or_default())?;

    // 1. The command line alone: its errors, --help and --version come first.
    let first = cmd
        .clone()
        .try_get_matches_from(std::iter::once(prog).chain(user.iter().map(String::as_str)))
        .map_err(clap_error)?;
    if first.get_one::<bool>("version") == Some(&true) {
        return Err(CliError::Version(crate::version::text()));
    }

    // 2. FLANNELD_* for each flag not on the command line.
    let mut env_tokens = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        if first.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        let var = env_var_name(long);
        let Some(value) = env(&var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let token = format!("--{long}={value}");
        if let Err(e) = cmd.clone().try_get_matches_from([prog, token.as_str()]) {
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or_default();
            let line = line.strip_prefix("error: ").unwrap_or(line);
            return Err(CliError::Invalid(format!(
                "error: environment variable {var}: {line}\n"
            )));
        }
        env_tokens.push(token);
    }

    // 3. Both together (the environment only fills flags not given, so the
    //    order cannot matter; it goes first so a `--` cannot swallow it).
    let all = std::iter::once(prog)
        .chain(env_tokens.iter().map(String::as_str))
        .chain(user.iter().map(String::as_str));
    let matches = cmd.try_get_matches_from(all).map_err(clap_error)?;
    let flags = Flags::from_arg_matches(&matches).map_err(clap_error)?;
    into_options(flags)
}

/// Rewrites Go `flag` syntax into clap's: `-name` → `--name`, and a
/// value-taking flag followed by a separate value → `--name=value` (so the
/// value may start with `-`, as in Go). Parsing stops at `--` or at the first
/// non-flag argument, which clap then rejects (flanneld takes no arguments).
fn normalise(cmd: &clap::Command, args: &[String]) -> Result<Vec<String>, CliError> {
    let takes_separate_value = |name: &str| {
        cmd.get_arguments().any(|a| {
            a.get_action().takes_values()
                && !a.is_require_equals_set()
                && (a.get_long() == Some(name)
                    || a.get_all_aliases().is_some_and(|al| al.contains(&name)))
        })
    };
    let mut out = Vec::with_capacity(args.len());
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" || arg == "-" || !arg.starts_with('-') {
            out.push(arg.clone());
            out.extend(rest.cloned());
            break;
        }
        let body = arg.strip_prefix("--").unwrap_or(&arg[1..]);
        if body.is_empty() || body.starts_with(['-', '=']) {
            return Err(CliError::Invalid(format!(
                "error: bad flag syntax: {arg}\n\nFor more information, try '--help'.\n"
            )));
        }
        match body.split_once('=') {
            None if takes_separate_value(body) => match rest.next() {
                Some(value) => out.push(format!("--{body}={value}")),
                None => out.push(format!("--{body}")),
            },
            _ => out.push(format!("--{body}")),
        }
    }
    Ok(out)
}

fn into_options(f: Flags) -> Result<Options, CliError> {
    let subnet_manager = match f.subnet_manager {
        Some(kind) if f.kube_subnet_mgr && kind != SubnetManagerKind::Kube => {
            return Err(CliError::Invalid(format!(
                "error: --kube-subnet-mgr conflicts with --subnet-manager={}\n",
                kind.to_possible_value()
                    .map(|v| v.get_name().to_owned())
                    .unwrap_or_default()
            )));
        }
        Some(kind) => kind,
        None if f.kube_subnet_mgr => SubnetManagerKind::Kube,
        None => SubnetManagerKind::Etcd,
    };
    if !(1..1440).contains(&f.subnet_lease_renew_margin) {
        return Err(CliError::Invalid(format!("error: {RENEW_MARGIN_ERROR}\n")));
    }
    if subnet_manager == SubnetManagerKind::Etcd {
        check_etcd_endpoints(&f.etcd_endpoints).map_err(CliError::Invalid)?;
    }
    Ok(Options {
        etcd_endpoints: f.etcd_endpoints,
        etcd_prefix: f.etcd_prefix,
        etcd_keyfile: f.etcd_keyfile.unwrap_or_default(),
        etcd_certfile: f.etcd_certfile.unwrap_or_default(),
        etcd_cafile: f.etcd_cafile.unwrap_or_default(),
        etcd_username: f.etcd_username.unwrap_or_default(),
        etcd_password: f.etcd_password.unwrap_or_default(),
        iface: f.iface,
        iface_regex: f.iface_regex,
        iface_can_reach: f.iface_can_reach.unwrap_or_default(),
        subnet_file: f.subnet_file,
        public_ip: f.public_ip.unwrap_or_default(),
        public_ipv6: f.public_ipv6.unwrap_or_default(),
        subnet_lease_renew_margin: f.subnet_lease_renew_margin,
        ip_masq: f.ip_masq,
        ip_masq_fully_random_disable: f.ip_masq_fully_random_disable,
        kube_subnet_mgr: f.kube_subnet_mgr,
        kube_api_url: f.kube_api_url.unwrap_or_default(),
        kube_annotation_prefix: f.kube_annotation_prefix,
        kubeconfig_file: f.kubeconfig_file.unwrap_or_default(),
        version: f.version,
        healthz_ip: f.healthz_ip,
        healthz_port: f.healthz_port,
        iptables_resync: f.iptables_resync,
        iptables_forward_rules: f.iptables_forward_rules,
        ip_blackhole_route: f.ip_blackhole_route,
        net_config_path: f.net_config_path,
        set_node_network_unavailable: f.set_node_network_unavailable,
        v: f.v,
        vmodule: f.vmodule.unwrap_or_default(),
        log_backtrace_at: f.log_backtrace_at.unwrap_or_default(),
        charon_executable_path: f.charon_executable_path.unwrap_or_default(),
        charon_vici_uri: f.charon_vici_uri.unwrap_or_default(),
        local_store_dir: f.local_store_dir,
        subnet_manager,
    })
}

/// Checks `--etcd-endpoints` before anything connects: every
/// comma-separated entry must be `http://host[:port]`, `https://host[:port]`
/// or `host:port`, with a port in 1–65535. The error names the entry and
/// the rule it breaks.
pub fn check_etcd_endpoints(list: &str) -> Result<(), String> {
    let entries: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return Err("error: invalid --etcd-endpoints: no endpoint given\n".into());
    }
    for e in entries {
        check_etcd_endpoint(e).map_err(|why| {
            format!(
                "error: invalid --etcd-endpoints entry \"{e}\": {why} \
                 (expected http://host:port or https://host:port)\n"
            )
        })?;
    }
    Ok(())
}

fn check_etcd_endpoint(e: &str) -> Result<(), String> {
    let (scheme, rest) = match e.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, e),
    };
    // Lower case only: the etcd client recognises no other spelling.
    if let Some(scheme) = scheme
        && scheme != "http"
        && scheme != "https"
    {
        return Err(format!(
            "the scheme {scheme}:// is not supported, only http:// and https://"
        ));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() {
        return Err("an etcd endpoint has no path".into());
    }
    if authority.contains('@') {
        return Err(
            "credentials in the URL are not supported (use --etcd-username and --etcd-password)"
                .into(),
        );
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address lacks its closing ]")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("[{host}] is not an IPv6 address"));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("unexpected text {after} after the address")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err("an IPv6 address must be written in brackets, as [addr]:port".into());
            }
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
    {
        return Err(format!("{host} is not a host name or IP address"));
    }
    match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("the port {p:?} is not a number from 1 to 65535")),
        },
        None if scheme.is_none() => {
            return Err("without http:// or https:// an endpoint must be host:port".into());
        }
        None => {}
    }
    Ok(())
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("invalid boolean (expected true/false/1/0/t/f)".into()),
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`, as `flag.Int` uses: optional sign,
/// `0x`/`0o`/`0b`/leading-`0` prefixes, `_` between digits.
pub fn parse_go_int(s: &str) -> Result<i64, String> {
    const SYNTAX: &str = "invalid syntax";
    let (neg, body) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let lower = body.get(..2).map(str::to_ascii_lowercase);
    let (radix, digits, prefixed) = match lower.as_deref() {
        Some("0x") => (16, &body[2..], true),
        Some("0o") => (8, &body[2..], true),
        Some("0b") => (2, &body[2..], true),
        _ if body.len() > 1 && body.starts_with('0') => (8, &body[1..], true),
        _ => (10, body, false),
    };
    // Go's underscoreOK: `_` only between digits (a prefix counts as a digit).
    let mut parts = digits.split('_');
    let first_ok = parts.next().is_some_and(|p| prefixed || !p.is_empty());
    if !first_ok || parts.any(str::is_empty) {
        return Err(SYNTAX.into());
    }
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    if clean.is_empty() || !clean.chars().all(|c| c.is_digit(radix)) {
        return Err(SYNTAX.into());
    }
    let magnitude = u64::from_str_radix(&clean, radix).map_err(|_| "value out of range")?;
    let value = if neg {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    };
    value.ok_or_else(|| "value out of range".into())
}

/// klog's `-v`: `strconv.ParseInt(s, 10, 32)`.
fn parse_klog_level(s: &str) -> Result<i32, String> {
    s.parse::<i32>().map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
            "value out of range".into()
        }
        _ => "invalid syntax".into(),
    })
}

/// klog's `-vmodule` syntax check: comma-separated `pattern=N`, N ≥ 0.
fn parse_vmodule(s: &str) -> Result<String, String> {
    const SYNTAX: &str = "syntax error: expect comma-separated list of filename=N";
    for pat in s.split(',').filter(|p| !p.is_empty()) {
        let fields: Vec<&str> = pat.split('=').collect();
        let [pattern, level] = fields[..] else {
            return Err(SYNTAX.into());
        };
        if pattern.is_empty() || level.is_empty() {
            return Err(SYNTAX.into());
        }
        let level: i32 = level.parse().map_err(|_| SYNTAX)?;
        if level < 0 {
            return Err("negative value for vmodule level".into());
        }
    }
    Ok(s.to_owned())
}

/// klog's `-log_backtrace_at` syntax check: empty, or `file.go:N` with N > 0.
fn parse_backtrace_at(s: &str) -> Result<String, String> {
    const SYNTAX: &str = "syntax error: expect file.go:234";
    if s.is_empty() {
        return Ok(String::new());
    }
    let fields: Vec<&str> = s.split(':').collect();
    let [file, line] = fields[..] else {
        return Err(SYNTAX.into());
    };
    if !file.contains('.') {
        return Err(SYNTAX.into());
    }
    let line: i64 = line.parse().map_err(|_| SYNTAX)?;
    if line <= 0 {
        return Err("negative or zero value for level".into());
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_valid() {
        command().debug_assert();
    }

    #[test]
    fn go_int() {
        for (s, v) in [
            ("0", 0),
            ("42", 42),
            ("+7", 7),
            ("-7", -7),
            ("0x1f", 31),
            ("0X1F", 31),
            ("017", 15),
            ("0o17", 15),
            ("0b101", 5),
            ("1_000", 1000),
            ("0x_1f", 31),
            ("0_7", 7),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ] {
            assert_eq!(parse_go_int(s), Ok(v), "{s}");
        }
        for s in [
            "", "abc", "08", "_1", "1_", "1__0", "0x", "+", "1.5", " 1", "++1",
        ] {
            assert_eq!(parse_go_int(s), Err("invalid syntax".into()), "{s}");
        }
        for s in ["9223372036854775808", "-9223372036854775809"] {
            assert_eq!(parse_go_int(s), Err("value out of range".into()), "{s}");
        }
    }

    #[test]
    fn klog_syntax() {
        assert!(parse_vmodule("foo=2,bar*=1,").is_ok());
        assert!(parse_vmodule("foo").is_err());
        assert!(parse_vmodule("foo=-1").is_err());
        assert!(parse_backtrace_at("main.go:12").is_ok());
        assert!(parse_backtrace_at("main:12").is_err());
        assert!(parse_backtrace_at("main.go:0").is_err());
        assert_eq!(parse_klog_level("3"), Ok(3));
        assert!(parse_klog_level("x").is_err());
    }

    #[test]
    fn env_names() {
        assert_eq!(env_var_name("etcd-endpoints"), "FLANNELD_ETCD_ENDPOINTS");
        assert_eq!(
            env_var_name("log_backtrace_at"),
            "FLANNELD_LOG_BACKTRACE_AT"
        );
        assert_eq!(env_var_name("v"), "FLANNELD_V");
        assert_eq!(env_var_name("a.b"), "FLANNELD_A_B");
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::check_etcd_endpoints;

    #[test]
    fn good_endpoints_pass() {
        for ok in [
            "http://127.0.0.1:2379",
            "https://etcd.example.com:2379",
            "https://etcd.example.com",
            "http://[fd00::1]:2379",
            "127.0.0.1:2379",
            "http://127.0.0.1:4001,http://127.0.0.1:2379",
            "http://a:1, http://b:2/",
        ] {
            assert_eq!(check_etcd_endpoints(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn bad_endpoints_name_the_entry_and_the_rule() {
        for (bad, rule) in [
            ("not-a-url", "must be host:port"),
            (":99999", "host is missing"),
            ("http://h:99999", "from 1 to 65535"),
            ("http://h:0", "from 1 to 65535"),
            ("ftp://x", "ftp:// is not supported"),
            ("HTTP://h:1", "HTTP:// is not supported"),
            ("http://u:p@h:1", "credentials"),
            ("http://h:1/v3", "no path"),
            ("http://fd00::1:2379", "brackets"),
            ("http://ex ample:1", "not a host name"),
            ("http://127.0.0.1:2379,bogus", "must be host:port"),
            (",", "no endpoint given"),
        ] {
            let err = check_etcd_endpoints(bad).unwrap_err();
            assert!(err.contains(rule), "{bad}: {err}");
            if bad != "," {
                let entry = bad.rsplit(',').next().unwrap();
                assert!(err.contains(&format!("\"{entry}\"")), "{bad}: {err}");
            }
        }
    }
}
