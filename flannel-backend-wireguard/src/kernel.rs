//! Kernel WireGuard over generic netlink (what `wg` does): one
//! [`KernelDevice`] per `flannel-wg` link.

use crate::device::{DeviceStatus, PeerStatus, WgDevice, WgError};
use crate::keys::Key;
use crate::peers::PeerConfig;
use futures_util::StreamExt;
use genetlink::GenetlinkHandle;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroize;

type Conn = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One kernel WireGuard device, configured over a generic netlink socket of
/// its own. The socket's connection is driven inside each request (no task
/// is spawned), so requests are serialised.
pub struct KernelDevice {
    name: String,
    inner: tokio::sync::Mutex<(GenetlinkHandle, Conn)>,
}

impl KernelDevice {
    /// Opens a generic netlink socket for device `name` (in the calling
    /// thread's network namespace; inside a tokio runtime with I/O).
    pub fn open(name: &str) -> Result<KernelDevice, WgError> {
        let (conn, handle, _unsolicited) =
            genetlink::new_connection().map_err(|source| WgError::Io {
                object: "a generic netlink socket".into(),
                source,
            })?;
        Ok(KernelDevice {
            name: name.to_string(),
            inner: tokio::sync::Mutex::new((handle, Box::pin(conn))),
        })
    }

    fn object(&self) -> String {
        format!("wireguard device {}", self.name)
    }

    /// Sends `msg` and collects the answers, polling the connection.
    async fn request(
        &self,
        attributes: Vec<WireguardAttribute>,
        cmd: WireguardCmd,
        flags: u16,
    ) -> Result<Vec<WireguardMessage>, WgError> {
        let object = self.object();
        let mut guard = self.inner.lock().await;
        let (handle, conn) = &mut *guard;
        let mut msg = NetlinkMessage::from(GenlMessage::from_payload(WireguardMessage {
            cmd,
            attributes,
        }));
        msg.header.flags = NLM_F_REQUEST | flags;
        let work = async {
            let mut answers = handle
                .request(msg)
                .await
                .map_err(|e| genl_error(&object, e))?;
            let mut out = Vec::new();
            while let Some(answer) = answers.next().await {
                let answer = answer.map_err(|e| WgError::Protocol {
                    object: object.clone(),
                    detail: e.to_string(),
                })?;
                match answer.payload {
                    NetlinkPayload::InnerMessage(genl) => out.push(genl.payload),
                    NetlinkPayload::Error(err) if err.code.is_some() => {
                        return Err(WgError::Io {
                            object: object.clone(),
                            source: err.to_io(),
                        });
                    }
                    _ => {}
                }
            }
            Ok(out)
        };
        tokio::select! {
            r = work => r,
            () = conn.as_mut() => Err(WgError::Protocol {
                object: object.clone(),
                detail: "the generic netlink connection closed".into(),
            }),
        }
    }

    async fn set(&self, mut attributes: Vec<WireguardAttribute>) -> Result<(), WgError> {
        attributes.insert(0, WireguardAttribute::IfName(self.name.clone()));
        let r = self
            .request(attributes.clone(), WireguardCmd::SetDevice, NLM_F_ACK)
            .await;
        // The request held the private key: wipe our copy.
        for a in &mut attributes {
            if let WireguardAttribute::PrivateKey(k) = a {
                k.zeroize();
            }
        }
        r.map(drop)
    }
}

fn genl_error(object: &str, e: genetlink::GenetlinkError) -> WgError {
    match e {
        genetlink::GenetlinkError::NetlinkError(source) => WgError::Io {
            object: object.to_string(),
            source,
        },
        other => WgError::Protocol {
            object: object.to_string(),
            detail: other.to_string(),
        },
    }
}

fn allowed_ip((addr, prefix): (IpAddr, u8)) -> WireguardAllowedIp {
    let family = match addr {
        IpAddr::V4(_) => WireguardAddressFamily::Ipv4,
        IpAddr::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(addr),
        WireguardAllowedIpAttr::Cidr(prefix),
    ])
}

/// The `WGPEER_A_*` attributes that make the kernel's peer exactly `p`.
pub(crate) fn peer_attributes(p: &PeerConfig) -> WireguardPeer {
    let mut attrs = vec![
        WireguardPeerAttribute::PublicKey(*p.public_key.as_bytes()),
        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
        // All zeroes clears a PSK.
        WireguardPeerAttribute::PresharedKey(
            p.psk.as_ref().map(|k| *k.as_bytes()).unwrap_or([0; 32]),
        ),
        WireguardPeerAttribute::PersistentKeepalive(p.keepalive),
        WireguardPeerAttribute::AllowedIps(p.allowed_ips.iter().copied().map(allowed_ip).collect()),
    ];
    if let Some(ep) = p.endpoint {
        attrs.push(WireguardPeerAttribute::Endpoint(ep));
    }
    WireguardPeer(attrs)
}

fn parse_peer(peer: &WireguardPeer) -> Option<PeerStatus> {
    let mut key = None;
    let mut cfg_psk = None;
    let mut endpoint = None;
    let mut keepalive = 0;
    let mut allowed = Vec::new();
    let mut last = None;
    let (mut rx, mut tx) = (0, 0);
    for a in &peer.0 {
        match a {
            WireguardPeerAttribute::PublicKey(k) => key = Some(Key::from_bytes(*k)),
            WireguardPeerAttribute::PresharedKey(k) if *k != [0; 32] => {
                cfg_psk = Some(Key::from_bytes(*k));
            }
            WireguardPeerAttribute::Endpoint(ep) => endpoint = Some(*ep),
            WireguardPeerAttribute::PersistentKeepalive(k) => keepalive = *k,
            WireguardPeerAttribute::LastHandshake(t) if t.seconds > 0 || t.nano_seconds > 0 => {
                last = Some(
                    UNIX_EPOCH
                        + Duration::from_secs(t.seconds.max(0) as u64)
                        + Duration::from_nanos(t.nano_seconds.max(0) as u64),
                );
            }
            WireguardPeerAttribute::RxBytes(n) => rx = *n,
            WireguardPeerAttribute::TxBytes(n) => tx = *n,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    let mut addr = None;
                    let mut cidr = None;
                    for x in &ip.0 {
                        match x {
                            WireguardAllowedIpAttr::IpAddr(a) => addr = Some(*a),
                            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
                            _ => {}
                        }
                    }
                    if let (Some(a), Some(c)) = (addr, cidr) {
                        allowed.push((a, c));
                    }
                }
            }
            _ => {}
        }
    }
    Some(PeerStatus {
        config: PeerConfig {
            public_key: key?,
            endpoint,
            allowed_ips: allowed,
            psk: cfg_psk,
            keepalive,
        }
        .normalized(),
        last_handshake: last
            .filter(|t| *t > UNIX_EPOCH && *t <= SystemTime::now() + Duration::from_secs(3600)),
        rx_bytes: rx,
        tx_bytes: tx,
    })
}

#[async_trait::async_trait]
impl WgDevice for KernelDevice {
    fn name(&self) -> &str {
        &self.name
    }

    async fn status(&self) -> Result<DeviceStatus, WgError> {
        let answers = self
            .request(
                vec![WireguardAttribute::IfName(self.name.clone())],
                WireguardCmd::GetDevice,
                NLM_F_DUMP,
            )
            .await?;
        let mut st = DeviceStatus::default();
        // A device with many peers comes in several messages; the peers of
        // each are appended.
        for m in answers {
            for a in m.attributes {
                match a {
                    WireguardAttribute::PublicKey(k) if k != [0; 32] => {
                        st.public_key = Some(Key::from_bytes(k));
                    }
                    WireguardAttribute::PrivateKey(mut k) => k.zeroize(),
                    WireguardAttribute::ListenPort(p) => st.listen_port = p,
                    WireguardAttribute::Peers(peers) => {
                        st.peers.extend(peers.iter().filter_map(parse_peer));
                    }
                    _ => {}
                }
            }
        }
        Ok(st)
    }

    async fn configure(&self, private_key: &Key, listen_port: u16) -> Result<(), WgError> {
        self.set(vec![
            WireguardAttribute::PrivateKey(*private_key.as_bytes()),
            WireguardAttribute::ListenPort(listen_port),
        ])
        .await
    }

    async fn set_peer(&self, peer: &PeerConfig) -> Result<(), WgError> {
        self.set(vec![WireguardAttribute::Peers(vec![peer_attributes(peer)])])
            .await
    }

    async fn remove_peer(&self, public_key: &Key) -> Result<(), WgError> {
        self.set(vec![WireguardAttribute::Peers(vec![WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey(*public_key.as_bytes()),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
        ])])])
        .await
    }
}
