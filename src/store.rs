//! Objects: S3 (or any S3 server: s3s-fs, MinIO) behind the small [`ObjectStore`] trait.
//!
//! Downloads stream to a local file and carry `If-Match`, so an object overwritten after
//! its job was submitted fails clearly instead of mixing versions. An upload is atomic
//! in S3, one PUT or a completed multipart upload alike: a reader sees the whole object
//! or none of it. Files larger than `s3.part_size_mib` move in parts, in parallel
//! ([`transfer`]).

mod transfer;

use std::path::Path;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::config::S3;
use crate::job::unquote_etag;

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectMeta {
    pub key: String,
    /// Without quotes.
    pub etag: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("s3://{bucket}/{key} does not exist")]
    NotFound { bucket: String, key: String },
    #[error("s3://{bucket}/{key} changed after submission (expected ETag {etag})")]
    Changed {
        bucket: String,
        key: String,
        etag: String,
    },
    #[error("S3 {op} s3://{bucket}/{key} failed: {message}")]
    Failed {
        op: &'static str,
        bucket: String,
        key: String,
        message: String,
    },
    #[error("local file {path} for s3://{bucket}/{key}: {source}")]
    Local {
        path: String,
        bucket: String,
        key: String,
        source: std::io::Error,
    },
}

/// The object calls the farm makes.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError>;
    /// Every object under `prefix`, in key order.
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;
    /// Streams an object to `path` (a large one as byte ranges in parallel); with
    /// `if_match`, fails with `Changed` on another ETag. Returns its size in bytes.
    async fn download(
        &self,
        bucket: &str,
        key: &str,
        if_match: Option<&str>,
        path: &Path,
    ) -> Result<u64, StoreError>;
    /// Streams `object`, as a [`ObjectStore::head`] of `bucket` just found it, to `path`,
    /// pinned to its ETag (a change since fails with `Changed`), without asking S3 for
    /// it again.
    async fn download_found(
        &self,
        bucket: &str,
        object: &ObjectMeta,
        path: &Path,
    ) -> Result<u64, StoreError>;
    async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Vec<u8>, StoreError>;
    /// The bytes of `range` (end exclusive, within the object).
    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, StoreError>;
    /// Uploads the file at `path` as one object (a large one in parts, in parallel).
    async fn upload(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        content_type: Option<&str>,
    ) -> Result<(), StoreError>;
}

/// [`ObjectStore`] on the AWS SDK.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    /// Bytes: files up to it move in one request, larger ones in parts of it.
    part_size: u64,
    /// Parts in flight at once per file (at least 1).
    concurrency: usize,
}

impl S3Store {
    /// Builds the client on the process's shared AWS config: region and credentials
    /// from the usual AWS chain (instance profile in production), endpoint and path style
    /// from config for other S3 servers.
    pub fn new(sdk: &aws_config::SdkConfig, cfg: &S3) -> S3Store {
        let mut builder = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(cfg.path_style)
            // Third-party S3 servers do not all speak the newer flexible checksums.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(region) = &cfg.region {
            builder = builder.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        S3Store {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            part_size: cfg.part_size_mib.max(1) << 20,
            concurrency: cfg.concurrency.max(1),
        }
    }

    /// A client on a shared AWS config of its own (tests, tools).
    pub async fn connect(cfg: &S3) -> S3Store {
        S3Store::new(&crate::aws::sdk_config().await, cfg)
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: Option<String>,
    ) -> Result<Vec<u8>, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_range(range)
            .send()
            .await
            .map_err(|e| failed("GET", bucket, key, e))?;
        let bytes = out.body.collect().await.map_err(|e| StoreError::Failed {
            op: "GET",
            bucket: bucket.into(),
            key: key.into(),
            message: e.to_string(),
        })?;
        Ok(bytes.into_bytes().to_vec())
    }

    /// The SDK client, for callers that need more than the trait (tests, the demo).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }
}

fn failed<E>(
    op: &'static str,
    bucket: &str,
    key: &str,
    err: SdkError<E, HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let not_found = matches!(err.code(), Some("NoSuchKey" | "NotFound" | "NoSuchBucket"));
    let changed = err.code() == Some("PreconditionFailed");
    if not_found {
        return StoreError::NotFound {
            bucket: bucket.into(),
            key: key.into(),
        };
    }
    if changed {
        return StoreError::Changed {
            bucket: bucket.into(),
            key: key.into(),
            etag: String::new(),
        };
    }
    StoreError::Failed {
        op,
        bucket: bucket.into(),
        key: key.into(),
        message: describe(&err),
    }
}

/// One line for an S3 error: the HTTP status and S3's error code and message when S3
/// answered, else what went wrong on the way (a timeout, a refused connection).
fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err.raw_response() {
        Some(response) => {
            let code = err.code().unwrap_or("no error code");
            let detail = err.message().map(|m| format!(": {m}")).unwrap_or_default();
            let status = response.status().as_u16();
            // Without s3:ListBucket, S3 answers 403 for a key that does not exist, so a
            // deleted source looks like a permission fault instead of "not found".
            let hint = if status == 403 {
                " (if the object may be missing: S3 says 403, not 404, to a role without \
                 s3:ListBucket on the bucket; grant it, as deploy/cellfarm.yaml does)"
            } else {
                ""
            };
            format!("HTTP {status} {code}{detail}{hint}")
        }
        None => DisplayErrorContext(err).to_string(),
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| match e.raw_response().map(|r| r.status().as_u16()) {
                Some(404) => StoreError::NotFound {
                    bucket: bucket.into(),
                    key: key.into(),
                },
                _ => failed("HEAD", bucket, key, e),
            })?;
        Ok(ObjectMeta {
            key: key.into(),
            etag: unquote_etag(out.e_tag().unwrap_or_default()).into(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
        })
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| failed("LIST", bucket, prefix, e))?;
            for o in page.contents() {
                objects.push(ObjectMeta {
                    key: o.key().unwrap_or_default().into(),
                    etag: unquote_etag(o.e_tag().unwrap_or_default()).into(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                });
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn download(
        &self,
        bucket: &str,
        key: &str,
        if_match: Option<&str>,
        path: &Path,
    ) -> Result<u64, StoreError> {
        self.download_file(bucket, key, if_match, path).await
    }

    async fn download_found(
        &self,
        bucket: &str,
        object: &ObjectMeta,
        path: &Path,
    ) -> Result<u64, StoreError> {
        let local = transfer::Local {
            bucket,
            key: &object.key,
            path,
        };
        self.fetch(&local, object, Some(&object.etag)).await
    }

    async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Vec<u8>, StoreError> {
        self.get(bucket, key, None).await
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, StoreError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        self.get(bucket, key, Some(header)).await
    }

    async fn upload(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        content_type: Option<&str>,
    ) -> Result<(), StoreError> {
        self.upload_file(bucket, key, path, content_type).await
    }
}
