//! The stack as code (deploy/cellfarm.yaml) created on moto_server, a cell's `ec2`
//! cloud launching through its launch template, and `cellfarm doctor` against it: a
//! good stack passes, and each gap planted in one is named.
//!
//! moto's CloudFormation leaves out two things AWS does: the spot service-linked role
//! (no `AWS::IAM::ServiceLinkedRole`; the template guards it with a condition, and the
//! tests create it with CreateServiceLinkedRole) and the inbox's notification (its
//! `NotificationConfiguration` is not applied; the tests put it with the S3 API). The
//! role is one per account, so the two tests take turns.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    LaunchTemplateHttpTokensState, RequestLaunchTemplateData, ShutdownBehavior,
};
use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, LambdaFunctionConfiguration, NotificationConfiguration,
    NotificationConfigurationFilter, S3KeyFilter,
};
use cellfarm::cloud::{Cloud, Ec2Cloud, FARM_TAG};
use cellfarm::config::Config;
use cellfarm::doctor::{self, Args, Finding};
use cellfarm::metadata::POOL_TAG;
use cellfarm::s3url::S3Url;
use common::imds::MetadataServer;
use common::lambda_api::RuntimeApi;
use common::moto::{self, instances};
use common::stack::{self, Stack};
use common::wait::poll_sync;
use tokio::sync::Mutex;

/// The spot service-linked role is the account's: one test at a time plants or needs it.
static ACCOUNT: Mutex<()> = Mutex::const_new(());

const SPOT_ROLE: &str = "AWSServiceRoleForEC2Spot";

/// A farm's config on the stack, as TOML: its launch template, subnets, buckets, moto
/// as EC2 and S3, this machine's servers, and a one-frame pipeline routed from the
/// inbox's `uploads/`. `extra` goes into `[cloud.ec2]`.
fn config_text(stack: &Stack, extra: &str, consumer_timeout_secs: u64) -> String {
    let scratch = std::env::temp_dir().join(format!("cellfarm-{}", stack.farm));
    format!(
        r#"
[farm]
name = "{farm}"
[amqp]
url = "{amqp}"
consumer_timeout_secs = {consumer_timeout_secs}
[postgres]
url = "{pg}"
schema = "{farm}"
[redis]
url = "{redis}"
[s3]
endpoint = "{moto}"
region = "us-east-1"
path_style = true
[cell]
scratch_dir = "{scratch}"
heartbeat_secs = 1
lease_secs = 4
[cloud]
kind = "ec2"
metadata_poll_secs = 1
[cloud.ec2]
region = "us-east-1"
endpoint = "{moto}"
config_url = "s3://{cfg}/farm.toml"
launch_template = "{template}"
instance_types = ["c6i.xlarge", "c5.xlarge"]
subnets = {subnets:?}
poweroff_fallback = false
{extra}
[pools.default]
jobs_per_cell = 1
ceiling = 1
cooldown_secs = 0
idle_grace_secs = 1
[pipelines.poster]
pool = "default"
output = "s3://{out}/posters/"
step_timeout_secs = 600
steps = [{{ args = ["-i", "{{input}}", "-frames:v", "1", "{{out}}/poster.jpg"] }}]
outputs = [{{ path = "poster.jpg", video_codec = "mjpeg" }}]
[[routes]]
prefix = "uploads/"
pipelines = ["poster"]
"#,
        farm = stack.farm,
        amqp = common::env(
            "CELLFARM_TEST_AMQP",
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        ),
        pg = common::env(
            "CELLFARM_TEST_PG",
            "postgres://postgres@127.0.0.1:5432/test"
        ),
        redis = common::env("CELLFARM_TEST_REDIS", "redis://127.0.0.1:6379"),
        moto = moto::url(),
        scratch = scratch.display(),
        cfg = stack.config,
        out = stack.output,
        template = stack.output("LaunchTemplateName"),
        subnets = stack.subnets,
    )
}

fn config(stack: &Stack, extra: &str, consumer_timeout_secs: u64) -> Config {
    let text = config_text(stack, extra, consumer_timeout_secs);
    Config::parse(&text, "stack test config").expect("the test config is valid")
}

fn args(stack: &Stack) -> Args {
    Args {
        lambda: Some(stack.output("TriggerArn").to_string()),
        inbox: Some(S3Url::parse(&format!("s3://{}/uploads/", stack.inbox)).expect("a URL")),
        min_disk_gib: doctor::MIN_DISK_GIB,
        aws_endpoint: Some(moto::url()),
    }
}

/// What a user does after the stack: the config object, the notification (see the
/// module comment), the spot role.
async fn finish(stack: &Stack) {
    let s3 = stack::s3().await;
    s3.put_object()
        .bucket(&stack.config)
        .key("farm.toml")
        .body(config_text(stack, "", 7200).into_bytes().into())
        .send()
        .await
        .expect("PutObject");
    let prefix = FilterRule::builder()
        .name(FilterRuleName::Prefix)
        .value("uploads/")
        .build();
    let notify = LambdaFunctionConfiguration::builder()
        .lambda_function_arn(stack.output("TriggerArn"))
        .events(Event::from("s3:ObjectCreated:*"))
        .filter(
            NotificationConfigurationFilter::builder()
                .key(S3KeyFilter::builder().filter_rules(prefix).build())
                .build(),
        )
        .build()
        .expect("a notification");
    s3.put_bucket_notification_configuration()
        .bucket(&stack.inbox)
        .notification_configuration(
            NotificationConfiguration::builder()
                .lambda_function_configurations(notify)
                .build(),
        )
        .send()
        .await
        .expect("PutBucketNotificationConfiguration");
    let iam = stack::iam().await;
    if spot_roles(&iam).await.is_empty() {
        iam.create_service_linked_role()
            .aws_service_name("spot.amazonaws.com")
            .send()
            .await
            .expect("CreateServiceLinkedRole");
    }
}

/// Property: the template creates a stack on moto whose launch template has what a
/// cell needs, `cellfarm doctor` finds no gap in it once the config object, the
/// notification and the spot role are there, a cell's `ec2` cloud launches tagged
/// spot instances through the stack's launch template, and the servers' group lets
/// the farm's group in on the broker's, the ledger's and Redis' ports.
#[tokio::test(flavor = "multi_thread")]
async fn a_good_stack_passes_the_doctor_and_launches_cells() {
    let _account = ACCOUNT.lock().await;
    let started = Instant::now();
    let stack = stack::create("good").await;
    let created = started.elapsed();
    finish(&stack).await;
    let config = config(&stack, "", 7200);
    let sdk = cellfarm::aws::sdk_config().await;
    let started = Instant::now();
    let findings = doctor::examine(&config, &sdk, &args(&stack)).await.unwrap();
    let doctored = started.elapsed();
    assert!(findings.is_empty(), "{}", shown(&findings));

    let ec2 = config.cloud.ec2.clone().unwrap();
    let cloud = Ec2Cloud::new(&sdk, &stack.farm, ec2, String::new(), "test".into(), None);
    let ids = cloud
        .launch("default", 2, "stack-launch")
        .await
        .expect("launch");
    assert_eq!(ids.len(), 2);
    let ec2 = moto::client().await;
    for i in instances(&ec2, &ids).await {
        assert_eq!(i.image_id(), Some("ami-12c6146b"), "the template's image");
        let farm = i.tags().iter().find(|t| t.key() == Some(FARM_TAG));
        assert_eq!(farm.and_then(|t| t.value()), Some(stack.farm.as_str()));
    }
    // moto gives a fleet's instances the template's image, not its other settings:
    // the template itself is checked by the doctor above.
    let fleets = ec2.describe_fleets().send().await.expect("DescribeFleets");
    let fleet = (fleets.fleets().iter())
        .find(|f| {
            f.instances()
                .iter()
                .flat_map(|i| i.instance_ids())
                .any(|id| ids.contains(id))
        })
        .expect("the fleet that launched the cells");
    let spec = fleet.launch_template_configs()[0].launch_template_specification();
    assert_eq!(
        spec.and_then(|s| s.launch_template_name()),
        Some(stack.output("LaunchTemplateName")),
        "launched through the stack's launch template"
    );
    let groups = ec2
        .describe_security_groups()
        .group_ids(&stack.servers)
        .send()
        .await
        .expect("DescribeSecurityGroups");
    let farm_group = stack.output("SecurityGroupId");
    let mut open: Vec<i32> = (groups.security_groups()[0].ip_permissions().iter())
        .filter(|p| (p.user_id_group_pairs().iter()).any(|g| g.group_id() == Some(farm_group)))
        .filter_map(|p| p.from_port())
        .collect();
    open.sort_unstable();
    assert_eq!(
        open,
        [5432, 5671, 6379],
        "the servers' ports open to the farm"
    );
    eprintln!("stack created in {created:?}, doctor ran in {doctored:?}");
}

/// Property: each gap planted in a stack is named by the doctor under its check: the
/// spot role missing; a launch template version without IMDSv2, IMDS tags, shutdown
/// terminate, instance profile or a big enough disk; two subnets in one zone; the
/// cell role without the launch policy; the trigger role without S3 reads; the config
/// object missing; no notification; a consumer_timeout shorter than a job.
#[tokio::test(flavor = "multi_thread")]
async fn the_doctor_names_each_planted_gap() {
    let _account = ACCOUNT.lock().await;
    let stack = stack::create("gaps").await;
    let (number, twin) = plant_gaps(&stack).await;
    let mut subnets = stack.subnets.clone();
    subnets.push(twin.clone());
    let gapped = Stack {
        subnets,
        outputs: stack.outputs.clone(),
        farm: stack.farm.clone(),
        servers: stack.servers.clone(),
        inbox: stack.inbox.clone(),
        output: stack.output.clone(),
        config: stack.config.clone(),
    };
    let sdk = cellfarm::aws::sdk_config().await;
    // The template's gaps are in its new version; the others show with the stack's own.
    let version = format!("launch_template_version = \"{number}\"");
    let mut findings = Vec::new();
    for extra in [version.as_str(), "launch_template_version = \"1\""] {
        let config = config(&gapped, extra, 60);
        findings.extend(doctor::examine(&config, &sdk, &args(&stack)).await.unwrap());
    }
    let report = shown(&findings);
    let has = |check: &str, words: &str| {
        findings
            .iter()
            .any(|f| f.check == check && f.what.contains(words) && !f.fix.is_empty())
    };
    let expected = [
        ("spot-role", SPOT_ROLE),
        ("launch-template", "IMDSv2 is not required"),
        ("launch-template", "instance tags are not readable"),
        ("launch-template", "shutdown behaviour is not terminate"),
        ("launch-template", "no instance profile"),
        ("launch-template", "the disk is 8 GiB"),
        ("launch-template", "user data is not the config URL"),
        ("subnets", &twin),
        ("cell-role", "may not ec2:CreateFleet"),
        ("cell-role", "may not iam:PassRole"),
        ("trigger-role", "may not s3:GetObject"),
        ("trigger-role", "may not s3:ListBucket"),
        ("buckets", "config object"),
        ("notification", &stack.inbox),
        ("consumer-timeout", "consumer_timeout_secs = 60"),
    ];
    for (check, words) in expected {
        assert!(has(check, words), "no [{check}] … {words} in:\n{report}");
    }
}

/// Plants the gaps in `stack` but the config's: returns the launch template version
/// without the settings and the subnet added in the first subnet's zone.
async fn plant_gaps(stack: &Stack) -> (i64, String) {
    let ec2 = moto::client().await;
    let iam = stack::iam().await;
    // The spot role, gone.
    for role in spot_roles(&iam).await {
        iam.delete_service_linked_role()
            .role_name(role)
            .send()
            .await
            .expect("DeleteServiceLinkedRole");
    }
    // A template version with none of the settings, a small disk, other user data.
    let version = ec2
        .create_launch_template_version()
        .launch_template_name(stack.output("LaunchTemplateName"))
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id("ami-12c6146b")
                .instance_initiated_shutdown_behavior(ShutdownBehavior::Stop)
                .metadata_options(
                    aws_sdk_ec2::types::LaunchTemplateInstanceMetadataOptionsRequest::builder()
                        .http_tokens(LaunchTemplateHttpTokensState::Optional)
                        .build(),
                )
                .block_device_mappings(
                    aws_sdk_ec2::types::LaunchTemplateBlockDeviceMappingRequest::builder()
                        .device_name("/dev/xvda")
                        .ebs(
                            aws_sdk_ec2::types::LaunchTemplateEbsBlockDeviceRequest::builder()
                                .volume_size(8)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("CreateLaunchTemplateVersion");
    let number = version
        .launch_template_version()
        .and_then(|v| v.version_number())
        .expect("a version number");
    // A second subnet in the first one's zone.
    let first = ec2
        .describe_subnets()
        .subnet_ids(&stack.subnets[0])
        .send()
        .await
        .expect("DescribeSubnets")
        .subnets()[0]
        .clone();
    let twin = twin_subnet(&ec2, &first).await;
    // The cell role without the launch policy, the trigger role without its S3 reads.
    let cell = role_name(stack.output("CellRoleArn"));
    let attached = iam
        .list_attached_role_policies()
        .role_name(&cell)
        .send()
        .await
        .expect("ListAttachedRolePolicies");
    for p in attached.attached_policies() {
        iam.detach_role_policy()
            .role_name(&cell)
            .policy_arn(p.policy_arn().expect("an ARN"))
            .send()
            .await
            .expect("DetachRolePolicy");
    }
    iam.delete_role_policy()
        .role_name(role_name(stack.output("TriggerRoleArn")))
        .policy_name("media")
        .send()
        .await
        .expect("DeleteRolePolicy");
    // No config object, no notification: nothing to do.

    (number, twin)
}

/// A new subnet of `of`'s VPC in `of`'s zone, on a free /24 of the default VPC's range.
async fn twin_subnet(ec2: &aws_sdk_ec2::Client, of: &aws_sdk_ec2::types::Subnet) -> String {
    for _ in 0..20 {
        let cidr = format!("172.31.{}.0/24", 200 + rand::random::<u8>() % 50);
        let made = ec2
            .create_subnet()
            .vpc_id(of.vpc_id().expect("a VPC"))
            .availability_zone(of.availability_zone().expect("a zone"))
            .cidr_block(cidr)
            .send()
            .await;
        if let Ok(out) = made {
            return out
                .subnet()
                .and_then(|s| s.subnet_id())
                .expect("a subnet id")
                .to_string();
        }
    }
    panic!("no free /24 for a twin subnet in the default VPC");
}

/// The names of the account's spot service-linked roles (moto names it otherwise than
/// AWS, under the same path).
async fn spot_roles(iam: &aws_sdk_iam::Client) -> Vec<String> {
    let out = iam
        .list_roles()
        .path_prefix(doctor::SPOT_ROLE_PATH)
        .send()
        .await
        .expect("ListRoles");
    out.roles()
        .iter()
        .map(|r| r.role_name().to_string())
        .collect()
}

fn role_name(arn: &str) -> String {
    arn.rsplit('/').next().expect("an ARN").to_string()
}

fn shown(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A process of this test, killed when dropped; its output goes to `log`.
struct Process(std::process::Child);

impl Process {
    fn start(mut cmd: std::process::Command, log: &Path) -> Process {
        let out = std::fs::File::create(log).expect("a log file");
        let err = out.try_clone().expect("a log file");
        Process(cmd.stdout(out).stderr(err).spawn().expect("cellfarm"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The logs of the test's processes in `dir`.
fn logs(dir: &Path) -> String {
    ["trigger.log", "cell.log", "migrate.log"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            format!("--- {f}\n{text}")
        })
        .collect()
}

/// Puts a one-second clip into the inbox as `uploads/clip.mp4`; the S3 event record
/// of it, as S3 would send it to the trigger.
async fn drop_clip(stack: &Stack, dir: &Path) -> serde_json::Value {
    let clip = dir.join("clip.mp4");
    common::make_clip(&clip, 1.0, "testsrc");
    let body = std::fs::read(&clip).expect("the clip");
    let size = body.len();
    let put = stack::s3()
        .await
        .put_object()
        .bucket(&stack.inbox)
        .key("uploads/clip.mp4")
        .body(body.into())
        .send()
        .await
        .expect("PutObject");
    let etag = put.e_tag().expect("an ETag").trim_matches('"').to_string();

    serde_json::json!({ "Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-30T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": { "principalId": "AWS:AIDAEXAMPLE" },
        "requestParameters": { "sourceIPAddress": "127.0.0.1" },
        "responseElements": { "x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyU" },
        "s3": { "s3SchemaVersion": "1.0", "configurationId": "cellfarm",
                "bucket": { "name": stack.inbox, "ownerIdentity": { "principalId": "A3NL" },
                            "arn": format!("arn:aws:s3:::{}", stack.inbox) },
                "object": { "key": "uploads/clip.mp4", "size": size, "eTag": etag,
                            "sequencer": "0055AED6DCD90281E5" } }
    }]})
}

/// The trigger's binary as Lambda runs it (`bootstrap`, config from S3), serving the
/// runtime API at `runtime_api`.
fn start_trigger(dir: &Path, config_url: &str, farm: &str, runtime_api: &str) -> Process {
    let bootstrap = dir.join("bootstrap");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cellfarm"), &bootstrap).expect("symlink");
    let mut trigger = std::process::Command::new(&bootstrap);
    trigger
        .env("CELLFARM_CONFIG", config_url)
        .env("CELLFARM_S3_ENDPOINT", moto::url())
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env(
            "AWS_LAMBDA_FUNCTION_NAME",
            format!("cellfarm-{farm}-trigger"),
        )
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST");
    Process::start(trigger, &dir.join("trigger.log"))
}

/// Runs the cell of the EC2 instance `instance` here: `cellfarm cell` with the config
/// from S3 and the instance's metadata, until it leaves; its exit status.
fn run_cell_on(instance: &str, config_url: &str, dir: &Path) -> std::process::ExitStatus {
    let imds = MetadataServer::start(&[
        ("instance-id", instance),
        ("instance-type", "c6i.xlarge"),
        ("placement/availability-zone", "us-east-1a"),
        ("placement/region", "us-east-1"),
        (&format!("tags/instance/{POOL_TAG}"), "default"),
    ]);
    let mut cell = std::process::Command::new(env!("CARGO_BIN_EXE_cellfarm"));
    cell.args(["--config", config_url, "cell"])
        .env("CELLFARM_S3_ENDPOINT", moto::url())
        .env("CELLFARM_METADATA_URL", &imds.url);
    let mut cell = Process::start(cell, &dir.join("cell.log"));
    let exited = poll_sync(Duration::from_secs(90), || cell.0.try_wait().expect("wait"));
    exited.unwrap_or_else(|| panic!("the cell did not finish\n{}", logs(dir)))
}

/// The keys under `posters/` in the stack's output bucket.
async fn output_keys(stack: &Stack) -> Vec<String> {
    let listed = stack::s3()
        .await
        .list_objects_v2()
        .bucket(&stack.output)
        .prefix("posters/")
        .send()
        .await
        .expect("ListObjectsV2");
    let keys = listed.contents().iter().filter_map(|o| o.key());
    keys.map(String::from).collect()
}

/// Property: from an empty account to a finished job with the stack: the stack is
/// created, the doctor finds no gap, a file dropped into the inbox goes through the
/// trigger (the Lambda's own binary, invoked with the S3 event as Lambda would), which
/// launches the first cell through the stack's launch template; the cell on that
/// instance (this machine, with the instance's metadata) runs the job, writes its
/// output to the stack's output bucket, and ends its instance.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_file_becomes_a_finished_job_on_the_stack() {
    let _account = ACCOUNT.lock().await;
    let started = Instant::now();
    let stack = stack::create("job").await;
    finish(&stack).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let dir = dir.path();
    let config_path = dir.join("farm.toml");
    std::fs::write(&config_path, config_text(&stack, "", 7200)).expect("write the config");
    let config = config(&stack, "", 7200);
    std::fs::create_dir_all(&config.cell.scratch_dir).expect("the scratch dir");
    let cellfarm = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cellfarm"));
        cmd.arg("--config").arg(&config_path).args(args);
        cmd
    };
    let migrated = cellfarm(&["migrate"]).output().expect("cellfarm migrate");
    assert!(migrated.status.success(), "{migrated:?}");
    let sdk = cellfarm::aws::sdk_config().await;
    // The doctor as a user runs it.
    let doctored = Instant::now();
    let inbox = format!("s3://{}/uploads/", stack.inbox);
    let lambda = stack.output("TriggerArn");
    let moto_url = moto::url();
    let doctor = cellfarm(&["doctor", "--lambda", lambda, "--inbox", &inbox])
        .args(["--aws-endpoint", &moto_url])
        .output()
        .expect("cellfarm doctor");
    let doctored = doctored.elapsed();
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor.status.success() && said.contains("no gap found"),
        "{doctor:?}"
    );

    let config_url = format!("s3://{}/farm.toml", stack.config);
    let event = drop_clip(&stack, dir).await;
    // S3 invokes the trigger (moto runs no function: this test is Lambda).
    let api = RuntimeApi::start();
    let _trigger = start_trigger(dir, &config_url, &stack.farm, &api.address);
    api.invoke("drop-1", event);
    let answer = api
        .answer("drop-1", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the trigger did not answer\n{}", logs(dir)));
    assert_eq!(answer.kind, "response", "{:?}\n{}", answer.body, logs(dir));

    // The first cell, launched by the trigger through the stack's template.
    let ec2 = Ec2Cloud::new(
        &sdk,
        &stack.farm,
        config.cloud.ec2.clone().unwrap(),
        String::new(),
        "test".into(),
        None,
    );
    let machines = ec2.machines("default").await.unwrap().unwrap_or_default();
    assert_eq!(machines.len(), 1, "one cell launched\n{}", logs(dir));
    let instance = machines[0].id.clone();
    let status = run_cell_on(&instance, &config_url, dir);
    assert!(status.success(), "the cell failed\n{}", logs(dir));

    // The job is done: its output is in the stack's output bucket.
    let keys = output_keys(&stack).await;
    assert!(
        keys.iter().any(|k| k.ends_with("/poster.jpg")),
        "no poster in s3://{}/posters/: {keys:?}\n{}",
        stack.output,
        logs(dir)
    );
    assert_eq!(
        ec2.count("default").await.unwrap(),
        Some(0),
        "the cell ended its instance"
    );
    eprintln!(
        "empty account to finished job: {:?} (doctor {doctored:?})",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&config.cell.scratch_dir);
}
