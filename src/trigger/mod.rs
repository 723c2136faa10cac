//! The trigger: new objects in S3 become jobs. Two front ends share it: an AWS Lambda on
//! S3 `ObjectCreated` events ([`lambda`]) and `cellfarm watch`, which polls a prefix
//! ([`watch`]).
//!
//! For each object: skip it if an event is stale (an older upload's, by its sequencer);
//! find the first route that matches (bucket, key prefix and glob, then the duration
//! from a ranged probe when the route asks for one); submit one job per pipeline of the
//! route (the job id makes a repeat the same job); remember the version taken. After a
//! batch, one mitosis tick per pool that got work, so a farm at zero cells starts.

pub mod lambda;
pub mod watch;

use std::collections::BTreeSet;

use crate::config::{Config, Route};
use crate::ledger::{Ledger, SubmitOutcome};
use crate::queue::Publisher;
use crate::store::{ObjectMeta, ObjectStore};
use crate::submit::{self, Source, Submitted};

/// One new object, as an event or a listing tells of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    pub bucket: String,
    pub key: String,
    /// Without quotes; `None` when the teller did not say (a HEAD finds it).
    pub etag: Option<String>,
    pub size: Option<u64>,
    /// The S3 event's sequencer (events only).
    pub sequencer: Option<String>,
}

/// What the trigger did with one object.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// Jobs submitted (or already known: `jobs[].outcome` says which).
    Routed {
        route: String,
        jobs: Vec<Submitted>,
        /// Pools that got a new job (not one already known).
        pools: BTreeSet<String>,
    },
    /// No route matches: logged and skipped.
    Unrouted,
    /// A later upload of the same key was already taken.
    Stale,
}

/// What the trigger needs.
pub struct Trigger<'a> {
    pub config: &'a Config,
    pub store: &'a dyn ObjectStore,
    pub ledger: &'a Ledger,
    pub publisher: &'a Publisher,
}

impl Trigger<'_> {
    /// Turns one object into jobs. Errors are the farm's systems failing (retry the
    /// object); anything about the object itself is an [`Outcome`].
    pub async fn object(&self, upload: &Upload) -> anyhow::Result<Outcome> {
        let (bucket, key) = (&upload.bucket, &upload.key);
        let seen = self.ledger.seen(bucket, key).await?;
        if let (Some(new), Some((_, Some(old)))) = (&upload.sequencer, &seen) {
            if sequencer_before(new, old) {
                tracing::info!(
                    bucket,
                    key,
                    sequencer = new,
                    latest = old,
                    "stale event; skipped"
                );
                return Ok(Outcome::Stale);
            }
        }
        let meta = match (&upload.etag, upload.size) {
            (Some(etag), Some(size)) if !etag.is_empty() => ObjectMeta {
                key: key.clone(),
                etag: etag.trim_matches('"').to_string(),
                size,
            },
            _ => self.store.head(bucket, key).await?,
        };
        // One ranged probe serves the routes by duration and the jobs' work estimates.
        let probe = submit::ranged(self.config, self.store, bucket, &meta).await;
        let duration = probe.as_ref().and_then(|p| p.duration);
        let Some((index, route)) = self.route(bucket, &meta, duration) else {
            tracing::info!(bucket, key, "no route matches; skipped");
            self.ledger
                .remember(bucket, key, &meta.etag, upload.sequencer.as_deref(), None)
                .await?;
            return Ok(Outcome::Unrouted);
        };
        let name = route
            .name
            .clone()
            .unwrap_or_else(|| format!("routes[{index}]"));
        let source = Source {
            meta: meta.clone(),
            probe,
        };
        let (jobs, pools) = self.submit(route, bucket, source).await?;
        self.ledger
            .remember(
                bucket,
                key,
                &meta.etag,
                upload.sequencer.as_deref(),
                Some(&name),
            )
            .await?;
        tracing::info!(bucket, key, route = %name, jobs = jobs.len(), "routed");
        Ok(Outcome::Routed {
            route: name,
            jobs,
            pools,
        })
    }

    /// Submits one job per pipeline of `route`; returns them, and the pools that got a
    /// new one.
    async fn submit(
        &self,
        route: &Route,
        bucket: &str,
        source: Source,
    ) -> anyhow::Result<(Vec<Submitted>, BTreeSet<String>)> {
        let mut jobs = Vec::new();
        let mut pools = BTreeSet::new();
        let objects = [source];
        for pipeline in &route.pipelines {
            let req = submit::Request {
                pipeline,
                pool: route.pool.as_deref(),
                priority: route.priority,
                force: false,
            };
            let (config, ledger) = (self.config, self.ledger);
            let done =
                submit::submit(config, ledger, self.publisher, bucket, &objects, &req).await?;
            if done.iter().any(|j| j.outcome != SubmitOutcome::Known) {
                let own = &config.pipeline(pipeline)?.pool;
                pools.insert(route.pool.as_ref().unwrap_or(own).clone());
            }
            jobs.extend(done);
        }
        Ok((jobs, pools))
    }

    /// The first route that takes the object: by name, then by its `duration` (from a
    /// ranged probe; a route by duration does not match a source whose duration is
    /// unknown).
    fn route(
        &self,
        bucket: &str,
        meta: &ObjectMeta,
        duration: Option<f64>,
    ) -> Option<(usize, &Route)> {
        self.config.routes.iter().enumerate().find(|(_, route)| {
            let by_duration = route.min_secs.is_some() || route.max_secs.is_some();
            matches_name(route, bucket, &meta.key)
                && (!by_duration
                    || duration.is_some_and(|secs| {
                        route.min_secs.map_or(true, |min| secs >= min)
                            && route.max_secs.map_or(true, |max| secs < max)
                    }))
        })
    }
}

/// The pools that got new work from `outcomes`.
pub fn pools(outcomes: &[Outcome]) -> BTreeSet<String> {
    outcomes
        .iter()
        .flat_map(|o| match o {
            Outcome::Routed { pools, .. } => pools.clone(),
            _ => BTreeSet::new(),
        })
        .collect()
}

/// Whether the route takes `bucket/key` by name (bucket, prefix, glob).
pub fn matches_name(route: &Route, bucket: &str, key: &str) -> bool {
    route.bucket.as_deref().map_or(true, |b| b == bucket)
        && key.starts_with(&route.prefix)
        && route.glob.as_deref().map_or(true, |g| glob(g, key))
}

/// `*` is any run of characters but `/`, `**` any run at all, `?` one character but `/`;
/// everything else is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_at(&p, &t)
}

fn glob_at(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') if p.get(1) == Some(&'*') => (0..=t.len()).any(|i| glob_at(&p[2..], &t[i..])),
        Some('*') => {
            let run = t.iter().take_while(|c| **c != '/').count();
            (0..=run).any(|i| glob_at(&p[1..], &t[i..]))
        }
        Some('?') => t.first().is_some_and(|c| *c != '/') && glob_at(&p[1..], &t[1..]),
        Some(c) => t.first() == Some(c) && glob_at(&p[1..], &t[1..]),
    }
}

/// True when sequencer `a` is older than `b`. S3 sequencers are hex strings of varying
/// length, compared after right-padding the shorter with zeros; they order the events
/// of one key only.
pub fn sequencer_before(a: &str, b: &str) -> bool {
    let width = a.len().max(b.len());
    let pad = |s: &str| format!("{:0<width$}", s.to_ascii_uppercase());
    pad(a) < pad(b)
}

/// An S3 event key, URL-encoded with `+` for a space, back to the object key.
pub fn decode_key(raw: &str) -> Result<String, String> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|e| format!("key {raw:?} is not URL-encoded UTF-8: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_within_and_across_directories() {
        assert!(glob("*.mp4", "clip.mp4"));
        assert!(!glob("*.mp4", "in/clip.mp4"));
        assert!(glob("**.mp4", "in/deep/clip.mp4"));
        assert!(glob("in/**/*.mov", "in/a/b/c.mov"));
        assert!(!glob("in/**/*.mov", "in/c.mp4"));
        assert!(glob("cam?/*", "cam1/x"));
        assert!(!glob("cam?/*", "cam/1/x"));
        assert!(glob("**", ""));
    }

    #[test]
    fn event_keys_decode_plus_as_space_and_percent_escapes() {
        assert_eq!(decode_key("my+clip%2B1.mp4").unwrap(), "my clip+1.mp4");
        assert_eq!(decode_key("d%C3%A9j%C3%A0+vu.mov").unwrap(), "déjà vu.mov");
        assert!(decode_key("%FF%FE").is_err());
    }

    #[test]
    fn sequencers_compare_after_right_padding() {
        assert!(sequencer_before("0055AED6DCD90281E5", "0055AED6DCD90281E6"));
        assert!(sequencer_before("0055AED6DCD9028", "0055AED6DCD90281E5"));
        assert!(!sequencer_before(
            "0055AED6DCD90281E5",
            "0055AED6DCD90281E5"
        ));
        assert!(!sequencer_before(
            "0055AED6DCD90281E6",
            "0055AED6DCD90281E5"
        ));
    }
}
