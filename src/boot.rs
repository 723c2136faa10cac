//! Start-up: find the config, check the host, connect to the farm's systems.

use std::path::Path;

use anyhow::Context;

use crate::config::{Config, ConfigError, S3};
use crate::s3url::S3Url;
use crate::store::{ObjectStore, S3Store};

/// Why loading the config failed: the process exits 64 either way.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("cannot read config {location}: {reason}")]
    Unreadable { location: String, reason: String },
}

/// Loads a config from a path or an `s3://bucket/key` URL. For S3, the endpoint of a
/// non-AWS server comes from `CELLFARM_S3_ENDPOINT` (the config is not read yet).
pub async fn load_config(location: &str) -> Result<Config, LoadError> {
    Ok(load_versioned(location).await?.0)
}

/// A config and its version: the object's ETag in S3, the SHA-256 of a file.
pub async fn load_versioned(location: &str) -> Result<(Config, String), LoadError> {
    let unreadable = |reason: String| LoadError::Unreadable {
        location: location.into(),
        reason,
    };
    let (bytes, version) = match S3Url::parse(location) {
        Ok(url) if location.starts_with("s3://") => {
            let store = config_store().await;
            let meta = store
                .head(&url.bucket, &url.key)
                .await
                .map_err(|e| unreadable(e.to_string()))?;
            let bytes = store
                .get_bytes(&url.bucket, &url.key)
                .await
                .map_err(|e| unreadable(e.to_string()))?;
            (bytes, meta.etag)
        }
        Err(e) if location.starts_with("s3://") => return Err(unreadable(e)),
        _ => {
            let bytes = std::fs::read(location).map_err(|e| unreadable(e.to_string()))?;
            let version = file_version(&bytes);
            (bytes, version)
        }
    };
    let text = String::from_utf8(bytes).map_err(|e| unreadable(e.to_string()))?;
    Ok((Config::parse(&text, location)?, version))
}

/// The version of the config at `location` now, without reading it all from S3.
pub async fn config_version(location: &str) -> Result<String, LoadError> {
    let unreadable = |reason: String| LoadError::Unreadable {
        location: location.into(),
        reason,
    };
    if location.starts_with("s3://") {
        let url = S3Url::parse(location).map_err(unreadable)?;
        let meta = config_store()
            .await
            .head(&url.bucket, &url.key)
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        Ok(meta.etag)
    } else {
        let bytes = std::fs::read(location).map_err(|e| unreadable(e.to_string()))?;
        Ok(file_version(&bytes))
    }
}

fn file_version(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(bytes)[..8])
}

/// The store a config is read from: AWS, or the server `CELLFARM_S3_ENDPOINT` names.
async fn config_store() -> S3Store {
    let endpoint = std::env::var("CELLFARM_S3_ENDPOINT").ok();
    let s3 = S3 {
        path_style: endpoint.is_some(),
        endpoint,
        region: None,
    };
    S3Store::connect(&s3).await
}

/// Checks what a cell needs before it takes work, each failure saying how to fix it.
pub async fn check_host(config: &Config) -> anyhow::Result<()> {
    for tool in ["ffmpeg", "ffprobe"] {
        let out = tokio::process::Command::new(tool)
            .arg("-version")
            .output()
            .await
            .with_context(|| {
                format!("{tool} is not installed or not on PATH (apt-get install ffmpeg)")
            })?;
        anyhow::ensure!(
            out.status.success(),
            "{tool} -version failed: is FFmpeg installed correctly?"
        );
    }
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

/// The URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.into(),
        },
        None => url.into(),
    }
}

/// The cloud the config describes; `None` when mitosis is off (`kind = "none"`).
/// `location` is this process's `--config`, which siblings are started with; `who` is
/// this process (its cell id, or `submit`), and `metadata` this machine's IMDS.
pub async fn cloud(
    config: &Config,
    location: &str,
    who: &str,
    metadata: Option<crate::metadata::Metadata>,
) -> anyhow::Result<Option<std::sync::Arc<dyn crate::cloud::Cloud>>> {
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
            Ok(Some(std::sync::Arc::new(crate::cloud::LocalCloud::new(
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
            let cloud = crate::cloud::Ec2Cloud::connect(
                &config.farm.name,
                ec2,
                config_url,
                who.to_string(),
                metadata,
            )
            .await;
            Ok(Some(std::sync::Arc::new(cloud)))
        }
    }
}

/// The object store the config describes.
pub async fn store(config: &Config) -> std::sync::Arc<dyn ObjectStore> {
    std::sync::Arc::new(S3Store::connect(&config.s3).await)
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
    }
}
