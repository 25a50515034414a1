//! # flannel-subnet
//!
//! The lease side of [flannel](https://github.com/flannel-io/flannel): where a
//! node's subnet comes from and how it learns about everyone else's.
//!
//! | module | what |
//! |---|---|
//! | [`allocator`] | free-subnet search (sweep, no quadratic walk), Go's random choice among the first 100, compatibility rules |
//! | [`manager`] | [`manager::LeaseManager`]: the [`SubnetManager`](flannel_core::SubnetManager) for any store — acquisition policy, renewal, reconnecting watch |
//! | [`store`] | the [`store::LeaseStore`] contract a datastore implements |
//! | [`local`] | the embedded file-backed store (feature `local`, default) |
//! | `etcd` | the wire-compatible etcd v3 store (feature `etcd`) |
//! | `kube` | the Kubernetes subnet manager: leases from Node podCIDRs, peers from a Node watch (feature `kube`) |
//! | [`runner`] | [`runner::Runner`]: the loop that drives a backend's network |
//! | [`env_file`] | reading and atomically writing `subnet.env` |
//!
//! ## Features
//!
//! - `local` (default): the embedded single-machine store. A cluster uses etcd
//!   or the Kubernetes API instead.
//! - `etcd`: the etcd v3 store (pulls in `etcd-client`; building it needs
//!   `protoc`).
//! - `kube`: the Kubernetes subnet manager (kube-rs and k8s-openapi). As
//!   kube-rs documents, this library leaves k8s-openapi's Kubernetes version
//!   feature (`v1_*`) to the final binary: a program using this feature
//!   depends on `k8s-openapi` with one version feature itself.
//!
//! Nothing in this crate spawns tasks or installs signal handlers: watches are
//! streams the caller polls and [`runner::Runner::run`] takes its shutdown
//! future from the caller.
//!
//! ## Example: acquire a lease and follow the others
//!
//! ```no_run
//! use flannel_core::{AcquireRequest, LeaseAttrs, SubnetManager};
//! use flannel_subnet::{local::LocalStore, manager::LeaseManager};
//! use futures_util::StreamExt;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let store = LocalStore::open("/run/flannel/local-store")?;
//! store.set_config(r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}"#)?;
//! let manager = LeaseManager::new(store);
//! let lease = manager
//!     .acquire_lease(&AcquireRequest::new(LeaseAttrs::new([192, 168, 1, 10].into())))
//!     .await?;
//! println!("our subnet: {}", lease.key());
//! let mut watch = manager.watch_leases().await?;
//! while let Some(result) = watch.next().await {
//!     println!("{:?}", result?);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## Example: a node agent (store → backend → runner)
//!
//! The whole of a custom node agent, runnable, is
//! `examples/node-agent/main.rs` in the workspace (`cargo run -p
//! flannel-examples --bin node-agent`); its core:
//!
//! ```text
//! let manager = Arc::new(LeaseManager::new(LocalStore::open(dir)?));
//! let config = manager.get_network_config().await?;
//! let host = HostContext::default().with_extension::<SharedOps>(Arc::new(netlink));
//! let ctx = RegisterContext { config: &config, ext_iface: &ext, manager: manager.as_ref(),
//!     previous_subnet: None, previous_ipv6_subnet: None, host: &host };
//! let mut network = HostGwBackend.register_network(&ctx).await?;
//! write_subnet_env(path, &SubnetEnv::new(&config, network.lease(), network.mtu(), false))?;
//! Runner::new(manager)
//!     .with_executor(thread_executor("datapath")) // a userspace datapath never stalls
//!     .run(network.as_mut(), shutdown)            // shutdown: any future
//!     .await?;
//! ```
pub mod allocator;
pub mod env_file;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "kube")]
pub mod kube;
#[cfg(feature = "local")]
pub mod local;
pub mod manager;
pub mod runner;
pub mod store;
