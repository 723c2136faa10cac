//! Redis: cell heartbeats, the per-pool mitosis lock and round, the deaths a round
//! offers, pending launches and cooldowns.
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
    /// Pools the cell consumes from.
    #[serde(default)]
    pub pools: Vec<String>,
    pub slots: usize,
    pub running: usize,
    /// Seconds since the Unix epoch.
    pub started_at: i64,
    pub draining: bool,
    /// The version of the config the cell runs (ETag in S3, hash of a file).
    #[serde(default)]
    pub config_version: Option<String>,
    /// The machine the cell runs on, as its cloud names it (the instance id on EC2, the
    /// launch id on `local`); `None` for a cell started by hand.
    #[serde(default)]
    pub machine: Option<String>,
    /// The cell leaves for a replacement (a spot notice, a rebalance recommendation, or
    /// sick): its machine is going away, and does not hold a place under the ceiling.
    #[serde(default)]
    pub leaving: bool,
    /// The jobs the cell runs now and how far each has got (empty from cells older
    /// than progress reporting).
    #[serde(default)]
    pub jobs: Vec<RunningJob>,
}

/// A job running in a cell, as the cell's beat tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningJob {
    pub job_id: String,
    pub pool: String,
    pub pipeline: String,
    /// How far the job is, from 0 to 1 (see [`crate::ffmpeg::progress::fraction`]);
    /// 0 until its first FFmpeg step reports.
    pub fraction: f64,
    /// Seconds of source encoded per second of wall time, as FFmpeg last said.
    pub speed: Option<f64>,
    /// Seconds since the attempt started.
    pub elapsed_secs: f64,
    /// The attempt's estimated work-seconds (probed duration × the pipeline's
    /// `cost_factor`), once the source is probed.
    pub work_secs: Option<f64>,
}

/// The farm's shared, expiring state in Redis: what cells say of themselves
/// (heartbeats), who decides for a pool now (locks), launches not alive yet (pending),
/// and pools resting after a launch (cooldowns).
#[derive(Clone)]
pub struct Coordinator {
    conn: ConnectionManager,
    farm: String,
}

impl Coordinator {
    /// Connects; the manager reconnects by itself after a Redis restart.
    pub async fn connect(url: &str, farm: &str) -> Result<Coordinator, LocksError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(Coordinator {
            conn,
            farm: farm.into(),
        })
    }

    fn key(&self, cell_id: &str) -> String {
        format!("{}:cell:{cell_id}", self.farm)
    }

    fn serving_key(&self, pool: &str) -> String {
        format!("{}:serving:{pool}", self.farm)
    }

    /// Records the beat for `ttl_secs`, and the cell in each of its pools' serving sets
    /// (until the same time), or out of them when it is draining.
    pub async fn beat(&self, beat: &Beat, ttl_secs: u64) -> Result<(), LocksError> {
        let json = serde_json::to_string(beat).expect("a beat always serializes");
        let until = chrono::Utc::now().timestamp() + ttl_secs as i64;
        let mut pipe = redis::pipe();
        pipe.set_ex(self.key(&beat.cell_id), json, ttl_secs)
            .ignore();
        for pool in &beat.pools {
            if beat.draining {
                pipe.zrem(self.serving_key(pool), &beat.cell_id).ignore();
            } else {
                (pipe.zadd(self.serving_key(pool), &beat.cell_id, until)).ignore();
            }
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Takes the cell out of the live set and its pools' serving sets.
    pub async fn remove(&self, cell_id: &str) -> Result<(), LocksError> {
        let mut conn = self.conn.clone();
        let beat: Option<String> = conn.get(self.key(cell_id)).await?;
        let pools = beat
            .and_then(|b| serde_json::from_str::<Beat>(&b).ok())
            .map(|b| b.pools)
            .unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.del(self.key(cell_id)).ignore();
        for pool in &pools {
            pipe.zrem(self.serving_key(pool), cell_id).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// How many cells serve `pool` now (fresh beats, not draining): one call, whatever
    /// the farm's size.
    pub async fn serving(&self, pool: &str) -> Result<u64, LocksError> {
        let now = chrono::Utc::now().timestamp();
        let mut conn = self.conn.clone();
        Ok(conn.zcount(self.serving_key(pool), now, "+inf").await?)
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

/// A held lock: release it with [`Coordinator::unlock`]; it also expires by itself.
#[derive(Debug)]
pub struct Lock {
    key: String,
    token: String,
}

/// Deletes the key only if it still holds our token, so a lock that expired and was
/// taken by another cell is never released by us.
const UNLOCK: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"#;

/// Takes one from every key, or from none if any is missing or zero; keeps each key's
/// time to live.
const TAKE_DEATHS: &str = r#"
for _, key in ipairs(KEYS) do
    if (tonumber(redis.call("GET", key)) or 0) < 1 then
        return 0
    end
end
for _, key in ipairs(KEYS) do
    redis.call("DECR", key)
end
return 1
"#;

impl Coordinator {
    /// Takes the lock `name` for at most `ttl_ms`, or returns None if another holds it.
    pub async fn try_lock(&self, name: &str, ttl_ms: u64) -> Result<Option<Lock>, LocksError> {
        let key = format!("{}:lock:{name}", self.farm);
        let token = format!("{:032x}", rand::random::<u128>());
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(set.map(|_| Lock { key, token }))
    }

    pub async fn unlock(&self, lock: Lock) -> Result<(), LocksError> {
        let mut conn = self.conn.clone();
        redis::Script::new(UNLOCK)
            .key(&lock.key)
            .arg(&lock.token)
            .invoke_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    fn pending_key(&self, pool: &str) -> String {
        format!("{}:pending:{pool}", self.farm)
    }

    /// Cells launched for `pool` and not yet alive, forgetting those past their deadline.
    pub async fn pending(&self, pool: &str) -> Result<u32, LocksError> {
        let key = self.pending_key(pool);
        let now = chrono::Utc::now().timestamp();
        let mut conn = self.conn.clone();
        conn.zrembyscore::<_, _, _, ()>(&key, "-inf", now).await?;
        let n: u32 = conn.zcard(&key).await?;
        Ok(n)
    }

    /// Records launches; each counts as pending until it beats or `ttl_secs` pass.
    pub async fn add_pending(
        &self,
        pool: &str,
        ids: &[String],
        ttl_secs: u64,
    ) -> Result<(), LocksError> {
        let deadline = chrono::Utc::now().timestamp() + ttl_secs as i64;
        let mut conn = self.conn.clone();
        for id in ids {
            conn.zadd::<_, _, _, ()>(self.pending_key(pool), id, deadline)
                .await?;
        }
        Ok(())
    }

    pub async fn remove_pending(&self, pool: &str, id: &str) -> Result<(), LocksError> {
        let mut conn = self.conn.clone();
        conn.zrem::<_, _, ()>(self.pending_key(pool), id).await?;
        Ok(())
    }

    /// True while `pool` is in its post-launch cooldown.
    pub async fn cooling(&self, pool: &str) -> Result<bool, LocksError> {
        let mut conn = self.conn.clone();
        Ok(conn
            .exists(format!("{}:cooldown:{pool}", self.farm))
            .await?)
    }

    pub async fn start_cooldown(&self, pool: &str, secs: u64) -> Result<(), LocksError> {
        if secs == 0 {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        conn.set_ex::<_, _, ()>(format!("{}:cooldown:{pool}", self.farm), 1, secs)
            .await?;
        Ok(())
    }

    /// Claims `pool`'s mitosis round for `ms`: true for the one caller a round that
    /// observes and decides for the pool; the claim is never released, it expires.
    pub async fn claim_round(&self, pool: &str, ms: u64) -> Result<bool, LocksError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}:round:{pool}", self.farm))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ms.max(1))
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    fn deaths_key(&self, pool: &str) -> String {
        format!("{}:deaths:{pool}", self.farm)
    }

    /// Offers `n` deaths in `pool` for `ms`, replacing any earlier offer (zero withdraws
    /// it).
    pub async fn offer_deaths(&self, pool: &str, n: u32, ms: u64) -> Result<(), LocksError> {
        let mut conn = self.conn.clone();
        if n == 0 {
            conn.del::<_, ()>(self.deaths_key(pool)).await?;
        } else {
            redis::cmd("SET")
                .arg(self.deaths_key(pool))
                .arg(n)
                .arg("PX")
                .arg(ms.max(1))
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// Takes one death offered in every pool of `pools`, or none: true when taken.
    pub async fn take_deaths(&self, pools: &[String]) -> Result<bool, LocksError> {
        if pools.is_empty() {
            return Ok(false);
        }
        let mut conn = self.conn.clone();
        let script = redis::Script::new(TAKE_DEATHS);
        let mut invocation = script.prepare_invoke();
        for pool in pools {
            invocation.key(self.deaths_key(pool));
        }
        let taken: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(taken == 1)
    }

    /// The pool's last census of the cloud's machines (JSON, [`crate::mitosis`]'s to
    /// read), while it is fresh.
    pub async fn census(&self, pool: &str) -> Result<Option<String>, LocksError> {
        let mut conn = self.conn.clone();
        Ok(conn.get(format!("{}:census:{pool}", self.farm)).await?)
    }

    /// Replaces the pool's census, if there is one, keeping its expiry.
    pub async fn amend_census(&self, pool: &str, json: &str) -> Result<(), LocksError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(format!("{}:census:{pool}", self.farm))
            .arg(json)
            .arg("XX")
            .arg("KEEPTTL")
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Keeps a census of the pool's machines for `ms`.
    pub async fn keep_census(&self, pool: &str, json: &str, ms: u64) -> Result<(), LocksError> {
        let mut conn = self.conn.clone();
        conn.pset_ex::<_, _, ()>(format!("{}:census:{pool}", self.farm), json, ms.max(1))
            .await?;
        Ok(())
    }
}
