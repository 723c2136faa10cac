//! A private farm per test, on the real local servers (scripts/services.sh starts them):
//! its own farm name (queues, Redis keys), PostgreSQL schema, S3 bucket and scratch dir,
//! so tests run in parallel without seeing each other. Cells are the real binary.

#![allow(dead_code)]

pub mod corpus;
pub mod ec2_proxy;
pub mod edit;
pub mod faulty_s3;
pub mod http;
pub mod imds;
pub mod lambda_api;
pub mod moto;
pub mod prom;
pub mod stack;
pub mod wait;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use cellfarm::config::{Config, S3};
use cellfarm::ledger::Ledger;
use cellfarm::queue::{self, Names, Publisher};
use cellfarm::store::{ObjectStore, S3Store};
use lapin::options::{BasicAckOptions, BasicGetOptions};
pub use wait::{wait_until, wait_until_sync, Lazy, Reached};

/// A pipeline whose encode takes as long as the clip plays (`-re`): long enough to
/// kill, stop or cut off a cell in the middle of it.
pub const REALTIME: &str = r#"
[pipelines.realtime]
pool = "default"
output = "s3://cellfarm-demo/outputs/realtime/"
steps = [{ args = ["-re", "-i", "{input}", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "{out}/out.mp4"] }]
outputs = [{ path = "out.mp4", video_codec = "h264", duration = "source" }]
"#;

/// The example config every test farm starts from, so the shipped pipelines are tested.
const EXAMPLE: &str = include_str!("../../examples/local.toml");

pub fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The text of a test farm's config: `example` (the example config with a test's TOML
/// appended) on this machine's servers, with the farm's own names, bucket and scratch
/// dir, and leases and heartbeats quick enough for tests that kill cells.
fn test_config(example: &str, name: &str, bucket: &str, amqp: &str, scratch: &Path) -> String {
    let mut doc = edit::parse(example);
    edit::set(&mut doc, "farm.name", name);
    edit::set(&mut doc, "amqp.url", amqp);
    let pg = env(
        "CELLFARM_TEST_PG",
        "postgres://postgres@127.0.0.1:5432/test",
    );
    edit::set(&mut doc, "postgres.url", pg);
    edit::set(&mut doc, "postgres.schema", name.replace('-', "_"));
    edit::set(
        &mut doc,
        "redis.url",
        env("CELLFARM_TEST_REDIS", "redis://127.0.0.1:6379"),
    );
    edit::set(
        &mut doc,
        "s3.endpoint",
        env("CELLFARM_TEST_S3", "http://127.0.0.1:8014"),
    );
    edit::set(&mut doc, "cell.scratch_dir", scratch.display().to_string());
    edit::add(&mut doc, "cell.lease_secs", 4);
    edit::add(&mut doc, "cell.heartbeat_secs", 1);
    edit::add(&mut doc, "cell.shutdown_grace_secs", 20);
    let renamed = edit::rename_bucket(&mut doc, "cellfarm-demo", bucket);
    assert!(
        renamed > 0,
        "the example config names no s3://cellfarm-demo/ URL"
    );
    let text = edit::to_text(&doc);
    // Anything left of the demo's names would be shared by every test farm.
    assert!(
        !text.contains("cellfarm-demo") && !text.contains("cellfarm_demo"),
        "the test config still names the demo's bucket or schema:\n{text}"
    );
    text
}

/// One row of the ledger's `cell_events`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CellEvent {
    pub at: chrono::DateTime<chrono::Utc>,
    pub pool: String,
    /// The launching or dying cell (`trigger`, `submit` for launches made there).
    pub cell_id: String,
    /// Cells launched, for a launch; else 1.
    pub cells: i32,
    pub reason: String,
}

pub struct Farm {
    pub name: String,
    pub bucket: String,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: Config,
    pub store: S3Store,
    pub ledger: Ledger,
    pub names: Names,
    conn: lapin::Connection,
    pub publisher: Publisher,
    cells: Vec<Child>,
}

impl Farm {
    /// A farm with the example pipelines, `cell` settings for quick tests, and `extra`
    /// TOML appended (more pipelines, say; `s3://cellfarm-demo/` in it names the farm's
    /// bucket).
    pub async fn new(test: &str, extra: &str) -> Farm {
        let amqp = env(
            "CELLFARM_TEST_AMQP",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        );
        Farm::with_broker(test, extra, &amqp).await
    }

    /// A farm whose broker is at `amqp` (a private node, say).
    pub async fn with_broker(test: &str, extra: &str, amqp: &str) -> Farm {
        let name = format!("t{}-{}", test.replace('_', "-"), rand::random::<u32>());
        let name: String = name.chars().take(40).collect();
        let bucket = format!("cf-{}", name.replace('_', "-"));
        let dir = tempfile::tempdir().expect("a temp dir");
        let scratch = dir.path().join("scratch");
        let text = test_config(
            &format!("{EXAMPLE}\n{extra}\n"),
            &name,
            &bucket,
            amqp,
            &scratch,
        );
        let config = Config::parse(&text, "test config").expect("the test config is valid");
        let config_path = dir.path().join("cellfarm.toml");
        std::fs::write(&config_path, &text).expect("write config");

        let store = S3Store::connect(&S3 {
            endpoint: Some(env("CELLFARM_TEST_S3", "http://127.0.0.1:8014")),
            region: Some("us-east-1".into()),
            path_style: true,
            ..S3::default()
        })
        .await;
        store
            .client()
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("create the test bucket (is s3s-fs running? scripts/services.sh)");
        let ledger = Ledger::connect(&config.postgres).await.expect("PostgreSQL");
        ledger.migrate().await.expect("migrate");
        let conn = queue::connect(&config.amqp.url).await.expect("RabbitMQ");
        let publisher = Publisher::open(&conn).await.expect("a channel");
        queue::declare(publisher.channel(), &config)
            .await
            .expect("declare");
        let farm = Farm {
            names: Names::new(&name),
            name,
            bucket,
            dir,
            config_path,
            config,
            store,
            ledger,
            conn,
            publisher,
            cells: Vec::new(),
        };
        farm.put_file("assets/intro.mp4", &farm.clip("intro", 1.0, "smptebars"));
        farm.put_file("assets/outro.mp4", &farm.clip("outro", 1.0, "rgbtestsrc"));
        farm
    }

    /// The `cellfarm` binary with this farm's config.
    pub fn cellfarm(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cellfarm"));
        cmd.arg("--config").arg(&self.config_path);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cellfarm().args(args).output().expect("run cellfarm")
    }

    /// `cellfarm submit s3://bucket/key --pipeline P`; panics unless it succeeds.
    pub fn submit(&self, key: &str, pipeline: &str) -> String {
        let url = format!("s3://{}/{key}", self.bucket);
        let out = self.run(&["submit", &url, "--pipeline", pipeline]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "submit failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The job id `submit` printed first.
    pub fn submit_id(&self, key: &str, pipeline: &str) -> String {
        let out = self.submit(key, pipeline);
        out.split_whitespace()
            .nth(1)
            .expect("submit prints a job id")
            .to_string()
    }

    /// Starts a cell; it is killed when the farm is dropped.
    pub fn start_cell(&mut self, args: &[&str]) -> u32 {
        self.start_cell_with_env(args, &[])
    }

    /// Starts a cell with extra environment variables.
    pub fn start_cell_with_env(&mut self, args: &[&str], envs: &[(&str, &str)]) -> u32 {
        let mut cmd = self.cellfarm();
        cmd.arg("cell").args(args).envs(envs.iter().copied());
        let index = self.start(cmd);
        self.cells[index].id()
    }

    /// Starts a process of this farm (a cell, a watcher, a Lambda); it is killed when
    /// the farm is dropped, and its stderr goes to `cell<index>.log`. Returns the index.
    pub fn start(&mut self, mut cmd: Command) -> usize {
        let index = self.cells.len();
        let log = std::fs::File::create(self.dir.path().join(format!("cell{index}.log")))
            .expect("log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a cellfarm process");
        self.cells.push(child);
        index
    }

    /// Live (not zombie) cell processes of this farm's config, past their start: the
    /// ones the test started and the siblings the `local` cloud launched.
    pub fn siblings(&self) -> Vec<u32> {
        let config = self.config_path.display().to_string();
        std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter(|e| {
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let zombie = stat
                    .rsplit_once(") ")
                    .is_some_and(|(_, r)| r.starts_with('Z'));
                // A cell runs a multi-threaded runtime; a single-threaded process with a
                // cell's command line is its FFmpeg child between fork and exec.
                let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
                let threads = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Threads:"))
                    .and_then(|t| t.trim().parse::<u32>().ok());
                let cell = threads.is_some_and(|t| t > 1);
                cmd.contains(&config) && cmd.contains(" cell") && !zombie && cell
            })
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect()
    }

    /// This farm's config file, parsed for editing (see [`edit`]).
    pub fn config_doc(&self) -> toml::Table {
        edit::parse(&std::fs::read_to_string(&self.config_path).expect("the farm's config"))
    }

    /// Edits this farm's config file, which the processes it starts from now on read
    /// (the test's own clients keep the config they were made with).
    pub fn edit_config(&self, change: impl FnOnce(&mut toml::Table)) {
        let mut doc = self.config_doc();
        change(&mut doc);
        std::fs::write(&self.config_path, edit::to_text(&doc)).expect("write the config");
    }

    /// Puts this farm's config, checked for changes every second, at `key` in its
    /// bucket; returns the text put.
    pub fn put_live_config(&self, key: &str) -> String {
        let mut doc = self.config_doc();
        edit::add(&mut doc, "cell.config_check_secs", 1);
        let text = edit::to_text(&doc);
        self.put_bytes(key, text.clone().into_bytes());
        text
    }

    /// Starts a cell whose config is the object at `key` (see [`Farm::put_live_config`]);
    /// returns its index.
    pub fn start_cell_from_s3(&mut self, key: &str) -> usize {
        let url = format!("s3://{}/{key}", self.bucket);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cellfarm"));
        cmd.args(["--config", &url, "cell"]).env(
            "CELLFARM_S3_ENDPOINT",
            env("CELLFARM_TEST_S3", "http://127.0.0.1:8014"),
        );
        self.start(cmd)
    }

    /// The process id of the `index`th process started.
    pub fn pid(&self, index: usize) -> u32 {
        self.cells[index].id()
    }

    /// Kills the `index`th process started (SIGKILL) and reaps it.
    pub fn kill(&mut self, index: usize) {
        let _ = self.cells[index].kill();
        let _ = self.cells[index].wait();
    }

    /// Runs a cell until the queues are empty and it idled 2 s; returns its exit status.
    pub fn run_cell_until_idle(&mut self) -> std::process::ExitStatus {
        self.run_cell_with_env(&["--until-idle", "2"], &[], Duration::from_secs(300))
    }

    /// Runs a cell to its end (or panics after `timeout`); returns its exit status.
    pub fn run_cell_with_env(
        &mut self,
        args: &[&str],
        envs: &[(&str, &str)],
        timeout: Duration,
    ) -> std::process::ExitStatus {
        self.start_cell_with_env(args, envs);
        let cell = self.cells.last_mut().expect("the cell just started");
        let dir = self.dir.path();
        wait_until_sync(
            timeout,
            Lazy(|| format!("the cell to finish\n{}", logs_in(dir))),
            || cell.try_wait().expect("wait"),
        )
    }

    /// Waits until the `index`th process started exits; returns its exit status.
    pub async fn wait_exit(
        &mut self,
        index: usize,
        timeout: Duration,
        what: &str,
    ) -> std::process::ExitStatus {
        let cell = &mut self.cells[index];
        let dir = self.dir.path();
        wait_until(
            timeout,
            Lazy(|| format!("{what}\n{}", logs_in(dir))),
            || {
                let exited = cell.try_wait().expect("wait");
                std::future::ready(exited)
            },
        )
        .await
    }

    /// [`wait_until`] with this farm's logs in the timeout message.
    pub async fn wait_until<R, Fut>(
        &self,
        timeout: Duration,
        what: impl std::fmt::Display,
        cond: impl FnMut() -> Fut,
    ) -> R::Value
    where
        R: Reached,
        Fut: std::future::Future<Output = R>,
    {
        wait_until(timeout, Lazy(|| format!("{what}\n{}", self.logs())), cond).await
    }

    /// The exit status of the `index`th cell started, if it has exited.
    pub fn cell_exited(&mut self, index: usize) -> Option<std::process::ExitStatus> {
        self.cells[index].try_wait().expect("wait")
    }

    /// The logs of the processes this farm started.
    pub fn logs(&self) -> String {
        logs_in(self.dir.path())
    }

    /// Makes a test clip with audio; `pattern` is a lavfi video source.
    pub fn clip(&self, name: &str, secs: f64, pattern: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.mp4"));
        make_clip(&path, secs, pattern);
        path
    }

    pub fn put_file(&self, key: &str, path: &Path) {
        self.put_bytes(key, std::fs::read(path).expect("read media"));
    }

    pub fn put_bytes(&self, key: &str, bytes: Vec<u8>) {
        let client = self.store.client().clone();
        let bucket = self.bucket.clone();
        let key = key.to_string();
        block(async move {
            client
                .put_object()
                .bucket(bucket)
                .key(&key)
                .body(bytes.into())
                .send()
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
        });
    }

    /// State, counted attempts and error of a job.
    pub async fn job(&self, id: &str) -> Option<(String, i32, Option<String>)> {
        sqlx::query_as("SELECT state, attempts, error FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.ledger.pool())
            .await
            .expect("query jobs")
    }

    /// Outcomes of every attempt of a job, in order.
    pub async fn attempts(&self, id: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT coalesce(outcome, 'open') FROM job_attempts WHERE job_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(self.ledger.pool())
        .await
        .expect("query attempts")
    }

    /// Outcomes of every attempt of every job, by job id; a job without attempts has an
    /// empty list.
    pub async fn attempts_by_job(&self) -> BTreeMap<String, Vec<String>> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM jobs")
            .fetch_all(self.ledger.pool())
            .await
            .expect("query jobs");
        let mut by_job: BTreeMap<String, Vec<String>> =
            ids.into_iter().map(|id| (id, Vec::new())).collect();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT job_id, coalesce(outcome, 'open') FROM job_attempts ORDER BY id",
        )
        .fetch_all(self.ledger.pool())
        .await
        .expect("query attempts");
        for (id, outcome) in rows {
            by_job.entry(id).or_default().push(outcome);
        }
        by_job
    }

    /// This farm's cell events of `kind` (`launch`, `death`, `interruption`,
    /// `rebalance`), oldest first.
    pub async fn cell_events(&self, kind: &str) -> Vec<CellEvent> {
        sqlx::query_as(
            "SELECT at, pool, cell_id, cells, reason FROM cell_events WHERE kind = $1 ORDER BY id",
        )
        .bind(kind)
        .fetch_all(self.ledger.pool())
        .await
        .expect("query cell_events")
    }

    /// Cells launched, summed over every launch event.
    pub async fn cells_launched(&self) -> i64 {
        let launches = self.cell_events("launch").await;
        launches.iter().map(|e| i64::from(e.cells)).sum()
    }

    pub async fn outputs(&self, id: &str) -> Vec<String> {
        let json: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT outputs FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(self.ledger.pool())
                .await
                .expect("query outputs");
        json.and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|o| o["key"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Waits until a job reaches `state`, or panics with the state it is in and the
    /// cells' logs.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) {
        let seen = RefCell::new(None);
        let what = Lazy(|| format!("job {id} to be {state} (it is {:?})", seen.borrow()));
        self.wait_until(timeout, what, || async {
            let now = self.job(id).await.map(|j| j.0);
            let reached = now.as_deref() == Some(state);
            *seen.borrow_mut() = now;
            reached
        })
        .await
    }

    /// Takes every message from a queue: (body, dead-letter reason).
    pub async fn drain(&self, queue: &str) -> Vec<(Vec<u8>, Option<String>)> {
        // A connection of its own: the farm's may have died with a broker restart.
        let conn = queue::connect(&self.config.amqp.url)
            .await
            .expect("RabbitMQ");
        let channel = conn.create_channel().await.expect("channel");
        let mut got = Vec::new();
        while let Some(m) = channel
            .basic_get(queue, BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            let reason = queue::reason(&m.delivery.properties);
            got.push((m.delivery.data.clone(), reason));
            m.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
        got
    }

    /// Keys of the outputs under this farm's outputs for `pipeline`: every object but
    /// the jobs' manifests (see [`Farm::manifest_keys`]).
    pub async fn output_keys(&self, pipeline: &str) -> Vec<String> {
        self.pipeline_objects(pipeline).await.1
    }

    /// Keys of the jobs' `_manifest.json` under this farm's outputs for `pipeline`.
    pub async fn manifest_keys(&self, pipeline: &str) -> Vec<String> {
        self.pipeline_objects(pipeline).await.0
    }

    /// Every key under this farm's outputs for `pipeline`: (manifests, the rest).
    async fn pipeline_objects(&self, pipeline: &str) -> (Vec<String>, Vec<String>) {
        self.store
            .list(&self.bucket, &format!("outputs/{pipeline}/"))
            .await
            .expect("list outputs")
            .into_iter()
            .map(|o| o.key)
            .partition(|k| k.ends_with("/_manifest.json"))
    }

    /// Downloads an object to the farm's temp dir.
    pub async fn fetch(&self, key: &str) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("fetched-{}", key.replace('/', "_")));
        self.store
            .download(&self.bucket, key, None, &path)
            .await
            .expect("download output");
        path
    }
}

impl Drop for Farm {
    /// Stops the farm's cells and deletes its queues: quorum queues left behind by
    /// every test run would pile up in the shared broker.
    fn drop(&mut self) {
        for c in &mut self.cells {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Siblings the local cloud launched live in process groups of their own; left
        // running, they would declare the deleted queues again.
        for pid in self.siblings() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let url = self.config.amqp.url.clone();
        let names = self.names.clone();
        let pools: Vec<String> = self.config.pools.keys().cloned().collect();
        block(async move {
            let cleanup = async move {
                let conn = queue::connect(&url).await.ok()?;
                let channel = conn.create_channel().await.ok()?;
                let mut queues = vec![names.results()];
                for pool in &pools {
                    queues.extend([names.priority(pool), names.work(pool), names.dead(pool)]);
                }
                for q in queues {
                    let options = lapin::options::QueueDeleteOptions::default();
                    let _ = channel.queue_delete(&q, options).await;
                }
                conn.close(200, "test over").await.ok()
            };
            // Cleanup must never hang a test.
            let _ = tokio::time::timeout(Duration::from_secs(10), cleanup).await;
        });
    }
}

/// The logs of the processes a farm started, in its dir: for a wait that holds the farm
/// mutably (see [`Farm::wait_exit`]).
pub fn logs_in(dir: &Path) -> String {
    let mut all = String::new();
    for i in 0..8 {
        if let Ok(s) = std::fs::read_to_string(dir.join(format!("cell{i}.log"))) {
            all.push_str(&format!("--- cell{i}.log\n{s}"));
        }
    }
    all
}

/// Runs a future to completion from sync code inside a test's runtime.
fn block<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
    .join()
    .expect("put thread");
}

pub fn make_clip(path: &Path, secs: f64, pattern: &str) {
    let status = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("{pattern}=size=640x360:rate=25"))
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100",
            "-t",
        ])
        .arg(secs.to_string())
        .args([
            "-ac",
            "2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-shortest", "-f", "mp4"])
        .arg(path)
        .status()
        .expect("ffmpeg is installed");
    assert!(status.success(), "making {}", path.display());
}

/// ffprobe of a local file: (codec, width, height, duration) of the first video stream
/// and the container duration.
pub fn probe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    serde_json::from_slice(&out.stdout).expect("ffprobe json")
}

pub fn video_stream(probe: &serde_json::Value) -> serde_json::Value {
    probe["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["codec_type"] == "video").cloned())
        .expect("a video stream")
}

pub fn seconds(v: &serde_json::Value) -> f64 {
    v.as_str().and_then(|s| s.parse().ok()).expect("a duration")
}
