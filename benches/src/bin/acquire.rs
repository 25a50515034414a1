//! Lease acquisition against a large cluster on a real local etcd.
//!
//! Fills etcd with `N` leases (default 60,000; first argument to change), then
//! times, side by side:
//! - baseline: a raw etcd read of every key under `<prefix>/subnets/`, paged
//!   as our store pages it (what any acquisition must at least do);
//! - ours: `LeaseManager::acquire_lease` end to end (config read and
//!   validation, listing and decoding every lease, the free-subnet search,
//!   the create transaction).
//!
//! Both figures are of kind `reference`: the raw range read is the floor
//! inside the same work, not another way of doing it.
//!
//! Prints one row per figure and the figures as JSON lines.

use etcd_client::{GetOptions, PutOptions, Txn, TxnOp};
use flannel_benches::{Figure, Kind, median_ms, print_figures};
use flannel_core::lease::LeaseAttrs;
use flannel_core::manager::{AcquireRequest, SubnetManager};
use flannel_subnet::etcd::{EtcdConfig, EtcdStore, LIST_PAGE, prefix_end};
use flannel_subnet::manager::LeaseManager;
use flannel_subnet::store::LeaseStore;
use flannel_testutil::etcd::EtcdServer;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const ROUNDS: usize = 9;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(60_000);
    let server = EtcdServer::start()?;
    let store = EtcdStore::connect(EtcdConfig {
        endpoints: server.endpoints(),
        timeout: Duration::from_secs(30),
        ..EtcdConfig::default()
    })
    .await?;
    // A /8 split into /24s has 65,535 usable subnets.
    store
        .put_config(r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#)
        .await?;
    let mut client = store.client().clone();
    let lease_id = client.lease_grant(86_400, None).await?.id();
    let fill = Instant::now();
    let mut i = 0u32;
    while i < n {
        let ops: Vec<TxnOp> = (i..(i + 128).min(n))
            .map(|j| {
                let idx = j + 1;
                let key = format!(
                    "/coreos.com/network/subnets/10.{}.{}.0-24",
                    idx >> 8,
                    idx & 0xff
                );
                let attrs = LeaseAttrs {
                    backend_type: "vxlan".into(),
                    backend_data: Some(
                        flannel_core::gojson::RawJson::new(&format!(
                            r#"{{"VNI":1,"VtepMAC":"0a:00:{:02x}:{:02x}:{:02x}:01"}}"#,
                            idx >> 16,
                            (idx >> 8) & 0xff,
                            idx & 0xff
                        ))
                        .expect("valid JSON"),
                    ),
                    ..LeaseAttrs::new(Ipv4Addr::from(0xc0a8_0000 + idx))
                };
                TxnOp::put(
                    key,
                    attrs.to_json(),
                    Some(PutOptions::new().with_lease(lease_id)),
                )
            })
            .collect();
        client.txn(Txn::new().and_then(ops)).await?;
        i += 128;
    }
    eprintln!("filled {n} leases in {:?}", fill.elapsed());

    let mut raw = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let end = prefix_end(b"/coreos.com/network/subnets/");
        let mut from = b"/coreos.com/network/subnets/".to_vec();
        let (mut revision, mut count) = (0, 0);
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE)
                .with_revision(revision);
            let resp = client.get(from.clone(), Some(opts)).await?;
            revision = resp.header().map_or(0, |h| h.revision());
            count += resp.kvs().len();
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        assert!(count >= n as usize);
        raw.push(t.elapsed());
    }

    let mut listing = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let l = store.list().await?;
        listing.push(t.elapsed());
        assert!(l.leases.len() >= n as usize);
    }
    let list_fig = Figure {
        name: format!("list and decode {n} leases (median of {ROUNDS})"),
        kind: Kind::Reference,
        value: median_ms(&mut listing),
        unit: "ms",
        baseline_name: "raw etcd range read of all leases".into(),
        baseline: median_ms(&mut raw.clone()),
    };

    let manager = LeaseManager::new(store);
    let mut ours = Vec::new();
    for round in 0..ROUNDS {
        let attrs = LeaseAttrs::new(Ipv4Addr::new(172, 16, 0, round as u8 + 1));
        let t = Instant::now();
        let lease = manager.acquire_lease(&AcquireRequest::new(attrs)).await?;
        ours.push(t.elapsed());
        assert!(lease.subnet.is_some());
    }
    let fig = Figure {
        name: format!("acquire lease, {n} existing (median of {ROUNDS})"),
        kind: Kind::Reference,
        value: median_ms(&mut ours),
        unit: "ms",
        baseline_name: "raw etcd range read of all leases".into(),
        baseline: median_ms(&mut raw),
    };
    print_figures(&[list_fig, fig]);
    Ok(())
}
