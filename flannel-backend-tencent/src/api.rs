//! The instance metadata service and the VPC API (version 2017-03-12).

use crate::http::{self, BaseUrl, HttpError};
use crate::tc3::{self, Credentials};
use serde::{Deserialize, Serialize};

/// The VPC API version.
pub const VPC_VERSION: &str = "2017-03-12";
/// The service name in the credential scope.
pub const VPC_SERVICE: &str = "vpc";
/// The gateway type of a route to a CVM instance.
pub const NORMAL_CVM: &str = "NORMAL_CVM";
/// The route type of user-created routes.
pub const USER: &str = "USER";

/// A failed metadata or VPC API call. Never carries a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The HTTP exchange failed.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The metadata service answered with an error status.
    #[error("metadata {path}: HTTP status {status}")]
    Metadata {
        /// The path asked for.
        path: String,
        /// The status.
        status: u16,
    },
    /// The VPC API answered with an error.
    #[error("{action} failed: {code}: {message} (request {request_id})")]
    Api {
        /// The action.
        action: &'static str,
        /// Tencent's error code (`LimitExceeded`, `AuthFailure.SignatureFailure`).
        code: String,
        /// Tencent's message.
        message: String,
        /// The request id, for Tencent support.
        request_id: String,
    },
    /// The answer could not be understood.
    #[error("{action}: unexpected answer (HTTP status {status}): {reason}")]
    Decode {
        /// The action.
        action: &'static str,
        /// The HTTP status.
        status: u16,
        /// What was wrong.
        reason: String,
    },
}

/// The instance metadata service (`http://metadata.tencentyun.com` on a CVM).
#[derive(Debug, Clone)]
pub struct Metadata {
    base: BaseUrl,
}

impl Metadata {
    /// A client for the metadata service at `base_url`.
    pub fn new(base_url: &str) -> Result<Metadata, ApiError> {
        Ok(Metadata {
            base: BaseUrl::parse(base_url)?,
        })
    }

    async fn get(&self, path: &str) -> Result<String, ApiError> {
        let r = http::send(&self.base, "GET", path, &[], Vec::new()).await?;
        if r.status != 200 {
            return Err(ApiError::Metadata {
                path: path.to_string(),
                status: r.status,
            });
        }
        Ok(String::from_utf8_lossy(&r.body).trim().to_string())
    }

    /// The instance's region (`ap-guangzhou`).
    pub async fn region(&self) -> Result<String, ApiError> {
        self.get("/latest/meta-data/placement/region").await
    }

    /// The primary interface's MAC.
    pub async fn mac(&self) -> Result<String, ApiError> {
        self.get("/latest/meta-data/mac").await
    }

    /// The VPC of the interface with `mac`.
    pub async fn vpc_id(&self, mac: &str) -> Result<String, ApiError> {
        self.get(&format!(
            "/latest/meta-data/network/interfaces/macs/{mac}/vpc-id"
        ))
        .await
    }
}

/// A route of a VPC route table, as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Route {
    /// The destination CIDR.
    pub destination_cidr_block: String,
    /// The next hop type (`NORMAL_CVM`).
    pub gateway_type: String,
    /// The next hop (for `NORMAL_CVM`, the instance's private IP).
    pub gateway_id: String,
    /// The route id (0 when not yet created).
    #[serde(skip_serializing_if = "is_zero")]
    pub route_id: u64,
    /// Whether the route is enabled.
    pub enabled: bool,
    /// `USER`, `NETD`, `CCN`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub route_type: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A route table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct RouteTable {
    /// `rtb-…`.
    pub route_table_id: String,
    /// The table's routes.
    pub route_set: Vec<Route>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    response: serde_json::Value,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ErrorBody {
    code: String,
    message: String,
}

/// The VPC API client of one region.
#[derive(Debug, Clone)]
pub struct Vpc {
    base: BaseUrl,
    region: String,
    credentials: Credentials,
}

impl Vpc {
    /// A client for the API at `endpoint` (`https://vpc.tencentcloudapi.com`).
    pub fn new(endpoint: &str, region: &str, credentials: Credentials) -> Result<Vpc, ApiError> {
        Ok(Vpc {
            base: BaseUrl::parse(endpoint)?,
            region: region.to_string(),
            credentials,
        })
    }

    async fn call(
        &self,
        action: &'static str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, ApiError> {
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let host = self.base.authority();
        let action_lc = action.to_ascii_lowercase();
        let signed = [
            ("content-type", tc3::CONTENT_TYPE),
            ("host", host.as_str()),
            ("x-tc-action", action_lc.as_str()),
        ];
        let auth = tc3::authorization(&self.credentials, VPC_SERVICE, timestamp, &signed, &payload);
        let headers = [
            ("content-type", tc3::CONTENT_TYPE.to_string()),
            ("x-tc-action", action.to_string()),
            ("x-tc-timestamp", timestamp.to_string()),
            ("x-tc-version", VPC_VERSION.to_string()),
            ("x-tc-region", self.region.clone()),
            ("authorization", auth),
        ];
        let r = http::send(&self.base, "POST", "/", &headers, payload).await?;
        let decode = |reason: String| ApiError::Decode {
            action,
            status: r.status,
            reason,
        };
        let env: Envelope = serde_json::from_slice(&r.body).map_err(|e| decode(e.to_string()))?;
        if let Some(err) = env.response.get("Error") {
            let e: ErrorBody =
                serde_json::from_value(err.clone()).map_err(|e| decode(e.to_string()))?;
            return Err(ApiError::Api {
                action,
                code: e.code,
                message: e.message,
                request_id: env
                    .response
                    .get("RequestId")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string(),
            });
        }
        if r.status != 200 {
            return Err(decode("no Error object in a failed answer".into()));
        }
        Ok(env.response)
    }

    /// `DescribeRouteTables` filtered by `vpc-id`: the first table, or
    /// `None` when the VPC has none.
    pub async fn route_table(&self, vpc_id: &str) -> Result<Option<RouteTable>, ApiError> {
        let resp = self
            .call(
                "DescribeRouteTables",
                serde_json::json!({"Filters": [{"Name": "vpc-id", "Values": [vpc_id]}]}),
            )
            .await?;
        let tables: Vec<RouteTable> = resp
            .get("RouteTableSet")
            .map(|v| serde_json::from_value(v.clone()))
            .transpose()
            .map_err(|e| ApiError::Decode {
                action: "DescribeRouteTables",
                status: 200,
                reason: e.to_string(),
            })?
            .unwrap_or_default();
        Ok(tables.into_iter().next())
    }

    /// `CreateRoutes` with one route.
    pub async fn create_route(&self, table: &str, route: &Route) -> Result<(), ApiError> {
        let r = serde_json::json!({
            "DestinationCidrBlock": route.destination_cidr_block,
            "GatewayType": route.gateway_type,
            "GatewayId": route.gateway_id,
            "Enabled": route.enabled,
        });
        self.call(
            "CreateRoutes",
            serde_json::json!({"RouteTableId": table, "Routes": [r]}),
        )
        .await
        .map(drop)
    }

    /// `DeleteRoutes` of one route, by id.
    pub async fn delete_route(&self, table: &str, route_id: u64) -> Result<(), ApiError> {
        self.call(
            "DeleteRoutes",
            serde_json::json!({"RouteTableId": table, "Routes": [{"RouteId": route_id}]}),
        )
        .await
        .map(drop)
    }
}
