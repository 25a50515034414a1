//! A custom node agent built from flannel-rs crates: the whole of what
//! `flanneld` does for one network, in one page, for embedders to start
//! from.
//!
//! ```text
//! node-agent --store DIR --iface eth0 --subnet-file /run/agent/subnet.env \
//!            [--network 10.20.0.0/16] [--backend host-gw|vxlan]
//! ```
//!
//! Leases come from the embedded local store in `DIR` (shared by the agents
//! of one machine; etcd would be `flannel_subnet::etcd::EtcdStore`).
//! `--network` writes the network config into the store first. The agent
//! acquires a lease, programs the datapath, writes `subnet.env`, then keeps
//! the datapath in step with the other nodes' leases until SIGTERM or
//! SIGINT, which leave the datapath and the lease in place (a restarted
//! agent takes over without dropping traffic).

use anyhow::{Context, Result, bail};
use flannel_core::backend::{Backend, HostContext, RegisterContext};
use flannel_core::manager::SubnetManager;
use flannel_core::subnet_env::SubnetEnv;
use flannel_netlink::iface::{IfaceSelection, select};
use flannel_netlink::{Netlink, SharedOps};
use flannel_subnet::env_file::write_subnet_env;
use flannel_subnet::local::LocalStore;
use flannel_subnet::manager::LeaseManager;
use flannel_subnet::runner::{Runner, thread_executor};
use std::path::PathBuf;
use std::sync::Arc;
use tracing::info;

/// The command line.
struct Args {
    store: PathBuf,
    iface: String,
    subnet_file: PathBuf,
    network: Option<String>,
    backend: String,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut store = None;
        let mut iface = None;
        let mut subnet_file = None;
        let mut network = None;
        let mut backend = "host-gw".to_string();
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--store" => store = Some(PathBuf::from(value()?)),
                "--iface" => iface = Some(value()?),
                "--subnet-file" => subnet_file = Some(PathBuf::from(value()?)),
                "--network" => network = Some(value()?),
                "--backend" => backend = value()?,
                other => bail!("unknown flag {other}"),
            }
        }
        Ok(Args {
            store: store.context("--store DIR is required")?,
            iface: iface.context("--iface NAME is required")?,
            subnet_file: subnet_file.context("--subnet-file PATH is required")?,
            network,
            backend,
        })
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("stopping; the datapath and the lease stay in place");
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_ansi(false).init();
    let args = Args::parse()?;

    // 1. The lease source.
    let store = LocalStore::open(&args.store)?;
    if let Some(net) = &args.network {
        store.set_config(&format!(
            r#"{{"Network": "{net}", "Backend": {{"Type": "{}"}}}}"#,
            args.backend
        ))?;
    }
    let manager = Arc::new(LeaseManager::new(store));
    let config = manager.get_network_config().await?;

    // 2. What backends get: the interface and a host context carrying the
    //    netlink handle.
    let (netlink, conn) = Netlink::connect()?;
    tokio::spawn(conn);
    // Interface selection as flanneld does it (`--iface` here; regexes,
    // can-reach and public IPs are fields of `IfaceSelection` too).
    let selection = IfaceSelection {
        ifaces: vec![args.iface.clone()],
        ..IfaceSelection::default()
    };
    let ext = select(&netlink, &selection, config.stack()?, (None, None)).await?;
    let ops: SharedOps = Arc::new(netlink);
    let host = HostContext::default()
        .with_env(|name| std::env::var(name).ok())
        .with_extension(ops);
    let backend: Box<dyn Backend> = match config.backend_type_lower().as_str() {
        flannel_backend_hostgw::TYPE => Box::new(flannel_backend_hostgw::HostGwBackend),
        flannel_backend_vxlan::TYPE => Box::new(flannel_backend_vxlan::VxlanBackend),
        other => bail!("this agent supports host-gw and vxlan, not {other}"),
    };

    // 3. Register: datapath device (if any) and lease.
    let ctx = RegisterContext {
        config: &config,
        ext_iface: &ext,
        manager: manager.as_ref(),
        previous_subnet: None,
        previous_ipv6_subnet: None,
        host: &host,
    };
    let mut network = backend.register_network(&ctx).await?;
    info!("holding lease {}", network.lease().key());

    // 4. subnet.env for the CNI plugin, then the manager is told.
    let env = SubnetEnv::new(&config, network.lease(), network.mtu(), false);
    write_subnet_env(&args.subnet_file, &env)?;
    manager.complete_lease(network.lease()).await?;

    // 5. Keep the datapath in step until asked to stop. A userspace
    //    datapath's driver would run on its own thread.
    Runner::new(manager)
        .with_executor(thread_executor("agent-datapath"))
        .run(network.as_mut(), shutdown())
        .await?;
    Ok(())
}
