//! # flannel-core
//!
//! The data model of [flannel](https://github.com/flannel-io/flannel), the layer-3
//! overlay network for containers, with no I/O: no tokio, no netlink, no sockets,
//! no files. Everything here is byte-compatible with Go flanneld so a mixed
//! Go/Rust cluster shares one etcd or one set of node annotations.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | `net-conf.json`: Go-semantics parsing, validation and defaults |
//! | [`ip`] | IPv4/IPv6 CIDR arithmetic with one generic API ([`ip::Cidr`]) |
//! | [`lease`] | [`lease::Lease`], [`lease::LeaseAttrs`] and their exact JSON bytes |
//! | [`key`] | subnet keys (`10.5.72.0-24`, `10.12.13.0-24&fd00:12:13::-56`) |
//! | [`subnet_env`] | the `subnet.env` text, written and read back |
//! | [`event`] | lease events with snapshot semantics, and the watcher diff |
//! | [`manager`] | the [`manager::SubnetManager`] trait (lease sources) |
//! | [`backend`] | the [`backend::Backend`] and [`backend::Network`] traits, the context backends get, and how a backend is driven |
//! | [`reconcile`] | the desired-state [`reconcile::Reconciler`] every backend applies its objects with |
//! | [`gojson`] | Go `encoding/json` decoding rules and encoding bytes, for backends' options |
//!
//! This crate has no Cargo features.
//!
//! ## Example
//!
//! ```
//! use flannel_core::{config::NetConfig, lease::{Lease, LeaseAttrs}, subnet_env::SubnetEnv};
//!
//! let mut cfg = NetConfig::parse(r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}"#)?;
//! cfg.check()?;
//! let lease = Lease::new("10.5.72.0-24".parse()?, LeaseAttrs::new([192, 168, 1, 10].into()));
//! assert_eq!(lease.attrs.to_json(), r#"{"PublicIP":"192.168.1.10","PublicIPv6":null}"#);
//! let env = SubnetEnv::new(&cfg, &lease, 1450, true).render();
//! assert_eq!(env, "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod backend;
pub mod config;
pub mod event;
pub mod gojson;
pub mod ip;
pub mod key;
pub mod lease;
pub mod manager;
pub mod reconcile;
pub mod subnet_env;
pub mod time;

pub use backend::{
    Backend, BackendError, ExternalInterface, HostContext, Network, RegisterContext, RetryPolicy,
};
pub use config::{ConfigError, NetConfig};
pub use event::{EventKind, LeaseEvent, LeaseWatchResult, LeaseWatcher};
pub use ip::{Cidr, Ip4Net, Ip6Net};
pub use key::SubnetKey;
pub use lease::{Lease, LeaseAttrs};
pub use manager::{AcquireRequest, ManagerError, SubnetManager};
