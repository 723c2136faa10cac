//! Capacity and the pool's limits: the `ec2` cloud against an EC2 endpoint that refuses
//! capacity (tests/common/ec2_proxy.rs in front of moto_server) — moving on after a
//! refusal, the on-demand fallback within its ceiling, no fallback without it or for a
//! denied launch, cells launched before an error kept, the launch deadline, the
//! allocation strategy sent — and, on the `local` cloud with real sibling processes,
//! the pool floor and the priority lane under a backlog.

mod common;

use std::time::Duration;

use aws_sdk_ec2::types::InstanceLifecycleType;
use cellfarm::cloud::{Cloud, CloudError, Ec2Cloud, LAUNCH_DEADLINE};
use cellfarm::config::Ec2;
use cellfarm::s3url::S3Url;
use common::ec2_proxy::{Ec2Proxy, Market, UNAUTHORIZED};
use common::moto::{client, instances, launch_template, subnets};
use common::{edit, Farm};

const TYPES: [&str; 3] = ["c6i.xlarge", "c5.xlarge", "m6i.xlarge"];

/// How the cloud launches: a fleet (launch template) or RunInstances per type.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Via {
    Fleet,
    RunInstances,
}

struct Setup {
    farm: String,
    cfg: Ec2,
    cloud: Ec2Cloud,
    proxy: Ec2Proxy,
    ec2: aws_sdk_ec2::Client,
}

/// A farm of its own on the `ec2` cloud through a fresh proxy; `tune` edits the config.
async fn setup(test: &str, via: Via, tune: impl FnOnce(&mut Ec2)) -> Setup {
    let ec2 = client().await;
    let farm = format!("t{test}-{}", rand::random::<u32>());
    let proxy = Ec2Proxy::start();
    let mut cfg = Ec2 {
        region: Some("us-east-1".into()),
        endpoint: Some(proxy.url.clone()),
        config_url: Some(S3Url::parse("s3://cellfarm-config/farm.toml").expect("an s3:// URL")),
        launch_template: None,
        launch_template_version: "$Latest".into(),
        image_id: Some("ami-12c6146b".into()),
        instance_types: TYPES.iter().map(|t| t.to_string()).collect(),
        subnets: subnets(&ec2).await,
        security_groups: Vec::new(),
        instance_profile: None,
        key_name: None,
        allocation_strategy: "capacity-optimized".into(),
        on_demand_fallback: false,
        on_demand_ceiling: 0,
        // Never power off the machine the tests run on.
        poweroff_fallback: false,
    };
    if via == Via::Fleet {
        cfg.launch_template = Some(launch_template(&ec2, &farm, None).await);
        cfg.image_id = None;
    }
    tune(&mut cfg);
    let cloud = Ec2Cloud::new(
        &cellfarm::aws::sdk_config().await,
        &farm,
        cfg.clone(),
        "s3://cellfarm-config/farm.toml".into(),
        "capacity-test".into(),
        None,
    );
    Setup {
        farm,
        cfg,
        cloud,
        proxy,
        ec2,
    }
}

/// The instances `ids` as moto describes them: (type, lifecycle).
async fn described(ec2: &aws_sdk_ec2::Client, ids: &[String]) -> Vec<(String, Option<String>)> {
    let out = instances(ec2, ids).await;
    out.iter()
        .map(|i| {
            (
                i.instance_type()
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
                i.instance_lifecycle()
                    .map(InstanceLifecycleType::as_str)
                    .map(String::from),
            )
        })
        .collect()
}

/// Property: without a launch template, a spot type refused for capacity is given up
/// in each subnet after one request (not retried in place), and the launch moves on to
/// the next type in the configured order, which launches every cell asked for.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_type_moves_on_to_the_next_one_at_once() {
    let s = setup("moveon-run", Via::RunInstances, |_| {}).await;
    s.proxy.refuse(Market::Spot, &[TYPES[0]]);

    let ids = s
        .cloud
        .launch("default", 2, &format!("{}-1", s.farm))
        .await
        .expect("the next type launches");
    assert_eq!(ids.len(), 2, "{ids:?}");
    for (t, lifecycle) in described(&s.ec2, &ids).await {
        assert_eq!(t, TYPES[1], "the next type in order");
        assert_eq!(lifecycle.as_deref(), Some("spot"));
    }
    let asked: Vec<(String, Option<String>, bool)> = s
        .proxy
        .launches()
        .iter()
        .map(|r| {
            (
                r.instance_types().join(","),
                r.param("SubnetId").map(String::from),
                r.refused.is_empty(),
            )
        })
        .collect();
    let (refused, rest) = asked.split_at(2.min(asked.len()));
    assert_eq!(
        refused,
        [
            (TYPES[0].to_string(), Some(s.cfg.subnets[0].clone()), false),
            (TYPES[0].to_string(), Some(s.cfg.subnets[1].clone()), false),
        ],
        "one refused request per subnet of the first type: {asked:?}"
    );
    assert!(
        !rest.is_empty() && rest.iter().all(|(t, _, ok)| t == TYPES[1] && *ok),
        "then the next type, launched: {asked:?}"
    );
}

/// Property: with a launch template, one CreateFleet offers every type; when EC2
/// refuses the first type for capacity (an `errorSet` entry, HTTP 200), the cells come
/// from the other types, and the launch is not an error.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_refused_for_one_type_launches_the_others() {
    let s = setup("moveon-fleet", Via::Fleet, |_| {}).await;
    s.proxy.refuse(Market::Spot, &[TYPES[0]]);

    let ids = s
        .cloud
        .launch("default", 3, &format!("{}-1", s.farm))
        .await
        .expect("the other types launch");
    assert_eq!(ids.len(), 3, "{ids:?}");
    for (t, lifecycle) in described(&s.ec2, &ids).await {
        assert_ne!(t, TYPES[0], "the refused type launched nothing");
        assert_eq!(lifecycle.as_deref(), Some("spot"));
    }
    let launches = s.proxy.launches();
    assert_eq!(launches.len(), 1, "one CreateFleet: {launches:?}");
    let fleet = &launches[0];
    assert_eq!(fleet.action, "CreateFleet");
    assert_eq!(fleet.param("Type"), Some("instant"));
    assert_eq!(fleet.market(), Market::Spot);
    let offered = fleet.instance_types();
    for t in TYPES {
        assert!(offered.iter().any(|o| o == t), "{t} offered: {offered:?}");
    }
    assert!(
        fleet.refused.iter().all(|t| t == TYPES[0]) && !fleet.refused.is_empty(),
        "{:?}",
        fleet.refused
    );
}

/// Property: with `on_demand_fallback`, cells that spot capacity refused everywhere
/// are launched on-demand (CreateFleet `DefaultTargetCapacityType=on-demand`, or
/// RunInstances without spot market options), never more on-demand cells than
/// `on_demand_ceiling` counting the ones the pool already has: a launch of 3 under a
/// ceiling of 2 gets 2, a further launch gets none and fails naming the ceiling.
#[tokio::test(flavor = "multi_thread")]
async fn refused_spot_falls_back_to_on_demand_within_its_ceiling() {
    for via in [Via::Fleet, Via::RunInstances] {
        let s = setup("fallback", via, |c| {
            c.on_demand_fallback = true;
            c.on_demand_ceiling = 2;
        })
        .await;
        s.proxy.refuse(Market::Spot, &TYPES);

        let ids = s
            .cloud
            .launch("default", 3, &format!("{}-1", s.farm))
            .await
            .unwrap_or_else(|e| panic!("{via:?}: on-demand launches: {e}"));
        assert_eq!(ids.len(), 2, "{via:?}: the on-demand ceiling: {ids:?}");
        for (t, lifecycle) in described(&s.ec2, &ids).await {
            assert!(TYPES.contains(&t.as_str()), "{via:?}: {t}");
            assert_eq!(lifecycle, None, "{via:?}: on-demand, not spot");
        }
        let launches = s.proxy.launches();
        let on_demand: Vec<_> = launches
            .iter()
            .filter(|r| r.market() == Market::OnDemand)
            .collect();
        assert!(!on_demand.is_empty(), "{via:?}: {launches:?}");
        let spot_first = launches
            .iter()
            .position(|r| r.market() == Market::OnDemand)
            .is_some_and(|i| i > 0 && launches[..i].iter().all(|r| !r.refused.is_empty()));
        assert!(
            spot_first,
            "{via:?}: spot asked and refused first: {launches:?}"
        );
        if via == Via::Fleet {
            assert_eq!(
                on_demand[0].param("TargetCapacitySpecification.DefaultTargetCapacityType"),
                Some("on-demand")
            );
            assert_eq!(
                on_demand[0].param("TargetCapacitySpecification.TotalTargetCapacity"),
                Some("2"),
                "only what the ceiling leaves"
            );
        } else {
            assert!(on_demand
                .iter()
                .all(|r| r.param("InstanceMarketOptions.MarketType").is_none()));
        }

        let asked_before = s.proxy.launches().len();
        let full = s
            .cloud
            .launch("default", 1, &format!("{}-2", s.farm))
            .await
            .expect_err("the ceiling is full");
        let full = full.to_string();
        assert!(full.contains("on-demand ceiling"), "{via:?}: {full}");
        assert!(
            full.contains("InsufficientInstanceCapacity"),
            "{via:?}: {full}"
        );
        let after = s.proxy.launches();
        assert!(
            after[asked_before..]
                .iter()
                .all(|r| r.market() == Market::Spot),
            "{via:?}: no on-demand request past the ceiling: {after:?}"
        );
        assert_eq!(s.cloud.count("default").await.unwrap(), Some(2));
    }
}

/// Property: without `on_demand_fallback`, spot refused for every type launches
/// nothing, asks for no on-demand capacity, and the launch fails with an error that
/// names the refusal.
#[tokio::test(flavor = "multi_thread")]
async fn refused_spot_without_the_fallback_launches_nothing() {
    for via in [Via::Fleet, Via::RunInstances] {
        let s = setup("nofallback", via, |_| {}).await;
        s.proxy.refuse(Market::Spot, &TYPES);
        let e = s
            .cloud
            .launch("default", 2, &format!("{}-1", s.farm))
            .await
            .expect_err("nothing to launch on");
        let e = e.to_string();
        assert!(e.contains("InsufficientInstanceCapacity"), "{via:?}: {e}");
        let launches = s.proxy.launches();
        assert!(!launches.is_empty());
        assert!(
            launches.iter().all(|r| r.market() == Market::Spot),
            "{via:?}: {launches:?}"
        );
        assert_eq!(s.cloud.count("default").await.unwrap(), Some(0), "{via:?}");
    }
}

/// Property: a launch EC2 refuses as not authorised (`UnauthorizedOperation`: a fleet
/// entry, or a RunInstances answer) fails at once, naming the refusal, and never falls
/// back to on-demand: another market cannot fix a missing permission, and the farm
/// must not pay on-demand prices for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_denied_launch_fails_without_the_on_demand_fallback() {
    for via in [Via::Fleet, Via::RunInstances] {
        let s = setup("denied", via, |c| {
            c.on_demand_fallback = true;
            c.on_demand_ceiling = 4;
        })
        .await;
        s.proxy.deny(Market::Spot, &TYPES);
        let e = s
            .cloud
            .launch("default", 2, &format!("{}-1", s.farm))
            .await
            .expect_err("denied");
        let e = e.to_string();
        assert!(e.contains(UNAUTHORIZED), "{via:?}: {e}");
        let launches = s.proxy.launches();
        assert_eq!(
            launches.len(),
            1,
            "{via:?}: one request, then stop: {launches:?}"
        );
        assert_eq!(launches[0].market(), Market::Spot, "{via:?}");
        assert_eq!(s.cloud.count("default").await.unwrap(), Some(0), "{via:?}");
    }
}

/// Property: when a fleet launches some cells and EC2 reports an error that is not
/// about capacity beside them, the launch fails, and its error carries every instance
/// that was launched (they exist and bill: the tick records them as pending).
#[tokio::test(flavor = "multi_thread")]
async fn cells_launched_before_an_error_are_kept() {
    let s = setup("kept", Via::Fleet, |_| {}).await;
    s.proxy.deny(Market::Spot, &TYPES[..1]);
    let e = s
        .cloud
        .launch("default", 2, &format!("{}-1", s.farm))
        .await
        .expect_err("one type denied");
    let CloudError::Launch {
        launched, reason, ..
    } = &e
    else {
        panic!("not a launch error: {e}");
    };
    assert!(reason.contains(UNAUTHORIZED), "{reason}");
    assert_eq!(launched.len(), 2, "{e}");
    let mut existing: Vec<String> = instances(&s.ec2, launched)
        .await
        .iter()
        .filter_map(|i| i.instance_id().map(String::from))
        .collect();
    existing.sort();
    let mut kept = launched.clone();
    kept.sort();
    assert_eq!(existing, kept, "the error names the instances EC2 has");
    assert_eq!(s.cloud.count("default").await.unwrap(), Some(2));
}

/// Property: a launch ends by [`LAUNCH_DEADLINE`] even when EC2 does not answer: the
/// CreateFleet request is not waited on (or retried) past it, so the launch cannot
/// outlive the pool's mitosis lock; the error says it timed out.
#[tokio::test(flavor = "multi_thread")]
async fn a_launch_ends_by_its_deadline() {
    let s = setup("deadline", Via::Fleet, |_| {}).await;
    s.proxy.hold("CreateFleet", LAUNCH_DEADLINE * 3);
    let e = s
        .cloud
        .launch("default", 1, &format!("{}-1", s.farm))
        .await
        .expect_err("EC2 did not answer in time")
        .to_string();
    assert!(e.contains("timeout"), "{e}");
}

/// Property: the CreateFleet request carries the allocation strategy of the config,
/// whichever it is.
#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_asks_for_the_configured_allocation_strategy() {
    for strategy in ["price-capacity-optimized", "lowest-price", "diversified"] {
        let s = setup("strategy", Via::Fleet, |c| {
            c.allocation_strategy = strategy.into();
        })
        .await;
        s.cloud
            .launch("default", 1, &format!("{}-1", s.farm))
            .await
            .expect("launch");
        let launches = s.proxy.launches();
        assert_eq!(launches.len(), 1, "{launches:?}");
        assert_eq!(
            launches[0].param("SpotOptions.AllocationStrategy"),
            Some(strategy)
        );
    }
}

/// A pool kept at one cell when idle: a job a cell, two at most, quick deaths above
/// the floor. Its pipeline takes one frame: the jobs are over at once.
const FLOORED: &str = r#"
[cloud]
kind = "local"

[pools.floored]
jobs_per_cell = 1
floor = 1
ceiling = 2
cooldown_secs = 0
idle_grace_secs = 2
launch_timeout_secs = 60

[pipelines.floored]
pool = "floored"
output = "s3://cellfarm-demo/outputs/floored/"
steps = [{ args = ["-i", "{input}", "-frames:v", "1", "{out}/poster.jpg"] }]
outputs = [{ path = "poster.jpg", video_codec = "mjpeg" }]
"#;

/// The `mitosis tick` debug lines of every sibling's log that decided to stay while
/// alone in the pool and idle for at least `idle` seconds.
fn stays_alone_idle(farm: &Farm, idle: u64) -> usize {
    let dir = farm.dir.path().join("scratch/cells");
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        n += text
            .lines()
            .filter(|l| l.contains("mitosis tick") && l.contains("decision=Stay"))
            .filter(|l| l.contains("alive: 1,"))
            .filter(|l| {
                l.split("idle_secs=Some(")
                    .nth(1)
                    .and_then(|r| r.split(')').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|secs| secs >= idle)
            })
            .count();
    }
    n
}

/// Property: a pool with `floor = 1` keeps one cell when idle instead of dying to
/// zero: two jobs grow it to two cells (its ceiling); once they are done, the extra
/// cell dies back to the floor, and the last one, alone and idle past its grace, decides
/// at its next ticks to stay, and is still running.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_pool_dies_back_to_its_floor_and_no_further() {
    let farm = Farm::new("floor", FLOORED).await;
    let clip = farm.clip("clip", 1.0, "testsrc");
    for i in 0..2 {
        farm.put_file(&format!("floored/clip{i}.mp4"), &clip);
    }
    let url = format!("s3://{}/floored/", farm.bucket);
    // The siblings inherit the environment: their ticks are logged at debug.
    let out = farm
        .cellfarm()
        .env("RUST_LOG", "cellfarm=debug")
        .args(["submit", "--prefix", &url, "--pipeline", "floored"])
        .output()
        .expect("submit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    farm.wait_until(Duration::from_secs(60), "two cells launched", || async {
        farm.cells_launched().await == 2
    })
    .await;
    farm.wait_until(Duration::from_secs(120), "both jobs to succeed", || async {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(farm.ledger.pool())
            .await
            .expect("count");
        done == 2
    })
    .await;
    farm.wait_until(Duration::from_secs(60), "the extra cell to die", || async {
        !farm.cell_events("death").await.is_empty()
    })
    .await;
    // Three ticks of the survivor, alone and idle past the grace, that kept it.
    farm.wait_until(
        Duration::from_secs(60),
        "the last cell to tick alone and idle past its grace, and stay",
        || async { stays_alone_idle(&farm, 2) >= 3 },
    )
    .await;
    let deaths = farm.cell_events("death").await;
    assert_eq!(deaths.len(), 1, "one death, down to the floor: {deaths:?}");
    assert_eq!(farm.siblings().len(), 1, "the floor's cell still runs");
    assert_eq!(farm.cells_launched().await, 2);
}

/// Property: with a backlog in a pool's work queue, a job submitted afterwards with
/// `--priority` is the first one a cell starts: the priority lane is consumed before
/// the work queue.
#[tokio::test(flavor = "multi_thread")]
async fn a_priority_job_starts_before_the_backlog() {
    let mut farm = Farm::new(
        "priority",
        FLOORED
            .replace("kind = \"local\"", "kind = \"none\"")
            .as_str(),
    )
    .await;
    // One slot: the cell starts one job at a time, so the order is the ledger's.
    farm.edit_config(|doc| edit::set(doc, "cell.slots", 1));
    let clip = farm.clip("clip", 1.0, "testsrc");
    for i in 0..6 {
        farm.put_file(&format!("in/backlog{i}.mp4"), &clip);
    }
    farm.put_file("in/urgent.mp4", &clip);
    for i in 0..6 {
        farm.submit(&format!("in/backlog{i}.mp4"), "floored");
    }
    let url = format!("s3://{}/in/urgent.mp4", farm.bucket);
    let out = farm.run(&["submit", &url, "--pipeline", "floored", "--priority"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let urgent = stdout
        .split_whitespace()
        .nth(1)
        .expect("submit prints a job id")
        .to_string();

    let status = farm.run_cell_until_idle();
    assert!(status.success(), "{}", farm.logs());
    let order: Vec<String> = sqlx::query_scalar("SELECT job_id FROM job_attempts ORDER BY id")
        .fetch_all(farm.ledger.pool())
        .await
        .expect("attempts");
    assert_eq!(order.len(), 7, "every job ran once: {order:?}");
    assert_eq!(order[0], urgent, "the priority job first: {order:?}");
}
