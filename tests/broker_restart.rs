//! The broker restarts under a working cell: nothing is lost, nothing is done twice.
//!
//! The test runs its own RabbitMQ node (own ports, node name and data directory) so that
//! restarting it disturbs no other test.

mod common;

use std::cell::RefCell;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{wait_until_sync, Farm, Lazy, REALTIME};

/// The Debian package's server script, run directly (not through the wrapper that
/// switches to the rabbitmq user) so the node can use a private directory.
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

struct PrivateBroker {
    dir: std::path::PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl PrivateBroker {
    fn new(dir: &Path) -> PrivateBroker {
        let dir = dir.join("rabbitmq");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let port = free_port();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .expect("config");
        PrivateBroker {
            node: format!("cellfarm-test-{}@localhost", rand::random::<u32>()),
            dir,
            port,
            dist_port: free_port(),
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).expect("log");
        let child = Command::new(SERVER)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .env("HOME", &self.dir)
            // The node writes crash dumps (MnesiaCore.*) into its working directory.
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            // The script does not exec the Erlang VM: stop the whole group, not the script.
            .process_group(0)
            .spawn()
            .expect("start a private RabbitMQ node (is rabbitmq-server installed?)");
        self.child = Some(child);
        wait_until_sync(
            Duration::from_secs(90),
            "the private RabbitMQ to listen",
            || self.listening(),
        );
    }

    fn listening(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// A clean stop: SIGTERM to the node's process group, as a service manager
    /// restarting the broker would send; waits until the port is closed.
    fn stop(&mut self) {
        self.signal("-TERM");
        wait_until_sync(
            Duration::from_secs(30),
            "the private RabbitMQ to close its port",
            || !self.listening(),
        );
    }

    fn signal(&mut self, sig: &str) {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args([sig, "--", &group]).status();
            let _ = child.wait();
        }
    }
}

/// The job ids of the result messages waiting in the farm's results queue, taken.
async fn result_ids(farm: &Farm) -> Vec<String> {
    let results = farm.drain(&farm.names.results()).await;
    results
        .iter()
        .map(|(body, _)| {
            let r: cellfarm::job::ResultMessage = serde_json::from_slice(body).expect("result");
            r.job_id
        })
        .collect()
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.signal("-KILL");
    }
}

/// Property: when RabbitMQ restarts in the middle of a batch, the cell reconnects by
/// itself and every job succeeds exactly once (one succeeded attempt, one output), and
/// every job's result message reaches the results queue exactly once (the ledger's
/// outbox re-sends a result whose publish the outage interrupted, and only that one).
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_batch_loses_nothing_and_doubles_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut broker = PrivateBroker::new(tmp.path());
    broker.start();
    let mut farm = Farm::with_broker("restart", REALTIME, &broker.url()).await;
    let clip = farm.clip("clip", 3.0, "testsrc");
    let mut ids = Vec::new();
    for i in 0..5 {
        let key = format!("inbox/clip{i}.mp4");
        farm.put_file(&key, &clip);
        ids.push(farm.submit_id(&key, "realtime"));
    }
    farm.start_cell(&[]);
    farm.wait_state(&ids[0], "running", Duration::from_secs(60))
        .await;

    broker.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.start();

    for id in &ids {
        farm.wait_state(id, "succeeded", Duration::from_secs(120))
            .await;
    }
    for id in &ids {
        let attempts = farm.attempts(id).await;
        let done = attempts.iter().filter(|a| *a == "succeeded").count();
        assert_eq!(done, 1, "job {id}: {attempts:?}\n{}", farm.logs());
    }
    let outputs = farm.output_keys("realtime").await;
    assert_eq!(outputs.len(), ids.len(), "{outputs:?}");
    // Every result, duplicates included, until every job has one and the outbox has
    // nothing left to send (a re-send comes from there, so none can follow)...
    let results = RefCell::new(Vec::new());
    let what = Lazy(|| {
        format!(
            "a result for every job, all sent (got {:?})",
            results.borrow()
        )
    });
    farm.wait_until(Duration::from_secs(60), what, || async {
        let taken = result_ids(&farm).await;
        results.borrow_mut().extend(taken);
        let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE NOT result_sent")
            .fetch_one(farm.ledger.pool())
            .await
            .expect("query the outbox");
        ids.iter().all(|id| results.borrow().contains(id)) && unsent == 0
    })
    .await;
    // ...and a last look for a re-send that read the outbox just before it emptied.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut results = results.into_inner();
    results.extend(result_ids(&farm).await);
    results.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(results, want, "one result message per job");
    assert!(
        farm.logs().contains("reconnecting"),
        "the cell saw the broker go:\n{}",
        farm.logs()
    );
}
