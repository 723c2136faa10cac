//! cellfarm: a self-balancing video-processing farm of spot instances.
//!
//! # Layout
//!
//! One module per external system, each behind a small interface of the calls we use:
//!
//! * [`queue`] — RabbitMQ (lapin): topology, confirmed publishing, consumers.
//! * [`store`] — S3 (aws-sdk-s3, any endpoint): the [`store::ObjectStore`] trait.
//! * [`ledger`] — PostgreSQL (sqlx): the job ledger, claims, leases, migrations.
//! * [`locks`] — Redis: heartbeats, the mitosis lock, pending launches.
//! * [`cloud`] — where sibling cells come from: `local` processes or EC2 spot instances
//!   (aws-sdk-ec2).
//! * [`metadata`] — EC2 instance metadata (IMDSv2): identity, spot notices.
//! * [`ffmpeg`] — FFmpeg and ffprobe: argument templates, guarded inputs, probing.
//!
//! And one per concern of our own:
//!
//! * [`config`] — the TOML config, parsed into typed fields and checked as a whole.
//! * [`s3url`] — `s3://bucket/key` URLs, below both `config` and `store`.
//! * [`job`] — the job and result messages (contract v1) and the job id.
//! * [`failure`] — retryable or permanent: one pure classification.
//! * [`cell`] — the worker: consume, run, commit, ack; heartbeats; shutdown; spot
//!   notices.
//! * [`mitosis`] — how many cells a pool needs (a pure calculator) and the tick.
//! * [`submit`] — enqueue objects by hand or for reprocessing.
//! * [`trigger`] — new objects become jobs by the config's routes: a Lambda on S3
//!   events, or `cellfarm watch`.
//! * [`status`] — the farm at a glance.
//! * [`update`] — fetching, verifying and re-executing a newer binary.
//! * [`boot`] — loading config (file or S3) and connecting to everything.

pub mod boot;
pub mod cell;
pub mod cloud;
pub mod config;
pub mod failure;
pub mod ffmpeg;
pub mod job;
pub mod ledger;
pub mod locks;
pub mod metadata;
pub mod mitosis;
pub mod queue;
pub mod s3url;
pub mod status;
pub mod store;
pub mod submit;
pub mod trigger;
pub mod update;
