//! # flannel-backend-ipsec
//!
//! flannel's ipsec backend: traffic between pods on different nodes is
//! carried in ESP tunnels (IPsec) that strongSwan's IKE daemon `charon`
//! negotiates, exactly as Go flannel sets them up, so Go and Rust nodes
//! interoperate:
//!
//! * charon is started and supervised by flanneld (found in `$PATH` or
//!   Go's list, [`charon::SEARCH_PATHS`]; SIGTERM when flanneld stops; a
//!   charon that dies is restarted at the next resync), or, with
//!   `--charon-vici-uri`, a running charon is used and left running
//!   ([`CharonSettings`]);
//! * over VICI ([`vici`], a small client of our own with no task of its
//!   own): `load-shared` of the PSK for our own and every peer's public
//!   address, and per peer `load-conn` with Go's names and parameters
//!   ([`network::load_conn`]: IKEv2, `aes256-sha256-modp4096`, tunnel mode,
//!   reqid 11, `start_action=start`, `close_action=trap`,
//!   `dpd_action=restart`, rekey 1 h, `policies=no`);
//! * flannel itself installs the three XFRM policies per peer (out, in,
//!   fwd; [`xfrm`]) over netlink; a removed lease's connection is unloaded
//!   and its policies deleted.
//!
//! Beyond Go: every [`network::RESYNC_INTERVAL`] the policies are
//! compared with the leases, so a deleted policy comes back and stale
//! flannel policies (reqid 11) of leases that no longer exist are removed,
//! also at start; connections of gone leases left in an attached charon are
//! unloaded. The PSK is kept in [`options::Psk`], whose `Debug` and
//! `Display` print `***`; VICI messages never print their values.
//!
//! Options (`Backend` object, keys case-insensitive): `PSK` (required, at
//! least 96 characters), `UDPEncap` (false), `ESPProposal`
//! (`aes128gcm16-sha256-prfsha256-ecp256`). MTU: interface MTU − 77
//! (− 8 more with `UDPEncap`). IPv4 only.
//!
//! Not as Go: Go sets a parent-death signal on charon; this crate forbids
//! `unsafe` (needed for `pre_exec`), so a charon flanneld started is killed
//! when flanneld's process handle drops, and stopped with SIGTERM on
//! shutdown.

pub mod charon;
pub mod network;
pub mod options;
pub mod vici;
pub mod xfrm;

pub use charon::CharonSettings;
pub use network::IpsecNetwork;
pub use options::{IpsecOptions, Psk, TYPE};

use flannel_core::backend::{Backend, BackendError, Network, RegisterContext};

/// The ipsec backend: a factory for [`IpsecNetwork`]. Reads a
/// [`CharonSettings`] from the host context's extensions (defaults when
/// absent: start charon, Go's socket).
#[derive(Debug, Default, Clone, Copy)]
pub struct IpsecBackend;

#[async_trait::async_trait]
impl Backend for IpsecBackend {
    fn backend_type(&self) -> &'static str {
        TYPE
    }

    async fn register_network(
        &self,
        ctx: &RegisterContext<'_>,
    ) -> Result<Box<dyn Network>, BackendError> {
        let settings = ctx
            .host
            .extensions
            .get::<CharonSettings>()
            .cloned()
            .unwrap_or_default();
        Ok(Box::new(IpsecNetwork::register(ctx, settings).await?))
    }
}
