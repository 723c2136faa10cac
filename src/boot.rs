//! Start-up: find the config, check the host, connect to the farm's systems.
//!
//! [`ConfigSource`] reads the config (a file, or an object in S3) and tells its version;
//! [`Systems`] connects to everything a command uses, once, with errors that say which
//! address did not answer.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use aws_config::SdkConfig;

use crate::cloud::Cloud;
use crate::config::{Config, ConfigError, S3};
use crate::ledger::Ledger;
use crate::locks::Coordinator;
use crate::mitosis::{LiveFarm, Ticker};
use crate::queue::Broker;
use crate::s3url::S3Url;
use crate::store::{ObjectStore, S3Store};

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured only when stderr is a terminal.
    Text,
    /// One JSON object per line (journald, CloudWatch).
    Json,
}

/// Starts logging to stderr, filtered by `RUST_LOG` (default: our info, the libraries'
/// warnings; none from lapin and its promises, which warn of a connection dropped at
/// exit after the error that ended the process).
pub fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,lapin=off,pinky_swear=off,aws=warn,sqlx=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// Why loading the config failed: the process exits 64 either way.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("cannot read config {location}: {reason}")]
    Unreadable { location: String, reason: String },
}

/// Where the config comes from: a path, or an `s3://bucket/key` URL read with the
/// process's AWS config (and, for a non-AWS S3 server, its endpoint: the config's own
/// `[s3]` table is not read yet).
pub struct ConfigSource {
    /// `--config`: a path or an `s3://` URL.
    pub location: String,
    /// The bucket and key and the store to read them from, for an `s3://` location.
    object: Option<(S3Url, S3Store)>,
}

impl ConfigSource {
    pub fn new(
        location: &str,
        sdk: &SdkConfig,
        s3_endpoint: Option<&str>,
    ) -> Result<ConfigSource, LoadError> {
        let object = if location.starts_with("s3://") {
            let url = S3Url::parse(location).map_err(|reason| LoadError::Unreadable {
                location: location.into(),
                reason,
            })?;
            let s3 = S3 {
                path_style: s3_endpoint.is_some(),
                endpoint: s3_endpoint.map(str::to_string),
                region: None,
                ..S3::default()
            };
            Some((url, S3Store::new(sdk, &s3)))
        } else {
            None
        };
        Ok(ConfigSource {
            location: location.into(),
            object,
        })
    }

    fn unreadable(&self, reason: String) -> LoadError {
        LoadError::Unreadable {
            location: self.location.clone(),
            reason,
        }
    }

    /// The config and its version: the object's ETag in S3, the SHA-256 of a file.
    pub async fn load(&self) -> Result<(Config, String), LoadError> {
        let (bytes, version) = match &self.object {
            Some((url, store)) => {
                let meta = store.head(&url.bucket, &url.key).await;
                let meta = meta.map_err(|e| self.unreadable(e.to_string()))?;
                let bytes = store.get_bytes(&url.bucket, &url.key).await;
                (
                    bytes.map_err(|e| self.unreadable(e.to_string()))?,
                    meta.etag,
                )
            }
            None => {
                let bytes = std::fs::read(&self.location);
                let bytes = bytes.map_err(|e| self.unreadable(e.to_string()))?;
                let version = file_version(&bytes);
                (bytes, version)
            }
        };
        let text = String::from_utf8(bytes).map_err(|e| self.unreadable(e.to_string()))?;
        Ok((Config::parse(&text, &self.location)?, version))
    }

    /// The version of the config now, without reading it all from S3.
    pub async fn version(&self) -> Result<String, LoadError> {
        match &self.object {
            Some((url, store)) => {
                let meta = store.head(&url.bucket, &url.key).await;
                Ok(meta.map_err(|e| self.unreadable(e.to_string()))?.etag)
            }
            None => {
                let bytes = std::fs::read(&self.location);
                Ok(file_version(
                    &bytes.map_err(|e| self.unreadable(e.to_string()))?,
                ))
            }
        }
    }
}

fn file_version(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(bytes)[..8])
}

/// The farm's systems, connected once per process: the ledger (migrated), Redis, the
/// object store and, for commands that grow the farm, the cloud. The broker is connected
/// per use ([`Systems::broker`]): lapin does not reconnect, so long-lived users own
/// their connection's life.
pub struct Systems {
    pub ledger: Ledger,
    pub locks: Coordinator,
    pub store: Arc<dyn ObjectStore>,
    /// Where siblings come from; `None` when mitosis is off (`cloud.kind = "none"`).
    pub cloud: Option<Arc<dyn Cloud>>,
    sdk: SdkConfig,
}

impl Systems {
    /// Connects to the ledger (which must be migrated), Redis and the object store.
    pub async fn connect(config: &Config, sdk: &SdkConfig) -> anyhow::Result<Systems> {
        let ledger = ledger(config).await?;
        ledger.check_migrated().await?;
        let locks = Coordinator::connect(&config.redis.url, &config.farm.name)
            .await
            .with_context(|| format!("cannot reach Redis at {}", redact(&config.redis.url)))?;
        Ok(Systems {
            ledger,
            locks,
            store: Arc::new(S3Store::new(sdk, &config.s3)),
            cloud: None,
            sdk: sdk.clone(),
        })
    }

    /// Adds the cloud the config describes. `location` is this process's `--config`,
    /// which siblings are started with; `who` is this process (its cell id, or
    /// `submit`), and `metadata` this machine's IMDS.
    pub fn with_cloud(
        mut self,
        config: &Config,
        location: &str,
        who: &str,
        metadata: Option<crate::metadata::Metadata>,
    ) -> anyhow::Result<Systems> {
        self.cloud = cloud(&self.sdk, config, location, who, metadata)?;
        Ok(self)
    }

    /// One mitosis tick per pool in `pools`, so that work enqueued at a farm with no
    /// cell starts one; nothing without a cloud.
    pub async fn kick<'p>(
        &self,
        config: &Config,
        broker: &Broker,
        who: &str,
        pools: impl IntoIterator<Item = &'p String>,
    ) {
        let Some(cloud) = &self.cloud else { return };
        let farm = LiveFarm::new(
            &self.ledger,
            &self.locks,
            broker.publisher(),
            broker.names(),
        );
        let ticker = Ticker {
            config,
            farm: &farm,
            cloud: cloud.as_ref(),
            who,
        };
        ticker.kick(pools).await;
    }
}

/// The ledger, connected but not checked (`migrate` runs before the check can pass).
pub async fn ledger(config: &Config) -> anyhow::Result<Ledger> {
    Ledger::connect(&config.postgres).await.with_context(|| {
        format!(
            "cannot reach PostgreSQL at {}",
            redact(&config.postgres.url)
        )
    })
}

/// A broker connection with the farm's topology declared.
pub async fn broker(config: &Config) -> anyhow::Result<Broker> {
    Broker::connect(config)
        .await
        .with_context(|| format!("cannot reach RabbitMQ at {}", redact(&config.amqp.url)))
}

/// Checks what a cell needs before it takes work, each failure saying how to fix it;
/// FFmpeg and ffprobe are checked, confined, by [`crate::ffmpeg::Sandbox::start`].
pub async fn check_host(config: &Config) -> anyhow::Result<()> {
    let scratch = Path::new(&config.cell.scratch_dir);
    std::fs::create_dir_all(scratch)
        .and_then(|()| {
            let probe = scratch.join(format!(".write-test-{}", std::process::id()));
            std::fs::write(&probe, b"ok")?;
            std::fs::remove_file(&probe)
        })
        .with_context(|| {
            format!(
                "scratch directory {} (cell.scratch_dir) is not writable",
                scratch.display()
            )
        })?;
    Ok(())
}

/// The URL with any password replaced, for logs and errors: in the user info
/// (`user:***@host`) and in a `password=` query parameter (PostgreSQL's).
pub fn redact(url: &str) -> String {
    let url = match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) if !userinfo.contains('/') => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            _ => url.to_string(),
        },
        None => url.to_string(),
    };
    match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url,
    }
}

/// The cloud the config describes; `None` when mitosis is off (`kind = "none"`).
fn cloud(
    sdk: &SdkConfig,
    config: &Config,
    location: &str,
    who: &str,
    metadata: Option<crate::metadata::Metadata>,
) -> anyhow::Result<Option<Arc<dyn Cloud>>> {
    use crate::config::CloudKind;
    match config.cloud.kind {
        CloudKind::None => Ok(None),
        CloudKind::Local => {
            let binary = match &config.cloud.binary {
                Some(b) => b.into(),
                None => {
                    std::env::current_exe().context("finding this binary for local siblings")?
                }
            };
            // Siblings resolve a relative config path from their own directory: make it
            // absolute.
            let location = if location.starts_with("s3://") {
                location.to_string()
            } else {
                std::path::absolute(location)
                    .with_context(|| format!("config path {location}"))?
                    .display()
                    .to_string()
            };
            let logs = match &config.cloud.log_dir {
                Some(d) => d.into(),
                None => Path::new(&config.cell.scratch_dir).join("cells"),
            };
            Ok(Some(Arc::new(crate::cloud::LocalCloud::new(
                binary, location, logs,
            ))))
        }
        CloudKind::Ec2 => {
            let ec2 = config
                .cloud
                .ec2
                .clone()
                .context("cloud.ec2: kind = \"ec2\" needs a [cloud.ec2] table")?;
            let config_url = match &ec2.config_url {
                Some(url) => url.to_string(),
                None if location.starts_with("s3://") => location.to_string(),
                None => anyhow::bail!(
                    "cloud.ec2.config_url: siblings boot from a config in S3; set it, or start \
                     this process with --config s3://bucket/key (it was {location})"
                ),
            };
            let cloud = crate::cloud::Ec2Cloud::new(
                sdk,
                &config.farm.name,
                ec2,
                config_url,
                who.to_string(),
                metadata,
            );
            Ok(Some(Arc::new(cloud)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_logs() {
        assert_eq!(
            redact("amqp://guest:s3cret@mq:5672/%2f"),
            "amqp://guest:***@mq:5672/%2f"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("postgres://db/ledger?sslmode=require&password=s3cret"),
            "postgres://db/ledger?sslmode=require&password=***"
        );
        assert_eq!(
            redact("redis://:s3cret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
    }
}
