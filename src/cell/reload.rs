//! Live config: between jobs, a cell checks its config's version (the object's ETag in
//! S3, a hash of a file) and applies a new one without a restart: pipelines, mitosis
//! policy, slots and threads, step limits, demuxers, spot settings. A new config that
//! does not validate, or that changes what a running cell cannot (connections, names,
//! pools, leases), is refused with the reason, once per version, and the old one stays.
//! A job takes the config in force when it starts.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::{vcpus, Cell};

/// Where the cell's config comes from, and which version it runs.
pub struct ConfigSource {
    /// `--config`: a path or an `s3://` URL.
    pub location: String,
    version: Mutex<String>,
    /// The last version refused, so that a bad config is reported once, not every check.
    refused: Mutex<Option<String>>,
}

impl ConfigSource {
    pub fn new(location: &str, version: String) -> ConfigSource {
        ConfigSource {
            location: location.to_string(),
            version: Mutex::new(version),
            refused: Mutex::new(None),
        }
    }

    pub fn version(&self) -> String {
        self.version.lock().expect("never poisoned").clone()
    }
}

impl Cell {
    /// Applies a newer config, if there is one and it may be applied. A new `[update]`
    /// binary is fetched and verified first; then the cell drains and (in `main`)
    /// re-executes with it.
    pub(super) async fn reload(&self, shutdown: &super::Shutdown) {
        let source = &self.source;
        let version = match crate::boot::config_version(&source.location).await {
            Ok(v) => v,
            Err(e) => return tracing::warn!(error = %e, "cannot check the config's version"),
        };
        let refused = source.refused.lock().expect("never poisoned").clone();
        if version == source.version() || refused.as_deref() == Some(version.as_str()) {
            return;
        }
        let refuse = |reason: String| {
            tracing::error!(config = %source.location, version = %version, %reason,
                "new config refused; keeping version {}", source.version());
            *source.refused.lock().expect("never poisoned") = Some(version.clone());
        };
        let (new, loaded) = match crate::boot::load_versioned(&source.location).await {
            Ok(v) => v,
            Err(e) => return refuse(e.to_string()),
        };
        let old = self.config();
        let fixed = old.restart_keys(&new);
        if !fixed.is_empty() {
            return refuse(format!(
                "it changes {} (restart cells to apply)",
                fixed.join(", ")
            ));
        }
        let mut updated = None;
        if let Some(update) = new
            .update
            .as_ref()
            .filter(|u| old.update.as_ref() != Some(*u))
        {
            if !crate::update::running(update) {
                let dir = std::path::Path::new(&new.cell.scratch_dir).join("bin");
                match crate::update::fetch(self.store.as_ref(), update, &dir).await {
                    Ok(path) => updated = Some(path),
                    Err(e) => return refuse(e.to_string()),
                }
            }
        }
        let slots = new.cell.slots_for(vcpus());
        self.threads
            .store(new.cell.threads_for(vcpus()), Ordering::SeqCst);
        *self.config.write().expect("never poisoned") = Arc::new(new);
        *source.version.lock().expect("never poisoned") = loaded.clone();
        self.resize(slots);
        tracing::info!(config = %source.location, version = %loaded, slots, "config reloaded");
        if let Some(path) = updated {
            tracing::info!(binary = %path.display(), "new binary verified: draining to re-execute");
            *self.update.lock().expect("never poisoned") = Some(path);
            shutdown.drain.cancel();
        }
    }

    /// Grows or shrinks the job slots: new permits at once, fewer as jobs end.
    fn resize(&self, slots: usize) {
        let old = self.slots.swap(slots, Ordering::SeqCst);
        if slots > old {
            self.permits.add_permits(slots - old);
        } else if slots < old {
            let permits = self.permits.clone();
            let surplus = (old - slots) as u32;
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(surplus).await {
                    p.forget();
                }
            });
        } else {
            return;
        }
        self.resized.notify_one();
    }
}
