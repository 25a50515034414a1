//! `fake_kube_apiserver`: the test suite's fake Kubernetes API server
//! (`flannel_testutil::kube`) as a process, for `scripts/demo.sh --kube`
//! (no kube-apiserver can be installed here).
//!
//! ```text
//! fake_kube_apiserver --listen ADDR:PORT --kubeconfig PATH [--token TOKEN]
//!                     [--node NAME=CIDR[,CIDR]]... [--internal-ip NAME=IP]...
//! ```
//!
//! Serves HTTPS on `ADDR:PORT` with its own CA, writes a kubeconfig for it
//! (bearer token `TOKEN`, default `demo-token`) to `PATH`, creates the Nodes
//! with their podCIDRs (as a node IPAM controller assigns them), enforces
//! kube-flannel's ClusterRole on the token's user, prints `ready` and serves
//! until it is killed. Run it in the namespace whose address it listens on.

use flannel_testutil::kube::{FakeApiServer, FakeOptions, TOKEN_USER, flannel_rules, node_json};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

const USAGE: &str = "usage: fake_kube_apiserver --listen ADDR:PORT --kubeconfig PATH [--token TOKEN] \
                     [--node NAME=CIDR[,CIDR]]... [--internal-ip NAME=IP]...";

fn main() -> Result<(), String> {
    let mut listen: Option<SocketAddr> = None;
    let mut kubeconfig: Option<PathBuf> = None;
    let mut token = "demo-token".to_owned();
    let mut nodes: Vec<(String, Vec<String>)> = Vec::new();
    let mut ips: BTreeMap<String, String> = BTreeMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen = Some(v.parse().map_err(|e| format!("--listen {v}: {e}"))?);
            }
            "--kubeconfig" => kubeconfig = Some(value()?.into()),
            "--token" => token = value()?,
            "--node" => {
                let v = value()?;
                let (name, cidrs) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--node {v}: expected NAME=CIDR[,CIDR]"))?;
                nodes.push((
                    name.to_owned(),
                    cidrs.split(',').map(str::to_owned).collect(),
                ));
            }
            "--internal-ip" => {
                let v = value()?;
                let (name, ip) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--internal-ip {v}: expected NAME=IP"))?;
                ips.insert(name.to_owned(), ip.to_owned());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let listen = listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?;
    let kubeconfig = kubeconfig.ok_or_else(|| format!("--kubeconfig is required\n{USAGE}"))?;
    let api = FakeApiServer::start_on(
        listen,
        FakeOptions {
            token: Some(token),
            ..FakeOptions::default()
        },
    )
    .map_err(|e| format!("listening on {listen}: {e}"))?;
    api.set_permissions(TOKEN_USER, flannel_rules());
    for (name, cidrs) in &nodes {
        let cidrs: Vec<&str> = cidrs.iter().map(String::as_str).collect();
        api.apply_node(node_json(
            name,
            &cidrs,
            &[],
            ips.get(name).map(String::as_str),
        ));
    }
    api.write_kubeconfig(&kubeconfig, TOKEN_USER)
        .map_err(|e| format!("writing {}: {e}", kubeconfig.display()))?;
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    loop {
        std::thread::park();
    }
}
