//! Code updates without a new AMI: the config may name a binary in S3 and its SHA-256.
//! A cell that does not run that binary fetches it, verifies the hash, and re-executes
//! itself with it (same process id, same arguments): at boot before taking work, or
//! after draining when a live config names a new one. A hash mismatch is refused.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::Update;
use crate::store::ObjectStore;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("update {url}: its SHA-256 is {got}, the config says {want}; refused")]
    Mismatch {
        url: String,
        want: String,
        got: String,
    },
    #[error("update {url}: {reason}")]
    Fetch { url: String, reason: String },
}

/// The SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    std::io::copy(&mut file, &mut hash)?;
    Ok(hex::encode(hash.finalize()))
}

/// True when this process already runs the binary `update` names.
pub fn running(update: &Update) -> bool {
    std::env::current_exe()
        .and_then(|exe| sha256_file(&exe))
        .is_ok_and(|hash| hash.eq_ignore_ascii_case(&update.sha256))
}

/// Fetches the binary into `dir` and verifies it; returns its path, ready to execute.
pub async fn fetch(
    store: &dyn ObjectStore,
    update: &Update,
    dir: &Path,
) -> Result<PathBuf, UpdateError> {
    let s3 = &update.binary_url;
    let url = s3.to_string();
    let fail = |reason: String| UpdateError::Fetch {
        url: url.clone(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let want = update.sha256.to_ascii_lowercase();
    let path = dir.join(format!("cellfarm-{}", &want[..16]));
    let partial = dir.join(format!(".cellfarm-{}.part", &want[..16]));
    store
        .download(&s3.bucket, &s3.key, None, &partial)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let got = sha256_file(&partial).map_err(|e| fail(e.to_string()))?;
    if got != want {
        let _ = std::fs::remove_file(&partial);
        return Err(UpdateError::Mismatch {
            url: url.clone(),
            want,
            got,
        });
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|e| fail(e.to_string()))?;
    Ok(path)
}

/// Replaces this process with `binary`, same arguments; returns only on failure.
pub fn reexec(binary: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    tracing::info!(binary = %binary.display(), "re-executing with the updated binary");
    std::process::Command::new(binary)
        .args(std::env::args_os().skip(1))
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_hashes_as_sha256sum_says() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
