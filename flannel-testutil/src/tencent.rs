//! A fake Tencent Cloud VPC API and instance metadata service, for the
//! `tencent-vpc` backend's tests: plain HTTP/1.1 on a loopback (or given)
//! address, served by one thread.
//!
//! * `GET /latest/meta-data/placement/region`, `/latest/meta-data/mac` and
//!   `/latest/meta-data/network/interfaces/macs/<mac>/vpc-id` answer like
//!   the metadata service (any MAC gets the one VPC).
//! * `POST /` is the VPC API 2017-03-12: `DescribeRouteTables`,
//!   `CreateRoutes`, `DeleteRoutes` on one route table holding at most
//!   [`ROUTE_LIMIT`] routes. Every request's TC3-HMAC-SHA256 signature is
//!   checked with an implementation of its own (not the backend's): an
//!   unknown key, a wrong secret, a timestamp more than 5 minutes off, or a
//!   body or signed header changed after signing are refused with Tencent's
//!   error codes (`AuthFailure.SecretIdNotFound`,
//!   `AuthFailure.SignatureFailure`, `AuthFailure.SignatureExpire`).
//! * The fake counts requests per action and can be told to fail every call
//!   ([`FakeTencent::fail_with`], e.g. `RequestLimitExceeded`).

use ring::{digest, hmac};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The route table's limit, as Tencent documents it.
pub const ROUTE_LIMIT: usize = 50;
/// The region the metadata service reports.
pub const REGION: &str = "ap-guangzhou";
/// The MAC the metadata service reports.
pub const MAC: &str = "52:54:00:12:34:56";
/// The VPC the metadata service reports.
pub const VPC_ID: &str = "vpc-fake0001";
/// The id of the fake's route table.
pub const ROUTE_TABLE_ID: &str = "rtb-fake0001";

/// A route in the fake's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRoute {
    /// Id (assigned on insertion).
    pub route_id: u64,
    /// Destination CIDR.
    pub destination: String,
    /// `NORMAL_CVM`, …
    pub gateway_type: String,
    /// The next hop.
    pub gateway_id: String,
    /// Whether enabled.
    pub enabled: bool,
}

#[derive(Default)]
struct State {
    keys: BTreeMap<String, String>,
    routes: Vec<FakeRoute>,
    next_id: u64,
    requests: BTreeMap<String, usize>,
    request_times: Vec<(String, SystemTime)>,
    refused: Vec<String>,
    failure: Option<(String, String)>,
}

/// The running fake; stops when dropped.
pub struct FakeTencent {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeTencent {
    /// Starts the fake on a free loopback port, accepting the key pair
    /// `secret_id` / `secret_key`.
    pub fn start(secret_id: &str, secret_key: &str) -> std::io::Result<FakeTencent> {
        FakeTencent::start_on(
            "127.0.0.1:0".parse().expect("address"),
            secret_id,
            secret_key,
        )
    }

    /// Starts the fake on `bind` (port 0 for a free one).
    pub fn start_on(
        bind: SocketAddr,
        secret_id: &str,
        secret_key: &str,
    ) -> std::io::Result<FakeTencent> {
        FakeTencent::serve_on(TcpListener::bind(bind)?, secret_id, secret_key)
    }

    /// Serves on `listener`, which may belong to another network namespace
    /// (bind it on a thread inside the namespace with
    /// [`NetNs::run`](crate::netns::NetNs::run), then hand it here): the
    /// fake is then reachable from that namespace's hosts.
    pub fn serve_on(
        listener: TcpListener,
        secret_id: &str,
        secret_key: &str,
    ) -> std::io::Result<FakeTencent> {
        let addr = listener.local_addr()?;
        // Polled, so that dropping the fake needs no connection to itself
        // (which may be unreachable from the test's namespace).
        listener.set_nonblocking(true)?;
        let state = Arc::new(Mutex::new(State {
            next_id: 1000,
            ..State::default()
        }));
        lock(&state)
            .keys
            .insert(secret_id.to_string(), secret_key.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                        let _ = serve(c, &st);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(FakeTencent {
            addr,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://<addr>`: both the metadata URL and the API endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The routes now in the table.
    pub fn routes(&self) -> Vec<FakeRoute> {
        lock(&self.state).routes.clone()
    }

    /// Adds a route behind the API's back (as the console would); returns
    /// its id. Ignores the limit.
    pub fn insert_route(&self, destination: &str, gateway: &str, enabled: bool) -> u64 {
        let mut s = lock(&self.state);
        s.next_id += 1;
        let id = s.next_id;
        s.routes.push(FakeRoute {
            route_id: id,
            destination: destination.into(),
            gateway_type: "NORMAL_CVM".into(),
            gateway_id: gateway.into(),
            enabled,
        });
        id
    }

    /// Deletes every route to `destination` behind the API's back.
    pub fn delete_routes_to(&self, destination: &str) {
        lock(&self.state)
            .routes
            .retain(|r| r.destination != destination);
    }

    /// Disables every route to `destination` behind the API's back.
    pub fn disable_routes_to(&self, destination: &str) {
        for r in lock(&self.state).routes.iter_mut() {
            if r.destination == destination {
                r.enabled = false;
            }
        }
    }

    /// From now on answer every API call with this error (`None`: serve
    /// normally). Signatures are still checked first.
    pub fn fail_with(&self, failure: Option<(&str, &str)>) {
        lock(&self.state).failure = failure.map(|(c, m)| (c.to_string(), m.to_string()));
    }

    /// Requests of `action` so far (`"metadata"` for metadata reads), signed
    /// correctly or not.
    pub fn requests(&self, action: &str) -> usize {
        lock(&self.state).requests.get(action).copied().unwrap_or(0)
    }

    /// Every API request so far: action and arrival time.
    pub fn request_log(&self) -> Vec<(String, SystemTime)> {
        lock(&self.state).request_times.clone()
    }

    /// The error codes of requests refused for their authentication.
    pub fn refused(&self) -> Vec<String> {
        lock(&self.state).refused.clone()
    }
}

impl Drop for FakeTencent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Request {
        method,
        path,
        headers,
        body,
    })
}

fn respond(mut stream: &TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        if status == 200 { "OK" } else { "Error" },
        body.len()
    )?;
    stream.flush()
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let req = read_request(&stream)?;
    if req.method == "GET" {
        lock(state)
            .requests
            .entry("metadata".into())
            .and_modify(|n| *n += 1)
            .or_insert(1);
        let vpc_path = format!("/latest/meta-data/network/interfaces/macs/{MAC}/vpc-id");
        return match req.path.as_str() {
            "/latest/meta-data/placement/region" => respond(&stream, 200, REGION),
            "/latest/meta-data/mac" => respond(&stream, 200, MAC),
            p if p == vpc_path => respond(&stream, 200, VPC_ID),
            _ => respond(&stream, 404, "not found"),
        };
    }
    let answer = handle_api(&req, &mut lock(state));
    respond(&stream, 200, &json!({ "Response": answer }).to_string())
}

fn error(code: &str, message: &str) -> Value {
    json!({"Error": {"Code": code, "Message": message}, "RequestId": "fake-request"})
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac256(key: &[u8], data: &str) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
        .as_ref()
        .to_vec()
}

fn date_of(ts: i64) -> String {
    flannel_core::time::utc_date(ts)
}

/// Checks the TC3 signature of `req` against the known keys; the error code
/// and message on failure.
fn verify(
    req: &Request,
    keys: &BTreeMap<String, String>,
    now: i64,
) -> Result<(), (String, String)> {
    let fail = |c: &str, m: &str| Err((c.to_string(), m.to_string()));
    let Some(auth) = req.headers.get("authorization") else {
        return fail(
            "AuthFailure.SignatureFailure",
            "The Authorization header is missing.",
        );
    };
    let Some(rest) = auth.strip_prefix("TC3-HMAC-SHA256 ") else {
        return fail(
            "AuthFailure.SignatureFailure",
            "Unsupported signature method.",
        );
    };
    let mut fields = BTreeMap::new();
    for part in rest.split(", ") {
        if let Some((k, v)) = part.split_once('=') {
            fields.insert(k, v);
        }
    }
    let (Some(cred), Some(signed), Some(sig)) = (
        fields.get("Credential"),
        fields.get("SignedHeaders"),
        fields.get("Signature"),
    ) else {
        return fail(
            "AuthFailure.SignatureFailure",
            "Malformed Authorization header.",
        );
    };
    let cred: Vec<&str> = cred.split('/').collect();
    if cred.len() != 4 || cred[3] != "tc3_request" {
        return fail(
            "AuthFailure.SignatureFailure",
            "Malformed credential scope.",
        );
    }
    let (id, date, service) = (cred[0], cred[1], cred[2]);
    let Some(secret) = keys.get(id) else {
        return fail("AuthFailure.SecretIdNotFound", "The SecretId is not found.");
    };
    let ts: i64 = req
        .headers
        .get("x-tc-timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    if (now - ts).abs() > 300 {
        return fail(
            "AuthFailure.SignatureExpire",
            "Signature expired. Timestamp differs from the server time by more than 5 minutes.",
        );
    }
    let names: Vec<&str> = signed.split(';').collect();
    if !names.contains(&"content-type") || !names.contains(&"host") || date != date_of(ts) {
        return fail(
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated.",
        );
    }
    let mut canonical_headers = String::new();
    for n in &names {
        let v = req.headers.get(*n).map(|v| v.trim()).unwrap_or("");
        let v = if *n == "x-tc-action" {
            v.to_ascii_lowercase()
        } else {
            v.to_string()
        };
        canonical_headers.push_str(&format!("{n}:{v}\n"));
    }
    let canonical = format!(
        "POST\n/\n\n{canonical_headers}\n{signed}\n{}",
        hex(digest::digest(&digest::SHA256, &req.body).as_ref())
    );
    let sts = format!(
        "TC3-HMAC-SHA256\n{ts}\n{date}/{service}/tc3_request\n{}",
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let k = hmac256(format!("TC3{secret}").as_bytes(), date);
    let k = hmac256(&k, service);
    let k = hmac256(&k, "tc3_request");
    if hex(&hmac256(&k, &sts)) != *sig {
        return fail(
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated. Please check your signature is correct.",
        );
    }
    Ok(())
}

fn handle_api(req: &Request, s: &mut State) -> Value {
    let action = req.headers.get("x-tc-action").cloned().unwrap_or_default();
    *s.requests.entry(action.clone()).or_insert(0) += 1;
    s.request_times.push((action.clone(), SystemTime::now()));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if let Err((code, message)) = verify(req, &s.keys, now) {
        s.refused.push(code.clone());
        return error(&code, &message);
    }
    if req.headers.get("x-tc-version").map(String::as_str) != Some("2017-03-12") {
        return error(
            "InvalidParameter",
            "X-TC-Version must be 2017-03-12 for vpc.",
        );
    }
    if req.headers.get("x-tc-region").map(String::as_str) != Some(REGION) {
        return error("InvalidParameterValue", "The region is not supported.");
    }
    if let Some((code, message)) = &s.failure {
        return error(code, message);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return error("InvalidParameter", "The request body is not JSON.");
    };
    let table_ok = |b: &Value| b["RouteTableId"].as_str() == Some(ROUTE_TABLE_ID);
    match action.as_str() {
        "DescribeRouteTables" => {
            let vpc = &body["Filters"][0];
            let tables = if vpc["Name"] == "vpc-id" && vpc["Values"][0] == VPC_ID {
                let routes: Vec<Value> = s
                    .routes
                    .iter()
                    .map(|r| {
                        json!({
                            "DestinationCidrBlock": r.destination,
                            "GatewayType": r.gateway_type,
                            "GatewayId": r.gateway_id,
                            "RouteId": r.route_id,
                            "RouteDescription": "",
                            "Enabled": r.enabled,
                            "RouteType": "USER",
                            "RouteTableId": ROUTE_TABLE_ID,
                        })
                    })
                    .collect();
                vec![json!({"VpcId": VPC_ID, "RouteTableId": ROUTE_TABLE_ID, "RouteSet": routes})]
            } else {
                vec![]
            };
            json!({"TotalCount": tables.len(), "RouteTableSet": tables, "RequestId": "fake-request"})
        }
        "CreateRoutes" => {
            if !table_ok(&body) {
                return error("ResourceNotFound", "The route table does not exist.");
            }
            let new = body["Routes"].as_array().cloned().unwrap_or_default();
            if s.routes.len() + new.len() > ROUTE_LIMIT {
                return error(
                    "LimitExceeded",
                    &format!(
                        "The number of routes in the route table exceeds the limit of {ROUTE_LIMIT}."
                    ),
                );
            }
            for r in new {
                s.next_id += 1;
                let route = FakeRoute {
                    route_id: s.next_id,
                    destination: r["DestinationCidrBlock"].as_str().unwrap_or("").into(),
                    gateway_type: r["GatewayType"].as_str().unwrap_or("").into(),
                    gateway_id: r["GatewayId"].as_str().unwrap_or("").into(),
                    enabled: r["Enabled"].as_bool().unwrap_or(true),
                };
                s.routes.push(route);
            }
            json!({"TotalCount": 1, "RequestId": "fake-request"})
        }
        "DeleteRoutes" => {
            if !table_ok(&body) {
                return error("ResourceNotFound", "The route table does not exist.");
            }
            for r in body["Routes"].as_array().cloned().unwrap_or_default() {
                let id = r["RouteId"].as_u64().unwrap_or(0);
                s.routes.retain(|x| x.route_id != id);
            }
            json!({"RequestId": "fake-request"})
        }
        other => error(
            "InvalidAction",
            &format!("The action {other} is not supported by this fake."),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(fake: &FakeTencent, headers: &[(&str, String)], body: &str) -> Value {
        let mut s = TcpStream::connect(fake.addr()).unwrap();
        let mut req = format!("POST / HTTP/1.1\r\nhost: {}\r\n", fake.addr());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let json = out.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str::<Value>(json).unwrap()["Response"].clone()
    }

    fn signed(
        fake: &FakeTencent,
        secret: &str,
        ts: i64,
        body: &str,
    ) -> Vec<(&'static str, String)> {
        let host = fake.addr().to_string();
        let canonical = format!(
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:{host}\n\ncontent-type;host\n{}",
            hex(digest::digest(&digest::SHA256, body.as_bytes()).as_ref())
        );
        let date = date_of(ts);
        let sts = format!(
            "TC3-HMAC-SHA256\n{ts}\n{date}/vpc/tc3_request\n{}",
            hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
        );
        let k = hmac256(format!("TC3{secret}").as_bytes(), &date);
        let k = hmac256(&hmac256(&k, "vpc"), "tc3_request");
        vec![
            ("content-type", "application/json; charset=utf-8".into()),
            ("x-tc-action", "DescribeRouteTables".into()),
            ("x-tc-timestamp", ts.to_string()),
            ("x-tc-version", "2017-03-12".into()),
            ("x-tc-region", REGION.into()),
            (
                "authorization",
                format!(
                    "TC3-HMAC-SHA256 Credential=AKIDfake/{date}/vpc/tc3_request, SignedHeaders=content-type;host, Signature={}",
                    hex(&hmac256(&k, &sts))
                ),
            ),
        ]
    }

    #[test]
    fn the_verifier_matches_tencents_published_example() {
        // Tencent's documented request (cvm DescribeInstances at
        // 1551113065), checked by the fake's own verifier with the clock
        // requirement aside: the signature must be accepted.
        let body = r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
        let mut headers = BTreeMap::new();
        headers.insert(
            "content-type".to_string(),
            "application/json; charset=utf-8".to_string(),
        );
        headers.insert("host".to_string(), "cvm.tencentcloudapi.com".to_string());
        headers.insert("x-tc-timestamp".to_string(), "1551113065".to_string());
        headers.insert("authorization".to_string(), "TC3-HMAC-SHA256 Credential=AKID**********************0123456789EXAMPLE/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host, Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168".to_string());
        let req = Request {
            method: "POST".into(),
            path: "/".into(),
            headers,
            body: body.as_bytes().to_vec(),
        };
        let mut keys = BTreeMap::new();
        keys.insert(
            "AKID**********************0123456789EXAMPLE".to_string(),
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE".to_string(),
        );
        // At the example's own time it is accepted; today it is stale.
        assert_eq!(verify(&req, &keys, 1551113065 + 10), Ok(()));
        assert_eq!(
            verify(&req, &keys, 1551113065 + 301).unwrap_err().0,
            "AuthFailure.SignatureExpire"
        );
        let mut wrong = keys.clone();
        wrong.insert(
            "AKID**********************0123456789EXAMPLE".to_string(),
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLF".to_string(),
        );
        assert_eq!(
            verify(&req, &wrong, 1551113065).unwrap_err().0,
            "AuthFailure.SignatureFailure"
        );
        assert_eq!(date_of(1551113065), "2019-02-25");
    }

    #[test]
    fn refuses_wrong_secret_stale_timestamp_and_tampered_body() {
        let fake = FakeTencent::start("AKIDfake", "right-secret").unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let body = r#"{"Filters":[{"Name":"vpc-id","Values":["vpc-fake0001"]}]}"#;
        let ok = post(&fake, &signed(&fake, "right-secret", now, body), body);
        assert_eq!(
            ok["RouteTableSet"][0]["RouteTableId"], ROUTE_TABLE_ID,
            "{ok}"
        );
        let wrong = post(&fake, &signed(&fake, "wrong-secret", now, body), body);
        assert_eq!(wrong["Error"]["Code"], "AuthFailure.SignatureFailure");
        let stale = post(&fake, &signed(&fake, "right-secret", now - 600, body), body);
        assert_eq!(stale["Error"]["Code"], "AuthFailure.SignatureExpire");
        let tampered_body = body.replace("0001", "0002");
        let tampered = post(
            &fake,
            &signed(&fake, "right-secret", now, body),
            &tampered_body,
        );
        assert_eq!(tampered["Error"]["Code"], "AuthFailure.SignatureFailure");
        assert_eq!(fake.requests("DescribeRouteTables"), 4);
        assert_eq!(fake.refused().len(), 3);
    }
}
