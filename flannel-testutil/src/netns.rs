//! Network namespaces as test "hosts".
//!
//! [`NetNs`] is a named namespace (`ip netns add flt-<hint>-<pid>-<n>`) with
//! `lo` up, deleted again on drop. Commands run inside it with
//! [`NetNs::exec`] (`ip netns exec <name> ...`), and Rust code runs inside it
//! with [`NetNs::run`], which executes a closure on a fresh OS thread that has
//! `setns(2)`'d into the namespace, so sockets (netlink included) and a
//! current-thread tokio runtime built inside the closure see that namespace.
//!
//! [`veth_pair`] and [`bridge`] wire namespaces together, and [`Topology`]
//! builds the usual multi-host layout: N hosts, each with an `eth0` plugged
//! into a bridge `br0` in a separate "switch" namespace, addressed
//! `192.168.100.(i+1)/24` (and optionally `fd00:100::(i+1)/64`).
//!
//! Everything here needs root and the `ip` command (iproute2). When either is
//! missing the constructors return an error naming the prerequisite; they
//! never silently skip.
//!
//! ```no_run
//! use flannel_testutil::netns::{NetNs, Topology};
//!
//! let ns = NetNs::new("doc")?;
//! ns.exec(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "p0"])?;
//! let links = ns.exec(&["ip", "-o", "link", "show"])?;
//! assert!(links.contains("eth0@p0"));
//!
//! let topo = Topology::builder().hosts(2).ipv6(true).build()?;
//! topo.host(0).exec(&["ping", "-c1", "-W1", "192.168.100.2"])?;
//! # Ok::<(), flannel_testutil::TestUtilError>(())
//! ```

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{CloneFlags, setns};

use crate::TestUtilError;

/// Where `ip netns add` bind-mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Checks (once per process) that we are root and that `ip` is runnable.
fn check_prerequisites() -> Result<(), TestUtilError> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let res = CHECK.get_or_init(|| {
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            return Err(format!(
                "network namespace tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN); \
                 running as euid {euid}: run the tests as root (e.g. `sudo -E cargo test`)"
            ));
        }
        match Command::new("ip").arg("-V").output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "`ip -V` failed ({}): {}; network namespace tests need iproute2",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Err(format!(
                "the `ip` command is not runnable ({e}); network namespace tests need \
                 iproute2 (`apt-get install -y iproute2`)"
            )),
        }
    });
    res.clone().map_err(|msg| {
        TestUtilError::io(
            "checking network namespace test prerequisites",
            io::Error::new(io::ErrorKind::PermissionDenied, msg),
        )
    })
}

/// Runs a command to completion; a non-zero exit becomes an error carrying
/// the command line and its stderr. Returns stdout.
fn run_command(program: &str, args: &[&str]) -> Result<String, TestUtilError> {
    let cmdline = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let out: Output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| TestUtilError::io(format!("spawning `{cmdline}`"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(TestUtilError::io(
            format!("running `{cmdline}` ({})", out.status),
            io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ))
    }
}

/// A named network namespace, deleted on drop.
///
/// Equals `ip netns add <name>; ip -n <name> link set lo up`.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `flt-<hint>-<pid>-<n>` (unique per process and call) with
    /// `lo` up.
    ///
    /// Errors name the missing prerequisite when not root or when `ip` is not
    /// installed.
    pub fn new(name_hint: &str) -> Result<NetNs, TestUtilError> {
        check_prerequisites()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("flt-{name_hint}-{}-{n}", std::process::id());
        run_command("ip", &["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mount path of the namespace, `/run/netns/<name>`.
    pub fn path(&self) -> String {
        format!("{NETNS_RUN_DIR}/{}", self.name)
    }

    /// Runs `ip netns exec <name> <args...>` and returns its stdout; a
    /// non-zero exit is an error that carries the command and its stderr.
    pub fn exec(&self, args: &[&str]) -> Result<String, TestUtilError> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run_command("ip", &full)
    }

    /// Runs `ip -n <name> <args...>` (cheaper than [`NetNs::exec`] for `ip`
    /// itself) and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String, TestUtilError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_command("ip", &full)
    }

    /// Writes a sysctl inside the namespace, e.g.
    /// `sysctl("net/ipv4/ip_forward", "1")` (= `ip netns exec <ns> sysctl -w
    /// net.ipv4.ip_forward=1`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), TestUtilError> {
        let key = key.replace('.', "/");
        let script = format!("echo {value} > /proc/sys/{key}");
        self.exec(&["sh", "-c", &script]).map(drop)
    }

    /// Runs `f` on a fresh OS thread that has joined this namespace and
    /// returns its result (a panic inside `f` propagates to the caller).
    ///
    /// Panics if the namespace cannot be entered; see [`NetNs::try_run`].
    pub fn run<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        match self.try_run(f) {
            Ok(v) => v,
            Err(e) => panic!("cannot enter network namespace {}: {e}", self.name),
        }
    }

    /// Like [`NetNs::run`] but returns an error instead of panicking when the
    /// namespace cannot be entered (`open /run/netns/<name>` + `setns`).
    pub fn try_run<F, T>(&self, f: F) -> Result<T, TestUtilError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = self.path();
        let file =
            File::open(&path).map_err(|e| TestUtilError::io(format!("opening {path}"), e))?;
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(scope, move || {
                    // The thread is discarded afterwards, so it never needs
                    // to switch back to the original namespace.
                    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        TestUtilError::io(format!("setns({path}, CLONE_NEWNET)"), e.into())
                    })?;
                    Ok(f())
                })
                .map_err(|e| TestUtilError::io("spawning a namespace thread", e))?;
            match handle.join() {
                Ok(res) => res,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth ends and bridges inside it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Creates a veth pair `a_if` (in `a`) <-> `b_if` (in `b`) and sets both ends
/// up; `a` and `b` may be the same namespace.
///
/// Equals `ip -n <a> link add <a_if> type veth peer name <b_if> netns <b>`
/// followed by `ip link set up` on both ends.
pub fn veth_pair(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) -> Result<(), TestUtilError> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Creates a bridge and sets it up: `ip -n <ns> link add <name> type bridge;
/// ip -n <ns> link set <name> up`.
pub fn bridge(ns: &NetNs, name: &str) -> Result<(), TestUtilError> {
    ns.ip(&["link", "add", name, "type", "bridge"])?;
    ns.ip(&["link", "set", name, "up"])?;
    Ok(())
}

/// One host of a [`Topology`].
#[derive(Debug)]
pub struct Host {
    /// The host's namespace.
    pub ns: NetNs,
    /// The host's uplink interface name (`eth0`).
    pub iface: String,
    /// `192.168.100.(i+1)`, configured `/24` on `eth0`.
    pub ipv4: Ipv4Addr,
    /// `fd00:100::(i+1)`, configured `/64` on `eth0` when IPv6 was requested.
    pub ipv6: Option<Ipv6Addr>,
}

impl Host {
    /// Same as [`NetNs::exec`] on the host's namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String, TestUtilError> {
        self.ns.exec(args)
    }
}

/// N hosts on one L2 segment: a bridge `br0` in a "switch" namespace, each
/// host's `eth0` plugged into it with a veth pair (`h<i>` on the switch side).
///
/// Hosts get `ip_forward=1` (and IPv6 forwarding when IPv6 is enabled); the
/// IPv6 addresses are added with `nodad` so they are usable at once.
#[derive(Debug)]
pub struct Topology {
    /// The hosts, in order; host `i` has address `192.168.100.(i+1)`.
    pub hosts: Vec<Host>,
    /// The switch namespace holding `br0` (dropped after the hosts).
    pub switch: NetNs,
}

impl Topology {
    /// Starts a builder (2 hosts, IPv4 only).
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder {
            hosts: 2,
            ipv6: false,
            hint: "topo".to_string(),
        }
    }

    /// Host `i`; panics when out of range.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }
}

/// Builder for a [`Topology`].
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    hosts: usize,
    ipv6: bool,
    hint: String,
}

impl TopologyBuilder {
    /// Number of hosts (1..=253).
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// Also give every host `fd00:100::(i+1)/64` on `eth0`.
    pub fn ipv6(mut self, enabled: bool) -> Self {
        self.ipv6 = enabled;
        self
    }

    /// Name hint used in the namespace names (`flt-<hint>-sw-...`,
    /// `flt-<hint>-h<i>-...`).
    pub fn name_hint(mut self, hint: &str) -> Self {
        self.hint = hint.to_string();
        self
    }

    /// Creates the namespaces, the bridge, the veth pairs and the addresses.
    pub fn build(self) -> Result<Topology, TestUtilError> {
        if self.hosts == 0 || self.hosts > 253 {
            return Err(TestUtilError::State(format!(
                "a topology needs 1..=253 hosts, not {}",
                self.hosts
            )));
        }
        let switch = NetNs::new(&format!("{}-sw", self.hint))?;
        bridge(&switch, "br0")?;
        let mut hosts = Vec::with_capacity(self.hosts);
        for i in 0..self.hosts {
            let ns = NetNs::new(&format!("{}-h{i}", self.hint))?;
            let sw_if = format!("h{i}");
            veth_pair(&switch, &sw_if, &ns, "eth0")?;
            switch.ip(&["link", "set", &sw_if, "master", "br0"])?;
            let last = u8::try_from(i + 1).unwrap_or(u8::MAX);
            let ipv4 = Ipv4Addr::new(192, 168, 100, last);
            ns.ip(&["addr", "add", &format!("{ipv4}/24"), "dev", "eth0"])?;
            ns.sysctl("net/ipv4/ip_forward", "1")?;
            let ipv6 = if self.ipv6 {
                let v6 = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, u16::from(last));
                ns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ])?;
                ns.sysctl("net/ipv6/conf/all/forwarding", "1")?;
                Some(v6)
            } else {
                None
            };
            hosts.push(Host {
                ns,
                iface: "eth0".to_string(),
                ipv4,
                ipv6,
            });
        }
        Ok(Topology { hosts, switch })
    }
}
