//! End to end: three flanneld with the `tencent-vpc` backend on etcd,
//! against the signature-checking fake VPC API and metadata service of
//! `flannel_testutil::tencent`, run inside the test switch's namespace (next
//! to etcd) so every host reaches it. Needs root and etcd-server, like the
//! other end-to-end tests.
#![cfg(feature = "tencent-vpc")]

use flannel_testutil::cluster::{
    Backing, CONVERGE, Cluster, ETCD_IP, env_value, v4_subnet, wait_until,
};
use flannel_testutil::tencent::{FakeTencent, ROUTE_LIMIT};
use std::net::TcpListener;
use std::time::{Duration, Instant};

const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");
const ID: &str = "AKIDe2eflannel";
const SECRET: &str = "e2e-Secret-Never-In-Logs-42";

fn route_of(fake: &FakeTencent, dst: &str, gw: &str) -> Result<(), String> {
    let routes = fake.routes();
    routes
        .iter()
        .any(|r| {
            r.destination == dst
                && r.gateway_id == gw
                && r.enabled
                && r.gateway_type == "NORMAL_CVM"
        })
        .then_some(())
        .ok_or_else(|| format!("no route {dst} via {gw} in {routes:?}"))
}

#[test]
fn three_nodes_program_keep_and_share_the_vpc_route_table() {
    let config = format!(
        r#"{{"Network": "10.244.0.0/16", "Backend": {{"Type": "tencent-vpc", "AccessKeyID": "{ID}", "AccessKeySecret": "{SECRET}"}}}}"#
    );
    let mut c = Cluster::new(FLANNELD, "tc3", 3, false, Backing::Etcd, &config);
    // The fake listens on the switch's address, which the hosts reach.
    let listener = c
        .topo
        .switch
        .run(|| TcpListener::bind((ETCD_IP, 0)))
        .expect("binding the fake in the switch namespace");
    let fake = FakeTencent::serve_on(listener, ID, SECRET).expect("fake Tencent API");
    // Room for two routes only: the third node's CreateRoutes hits the limit.
    for i in 0..ROUTE_LIMIT - 2 {
        fake.insert_route(
            &format!("172.16.{i}.0/24"),
            &format!("10.0.0.{}", i + 1),
            true,
        );
    }
    c.set_env("TENCENTCLOUD_METADATA_URL", &fake.url());
    c.set_env("TENCENTCLOUD_VPC_ENDPOINT", &fake.url());

    let mut subnets = Vec::new();
    for i in 0..2 {
        c.start(i, &[]);
        let env = c.wait_env(i);
        let (net, len) = v4_subnet(env_value(&env, "FLANNEL_SUBNET").expect("FLANNEL_SUBNET"));
        assert_eq!(
            env_value(&env, "FLANNEL_MTU"),
            Some("1500"),
            "MTU = interface MTU"
        );
        let dst = format!("{net}/{len}");
        let gw = c.host_ip(i).to_string();
        wait_until(CONVERGE, || route_of(&fake, &dst, &gw))
            .unwrap_or_else(|e| panic!("host {}: {e}\n{}", i + 1, c.log(i)));
        subnets.push((dst, gw));
    }

    // The third node: its lease and subnet.env, but the table is full.
    c.start(2, &[]);
    c.wait_env(2);
    wait_until(CONVERGE, || {
        c.log(2)
            .contains("CreateRoutes failed: LimitExceeded")
            .then_some(())
            .ok_or_else(|| "no LimitExceeded line yet".to_string())
    })
    .unwrap_or_else(|e| panic!("host 3: {e}\n{}", c.log(2)));
    assert_eq!(fake.routes().len(), ROUTE_LIMIT);

    // Room made in the console: the retried resync (backoff from 5 s)
    // creates the third route.
    fake.delete_routes_to("172.16.0.0/24");
    let env = c.wait_env(2);
    let (net, len) = v4_subnet(env_value(&env, "FLANNEL_SUBNET").expect("FLANNEL_SUBNET"));
    let third = format!("{net}/{len}");
    let gw3 = c.host_ip(2).to_string();
    wait_until(Duration::from_secs(40), || route_of(&fake, &third, &gw3))
        .unwrap_or_else(|e| panic!("host 3: {e}\n{}", c.log(2)));
    fake.delete_routes_to("172.16.1.0/24");

    // Deleted behind flanneld's back: back within a resync period.
    let (dst, gw) = subnets[0].clone();
    fake.delete_routes_to(&dst);
    wait_until(CONVERGE, || route_of(&fake, &dst, &gw))
        .unwrap_or_else(|e| panic!("host 1's route not restored: {e}\n{}", c.log(0)));

    // The API fails for 20 s: the nodes back off (5 s doubling) instead of
    // retrying at once; a fixed 1 s retry would have made 60 requests.
    fake.fail_with(Some((
        "RequestLimitExceeded",
        "Your request rate is too high.",
    )));
    let before = fake.request_log().len();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let during = fake.request_log().len() - before;
    fake.fail_with(None);
    assert!(
        during <= 3 * 5,
        "{during} requests from 3 nodes in {:?} of failures",
        start.elapsed()
    );

    // No signature was ever refused, and no log holds the secret.
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
    for i in 0..3 {
        let log = c.log(i);
        assert!(
            !log.contains(SECRET),
            "host {}: the secret is logged:\n{log}",
            i + 1
        );
    }
}
