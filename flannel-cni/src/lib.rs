//! # flannel-cni
//!
//! The `flannel` CNI plugin, a drop-in replacement for the upstream Go
//! plugin (`github.com/flannel-io/cni-plugin`). It is a meta-plugin: it reads
//! the subnet flanneld leased for this node from `subnet.env`, turns it into
//! a config for a real plugin (by default `bridge` with `host-local` IPAM),
//! saves that config under `dataDir` and runs the delegate with it.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the network config on stdin and `subnet.env`, decoded with upstream's rules |
//! | [`delegate`] | the delegate config (a pure function of the two), finding and running the delegate |
//! | [`store`] | the saved delegate configs, `<dataDir>/<containerID>` |
//! | [`skel`] | the CNI process contract: environment, commands, error JSON; [`skel::run`] is the program |
//! | [`error`] | the error types; their texts are upstream's, as they appear in the CNI error JSON |
//! | [`json`] | JSON read and written with Go `encoding/json` rules (error texts, key order, numbers) |
//!
//! The binary is `flannel`; install it as `/opt/cni/bin/flannel`. The crate
//! has no Cargo features and no async runtime.
//!
//! ## Example
//!
//! ```
//! use flannel_cni::{config::{FlannelEnv, NetConf}, delegate};
//!
//! let conf = NetConf::load(br#"{"name":"cni-flannel","type":"flannel"}"#)?;
//! let (env, _warnings) = FlannelEnv::parse(
//!     "/run/flannel/subnet.env",
//!     "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
//! )?;
//! let config = delegate::build(&conf, &env)?;
//! assert_eq!(
//!     delegate::encode(&config),
//!     r#"{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;
pub mod delegate;
pub mod error;
pub mod json;
pub mod skel;
pub mod store;
