//! cellfarm: a self-balancing video-processing farm of spot instances.
//!
//! # Layout
//!
//! One module per external system, each behind a small interface of the calls we use:
//!
//! * [`queue`] — RabbitMQ (lapin): the [`queue::Broker`] (a connection, a confirmed
//!   publisher, the farm's topology declared), queue names, consumers.
//! * [`store`] — S3 (aws-sdk-s3, any endpoint): the [`store::ObjectStore`] trait.
//! * [`ledger`] — PostgreSQL (sqlx): the job ledger, claims, leases, migrations, and its
//!   vocabulary as enums ([`ledger::JobState`], [`ledger::AttemptOutcome`],
//!   [`ledger::EventKind`]).
//! * [`locks`] — Redis: heartbeats, the mitosis lock, pending launches, cooldowns.
//! * [`cloud`] — where sibling cells come from: `local` processes or EC2 spot instances
//!   (aws-sdk-ec2), behind the [`cloud::Cloud`] trait.
//! * [`metadata`] — EC2 instance metadata (IMDSv2): identity, spot notices.
//! * [`ffmpeg`] — FFmpeg and ffprobe: argument templates, guarded inputs, probing.
//! * [`aws`] — the one AWS SDK configuration (timeouts, retries) every client shares.
//!
//! And one per concern of our own:
//!
//! * [`alerts`] — what is wrong with the farm (not scaling, failures, slow jobs,
//!   budget, interruptions): one pure function over facts the ledger and Redis hold.
//! * [`config`] — the TOML config, parsed into typed fields and checked as a whole.
//! * [`s3url`] — `s3://bucket/key` URLs, below both `config` and `store`.
//! * [`job`] — the job and result messages (contract v1) and the job id.
//! * [`outkey`] — where a job's outputs go: the pipeline's `output` template expanded
//!   at submission, keys kept as data, and the manifest's key.
//! * [`costs`] — what the farm's machines cost and what on demand would have:
//!   per-second billing with a 60-second minimum, a pure function of their stays.
//! * [`failure`] — a failed attempt's fate (hand back, retry, fail, dead): one pure
//!   classification.
//! * [`mitosis`] — how many cells a pool needs ([`mitosis::decide`], pure) and the tick
//!   that observes the farm and acts, through the [`mitosis::Farm`] trait.
//! * [`cell`] — the worker (`cellfarm cell`): `start` boots it; the cell's session
//!   consumes and settles each delivery in one place; an `attempt` owns one delivery's
//!   ledger transitions; `work` runs the pipeline; `tick`, `reload` and `spot` are its
//!   heartbeat, live config and spot notices.
//! * [`submit`] — `cellfarm submit`: enqueue objects by hand or for reprocessing.
//! * [`trigger`] — new objects become jobs by the config's routes: a Lambda on S3
//!   events, or `cellfarm watch`.
//! * [`status`] — `cellfarm status`: the farm at a glance.
//! * [`doctor`] — `cellfarm doctor`: an AWS account checked against what the farm
//!   needs (roles, launch template, subnets, buckets, notification), every gap named
//!   with its fix.
//! * [`jobs`] — `cellfarm jobs`: the ledger's jobs and where their outputs are.
//! * [`by_hand`] — `cellfarm cancel` and `cellfarm retry`: a job stopped or run again
//!   by hand.
//! * [`progress`] — how far the work has got: each running job's ETA, each pool's
//!   remaining work-seconds and ETA, from the cells' beats and the ledger's load.
//! * [`simulate`] — `cellfarm simulate`: the real mitosis tick on a virtual clock
//!   against a model of spot instances and a workload, beside a message-count policy.
//! * [`dashboard`] — `cellfarm dashboard`: the farm on one page that refreshes itself,
//!   the same data under `/api/`, and `/metrics`.
//! * [`metrics`] — the Prometheus text format of the farm and of one cell.
//! * [`args`] — `cellfarm args`: the FFmpeg command lines of a pipeline.
//! * [`update`] — fetching, verifying and re-executing a newer binary.
//! * [`boot`] — reading the config (file or S3) and connecting to every system once
//!   ([`boot::Systems`]).
//!
//! `main.rs` only parses the command line, loads the config and calls the subcommand's
//! `run` in its module.

pub mod alerts;
pub mod args;
pub mod aws;
pub mod boot;
pub mod by_hand;
pub mod cell;
pub mod chunk;
pub mod cloud;
pub mod config;
pub mod costs;
pub mod dashboard;
pub mod doctor;
pub mod failure;
pub mod ffmpeg;
pub mod job;
pub mod jobs;
pub mod ledger;
pub mod locks;
pub mod metadata;
pub mod metrics;
pub mod mitosis;
pub mod outkey;
pub mod progress;
pub mod queue;
pub mod s3url;
pub mod simulate;
pub mod status;
pub mod store;
pub mod submit;
pub mod trigger;
pub mod update;
