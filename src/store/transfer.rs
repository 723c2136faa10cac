//! Whole files to and from S3: one request for a small one; for a large one, parts
//! uploaded (multipart upload) or byte ranges downloaded in parallel, each read from or
//! written to the file at its offset, so memory stays a few buffers per transfer
//! whatever the file's size.
//!
//! A multipart upload that fails or is cancelled is aborted, so no parts are left to be
//! billed; only a killed process leaves some, for a bucket lifecycle rule
//! (`AbortIncompleteMultipartUpload`) to remove. A ranged download sends `If-Match` with
//! the object's ETag on every range and checks the ETag of every answer, so a file
//! never mixes two versions of an object.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::Path;

use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures_util::{stream, StreamExt, TryStreamExt};
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};

use super::{describe, failed, ObjectMeta, S3Store, StoreError};
use crate::job::unquote_etag;

/// S3's most parts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Bytes gathered before one write to the local file: each write is a blocking call on
/// tokio's thread pool, so small network chunks are batched.
const WRITE_BUFFER: usize = 1 << 20;

/// The byte ranges of `size` bytes cut into parts of `part_size` (above 0): all of
/// `part_size` but the last, which may be shorter; none for 0 bytes.
pub fn parts(size: u64, part_size: u64) -> Vec<Range<u64>> {
    (0..size.div_ceil(part_size))
        .map(|i| i * part_size..((i + 1) * part_size).min(size))
        .collect()
}

/// What to say about the local file of a transfer.
pub(super) struct Local<'a> {
    pub(super) bucket: &'a str,
    pub(super) key: &'a str,
    pub(super) path: &'a Path,
}

impl Local<'_> {
    fn error(&self, source: std::io::Error) -> StoreError {
        StoreError::Local {
            path: self.path.display().to_string(),
            bucket: self.bucket.into(),
            key: self.key.into(),
            source,
        }
    }

    /// The bytes of `range` of the file, read when sent (again on a retry).
    async fn body(&self, range: Range<u64>) -> Result<ByteStream, StoreError> {
        ByteStream::read_from()
            .path(self.path)
            .offset(range.start)
            .length(Length::Exact(range.end - range.start))
            .build()
            .await
            .map_err(|e| self.error(std::io::Error::other(e)))
    }

    /// Writes `body` to `file` from where it stands; returns the bytes written.
    async fn write(&self, body: ByteStream, file: tokio::fs::File) -> Result<u64, StoreError> {
        let mut file = BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut body = body;
        let mut size = 0u64;
        while let Some(chunk) = body.try_next().await.map_err(|e| StoreError::Failed {
            op: "GET",
            bucket: self.bucket.into(),
            key: self.key.into(),
            message: e.to_string(),
        })? {
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(|e| self.error(e))?;
        }
        file.flush().await.map_err(|e| self.error(e))?;
        Ok(size)
    }

    /// `Changed` unless the ETag S3 answered with is `want` (servers that ignore
    /// `If-Match` are caught here).
    fn check_etag(&self, want: &str, got: Option<&str>) -> Result<(), StoreError> {
        match got {
            Some(got) if !want.is_empty() && unquote_etag(want) != unquote_etag(got) => {
                Err(self.changed(want))
            }
            _ => Ok(()),
        }
    }

    fn changed(&self, etag: &str) -> StoreError {
        StoreError::Changed {
            bucket: self.bucket.into(),
            key: self.key.into(),
            etag: etag.into(),
        }
    }
}

fn quoted(etag: &str) -> String {
    format!("\"{}\"", unquote_etag(etag))
}

impl S3Store {
    /// Uploads `path`: one PUT up to the part size, else a multipart upload.
    pub(super) async fn upload_file(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        content_type: Option<&str>,
    ) -> Result<(), StoreError> {
        let local = Local { bucket, key, path };
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| local.error(e))?;
        if !meta.is_file() {
            let why = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file");
            return Err(local.error(why));
        }
        let content_type = content_type.map(String::from);
        if meta.len() <= self.part_size {
            self.client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(
                    ByteStream::from_path(path)
                        .await
                        .map_err(|e| local.error(std::io::Error::other(e)))?,
                )
                .set_content_type(content_type)
                .send()
                .await
                .map_err(|e| failed("PUT", bucket, key, e))?;
            return Ok(());
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .set_content_type(content_type)
            .send()
            .await
            .map_err(|e| failed("CreateMultipartUpload", bucket, key, e))?;
        let upload = Upload {
            store: self.clone(),
            bucket: bucket.into(),
            key: key.into(),
            id: created.upload_id().unwrap_or_default().into(),
            open: true,
        };
        // Parts grow past S3's 10,000 for a file larger than that many parts.
        let part_size = self.part_size.max(meta.len().div_ceil(MAX_PARTS));
        let ranges = parts(meta.len(), part_size);
        tracing::debug!(bucket, key, parts = ranges.len(), "multipart upload");
        let sent = stream::iter(ranges.into_iter().zip(1..))
            .map(|(range, number)| upload.put_part(&local, number, range))
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<_>>()
            .await;
        match sent {
            Ok(parts) => upload.complete(parts).await,
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        }
    }

    /// Downloads to `path`: one streaming GET up to the part size, else byte ranges in
    /// parallel, each with `If-Match` (the caller's ETag, else the one HEAD found).
    pub(super) async fn download_file(
        &self,
        bucket: &str,
        key: &str,
        if_match: Option<&str>,
        path: &Path,
    ) -> Result<u64, StoreError> {
        let local = Local { bucket, key, path };
        let object = self.head_if_match(&local, if_match).await?;
        self.fetch(&local, &object, if_match).await
    }

    /// Downloads `object`, as a HEAD found it, to `local.path`: one GET up to the part
    /// size (checked against `if_match`), else byte ranges pinned to its ETag.
    pub(super) async fn fetch(
        &self,
        local: &Local<'_>,
        object: &ObjectMeta,
        if_match: Option<&str>,
    ) -> Result<u64, StoreError> {
        if object.size <= self.part_size {
            return self.get_whole(local, if_match).await;
        }
        let path = local.path;
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| local.error(e))?;
        file.set_len(object.size)
            .await
            .map_err(|e| local.error(e))?;
        drop(file);
        stream::iter(parts(object.size, self.part_size).into_iter().map(Ok))
            .try_for_each_concurrent(self.concurrency, |range| {
                self.get_range_into(local, &object.etag, range)
            })
            .await?;
        Ok(object.size)
    }

    async fn head_if_match(
        &self,
        local: &Local<'_>,
        if_match: Option<&str>,
    ) -> Result<ObjectMeta, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(local.bucket)
            .key(local.key)
            .set_if_match(if_match.map(quoted))
            .send()
            .await
            // A HEAD's error has no body, hence no S3 error code: its status tells.
            .map_err(|e| match e.raw_response().map(|r| r.status().as_u16()) {
                Some(404) => StoreError::NotFound {
                    bucket: local.bucket.into(),
                    key: local.key.into(),
                },
                Some(412) => local.changed(if_match.unwrap_or_default()),
                _ => failed("HEAD", local.bucket, local.key, e),
            })?;
        if let Some(want) = if_match {
            local.check_etag(want, out.e_tag())?;
        }
        Ok(ObjectMeta {
            key: local.key.into(),
            etag: unquote_etag(out.e_tag().unwrap_or_default()).into(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
        })
    }

    /// One GET streamed to the file: atomic, whatever happens to the object meanwhile.
    async fn get_whole(
        &self,
        local: &Local<'_>,
        if_match: Option<&str>,
    ) -> Result<u64, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(local.bucket)
            .key(local.key)
            .set_if_match(if_match.map(quoted))
            .send()
            .await
            .map_err(|e| match failed("GET", local.bucket, local.key, e) {
                StoreError::Changed { .. } => local.changed(if_match.unwrap_or_default()),
                other => other,
            })?;
        if let Some(want) = if_match {
            local.check_etag(want, out.e_tag())?;
        }
        let file = tokio::fs::File::create(local.path)
            .await
            .map_err(|e| local.error(e))?;
        local.write(out.body, file).await
    }

    /// The bytes of `range` of the version `etag` of the object, written at their
    /// offset in the (pre-sized) file.
    async fn get_range_into(
        &self,
        local: &Local<'_>,
        etag: &str,
        range: Range<u64>,
    ) -> Result<(), StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(local.bucket)
            .key(local.key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            // A server that gave the HEAD no ETag cannot be asked to match one.
            .set_if_match((!etag.is_empty()).then(|| quoted(etag)))
            .send()
            .await
            .map_err(|e| match failed("GET", local.bucket, local.key, e) {
                StoreError::Changed { .. } => local.changed(etag),
                other => other,
            })?;
        local.check_etag(etag, out.e_tag())?;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(local.path)
            .await
            .map_err(|e| local.error(e))?;
        file.seek(SeekFrom::Start(range.start))
            .await
            .map_err(|e| local.error(e))?;
        let got = local.write(out.body, file).await?;
        if got != range.end - range.start {
            return Err(StoreError::Failed {
                op: "GET",
                bucket: local.bucket.into(),
                key: local.key.into(),
                message: format!(
                    "bytes {}-{}: {got} bytes came back",
                    range.start,
                    range.end - 1
                ),
            });
        }
        Ok(())
    }
}

/// A multipart upload in progress; dropped before it is completed or aborted (its
/// transfer cancelled), it is aborted in the background.
struct Upload {
    store: S3Store,
    bucket: String,
    key: String,
    id: String,
    open: bool,
}

impl Upload {
    async fn put_part(
        &self,
        local: &Local<'_>,
        number: i32,
        range: Range<u64>,
    ) -> Result<CompletedPart, StoreError> {
        let len = range.end - range.start;
        let out = self
            .store
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.id)
            .part_number(number)
            .content_length(len as i64)
            .body(local.body(range).await?)
            .send()
            .await
            .map_err(|e| failed("UploadPart", &self.bucket, &self.key, e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(String::from))
            .build())
    }

    /// Completes the upload with `parts` (in any order); aborts it if that fails.
    async fn complete(mut self, mut parts: Vec<CompletedPart>) -> Result<(), StoreError> {
        parts.sort_by_key(|p| p.part_number());
        let done = self
            .store
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match done {
            Ok(_) => {
                self.open = false;
                Ok(())
            }
            Err(e) => {
                let err = failed("CompleteMultipartUpload", &self.bucket, &self.key, e);
                self.abort().await;
                Err(err)
            }
        }
    }

    async fn abort(mut self) {
        self.open = false;
        abort(&self.store.client, &self.bucket, &self.key, &self.id).await;
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (client, bucket, key, id) = (
            self.store.client.clone(),
            std::mem::take(&mut self.bucket),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.id),
        );
        runtime.spawn(async move { abort(&client, &bucket, &key, &id).await });
    }
}

/// Aborts a multipart upload, which deletes its parts; a failure is only logged, the
/// upload's own error being the one to report.
async fn abort(client: &aws_sdk_s3::Client, bucket: &str, key: &str, id: &str) {
    let aborted = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .send()
        .await;
    if let Err(e) = aborted {
        tracing::warn!(
            bucket,
            key,
            upload_id = id,
            error = %describe(&e),
            "could not abort a multipart upload; its parts stay until a lifecycle rule removes them"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::parts;

    #[test]
    fn parts_are_whole_but_the_last() {
        assert_eq!(parts(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(parts(13 << 20, 5 << 20).len(), 3);
        assert_eq!(parts(13 << 20, 5 << 20)[2], (10 << 20)..(13 << 20));
    }

    #[test]
    fn an_exact_multiple_has_no_short_part() {
        assert_eq!(parts(8, 4), vec![0..4, 4..8]);
        assert_eq!(parts(4, 4), vec![0..4]);
        assert_eq!(parts(3, 4), vec![0..3]);
    }

    #[test]
    fn an_empty_file_has_no_parts() {
        assert!(parts(0, 4).is_empty());
    }
}
