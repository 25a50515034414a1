//! # flannel-backend-tencent
//!
//! flannel's `tencent-vpc` backend: no tunnel device; the node's subnet
//! becomes a route in its Tencent Cloud VPC's route table, next hop the node
//! itself (`NORMAL_CVM`, gateway = the node's public address). Each node
//! programs only its own route; the VPC routes to every node.
//!
//! Go programs the route once at start. Here the route is a desired state
//! reconciled every [`RESYNC_INTERVAL`] (one `DescribeRouteTables` call when
//! nothing changed): a route deleted in the console comes back, a disabled
//! route of ours is deleted and created again (Go's rule), and a route of
//! ours for a subnet we no longer hold is removed. Failures are retried with
//! [`retry_policy`] (5 s doubling to 5 min), so the API is never hammered.
//!
//! Configuration: `AccessKeyID` / `AccessKeySecret` in the `Backend` object,
//! else the environment's `ACCESS_KEY_ID` / `ACCESS_KEY_SECRET`. The
//! metadata service and the API endpoint default to Tencent's hosts and can
//! be pointed elsewhere with [`ENV_METADATA_URL`] and [`ENV_VPC_ENDPOINT`].
//! The secret lives in a [`tc3::Secret`], which never prints.

pub mod api;
pub mod http;
pub mod tc3;

use api::{ApiError, Metadata, NORMAL_CVM, USER, Vpc};
use flannel_core::backend::{Backend, BackendError, Network, RegisterContext, RetryPolicy};
use flannel_core::config::NetConfig;
use flannel_core::event::LeaseEvent;
use flannel_core::gojson::{RawJson, decode_struct};
use flannel_core::ip::Ip4Net;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::reconcile::{Object, ObjectSet, Reconciler};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;
use tc3::{Credentials, Secret};

/// The backend type string.
pub const TYPE: &str = "tencent-vpc";

/// How often the route is checked against the route table.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

/// How failed API calls are retried: 5 s doubling to 5 min, ±20 %.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy::new(Duration::from_secs(5), Duration::from_secs(300))
}

/// The environment variable overriding the metadata service's base URL.
pub const ENV_METADATA_URL: &str = "TENCENTCLOUD_METADATA_URL";
/// The environment variable overriding the VPC API endpoint.
pub const ENV_VPC_ENDPOINT: &str = "TENCENTCLOUD_VPC_ENDPOINT";
/// The default metadata service.
pub const DEFAULT_METADATA_URL: &str = "http://metadata.tencentyun.com";
/// The default VPC API endpoint.
pub const DEFAULT_VPC_ENDPOINT: &str = "https://vpc.tencentcloudapi.com";

/// Go's error when no credentials are configured (trailing space included).
pub const NO_CREDENTIALS: &str = "ACCESS_KEY_ID and ACCESS_KEY_SECRET must be provided! ";

/// The `Backend` options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TencentOptions {
    /// `AccessKeyID`.
    pub access_key_id: String,
    /// `AccessKeySecret`.
    pub access_key_secret: Secret,
}

impl TencentOptions {
    /// Decodes the raw `Backend` object (keys case-insensitive, as Go).
    pub fn parse(backend: Option<&RawJson>) -> Result<TencentOptions, BackendError> {
        let mut o = TencentOptions::default();
        let Some(obj) = decode_struct(
            backend,
            "tencentVpcBackendConfig",
            "tencentvpc.backendConfig",
        )
        .map_err(|e| BackendError::config(TYPE, e.0))?
        else {
            return Ok(o);
        };
        // A type error would quote the value: never for the secret.
        o.access_key_id = obj
            .string("AccessKeyID")
            .map_err(|e| BackendError::config(TYPE, e.0))?
            .unwrap_or_default();
        o.access_key_secret = Secret::new(
            obj.string("AccessKeySecret")
                .map_err(|_| BackendError::config(TYPE, "AccessKeySecret must be a string"))?
                .unwrap_or_default(),
        );
        Ok(o)
    }

    /// The credentials: the options if both are set, else both from the
    /// environment (Go's rule), else [`NO_CREDENTIALS`].
    pub fn credentials(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Credentials, BackendError> {
        let (id, secret) = if self.access_key_id.is_empty() || self.access_key_secret.is_empty() {
            (
                env("ACCESS_KEY_ID").unwrap_or_default(),
                Secret::new(env("ACCESS_KEY_SECRET").unwrap_or_default()),
            )
        } else {
            (self.access_key_id.clone(), self.access_key_secret.clone())
        };
        if id.is_empty() || secret.is_empty() {
            return Err(BackendError::Refused(NO_CREDENTIALS.to_string()));
        }
        Ok(Credentials { id, secret })
    }
}

/// A VPC route as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudRoute(pub api::Route);

impl Object for CloudRoute {
    type Key = String;

    fn key(&self) -> String {
        self.0.destination_cidr_block.clone()
    }

    fn satisfies(&self, desired: &CloudRoute) -> bool {
        self.0.gateway_type == desired.0.gateway_type
            && self.0.gateway_id == desired.0.gateway_id
            && self.0.enabled == desired.0.enabled
    }

    fn describe(&self) -> String {
        format!(
            "VPC route {} via {} {}{}",
            self.0.destination_cidr_block,
            self.0.gateway_type,
            self.0.gateway_id,
            if self.0.enabled { "" } else { " (disabled)" }
        )
    }
}

/// The route this node wants: its subnet to itself, enabled.
pub fn desired_route(subnet: Ip4Net, gateway: Ipv4Addr) -> CloudRoute {
    CloudRoute(api::Route {
        destination_cidr_block: subnet.to_string(),
        gateway_type: NORMAL_CVM.to_string(),
        gateway_id: gateway.to_string(),
        route_id: 0,
        enabled: true,
        route_type: USER.to_string(),
    })
}

/// Whether a listed route is ours (Go's matching): a `USER` route to a
/// `NORMAL_CVM` gateway that is our address, inside the flannel network.
pub fn owns(route: &api::Route, gateway: Ipv4Addr, network: Option<Ip4Net>) -> bool {
    route.gateway_type == NORMAL_CVM
        && route.gateway_id == gateway.to_string()
        && (route.route_type == USER || route.route_type.is_empty())
        && match (network, route.destination_cidr_block.parse::<Ip4Net>()) {
            (Some(n), Ok(dst)) => n.contains(dst.addr()),
            _ => false,
        }
}

/// The VPC route table of our VPC, as an [`ObjectSet`].
#[derive(Debug)]
pub struct RouteTableSet {
    vpc: Vpc,
    vpc_id: String,
    gateway: Ipv4Addr,
    network: Option<Ip4Net>,
    // Learnt from the listing; create and delete need it.
    table_id: Mutex<Option<String>>,
}

impl RouteTableSet {
    /// The route table of `vpc_id`, owning routes via `gateway` inside
    /// `network`.
    pub fn new(vpc: Vpc, vpc_id: String, gateway: Ipv4Addr, network: Option<Ip4Net>) -> Self {
        RouteTableSet {
            vpc,
            vpc_id,
            gateway,
            network,
            table_id: Mutex::new(None),
        }
    }

    fn api_error(object: String, e: ApiError) -> BackendError {
        BackendError::datapath(object, e)
    }

    async fn table(&self) -> Result<String, BackendError> {
        if let Some(t) = self
            .table_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(t);
        }
        self.list().await?;
        self.table_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| BackendError::Refused("no suitable routing table found".into()))
    }
}

#[async_trait::async_trait]
impl ObjectSet<CloudRoute> for RouteTableSet {
    async fn list(&self) -> Result<Vec<CloudRoute>, BackendError> {
        let table = self
            .vpc
            .route_table(&self.vpc_id)
            .await
            .map_err(|e| Self::api_error(format!("route table of {}", self.vpc_id), e))?
            .ok_or_else(|| BackendError::Refused("no suitable routing table found".into()))?;
        *self.table_id.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(table.route_table_id.clone());
        Ok(table.route_set.into_iter().map(CloudRoute).collect())
    }

    fn owned(&self, r: &CloudRoute) -> bool {
        owns(&r.0, self.gateway, self.network)
    }

    async fn add(&self, r: &CloudRoute) -> Result<(), BackendError> {
        let table = self.table().await?;
        self.vpc
            .create_route(&table, &r.0)
            .await
            .map_err(|e| Self::api_error(r.describe(), e))
    }

    async fn remove(&self, r: &CloudRoute) -> Result<(), BackendError> {
        if r.0.route_id == 0 {
            // Known only from memory, without an id: the next resync lists it.
            return Ok(());
        }
        let table = self.table().await?;
        self.vpc
            .delete_route(&table, r.0.route_id)
            .await
            .map_err(|e| Self::api_error(r.describe(), e))
    }
}

/// The tencent-vpc backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct TencentBackend;

/// The network: our lease and the reconciler of our one route.
pub struct TencentNetwork {
    lease: Lease,
    mtu: u32,
    gateway: Ipv4Addr,
    set: RouteTableSet,
    reconciler: Reconciler<CloudRoute>,
}

impl TencentNetwork {
    /// A network for `lease` (already acquired) programming `set`.
    pub fn new(lease: Lease, mtu: u32, gateway: Ipv4Addr, set: RouteTableSet) -> TencentNetwork {
        TencentNetwork {
            lease,
            mtu,
            gateway,
            set,
            reconciler: Reconciler::new(),
        }
    }

    fn desired(&self) -> Vec<CloudRoute> {
        self.lease
            .subnet
            .map(|s| desired_route(s, self.gateway))
            .into_iter()
            .collect()
    }
}

/// Builds the API clients for `config` from the metadata service: region,
/// MAC, VPC id.
pub async fn connect(
    ctx: &RegisterContext<'_>,
    credentials: Credentials,
    gateway: Ipv4Addr,
) -> Result<RouteTableSet, BackendError> {
    let md_url = ctx
        .host
        .env(ENV_METADATA_URL)
        .unwrap_or_else(|| DEFAULT_METADATA_URL.to_string());
    let endpoint = ctx
        .host
        .env(ENV_VPC_ENDPOINT)
        .unwrap_or_else(|| DEFAULT_VPC_ENDPOINT.to_string());
    let md_err = |e: ApiError| BackendError::datapath("instance metadata", e);
    let md = Metadata::new(&md_url).map_err(md_err)?;
    let region = md.region().await.map_err(md_err)?;
    let mac = md.mac().await.map_err(md_err)?;
    let vpc_id = md.vpc_id(&mac).await.map_err(md_err)?;
    tracing::info!("Tencent Cloud instance in region {region}, VPC {vpc_id}, MAC {mac}");
    let vpc = Vpc::new(&endpoint, &region, credentials)
        .map_err(|e| BackendError::datapath("VPC API endpoint", e))?;
    Ok(RouteTableSet::new(
        vpc,
        vpc_id,
        gateway,
        network_of(ctx.config),
    ))
}

fn network_of(config: &NetConfig) -> Option<Ip4Net> {
    config.network
}

#[async_trait::async_trait]
impl Backend for TencentBackend {
    fn backend_type(&self) -> &'static str {
        TYPE
    }

    async fn register_network(
        &self,
        ctx: &RegisterContext<'_>,
    ) -> Result<Box<dyn Network>, BackendError> {
        let options = TencentOptions::parse(ctx.config.backend.as_ref())?;
        let gateway = ctx.ext_iface.ext_addr.ok_or_else(|| {
            BackendError::Refused(format!(
                "the {TYPE} backend needs an IPv4 address on {}",
                ctx.ext_iface.name
            ))
        })?;
        // Go acquires the lease (public IP only) before checking credentials.
        let lease = ctx.acquire_lease(LeaseAttrs::new(gateway)).await?;
        let credentials = options.credentials(|n| ctx.host.env(n))?;
        let set = connect(ctx, credentials, gateway).await?;
        let mut net = TencentNetwork::new(lease, ctx.ext_iface.mtu, gateway, set);
        // Program the route now, as Go does; a failure is retried by the
        // runner's resyncs.
        if let Err(e) = net.resync(&[]).await {
            tracing::warn!(
                "The first programming of the VPC route failed and will be retried: {e}"
            );
        }
        Ok(Box::new(net))
    }
}

#[async_trait::async_trait]
impl Network for TencentNetwork {
    fn lease(&self) -> &Lease {
        &self.lease
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    async fn handle_events(
        &mut self,
        _events: &[LeaseEvent],
        _leases: &[&Lease],
    ) -> Result<(), BackendError> {
        // Remote subnets are routed by their own nodes' routes.
        Ok(())
    }

    async fn resync(&mut self, _leases: &[&Lease]) -> Result<(), BackendError> {
        let desired = self.desired();
        let report = self.reconciler.resync(&self.set, &desired).await?;
        if !report.is_empty() {
            tracing::info!("VPC route table synced: {report}");
        }
        for b in &report.newly_blocked {
            tracing::warn!("{b}");
        }
        Ok(())
    }

    fn resync_interval(&self) -> Option<Duration> {
        Some(RESYNC_INTERVAL)
    }

    fn retry_policy(&self) -> RetryPolicy {
        retry_policy()
    }

    async fn lease_changed(&mut self, lease: &Lease) -> Result<(), BackendError> {
        // The route follows the lease: the next resync creates the new one
        // and removes the old.
        self.lease = lease.clone();
        self.resync(&[]).await
    }
}
