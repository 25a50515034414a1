//! The tencent-vpc backend against the signature-checking fake VPC API and
//! metadata service of `flannel_testutil::tencent`: no root, no cloud.

use flannel_backend_tencent::{NO_CREDENTIALS, TencentBackend, retry_policy};
use flannel_core::backend::{Backend, ExternalInterface, HostContext, Network, RegisterContext};
use flannel_core::config::NetConfig;
use flannel_core::key::SubnetKey;
use flannel_core::lease::Lease;
use flannel_core::manager::{AcquireRequest, LeaseStream, ManagerError, SubnetManager};
use flannel_testutil::logs::Logs;
use flannel_testutil::tencent::{FakeTencent, ROUTE_LIMIT};
use std::time::Duration;

const ID: &str = "AKIDflanneltest0001";
const SECRET: &str = "s3cr3t-Do-Not-Log-Me-0123456789";
const OWN: &str = "10.5.7.0/24";
const ADDR: [u8; 4] = [192, 168, 0, 7];

/// Hands out one fixed subnet; watches never yield.
struct OneLease(SubnetKey);

#[async_trait::async_trait]
impl SubnetManager for OneLease {
    fn name(&self) -> &'static str {
        "test"
    }
    async fn get_network_config(&self) -> Result<NetConfig, ManagerError> {
        Err(ManagerError::Unavailable("not in this test".into()))
    }
    async fn acquire_lease(&self, request: &AcquireRequest) -> Result<Lease, ManagerError> {
        Ok(Lease::new(self.0, request.attrs.clone()))
    }
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, ManagerError> {
        Ok(lease.clone())
    }
    async fn watch_lease(&self, _: SubnetKey) -> Result<LeaseStream, ManagerError> {
        Ok(Box::pin(futures_util::stream::pending()))
    }
    async fn watch_leases(&self) -> Result<LeaseStream, ManagerError> {
        Ok(Box::pin(futures_util::stream::pending()))
    }
}

fn config(backend: &str) -> NetConfig {
    let mut c = NetConfig::parse(&format!(
        r#"{{"Network":"10.5.0.0/16","Backend":{backend}}}"#
    ))
    .unwrap();
    c.check().unwrap();
    c
}

fn iface() -> ExternalInterface {
    ExternalInterface {
        name: "eth0".into(),
        index: 2,
        mtu: 1500,
        iface_addr: Some(ADDR.into()),
        iface_v6_addr: None,
        ext_addr: Some(ADDR.into()),
        ext_v6_addr: None,
    }
}

fn host(fake: &FakeTencent, env: &[(&str, &str)]) -> HostContext {
    let mut vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.push(("TENCENTCLOUD_METADATA_URL".into(), fake.url()));
    vars.push(("TENCENTCLOUD_VPC_ENDPOINT".into(), fake.url()));
    HostContext::default()
        .with_env(move |n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
}

fn with_options() -> String {
    format!(r#"{{"Type":"tencent-vpc","AccessKeyID":"{ID}","AccessKeySecret":"{SECRET}"}}"#)
}

async fn register(
    config: &NetConfig,
    host: &HostContext,
) -> Result<Box<dyn Network>, flannel_core::backend::BackendError> {
    let manager = OneLease(OWN.replace('/', "-").parse().unwrap());
    let iface = iface();
    let ctx = RegisterContext {
        config,
        ext_iface: &iface,
        manager: &manager,
        previous_subnet: None,
        previous_ipv6_subnet: None,
        host,
    };
    TencentBackend.register_network(&ctx).await
}

fn own_routes(fake: &FakeTencent) -> Vec<(String, String, bool)> {
    fake.routes()
        .into_iter()
        .filter(|r| r.gateway_id == "192.168.0.7")
        .map(|r| (r.destination, r.gateway_type, r.enabled))
        .collect()
}

#[tokio::test]
async fn creates_restores_and_replaces_its_route() {
    let fake = FakeTencent::start(ID, SECRET).unwrap();
    // Another node's route and an admin's route via us outside the network.
    fake.insert_route("10.5.9.0/24", "192.168.0.9", true);
    fake.insert_route("172.16.0.0/16", "192.168.0.7", true);
    let mut net = register(&config(&with_options()), &host(&fake, &[]))
        .await
        .unwrap();
    assert_eq!(net.mtu(), 1500);
    let attrs = &net.lease().attrs;
    assert_eq!(attrs.public_ip.to_string(), "192.168.0.7");
    assert_eq!(attrs.backend_type, "", "Go publishes the public IP only");
    assert_eq!(
        own_routes(&fake),
        [
            ("172.16.0.0/16".into(), "NORMAL_CVM".into(), true),
            (OWN.into(), "NORMAL_CVM".into(), true)
        ]
    );
    assert_eq!(fake.routes().len(), 3);
    assert_eq!(net.resync_interval(), Some(Duration::from_secs(10)));

    // In step: one DescribeRouteTables and nothing else.
    let creates = fake.requests("CreateRoutes");
    net.resync(&[]).await.unwrap();
    assert_eq!(fake.requests("CreateRoutes"), creates);

    // Deleted in the console: restored.
    fake.delete_routes_to(OWN);
    net.resync(&[]).await.unwrap();
    assert!(own_routes(&fake).contains(&(OWN.into(), "NORMAL_CVM".into(), true)));

    // Disabled: deleted and created again (Go's rule).
    fake.disable_routes_to(OWN);
    let deletes = fake.requests("DeleteRoutes");
    net.resync(&[]).await.unwrap();
    assert_eq!(fake.requests("DeleteRoutes"), deletes + 1);
    let ours: Vec<_> = own_routes(&fake)
        .into_iter()
        .filter(|r| r.0 == OWN)
        .collect();
    assert_eq!(ours, [(OWN.into(), "NORMAL_CVM".into(), true)]);

    // A stale route of ours inside the network goes; others stay.
    fake.insert_route("10.5.99.0/24", "192.168.0.7", true);
    net.resync(&[]).await.unwrap();
    let all: Vec<String> = fake.routes().into_iter().map(|r| r.destination).collect();
    assert!(!all.contains(&"10.5.99.0/24".to_string()), "{all:?}");
    assert!(all.contains(&"10.5.9.0/24".to_string()));
    assert!(all.contains(&"172.16.0.0/16".to_string()));
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
}

#[tokio::test]
async fn the_51st_route_fails_with_the_apis_error() {
    let fake = FakeTencent::start(ID, SECRET).unwrap();
    for i in 0..ROUTE_LIMIT {
        fake.insert_route(&format!("10.6.{i}.0/24"), &format!("192.168.1.{i}"), true);
    }
    let logs = Logs::default();
    let _guard = logs.install(tracing::Level::TRACE);
    let mut net = register(&config(&with_options()), &host(&fake, &[]))
        .await
        .unwrap();
    let e = net.resync(&[]).await.unwrap_err().to_string();
    assert!(
        e.starts_with("VPC route 10.5.7.0/24 via NORMAL_CVM 192.168.0.7: CreateRoutes failed: LimitExceeded: The number of routes in the route table exceeds the limit of 50."),
        "{e}"
    );
    assert!(
        logs.text().contains("LimitExceeded"),
        "the first failure is logged: {}",
        logs.text()
    );
    assert!(!logs.text().contains(SECRET) && !e.contains(SECRET));
}

#[tokio::test]
async fn credentials_from_the_environment_and_their_absence() {
    let fake = FakeTencent::start(ID, SECRET).unwrap();
    let env = [("ACCESS_KEY_ID", ID), ("ACCESS_KEY_SECRET", SECRET)];
    // Only one option set: both come from the environment (Go's rule).
    let cfg = config(&format!(r#"{{"Type":"tencent-vpc","AccessKeyID":"{ID}"}}"#));
    register(&cfg, &host(&fake, &env)).await.unwrap();
    assert_eq!(own_routes(&fake).len(), 1);

    let bare = config(r#"{"Type":"tencent-vpc"}"#);
    let e = register(&bare, &host(&fake, &[])).await.err().unwrap();
    assert_eq!(e.to_string(), NO_CREDENTIALS);

    // A wrong secret: the API's refusal, with its code, never the secret.
    let wrong = [
        ("ACCESS_KEY_ID", ID),
        ("ACCESS_KEY_SECRET", "not-the-secret"),
    ];
    let logs = Logs::default();
    let _guard = logs.install(tracing::Level::TRACE);
    let mut net = register(&bare, &host(&fake, &wrong)).await.unwrap();
    let e = net.resync(&[]).await.unwrap_err().to_string();
    assert!(
        e.contains("DescribeRouteTables failed: AuthFailure.SignatureFailure"),
        "{e}"
    );
    assert!(!e.contains("not-the-secret") && !logs.text().contains("not-the-secret"));
    assert!(
        fake.refused()
            .iter()
            .all(|c| c == "AuthFailure.SignatureFailure")
    );
}

#[tokio::test]
async fn a_failing_api_is_retried_with_backoff_and_one_request_per_attempt() {
    let fake = FakeTencent::start(ID, SECRET).unwrap();
    let mut net = register(&config(&with_options()), &host(&fake, &[]))
        .await
        .unwrap();
    fake.delete_routes_to(OWN);
    fake.fail_with(Some((
        "RequestLimitExceeded",
        "Your request rate is too high.",
    )));
    let before = fake.request_log().len();
    // The runner's schedule for 30 minutes of failures, without the
    // waiting: each failed attempt is followed by the policy's next delay.
    let policy = net.retry_policy();
    assert_eq!(policy, retry_policy());
    let (mut elapsed, mut delay, mut attempts) = (Duration::ZERO, policy.min, 0);
    while elapsed < Duration::from_secs(30 * 60) {
        let e = net.resync(&[]).await.unwrap_err().to_string();
        assert!(
            e.contains("RequestLimitExceeded: Your request rate is too high."),
            "{e}"
        );
        attempts += 1;
        elapsed += delay;
        delay = policy.next(delay);
    }
    let requests = fake.request_log().len() - before;
    assert_eq!(requests, attempts, "one DescribeRouteTables per attempt");
    assert!(attempts <= 12, "{attempts} attempts in 30 minutes");
    // The API recovers: the next attempt repairs the route.
    fake.fail_with(None);
    net.resync(&[]).await.unwrap();
    assert_eq!(own_routes(&fake).len(), 1);
}

#[test]
fn secrets_never_print() {
    let cfg = config(&with_options());
    let o = flannel_backend_tencent::TencentOptions::parse(cfg.backend.as_ref()).unwrap();
    assert_eq!(o.access_key_id, ID);
    assert!(!format!("{o:?}").contains(SECRET));
    let c = o.credentials(|_| None).unwrap();
    assert!(!format!("{c:?}").contains(SECRET));
    assert_eq!(c.secret.expose(), SECRET);
    let bad = config(r#"{"Type":"tencent-vpc","AccessKeySecret":12345}"#);
    let e = flannel_backend_tencent::TencentOptions::parse(bad.backend.as_ref())
        .unwrap_err()
        .to_string();
    assert!(!e.contains("12345"), "{e}");
}
