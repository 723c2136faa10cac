//! Redis: cell heartbeats (and, with mitosis, the farm-wide locks).
//!
//! A heartbeat is a key with a time-to-live of three beats: a cell that stops beating
//! drops out of the live set by itself, with nobody to clean up after it.

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct LocksError(#[from] redis::RedisError);

/// What a cell says about itself every beat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    pub cell_id: String,
    pub host: String,
    pub pid: u32,
    pub slots: usize,
    pub running: usize,
    /// Seconds since the Unix epoch.
    pub started_at: i64,
    pub draining: bool,
}

#[derive(Clone)]
pub struct Heartbeats {
    conn: ConnectionManager,
    farm: String,
}

impl Heartbeats {
    /// Connects; the manager reconnects by itself after a Redis restart.
    pub async fn connect(url: &str, farm: &str) -> Result<Heartbeats, LocksError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(Heartbeats {
            conn,
            farm: farm.into(),
        })
    }

    fn key(&self, cell_id: &str) -> String {
        format!("{}:cell:{cell_id}", self.farm)
    }

    pub async fn beat(&self, beat: &Beat, ttl_secs: u64) -> Result<(), LocksError> {
        let json = serde_json::to_string(beat).expect("a beat always serializes");
        let mut conn = self.conn.clone();
        conn.set_ex::<_, _, ()>(self.key(&beat.cell_id), json, ttl_secs)
            .await?;
        Ok(())
    }

    pub async fn remove(&self, cell_id: &str) -> Result<(), LocksError> {
        let mut conn = self.conn.clone();
        conn.del::<_, ()>(self.key(cell_id)).await?;
        Ok(())
    }

    /// Every cell with a fresh heartbeat.
    pub async fn alive(&self) -> Result<Vec<Beat>, LocksError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:cell:*", self.farm);
        let keys: Vec<String> = {
            let mut iter = conn.scan_match::<_, String>(pattern).await?;
            let mut keys = Vec::new();
            while let Some(k) = iter.next_item().await {
                keys.push(k);
            }
            keys
        };
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = conn.mget(&keys).await?;
        let mut beats: Vec<Beat> = values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        beats.sort_by(|a, b| a.cell_id.cmp(&b.cell_id));
        Ok(beats)
    }
}
