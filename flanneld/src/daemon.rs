//! The daemon: Go flanneld's startup order, then the runner until a signal.

use crate::backends;
use crate::cli::{Options, SubnetManagerKind};
use crate::health::{self, Health};
use crate::notify::Notifier;
use anyhow::{Context, Result, anyhow};
use flannel_core::backend::{BackendError, HostContext, RegisterContext};
use flannel_core::config::NetConfig;
use flannel_core::manager::{ManagerError, SubnetManager};
use flannel_core::subnet_env::SubnetEnv;
use flannel_netlink::{Netlink, SharedOps};
use flannel_subnet::env_file::{read_subnet_env, write_subnet_env};
use flannel_subnet::manager::LeaseManager;
use flannel_subnet::runner::{Runner, RunnerOptions, thread_executor};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// A future that completes on SIGTERM or SIGINT (for the whole process);
/// systemd is told `STOPPING=1` at once.
fn signals(notifier: Option<Arc<Notifier>>) -> Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!("received {name}, shutting down (datapath and lease are kept)");
        if let Some(n) = notifier {
            n.stopping();
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// `fut`'s output, or `None` when a signal comes first (a start-up step
/// waiting for an unreachable etcd must not delay the exit).
async fn unless_stopped<T>(
    stop: &watch::Receiver<bool>,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let mut stop = stop.clone();
    tokio::select! {
        _ = stop.wait_for(|v| *v) => None,
        v = fut => Some(v),
    }
}

/// The subnet manager the flags ask for; `None` when a signal came while
/// waiting for etcd.
async fn manager(
    opts: &Options,
    stop: &watch::Receiver<bool>,
    health: &Arc<Health>,
) -> Result<Option<Arc<dyn SubnetManager>>> {
    Ok(Some(match opts.subnet_manager {
        SubnetManagerKind::Local => {
            info!(
                "using the embedded local store in {}",
                opts.local_store_dir.display()
            );
            let store = flannel_subnet::local::LocalStore::open(&opts.local_store_dir)?;
            Arc::new(LeaseManager::new(store))
        }
        SubnetManagerKind::Etcd => {
            let cfg = flannel_subnet::etcd::EtcdConfig {
                endpoints: opts
                    .etcd_endpoint_list()
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
                prefix: opts.etcd_prefix.clone(),
                username: Some(opts.etcd_username.clone()).filter(|s| !s.is_empty()),
                password: Some(opts.etcd_password.clone()).filter(|s| !s.is_empty()),
                key_file: Some(opts.etcd_keyfile.clone())
                    .filter(|s| !s.is_empty())
                    .map(Into::into),
                cert_file: Some(opts.etcd_certfile.clone())
                    .filter(|s| !s.is_empty())
                    .map(Into::into),
                ca_file: Some(opts.etcd_cafile.clone())
                    .filter(|s| !s.is_empty())
                    .map(Into::into),
                ..flannel_subnet::etcd::EtcdConfig::default()
            };
            let endpoints = cfg.endpoints.join(",");
            info!("using etcd at {endpoints} (prefix {})", cfg.prefix);
            if !cfg.uses_tls() {
                // Once: the connection below may be retried many times.
                warn!("{}", flannel_subnet::etcd::INSECURE_WARNING);
            }
            // Connecting retries like the config fetch: etcd may start later.
            let mut delay = Duration::from_millis(500);
            loop {
                let attempt =
                    unless_stopped(stop, flannel_subnet::etcd::EtcdStore::connect(cfg.clone()));
                let Some(attempt) = attempt.await else {
                    return Ok(None);
                };
                match attempt {
                    Ok(store) => break Arc::new(LeaseManager::new(store)),
                    Err(e) if e.is_transient() => {
                        warn!("waiting for etcd at {endpoints}: {e}");
                        debug!("next etcd connection attempt in {} ms", delay.as_millis());
                        let mut stop = stop.clone();
                        tokio::select! {
                            _ = stop.wait_for(|v| *v) => return Ok(None),
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => return Err(anyhow!(e).context("Failed to create SubnetManager")),
                }
            }
        }
        #[cfg(feature = "kube")]
        SubnetManagerKind::Kube => {
            let options = crate::kube::options(opts, |name| std::env::var(name).ok());
            info!(
                "using the Kubernetes API ({}), network config from {}",
                match (&options.kubeconfig, &options.api_url) {
                    (Some(k), Some(u)) => format!("kubeconfig {} with server {u}", k.display()),
                    (Some(k), None) => format!("kubeconfig {}", k.display()),
                    (None, Some(u)) => format!("server {u}"),
                    (None, None) => "in-cluster service account".to_string(),
                },
                options.net_config_path.display()
            );
            let connecting = flannel_subnet::kube::KubeSubnetManager::connect(options);
            let Some(connected) = unless_stopped(stop, connecting).await else {
                return Ok(None);
            };
            let m = connected.map_err(|e| anyhow!(e).context("Failed to create SubnetManager"))?;
            info!("this is node {}", m.node_name());
            crate::kube::attach(health, m.status());
            Arc::new(m)
        }
        #[cfg(not(feature = "kube"))]
        SubnetManagerKind::Kube => {
            let _ = health;
            anyhow::bail!(
                "Failed to create SubnetManager: this flanneld was built without the `kube` feature; \
             use --subnet-manager=etcd or the local store"
            )
        }
    }))
}

/// Fetches the network config, retrying every second (Go prints `timed out`).
async fn fetch_config(
    sm: &dyn SubnetManager,
    stop: &watch::Receiver<bool>,
) -> Result<Option<NetConfig>> {
    loop {
        let Some(fetched) = unless_stopped(stop, sm.get_network_config()).await else {
            return Ok(None);
        };
        match fetched {
            Ok(cfg) => return Ok(Some(cfg)),
            Err(e @ ManagerError::Config(_)) => {
                return Err(anyhow!(e).context("invalid network config"));
            }
            Err(e) => error!("Couldn't fetch network config: {e}"),
        }
        let mut stop = stop.clone();
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Runs flanneld until SIGTERM/SIGINT.
pub async fn run(opts: Options) -> Result<()> {
    let notifier = Notifier::from_env().map(Arc::new);
    let stop = signals(notifier.clone())?;
    let runner_options = RunnerOptions::default()
        .with_renew_margin_minutes(opts.subnet_lease_renew_margin)
        .map_err(|e| anyhow!(e))?;
    // Served from the start: /healthz answers (and /readyz says not ready)
    // while flanneld waits for etcd.
    let health = Arc::new(Health::default());
    // READY=1 only when /readyz would answer 200 (lease, subnet.env, watch
    // in sync, rules), not merely when subnet.env is written.
    if let Some(n) = notifier {
        tokio::spawn(crate::notify::follow(n, health.clone(), stop.clone()));
    }
    if opts.healthz_port > 0 {
        let addr = format!("{}:{}", opts.healthz_ip, opts.healthz_port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("healthz: cannot listen on {addr}"))?;
        tokio::spawn(health::serve(listener, health.clone()));
    }
    let Some(sm) = manager(&opts, &stop, &health).await? else {
        info!("Exiting cleanly...");
        return Ok(());
    };

    let Some(config) = fetch_config(sm.as_ref(), &stop).await? else {
        info!("Exiting cleanly...");
        return Ok(());
    };
    health.set_config(&config);
    let stack = config.stack()?;
    let (netlink, conn) = Netlink::connect().context("cannot open a netlink socket")?;
    tokio::spawn(conn);
    let stored = sm.stored_public_ips().await;
    let selection = opts.iface_selection()?;
    let ext = flannel_netlink::iface::select(&netlink, &selection, stack, stored).await?;
    let backend =
        backends::create(&config.backend_type_lower()).context("Error fetching backend")?;
    let ops: SharedOps = Arc::new(netlink.clone());
    let host = HostContext::default()
        .with_env(|name| std::env::var(name).ok())
        .with_extension(ops);
    // The udp backend attaches its engine here; /metrics reads it.
    #[cfg(feature = "udp")]
    let host = {
        let udp = flannel_backend_udp::UdpMetrics::default();
        let read = udp.clone();
        health.add_metrics_source(Arc::new(move |out: &mut String| {
            out.push_str(&crate::metrics::udp_families(read.read()))
        }));
        host.with_extension(udp)
    };
    #[cfg(feature = "ipsec")]
    let host = host.with_extension(flannel_backend_ipsec::CharonSettings {
        executable: Some(opts.charon_executable_path.clone())
            .filter(|p| !p.is_empty())
            .map(Into::into),
        vici_uri: Some(opts.charon_vici_uri.clone()).filter(|u| !u.is_empty()),
    });
    // The wireguard backend publishes its devices and peers here.
    #[cfg(feature = "wireguard")]
    let host = {
        let wg = flannel_backend_wireguard::WgMetrics::default();
        let read = wg.clone();
        health.add_metrics_source(Arc::new(move |out: &mut String| {
            crate::metrics::render_wireguard(&read.read(), out)
        }));
        host.with_extension(wg)
    };

    let previous = read_subnet_env(&opts.subnet_file)?;
    let (prev4, w4) = previous.previous_subnet();
    let (prev6, w6) = previous.previous_ipv6_subnet();
    for w in w4
        .iter()
        .chain(&w6)
        .filter(|_| previous.entries().next().is_some())
    {
        warn!("{w} in file: {}", opts.subnet_file.display());
    }
    let ctx = RegisterContext {
        config: &config,
        ext_iface: &ext,
        manager: sm.as_ref(),
        previous_subnet: prev4,
        previous_ipv6_subnet: prev6,
        host: &host,
    };
    let mut network = loop {
        let Some(registered) = unless_stopped(&stop, backend.register_network(&ctx)).await else {
            info!("Exiting cleanly...");
            return Ok(());
        };
        match registered {
            Ok(n) => break n,
            Err(BackendError::Manager(e)) if e.is_transient() => {
                warn!("Error registering network (retrying in 1 s): {e}");
                let mut s = stop.clone();
                tokio::select! {
                    _ = s.wait_for(|v| *v) => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => return Err(anyhow!(e).context("Error registering network")),
        }
    };
    info!("lease acquired: {}", network.lease().key());
    health.set_lease(network.lease());

    // ---- traffic rules (§0 steps 16–19; see crate::traffic) ----
    // Before subnet.env is rewritten: `previous` holds the last run's
    // network and subnet for the rule recycling. A failure exits 1 like Go;
    // the resync and blackhole tasks stop with `stop`.
    let rules = crate::traffic::start(
        &opts,
        &config,
        network.lease(),
        &previous,
        &netlink,
        &stop,
        &health,
    )
    .await?;
    // ---- end traffic rules ----

    let env = SubnetEnv::new(&config, network.lease(), network.mtu(), opts.ip_masq);
    match write_subnet_env(&opts.subnet_file, &env) {
        Ok(()) => {
            info!("Wrote subnet file to {}", opts.subnet_file.display());
            health.set_subnet_file_written(true);
            info!("flannel is ready");
        }
        Err(e) => warn!("Failed to write subnet file: {e}"),
    }
    // Kubernetes clears the node's NetworkUnavailable condition here. Go
    // tries once; a failure keeps /readyz at 503, so keep trying.
    if let Err(e) = sm.complete_lease(network.lease()).await {
        error!("{e}");
        tokio::spawn(retry_complete_lease(
            sm.clone(),
            network.lease().clone(),
            stop.clone(),
        ));
    }

    // A userspace datapath runs on a thread of its own, never waiting for
    // the runner's handlers.
    let runner = Runner::new(sm.clone())
        .with_options(runner_options)
        .with_executor(thread_executor("flannel-datapath"));
    health.set_runner(runner.status().clone());
    let follower = tokio::spawn(follow_lease(
        runner.status().subscribe_lease(),
        network.lease().clone(),
        FollowTargets {
            rules: rules.rules.clone(),
            config: config.clone(),
            mtu: network.mtu(),
            ip_masq: opts.ip_masq,
            subnet_file: opts.subnet_file.clone(),
            health: health.clone(),
        },
    ));
    let result = runner.run(network.as_mut(), stopped(stop)).await;
    follower.abort();
    result?;
    info!("Exiting cleanly...");
    Ok(())
}

/// How often a failed [`SubnetManager::complete_lease`] is tried again.
const COMPLETE_RETRY: Duration = Duration::from_secs(10);

async fn retry_complete_lease(
    sm: Arc<dyn SubnetManager>,
    lease: flannel_core::lease::Lease,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            _ = tokio::time::sleep(COMPLETE_RETRY) => {}
        }
        match sm.complete_lease(&lease).await {
            Ok(()) => {
                info!("completed the lease after earlier failures");
                return;
            }
            Err(e) => debug!("{e} (trying again in {} s)", COMPLETE_RETRY.as_secs()),
        }
    }
}

/// What depends on the lease besides the datapath.
struct FollowTargets {
    rules: Arc<flannel_traffic::Rules>,
    config: NetConfig,
    mtu: u32,
    ip_masq: bool,
    subnet_file: std::path::PathBuf,
    health: Arc<Health>,
}

/// Follows the runner's lease: when our subnet moves (the lease was deleted
/// and its subnet taken by another node before we got it back), the traffic
/// rules, the blackhole route and `subnet.env` are derived anew from the new
/// lease, as at start.
async fn follow_lease(
    mut rx: watch::Receiver<Option<flannel_core::lease::Lease>>,
    mut current: flannel_core::lease::Lease,
    t: FollowTargets,
) {
    while rx.changed().await.is_ok() {
        let Some(lease) = rx.borrow_and_update().clone() else {
            continue;
        };
        t.health.set_lease(&lease);
        if lease.key() == current.key() {
            continue;
        }
        warn!(
            "our lease moved from {} to {}; re-deriving the traffic rules, the blackhole route and subnet.env",
            current.key(),
            lease.key()
        );
        let plan = t.rules.plan().for_lease(&lease);
        if let Err(e) = t.rules.update(plan).await {
            error!(
                "Failed to move the traffic rules to {}: {}",
                lease.key(),
                flannel_traffic::report(&e)
            );
        }
        let env = SubnetEnv::new(&t.config, &lease, t.mtu, t.ip_masq);
        match write_subnet_env(&t.subnet_file, &env) {
            Ok(()) => info!("Wrote subnet file to {}", t.subnet_file.display()),
            Err(e) => error!("Failed to write subnet file: {e}"),
        }
        current = lease;
    }
}
