//! Live config: between jobs, a cell checks its config's version (the object's ETag in
//! S3, a hash of a file) and applies a new one without a restart: pipelines, mitosis
//! policy, slots and threads, step limits, demuxers, spot settings. A new config that
//! does not validate, or that changes what a running cell cannot (connections, names,
//! pools, leases), is refused with the reason, once per version, and the old one stays.
//! A job takes the config in force when it starts.

use std::sync::{Arc, Mutex};

use super::{Cell, Exit};
use crate::boot::ConfigSource;

/// Where the cell's config comes from, which version it runs, and which it refused.
pub struct Reload {
    source: ConfigSource,
    version: Mutex<String>,
    /// The last version refused, so that a bad config is reported once, not every check.
    refused: Mutex<Option<String>>,
}

impl Reload {
    /// The config at `source` runs, in `version`.
    pub fn new(source: ConfigSource, version: String) -> Reload {
        Reload {
            source,
            version: Mutex::new(version),
            refused: Mutex::new(None),
        }
    }

    pub fn location(&self) -> &str {
        &self.source.location
    }

    pub fn version(&self) -> String {
        self.version.lock().expect("never poisoned").clone()
    }

    fn refuse(&self, version: &str, reason: &str) {
        tracing::error!(config = %self.location(), version, %reason,
            "new config refused; keeping version {}", self.version());
        *self.refused.lock().expect("never poisoned") = Some(version.to_string());
    }
}

impl Cell {
    /// Applies a newer config, if there is one and it may be applied. A new `[update]`
    /// binary is fetched and verified first; then the cell drains and re-executes with
    /// it.
    pub(super) async fn reload(&self, shutdown: &super::Shutdown) {
        let reload = &self.reload;
        let version = match reload.source.version().await {
            Ok(v) => v,
            Err(e) => return tracing::warn!(error = %e, "cannot check the config's version"),
        };
        let refused = reload.refused.lock().expect("never poisoned").clone();
        if version == reload.version() || refused.as_deref() == Some(version.as_str()) {
            return;
        }
        let (new, loaded) = match reload.source.load().await {
            Ok(v) => v,
            Err(e) => return reload.refuse(&version, &e.to_string()),
        };
        let old = self.config();
        let fixed = old.restart_keys(&new);
        if !fixed.is_empty() {
            let reason = format!("it changes {} (restart cells to apply)", fixed.join(", "));
            return reload.refuse(&version, &reason);
        }
        let mut updated = None;
        if let Some(update) = new
            .update
            .as_ref()
            .filter(|u| old.update.as_ref() != Some(*u))
        {
            if !crate::update::running(update) {
                let dir = std::path::Path::new(&new.cell.scratch_dir).join("bin");
                match crate::update::fetch(self.systems.store.as_ref(), update, &dir).await {
                    Ok(path) => updated = Some(path),
                    Err(e) => return reload.refuse(&version, &e.to_string()),
                }
            }
        }
        let slots = self.slots.resize(&new);
        *self.config.write().expect("never poisoned") = Arc::new(new);
        *reload.version.lock().expect("never poisoned") = loaded.clone();
        tracing::info!(config = %reload.location(), version = %loaded, slots, "config reloaded");
        if let Some(path) = updated {
            tracing::info!(binary = %path.display(), "new binary verified: draining to re-execute");
            self.leave(Exit::Update(path));
            shutdown.drain.cancel();
        }
    }
}
