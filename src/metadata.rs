//! EC2 instance metadata (IMDSv2): who this machine is, and whether its spot capacity is
//! about to be reclaimed.
//!
//! Built on aws-config's IMDS client, which fetches and refreshes the session token and
//! retries. The base address is configurable (`cloud.metadata_url`,
//! `CELLFARM_METADATA_URL`) so that tests serve the same paths on loopback.

use std::time::Duration;

use aws_config::imds::client::error::ImdsError;
use aws_config::imds::Client;
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// The link-local address IMDS answers on inside every EC2 instance.
pub const IMDS_ADDRESS: &str = "http://169.254.169.254";
/// Overrides `cloud.metadata_url` for one process (and is not passed to siblings).
pub const METADATA_URL_ENV: &str = "CELLFARM_METADATA_URL";
/// The instance tag naming the pool a launched cell serves.
pub const POOL_TAG: &str = "cellfarm:pool";

#[derive(Debug, thiserror::Error)]
#[error("instance metadata {path}: {reason}")]
pub struct MetadataError {
    pub path: String,
    pub reason: String,
}

/// Who this machine is.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub instance_id: String,
    pub instance_type: String,
    pub availability_zone: String,
    pub region: String,
}

/// A spot interruption notice (`spot/instance-action`): the machine is reclaimed at
/// `time`, about two minutes after the notice appears.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InstanceAction {
    /// `terminate`, `stop` or `hibernate`.
    pub action: String,
    pub time: DateTime<Utc>,
}

/// A rebalance recommendation: the machine is at elevated risk of a reclaim.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Rebalance {
    #[serde(rename = "noticeTime")]
    pub notice_time: DateTime<Utc>,
}

#[derive(Clone)]
pub struct Metadata {
    client: Client,
}

impl Metadata {
    /// A client of the IMDS at `base` (`http://host:port`).
    pub fn new(base: &str) -> Result<Metadata, MetadataError> {
        let client = Client::builder()
            .endpoint(base)
            .map_err(|e| MetadataError {
                path: base.into(),
                reason: e.to_string(),
            })?
            // A poll that hangs must not delay the next one by much.
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .build();
        Ok(Metadata { client })
    }

    /// The value at `meta-data/<path>`, or `None` when IMDS answers 404.
    pub async fn get(&self, path: &str) -> Result<Option<String>, MetadataError> {
        let full = format!("/latest/meta-data/{path}");
        match self.client.get(full.clone()).await {
            Ok(value) => Ok(Some(value.as_ref().to_string())),
            Err(ImdsError::ErrorResponse(e)) if e.response().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(MetadataError {
                path: full,
                reason: crate::failure::chain(&e),
            }),
        }
    }

    async fn require(&self, path: &str) -> Result<String, MetadataError> {
        self.get(path).await?.ok_or_else(|| MetadataError {
            path: format!("/latest/meta-data/{path}"),
            reason: "not found (404)".into(),
        })
    }

    pub async fn instance(&self) -> Result<Instance, MetadataError> {
        Ok(Instance {
            instance_id: self.require("instance-id").await?,
            instance_type: self.require("instance-type").await?,
            availability_zone: self.require("placement/availability-zone").await?,
            region: self.require("placement/region").await?,
        })
    }

    /// The instance tag `key`, when the instance exposes its tags in metadata.
    pub async fn tag(&self, key: &str) -> Result<Option<String>, MetadataError> {
        self.get(&format!("tags/instance/{key}")).await
    }

    /// The pending spot interruption, if any.
    pub async fn instance_action(&self) -> Result<Option<InstanceAction>, MetadataError> {
        self.json("spot/instance-action").await
    }

    /// The pending rebalance recommendation, if any.
    pub async fn rebalance(&self) -> Result<Option<Rebalance>, MetadataError> {
        self.json("events/recommendations/rebalance").await
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
    ) -> Result<Option<T>, MetadataError> {
        let Some(text) = self.get(path).await? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| MetadataError {
                path: format!("/latest/meta-data/{path}"),
                reason: format!("unexpected document {text:?}: {e}"),
            })
    }
}

/// The metadata base address a process uses: `--metadata-url` (`CELLFARM_METADATA_URL`),
/// then the config, then (on `ec2`) the real IMDS.
pub fn base_url(config: &crate::config::Config, overridden: Option<&str>) -> Option<String> {
    if let Some(url) = overridden {
        return Some(url.to_string());
    }
    if let Some(url) = &config.cloud.metadata_url {
        return Some(url.clone());
    }
    (config.cloud.kind == crate::config::CloudKind::Ec2).then(|| IMDS_ADDRESS.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse_as_aws_documents_them() {
        let a: InstanceAction =
            serde_json::from_str(r#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#)
                .unwrap();
        assert_eq!(a.action, "terminate");
        assert_eq!(a.time.to_rfc3339(), "2017-09-18T08:22:00+00:00");
        let r: Rebalance =
            serde_json::from_str(r#"{"noticeTime": "2020-11-05T08:22:00Z"}"#).unwrap();
        assert_eq!(r.notice_time.timestamp(), 1604564520);
    }
}
