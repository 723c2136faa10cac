//! The `ec2` cloud against moto_server's EC2 API (scripts/services.sh starts it on
//! 127.0.0.1:5000): what a launch asks EC2 for, how the ceiling counts the farm's
//! instances, and a cell terminating its own instance.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, Filter, FleetData, FleetType, InstanceAttributeName,
    InstanceStateName,
};
use cellfarm::cloud::{Cloud, Ec2Cloud, FARM_TAG, LAUNCHED_BY_TAG};
use cellfarm::config::Ec2;
use cellfarm::metadata::POOL_TAG;
use cellfarm::s3url::S3Url;
use common::ec2_proxy::Ec2Proxy;
use common::imds::MetadataServer;
use common::moto::{client, instances, launch_template, subnets, url as moto};
use common::Farm;

/// Two default subnets and the default security group of moto's default VPC.
async fn network(ec2: &aws_sdk_ec2::Client) -> (Vec<String>, String) {
    let subnets = subnets(ec2).await;
    let groups = ec2
        .describe_security_groups()
        .filters(
            Filter::builder()
                .name("group-name")
                .values("default")
                .build(),
        )
        .send()
        .await
        .expect("DescribeSecurityGroups");
    let sg = groups.security_groups()[0]
        .group_id()
        .expect("an id")
        .to_string();
    (subnets, sg)
}

/// Creates an IAM instance profile in moto (IAM's query API; the crate has no IAM SDK).
fn instance_profile(name: &str) {
    let body =
        format!("Action=CreateInstanceProfile&InstanceProfileName={name}&Version=2010-05-08");
    let addr = moto().trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).expect("moto_server");
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=cellfarm/20261123/us-east-1/iam/aws4_request, \
         SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(
        response.starts_with("HTTP/1.1 200") || response.contains("EntityAlreadyExists"),
        "CreateInstanceProfile: {response}"
    );
}

fn ec2_config(subnets: &[String], sg: &str) -> Ec2 {
    Ec2 {
        region: Some("us-east-1".into()),
        endpoint: Some(moto()),
        config_url: Some(S3Url::parse("s3://cellfarm-config/farm.toml").expect("an s3:// URL")),
        launch_template: None,
        launch_template_version: "$Latest".into(),
        image_id: Some("ami-12c6146b".into()),
        instance_types: vec!["c6i.xlarge".into(), "c5.xlarge".into(), "m6i.xlarge".into()],
        subnets: subnets.to_vec(),
        security_groups: vec![sg.to_string()],
        instance_profile: Some("cellfarm-cell".into()),
        key_name: None,
        allocation_strategy: "capacity-optimized".into(),
        on_demand_fallback: false,
        on_demand_ceiling: 0,
        // Never power off the machine the tests run on.
        poweroff_fallback: false,
    }
}

fn farm_name(test: &str) -> String {
    format!("t{test}-{}", rand::random::<u32>())
}

fn tag(i: &aws_sdk_ec2::types::Instance, key: &str) -> Option<String> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value().map(String::from))
}

async fn attribute(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
    name: InstanceAttributeName,
) -> Option<String> {
    let out = ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(name.clone())
        .send()
        .await
        .expect("DescribeInstanceAttribute");
    match name {
        InstanceAttributeName::UserData => {
            out.user_data().and_then(|v| v.value().map(String::from))
        }
        _ => out
            .instance_initiated_shutdown_behavior()
            .and_then(|v| v.value().map(String::from)),
    }
}

/// Property: without a launch template, a launch is RunInstances of spot instances with
/// the configured AMI, instance types (first choice first), subnets, security group and
/// instance profile,
/// IMDSv2 required with a PUT hop limit of 1 and metadata tags, the farm/pool/launched-by tags, shutdown behaviour
/// `terminate`, and user data that is the config URL and nothing else; `count` sees
/// exactly the pool's instances.
#[tokio::test(flavor = "multi_thread")]
// One launch with every property of it checked: split, the test would launch twice.
#[allow(clippy::too_many_lines)]
async fn run_instances_launches_carry_what_the_config_says() {
    let ec2 = client().await;
    let (subnets, sg) = network(&ec2).await;
    instance_profile("cellfarm-cell");
    let farm = farm_name("run");
    let cfg = ec2_config(&subnets, &sg);
    let cloud = Ec2Cloud::new(
        &cellfarm::aws::sdk_config().await,
        &farm,
        cfg.clone(),
        cfg.config_url.clone().unwrap().to_string(),
        "cell-a".into(),
        None,
    );

    let ids = cloud
        .launch("default", 3, &format!("{farm}-default-1"))
        .await
        .expect("launch");
    assert_eq!(ids.len(), 3, "{ids:?}");
    let described = instances(&ec2, &ids).await;
    assert_eq!(described.len(), 3, "EC2 knows every instance launched");
    for i in described {
        let id = i.instance_id().unwrap();
        assert_eq!(tag(&i, FARM_TAG).as_deref(), Some(farm.as_str()));
        assert_eq!(tag(&i, POOL_TAG).as_deref(), Some("default"));
        assert_eq!(tag(&i, LAUNCHED_BY_TAG).as_deref(), Some("cell-a"));
        assert_eq!(i.image_id(), Some("ami-12c6146b"));
        let t = i
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default();
        assert!(cfg.instance_types.contains(&t), "{t} was not configured");
        let subnet = i.subnet_id().unwrap_or_default().to_string();
        assert!(subnets.contains(&subnet), "{subnet} was not configured");
        if id == ids[0] {
            // The first choice is the first type in the first subnet.
            assert_eq!(
                (t.as_str(), subnet.as_str()),
                ("c6i.xlarge", subnets[0].as_str())
            );
        }
        assert_eq!(
            i.instance_lifecycle().map(|l| l.as_str()),
            Some("spot"),
            "{id}"
        );
        assert!(i
            .security_groups()
            .iter()
            .any(|g| g.group_id() == Some(sg.as_str())));
        let profile = i
            .iam_instance_profile()
            .and_then(|p| p.arn())
            .unwrap_or_default();
        assert!(profile.ends_with("/cellfarm-cell"), "{profile}");
        let options = i.metadata_options().expect("metadata options");
        assert_eq!(options.http_tokens().map(|t| t.as_str()), Some("required"));
        assert_eq!(options.http_put_response_hop_limit(), Some(1));
        assert_eq!(
            options.instance_metadata_tags().map(|t| t.as_str()),
            Some("enabled")
        );
        let user_data = attribute(&ec2, id, InstanceAttributeName::UserData)
            .await
            .unwrap();
        let decoded = aws_smithy_types::base64::decode(&user_data).unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "s3://cellfarm-config/farm.toml"
        );
        assert_eq!(
            attribute(
                &ec2,
                id,
                InstanceAttributeName::InstanceInitiatedShutdownBehavior
            )
            .await
            .as_deref(),
            Some("terminate")
        );
    }
    assert_eq!(cloud.count("default").await.unwrap(), Some(3));
    assert_eq!(cloud.count("other").await.unwrap(), Some(0));
}

/// Property: with a launch template, a launch is one CreateFleet `instant` request for
/// the cells as spot capacity, offering the allocation strategy every configured
/// instance type in every configured subnet; the instances are spot instances of the
/// configured types only, tagged for the farm and pool.
///
/// Which types the instances get is the allocation strategy's choice, and moto fills a
/// fleet from one override only: so the spread is checked on the request moto recorded
/// (DescribeFleets), the instances on what they are.
#[tokio::test(flavor = "multi_thread")]
// One scenario read top to bottom: the request, then what moto recorded of it.
#[allow(clippy::too_many_lines)]
async fn a_fleet_launch_spreads_spot_cells_over_the_configured_types() {
    let ec2 = client().await;
    let (subnets, sg) = network(&ec2).await;
    let farm = farm_name("fleet");
    let template = launch_template(&ec2, &farm, Some("s3://cellfarm-config/farm.toml")).await;
    let mut cfg = ec2_config(&subnets, &sg);
    cfg.launch_template = Some(template);
    cfg.image_id = None;
    let cloud = Ec2Cloud::new(
        &cellfarm::aws::sdk_config().await,
        &farm,
        cfg.clone(),
        cfg.config_url.clone().unwrap().to_string(),
        "cell-b".into(),
        None,
    );

    let ids = cloud
        .launch("long", 4, &format!("{farm}-long-1"))
        .await
        .expect("launch");
    assert_eq!(ids.len(), 4, "{ids:?}");

    let fleet = fleet_of(&ec2, &ids).await;
    assert_eq!(fleet.r#type(), Some(&FleetType::Instant));
    let capacity = fleet
        .target_capacity_specification()
        .expect("a target capacity");
    assert_eq!(capacity.total_target_capacity(), Some(4));
    assert_eq!(
        capacity.default_target_capacity_type(),
        Some(&DefaultTargetCapacityType::Spot)
    );
    let strategy = fleet.spot_options().and_then(|o| o.allocation_strategy());
    assert_eq!(
        strategy.map(|s| s.as_str()),
        Some(cfg.allocation_strategy.as_str())
    );
    let configs = fleet.launch_template_configs();
    assert_eq!(configs.len(), 1, "{configs:?}");
    let mut offered: Vec<(String, String)> = configs[0]
        .overrides()
        .iter()
        .map(|o| {
            let t = o.instance_type().map(|t| t.as_str()).unwrap_or_default();
            (t.to_string(), o.subnet_id().unwrap_or_default().to_string())
        })
        .collect();
    offered.sort();
    let mut configured: Vec<(String, String)> = cfg
        .instance_types
        .iter()
        .flat_map(|t| subnets.iter().map(move |s| (t.clone(), s.clone())))
        .collect();
    configured.sort();
    assert_eq!(
        offered, configured,
        "every configured type in every configured subnet"
    );

    let described = instances(&ec2, &ids).await;
    assert_eq!(described.len(), 4, "EC2 knows every instance launched");
    for i in described {
        assert_eq!(tag(&i, FARM_TAG).as_deref(), Some(farm.as_str()));
        assert_eq!(tag(&i, POOL_TAG).as_deref(), Some("long"));
        let t = i
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default();
        assert!(cfg.instance_types.contains(&t), "{t} was not configured");
        assert_eq!(i.instance_lifecycle().map(|l| l.as_str()), Some("spot"));
    }
    assert_eq!(cloud.count("long").await.unwrap(), Some(4));
}

/// The one fleet that holds `ids`, as DescribeFleets reports it.
async fn fleet_of(ec2: &aws_sdk_ec2::Client, ids: &[String]) -> FleetData {
    let out = ec2.describe_fleets().send().await.expect("DescribeFleets");
    let holds = |f: &FleetData| {
        f.instances()
            .iter()
            .flat_map(|i| i.instance_ids())
            .any(|id| ids.contains(id))
    };
    let fleets: Vec<FleetData> = out.fleets().iter().filter(|f| holds(f)).cloned().collect();
    assert_eq!(fleets.len(), 1, "one fleet launched {ids:?}: {fleets:?}");
    let fleet = fleets.into_iter().next().expect("one fleet");
    let mut launched: Vec<&String> = fleet
        .instances()
        .iter()
        .flat_map(|i| i.instance_ids())
        .collect();
    launched.sort();
    let mut want: Vec<&String> = ids.iter().collect();
    want.sort();
    assert_eq!(
        launched, want,
        "the fleet launched these instances and no other"
    );
    fleet
}

fn ec2_toml(subnets: &[String], sg: &str, extra: &str) -> String {
    format!(
        r#"
[cloud]
kind = "ec2"
metadata_poll_secs = 1

[cloud.ec2]
region = "us-east-1"
endpoint = "{moto}"
config_url = "s3://cellfarm-config/farm.toml"
image_id = "ami-12c6146b"
instance_types = ["c6i.xlarge", "c5.xlarge"]
subnets = {subnets:?}
security_groups = ["{sg}"]
poweroff_fallback = false

[pools.scaled]
jobs_per_cell = 1
ceiling = 3
step = 10
cooldown_secs = 0
idle_grace_secs = 1

[pipelines.scaled]
pool = "scaled"
output = "s3://cellfarm-demo/outputs/scaled/"
steps = [{{ args = ["-i", "{{input}}", "-frames:v", "1", "{{out}}/poster.jpg"] }}]
outputs = [{{ path = "poster.jpg", video_codec = "mjpeg" }}]
{extra}
"#,
        moto = moto()
    )
}

/// Property: the ceiling holds against the instances that exist, not only what Redis
/// remembers: with 2 tagged instances Redis never heard of and a ceiling of 3, a backlog
/// of 6 jobs launches exactly 1 more, and a second submission launches none.
#[tokio::test(flavor = "multi_thread")]
async fn the_ceiling_counts_the_tagged_instances_that_exist() {
    let ec2 = client().await;
    let (subnets, sg) = network(&ec2).await;
    let farm = Farm::new("ceiling", &ec2_toml(&subnets, &sg, "")).await;
    let cfg = farm.config.cloud.ec2.clone().unwrap();
    let cloud = Ec2Cloud::new(
        &cellfarm::aws::sdk_config().await,
        &farm.name,
        cfg,
        "s3://cellfarm-config/farm.toml".into(),
        "earlier".into(),
        None,
    );
    let earlier = cloud
        .launch("scaled", 2, "earlier-launch")
        .await
        .expect("launch");
    assert_eq!(earlier.len(), 2);

    let clip = farm.clip("clip", 1.0, "testsrc");
    for i in 0..6 {
        farm.put_file(&format!("in/clip{i}.mp4"), &clip);
    }
    for i in 0..3 {
        farm.submit(&format!("in/clip{i}.mp4"), "scaled");
    }
    assert_eq!(
        cloud.count("scaled").await.unwrap(),
        Some(3),
        "one launch up to the ceiling"
    );
    for i in 3..6 {
        farm.submit(&format!("in/clip{i}.mp4"), "scaled");
    }
    assert_eq!(
        cloud.count("scaled").await.unwrap(),
        Some(3),
        "nothing past the ceiling"
    );
    assert_eq!(farm.cells_launched().await, 1);
}

/// A farm of its own on the `ec2` cloud (the `scaled` pool) through a fresh EC2 proxy,
/// which records its requests.
async fn proxied_farm(test: &str) -> (Farm, Ec2Proxy) {
    let ec2 = client().await;
    let (subnets, sg) = network(&ec2).await;
    let proxy = Ec2Proxy::start();
    let toml = ec2_toml(&subnets, &sg, "").replace(&moto(), &proxy.url);
    (Farm::new(test, &toml).await, proxy)
}

/// Forgets everything Redis holds for `farm`, as a Redis restart without persistence
/// (or a failover to an empty replica) does.
async fn forget_redis(farm: &str) {
    let url = common::env("CELLFARM_TEST_REDIS", "redis://127.0.0.1:6379");
    let client = redis::Client::open(url).expect("a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{farm}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
}

/// Property: the ClientToken of a launch is new for every decision, whatever Redis
/// remembers: after Redis loses the farm's state, the next launch still sends a token
/// EC2 has never seen (EC2 keeps a token for a day after its instances end, and would
/// answer a repeated one with the old instances, or refuse it).
#[tokio::test(flavor = "multi_thread")]
async fn launch_tokens_never_repeat_when_redis_forgets() {
    let (farm, proxy) = proxied_farm("token").await;
    let clip = farm.clip("clip", 1.0, "testsrc");
    let tokens = || -> Vec<String> {
        let launches = proxy.launches();
        let tokens = launches.iter().filter_map(|r| r.param("ClientToken"));
        tokens.map(String::from).collect()
    };
    let mut seen = Vec::new();
    let mut decisions: Vec<Vec<String>> = Vec::new();
    for i in 0..2 {
        farm.put_file(&format!("in/clip{i}.mp4"), &clip);
        farm.submit(&format!("in/clip{i}.mp4"), "scaled");
        let sent = tokens();
        assert!(sent.len() > seen.len(), "submission {i} launched nothing");
        decisions.push(sent[seen.len()..].to_vec());
        seen = sent;
        // The cells never came: Redis forgets them, and EC2 ends them.
        forget_redis(&farm.name).await;
        let machines = Ec2Cloud::new(
            &cellfarm::aws::sdk_config().await,
            &farm.name,
            farm.config.cloud.ec2.clone().unwrap(),
            String::new(),
            "test".into(),
            None,
        );
        let ids: Vec<String> = (machines.machines("scaled").await.unwrap().unwrap())
            .into_iter()
            .map(|m| m.id)
            .collect();
        machines.terminate(&ids).await.unwrap();
    }
    let repeated: Vec<&String> = (decisions[1].iter())
        .filter(|t| decisions[0].contains(t))
        .collect();
    assert!(repeated.is_empty(), "tokens sent again: {repeated:?}");
}

/// Property: the pool's census of its instances serves every decider of the farm for a
/// while: two ticks (two `submit` processes) ask EC2 for the instances once; once Redis
/// forgot the census, the next tick asks again (so the ceiling still holds against what
/// exists).
#[tokio::test(flavor = "multi_thread")]
async fn the_instance_census_is_shared_between_ticks() {
    let (farm, proxy) = proxied_farm("census").await;
    let clip = farm.clip("clip", 1.0, "testsrc");
    let describes = || {
        let recorded = proxy.recorded();
        recorded
            .iter()
            .filter(|r| r.action == "DescribeInstances")
            .count()
    };
    for i in 0..3 {
        farm.put_file(&format!("in/clip{i}.mp4"), &clip);
    }
    farm.submit("in/clip0.mp4", "scaled");
    farm.submit("in/clip1.mp4", "scaled");
    assert_eq!(describes(), 1, "two ticks, one DescribeInstances");
    forget_redis(&farm.name).await;
    farm.submit("in/clip2.mp4", "scaled");
    assert_eq!(describes(), 2, "a forgotten census is taken again");
}

/// Property: a cell on an EC2 instance learns its id and pool from instance metadata
/// (IMDSv2), and when its queues are empty past the idle grace it deregisters, records
/// its death and terminates its own instance: no orphan instance is left.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_cell_terminates_its_own_instance() {
    let ec2 = client().await;
    let (subnets, sg) = network(&ec2).await;
    let mut farm = Farm::new("terminate", &ec2_toml(&subnets, &sg, "")).await;
    let cfg = farm.config.cloud.ec2.clone().unwrap();
    let cloud = Ec2Cloud::new(
        &cellfarm::aws::sdk_config().await,
        &farm.name,
        cfg,
        "s3://cellfarm-config/farm.toml".into(),
        "test".into(),
        None,
    );
    let ids = cloud
        .launch("scaled", 1, "the-instance")
        .await
        .expect("launch");
    let me = ids[0].clone();
    let imds = MetadataServer::start(&[
        ("instance-id", &me),
        ("instance-type", "c6i.xlarge"),
        ("placement/availability-zone", "us-east-1a"),
        ("placement/region", "us-east-1"),
        (&format!("tags/instance/{POOL_TAG}"), "scaled"),
    ]);

    let started = Instant::now();
    let status = farm.run_cell_with_env(
        &[],
        &[("CELLFARM_METADATA_URL", &imds.url)],
        Duration::from_secs(60),
    );
    assert!(status.success(), "the cell failed:\n{}", farm.logs());
    let took = started.elapsed();

    let state = instances(&ec2, &ids).await[0]
        .state()
        .and_then(|s| s.name().cloned());
    assert!(
        matches!(
            state,
            Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated)
        ),
        "instance {me} is {state:?}\n{}",
        farm.logs()
    );
    assert_eq!(cloud.count("scaled").await.unwrap(), Some(0));
    let deaths: Vec<(String, String)> = farm
        .cell_events("death")
        .await
        .into_iter()
        .map(|e| (e.cell_id, e.pool))
        .collect();
    assert_eq!(
        deaths,
        vec![(me.clone(), "scaled".to_string())],
        "the cell is its instance and serves its tagged pool"
    );
    assert_eq!(
        imds.unauthorized.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "every metadata read carried an IMDSv2 token"
    );
    eprintln!("idle cell terminated its instance {took:?} after start (grace 1 s)");
}
