//! The doctor's checks, one method per part of the account, each returning findings.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{
    LaunchTemplateHttpTokensState, LaunchTemplateInstanceMetadataTagsState,
    ResponseLaunchTemplateData, ShutdownBehavior,
};
use aws_sdk_iam::types::{ContextEntry, ContextKeyTypeEnum, PolicyEvaluationDecisionType};
use serde_json::Value;

use super::{policy, Args, Finding};
use crate::cloud::FARM_TAG;
use crate::config::{Config, Ec2};
use crate::s3url::S3Url;

/// The smallest root volume that passes by default, in GiB: a few slots of scratch for
/// an hour of HD source each (source, intermediates, outputs: about 3× the source).
pub const MIN_DISK_GIB: i32 = 100;
/// The spot service-linked role's name, fixed by AWS.
const SPOT_ROLE: &str = "AWSServiceRoleForEC2Spot";
/// The path of the spot service-linked role: what identifies it (moto names it
/// otherwise).
pub const SPOT_ROLE_PATH: &str = "/aws-service-role/spot.amazonaws.com/";

/// The account's clients, and what the config says about the farm.
pub struct Account {
    ec2: aws_sdk_ec2::Client,
    iam: aws_sdk_iam::Client,
    lambda: aws_sdk_lambda::Client,
    s3: aws_sdk_s3::Client,
    farm: String,
    region: String,
}

/// A role, by ARN and name.
#[derive(Debug, Clone)]
pub struct Role {
    pub arn: String,
    pub name: String,
}

impl Role {
    fn from_arn(arn: &str) -> Role {
        Role {
            arn: arn.into(),
            name: arn.rsplit('/').next().unwrap_or(arn).into(),
        }
    }

    /// The account id in the role's ARN.
    fn account(&self) -> &str {
        self.arn.split(':').nth(4).unwrap_or("*")
    }
}

/// The trigger function: its ARN and its role.
pub struct Trigger {
    pub arn: String,
    pub role: Role,
}

/// The buckets and objects the farm touches.
pub struct Needs {
    region: String,
    launch_action: &'static str,
    config: Option<S3Url>,
    inbox: Option<S3Url>,
    outputs: BTreeSet<String>,
}

/// One permission a role needs: (action, resource).
type Permission = (&'static str, String);

impl Needs {
    pub fn of(config: &Config, account: &Account, inbox: Option<&S3Url>) -> Needs {
        let ec2 = config.cloud.ec2.as_ref();
        Needs {
            region: account.region.clone(),
            launch_action: if ec2.is_some_and(|e| e.launch_template.is_some()) {
                "ec2:CreateFleet"
            } else {
                "ec2:RunInstances"
            },
            config: ec2.and_then(|e| e.config_url.clone()),
            inbox: inbox.cloned(),
            outputs: (config.pipelines.values())
                .map(|p| p.output.bucket.clone())
                .collect(),
        }
    }

    /// What mitosis does, whoever ticks: launch, tag, count and end cells, and pass
    /// the cell role (when the launch template names one) to them.
    fn launching(&self, me: &Role, cell: Option<&Role>) -> Vec<Permission> {
        let instances = format!("arn:aws:ec2:{}:{}:instance/*", self.region, me.account());
        let mut needs = vec![
            (self.launch_action, instances.clone()),
            ("ec2:CreateTags", instances.clone()),
            ("ec2:TerminateInstances", instances),
            ("ec2:DescribeInstances", "*".into()),
        ];
        needs.extend(cell.map(|c| ("iam:PassRole", c.arn.clone())));
        needs
    }

    fn reading(&self) -> Vec<Permission> {
        let mut needs = Vec::new();
        if let Some(c) = &self.config {
            needs.push((
                "s3:GetObject",
                format!("arn:aws:s3:::{}/{}", c.bucket, c.key),
            ));
        }
        if let Some(i) = &self.inbox {
            needs.push(("s3:ListBucket", format!("arn:aws:s3:::{}", i.bucket)));
            needs.push((
                "s3:GetObject",
                format!("arn:aws:s3:::{}/{}*", i.bucket, i.key),
            ));
        }
        needs
    }

    /// A cell's needs: mitosis, its config, sources, and its outputs.
    pub fn cell(&self, cell: &Role) -> Vec<Permission> {
        let mut needs = self.launching(cell, Some(cell));
        needs.extend(self.reading());
        for b in &self.outputs {
            needs.push(("s3:ListBucket", format!("arn:aws:s3:::{b}")));
            needs.push(("s3:PutObject", format!("arn:aws:s3:::{b}/*")));
        }
        needs
    }

    /// The trigger's needs: mitosis (a farm at zero starts itself), its config, sources.
    pub fn trigger(&self, me: &Role, cell: Option<&Role>) -> Vec<Permission> {
        let mut needs = self.launching(me, cell);
        needs.extend(self.reading());
        needs
    }
}

fn finding(
    check: &'static str,
    what: String,
    why: &'static str,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        check,
        what,
        why,
        fix: fix.into(),
    }
}

/// An AWS error as one line: code and message, or what failed on the way.
fn said<E, R>(e: &aws_sdk_ec2::error::SdkError<E, R>) -> String
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match e.as_service_error() {
        Some(s) => format!(
            "{}: {}",
            s.code().unwrap_or("error"),
            s.message().unwrap_or_default()
        ),
        None => crate::failure::chain(e),
    }
}

/// A policy document as IAM returns it: URL-encoded JSON. moto returns plain JSON, or,
/// for an inline policy made by CloudFormation, Python's repr of it (single quotes),
/// read here as JSON with the quotes swapped (a policy has no quote of its own).
fn document(text: &str) -> Option<Value> {
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    serde_json::from_str(text)
        .or_else(|_| serde_json::from_str(&decoded))
        .or_else(|_| serde_json::from_str(&decoded.replace('\'', "\"")))
        .ok()
}

impl Account {
    pub async fn connect(
        config: &Config,
        ec2: &Ec2,
        sdk: &aws_config::SdkConfig,
        args: &Args,
    ) -> Account {
        let region = (ec2.region.clone())
            .or_else(|| sdk.region().map(ToString::to_string))
            .unwrap_or_else(|| "us-east-1".into());
        let mut e =
            aws_sdk_ec2::config::Builder::from(sdk).region(aws_config::Region::new(region.clone()));
        if let Some(endpoint) = &ec2.endpoint {
            e = e.endpoint_url(endpoint);
        }
        let mut iam =
            aws_sdk_iam::config::Builder::from(sdk).region(aws_config::Region::new(region.clone()));
        let mut lambda = aws_sdk_lambda::config::Builder::from(sdk)
            .region(aws_config::Region::new(region.clone()));
        if let Some(endpoint) = &args.aws_endpoint {
            iam = iam.endpoint_url(endpoint);
            lambda = lambda.endpoint_url(endpoint);
        }
        Account {
            ec2: aws_sdk_ec2::Client::from_conf(e.build()),
            iam: aws_sdk_iam::Client::from_conf(iam.build()),
            lambda: aws_sdk_lambda::Client::from_conf(lambda.build()),
            s3: crate::store::S3Store::connect(&config.s3)
                .await
                .client()
                .clone(),
            farm: config.farm.name.clone(),
            region,
        }
    }

    /// The spot service-linked role exists.
    pub async fn spot_role(&self) -> Option<Finding> {
        let listed = self
            .iam
            .list_roles()
            .path_prefix(SPOT_ROLE_PATH)
            .send()
            .await;
        let missing = match &listed {
            Ok(out) if !out.roles().is_empty() => return None,
            Ok(_) => "no role".to_string(),
            Err(e) => said(e),
        };
        Some(finding(
            "spot-role",
            format!("the spot service-linked role {SPOT_ROLE} is missing ({missing} under {SPOT_ROLE_PATH})"),
            "CreateFleet creates it on first use only for a caller allowed \
             iam:CreateServiceLinkedRole, which the farm's roles are not: every spot launch \
             fails (UnfulfillableCapacity, ServiceLinkedRoleCreationNotPermitted)",
            "aws iam create-service-linked-role --aws-service-name spot.amazonaws.com \
             (or deploy deploy/cellfarm.yaml with CreateSpotServiceLinkedRole=true)",
        ))
    }

    /// The launch template's settings; and its instance profile, for the role check.
    pub async fn launch_template(
        &self,
        ec2: &Ec2,
        min_disk_gib: i32,
    ) -> (Vec<Finding>, Option<String>) {
        let check = "launch-template";
        let Some(name) = &ec2.launch_template else {
            let f = finding(
                check,
                "cloud.ec2 has no launch_template".into(),
                "launches take the RunInstances path: one type and one zone a call, no \
                 allocation strategy, and the base image's small root disk",
                "deploy deploy/cellfarm.yaml and set cloud.ec2.launch_template to its \
                 LaunchTemplateName output",
            );
            return (vec![f], ec2.instance_profile.clone());
        };
        let mut req = self
            .ec2
            .describe_launch_template_versions()
            .versions(&ec2.launch_template_version);
        req = if name.starts_with("lt-") {
            req.launch_template_id(name)
        } else {
            req.launch_template_name(name)
        };
        let data = match req.send().await {
            Ok(out) => out
                .launch_template_versions()
                .first()
                .and_then(|v| v.launch_template_data().cloned()),
            Err(e) => {
                let what = format!("launch template {name}: {}", said(&e));
                let f = finding(
                    check,
                    what,
                    "no cell can be launched",
                    "deploy deploy/cellfarm.yaml, or fix cloud.ec2.launch_template",
                );
                return (vec![f], None);
            }
        };
        let Some(data) = data else {
            let what = format!(
                "launch template {name} has no version {}",
                ec2.launch_template_version
            );
            let f = finding(
                check,
                what,
                "no cell can be launched",
                "fix cloud.ec2.launch_template_version",
            );
            return (vec![f], None);
        };
        settings(name, &data, ec2.config_url.as_ref(), min_disk_gib)
    }

    /// The subnets exist, one per Availability Zone.
    pub async fn subnets(&self, ec2: &Ec2) -> Vec<Finding> {
        if ec2.subnets.is_empty() {
            return Vec::new();
        }
        let out = self
            .ec2
            .describe_subnets()
            .set_subnet_ids(Some(ec2.subnets.clone()))
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                return vec![finding(
                    "subnets",
                    format!("cloud.ec2.subnets {:?}: {}", ec2.subnets, said(&e)),
                    "no cell can be launched into a subnet that does not exist",
                    "list existing subnets of the farm's VPC in cloud.ec2.subnets",
                )]
            }
        };
        let mut by_zone: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in out.subnets() {
            let zone = s.availability_zone().unwrap_or_default().to_string();
            by_zone
                .entry(zone)
                .or_default()
                .extend(s.subnet_id().map(String::from));
        }
        by_zone
            .into_iter()
            .filter(|(_, subnets)| subnets.len() > 1)
            .map(|(zone, subnets)| {
                finding(
                    "subnets",
                    format!("cloud.ec2.subnets has {} subnets in {zone}: {}", subnets.len(), subnets.join(", ")),
                    "CreateFleet refuses two subnets in one Availability Zone: every fleet launch fails",
                    format!("keep one subnet of {zone} in cloud.ec2.subnets"),
                )
            })
            .collect()
    }

    /// The role of an instance profile (name or ARN).
    pub async fn profile_role(&self, profile: &str) -> Result<Role, Option<Finding>> {
        let name = profile.rsplit('/').next().unwrap_or(profile);
        let gap = |what: String| {
            Some(finding(
                "cell-role",
                what,
                "a cell has no credentials: it cannot read its config, S3, or launch and end cells",
                "deploy deploy/cellfarm.yaml (CellInstanceProfile) and use it in the launch template",
            ))
        };
        let out = (self
            .iam
            .get_instance_profile()
            .instance_profile_name(name)
            .send()
            .await)
            .map_err(|e| gap(format!("instance profile {profile}: {}", said(&e))))?;
        let role = (out.instance_profile())
            .and_then(|p| p.roles().first())
            .map(|r| Role::from_arn(r.arn()));
        role.ok_or_else(|| gap(format!("instance profile {profile} has no role")))
    }

    /// The trigger function's ARN and role.
    pub async fn trigger(&self, function: &str) -> Result<Trigger, Option<Finding>> {
        let out = self
            .lambda
            .get_function_configuration()
            .function_name(function)
            .send()
            .await;
        let gap = |what: String| {
            Some(finding(
                "trigger-role",
                what,
                "no upload starts a job, and a farm at zero cells never starts",
                "deploy deploy/cellfarm.yaml (its Trigger function), or fix --lambda",
            ))
        };
        let out = out.map_err(|e| gap(format!("Lambda function {function}: {}", said(&e))))?;
        match (out.function_arn(), out.role()) {
            (Some(arn), Some(role)) => Ok(Trigger {
                arn: arn.into(),
                role: Role::from_arn(role),
            }),
            _ => Err(gap(format!(
                "Lambda function {function} has no ARN or role"
            ))),
        }
    }

    /// The role may do each of `needs`.
    pub async fn role_can(
        &self,
        check: &'static str,
        role: &Role,
        needs: &[Permission],
    ) -> Vec<Finding> {
        let denied = match self.simulate(role, needs).await {
            Some(denied) => denied,
            None => self.evaluate(role, needs).await,
        };
        denied
            .into_iter()
            .map(|(action, resource)| {
                finding(
                    check,
                    format!("role {} may not {action} on {resource}", role.name),
                    "the farm does this: a cell or the trigger fails at it (a launch, a source read, an output write)",
                    "attach the stack's policies to the role (deploy/cellfarm.yaml), or grant this action",
                )
            })
            .collect()
    }

    /// The needs simulation denies; None when simulation is not available.
    async fn simulate(&self, role: &Role, needs: &[Permission]) -> Option<Vec<Permission>> {
        let context = |key: &str, values: &[&str]| {
            let mut entry = ContextEntry::builder()
                .context_key_name(key)
                .context_key_type(if values.len() > 1 {
                    ContextKeyTypeEnum::StringList
                } else {
                    ContextKeyTypeEnum::String
                });
            for v in values {
                entry = entry.context_key_values(*v);
            }
            entry.build()
        };
        let farm_tag = [self.farm.as_str()];
        let entries = [
            context(&format!("aws:RequestTag/{FARM_TAG}"), &farm_tag),
            context(&format!("aws:ResourceTag/{FARM_TAG}"), &farm_tag),
            context("aws:ResourceTag/cellfarm", &["cell"]),
            context("ec2:CreateAction", &["RunInstances", "CreateFleet"]),
            context("iam:PassedToService", &["ec2.amazonaws.com"]),
            context("aws:RequestedRegion", &[self.region.as_str()]),
        ];
        let mut denied = Vec::new();
        for (action, resource) in needs {
            let out = self
                .iam
                .simulate_principal_policy()
                .policy_source_arn(&role.arn)
                .action_names(*action)
                .resource_arns(resource)
                .set_context_entries(Some(entries.to_vec()))
                .customize()
                // Where simulation is missing, the first refusal says so: no retries.
                .config_override(
                    aws_sdk_iam::config::Builder::new()
                        .retry_config(aws_config::retry::RetryConfig::disabled()),
                )
                .send()
                .await
                .ok()?;
            let allowed = (out.evaluation_results().iter())
                .all(|r| r.eval_decision() == &PolicyEvaluationDecisionType::Allowed);
            if !allowed || out.evaluation_results().is_empty() {
                denied.push((*action, resource.clone()));
            }
        }
        Some(denied)
    }

    /// The needs the role's policy documents do not allow.
    async fn evaluate(&self, role: &Role, needs: &[Permission]) -> Vec<Permission> {
        let documents = self.documents(role).await;
        (needs.iter())
            .filter(|(action, resource)| !policy::allows(&documents, action, resource))
            .cloned()
            .collect()
    }

    /// Every policy document of the role: attached (their default version) and inline.
    async fn documents(&self, role: &Role) -> Vec<Value> {
        let mut documents = Vec::new();
        let attached = self
            .iam
            .list_attached_role_policies()
            .role_name(&role.name)
            .send()
            .await;
        for p in attached.iter().flat_map(|o| o.attached_policies()) {
            let Some(arn) = p.policy_arn() else { continue };
            let Ok(policy) = self.iam.get_policy().policy_arn(arn).send().await else {
                continue;
            };
            let version = policy.policy().and_then(|p| p.default_version_id());
            let Some(version) = version else { continue };
            let got = (self.iam.get_policy_version())
                .policy_arn(arn)
                .version_id(version)
                .send()
                .await;
            let text = got
                .ok()
                .and_then(|v| v.policy_version()?.document().map(String::from));
            documents.extend(text.as_deref().and_then(document));
        }
        let inline = self
            .iam
            .list_role_policies()
            .role_name(&role.name)
            .send()
            .await;
        for name in inline.iter().flat_map(|o| o.policy_names()) {
            let got = (self.iam.get_role_policy())
                .role_name(&role.name)
                .policy_name(name)
                .send()
                .await;
            if let Ok(p) = got {
                documents.extend(document(p.policy_document()));
            }
        }
        documents
    }

    /// The buckets exist and the config object is there.
    pub async fn buckets(&self, needs: &Needs) -> Vec<Finding> {
        let mut buckets: BTreeSet<String> = needs.outputs.clone();
        buckets.extend(needs.inbox.iter().map(|i| i.bucket.clone()));
        buckets.extend(needs.config.iter().map(|c| c.bucket.clone()));
        let mut findings = Vec::new();
        for b in buckets {
            if let Err(e) = self.s3.head_bucket().bucket(&b).send().await {
                findings.push(finding(
                    "buckets",
                    format!("bucket {b}: {}", said(&e)),
                    "the farm reads its sources, config or writes its outputs there",
                    "create the bucket (the stack creates the inbox, output and config buckets)",
                ));
            }
        }
        if let Some(c) = &needs.config {
            if let Err(e) = self
                .s3
                .head_object()
                .bucket(&c.bucket)
                .key(&c.key)
                .send()
                .await
            {
                findings.push(finding(
                    "buckets",
                    format!("config object {c}: {}", said(&e)),
                    "a cell and the trigger load it at start: without it nothing runs",
                    format!("cellfarm --config farm.toml check && aws s3 cp farm.toml {c}"),
                ));
            }
        }
        findings
    }

    /// The inbox's notification invokes the trigger for new objects under its prefix.
    pub async fn notification(&self, inbox: &S3Url, function_arn: &str) -> Option<Finding> {
        let out = self
            .s3
            .get_bucket_notification_configuration()
            .bucket(&inbox.bucket)
            .send()
            .await;
        let covers = out.as_ref().ok().is_some_and(|out| {
            out.lambda_function_configurations().iter().any(|c| {
                let prefix = (c.filter().and_then(|f| f.key()))
                    .into_iter()
                    .flat_map(|k| k.filter_rules())
                    .find(|r| {
                        r.name()
                            .is_some_and(|n| n.as_str().eq_ignore_ascii_case("prefix"))
                    })
                    .and_then(|r| r.value().map(String::from))
                    .unwrap_or_default();
                c.lambda_function_arn() == function_arn
                    && c.events()
                        .iter()
                        .any(|e| e.as_str().starts_with("s3:ObjectCreated"))
                    && inbox.key.starts_with(&prefix)
            })
        });
        (!covers).then(|| {
            finding(
                "notification",
                format!(
                    "no ObjectCreated notification of s3://{}/{} invokes {function_arn}",
                    inbox.bucket, inbox.key
                ),
                "dropped files start nothing: no job is made and a farm at zero never starts",
                "deploy deploy/cellfarm.yaml (the inbox bucket's NotificationConfiguration), \
                 or add the notification to the bucket",
            )
        })
    }
}

/// The launch template `name`'s settings a cell needs (`data`: the checked version's);
/// and its instance profile.
fn settings(
    name: &str,
    data: &ResponseLaunchTemplateData,
    config_url: Option<&S3Url>,
    min_disk_gib: i32,
) -> (Vec<Finding>, Option<String>) {
    let check = "launch-template";
    let mut findings = Vec::new();
    let mut gap = |what: &str, why: &'static str, fix: &str| {
        findings.push(finding(
            check,
            format!("launch template {name}: {what}"),
            why,
            fix,
        ));
    };
    let metadata = data.metadata_options();
    if metadata.and_then(|m| m.http_tokens()) != Some(&LaunchTemplateHttpTokensState::Required) {
        gap("IMDSv2 is not required (HttpTokens)",
            "IMDSv1 hands the instance role's credentials to any request that reaches the metadata address (SSRF)",
            "MetadataOptions.HttpTokens: required");
    }
    if metadata.and_then(|m| m.instance_metadata_tags())
        != Some(&LaunchTemplateInstanceMetadataTagsState::Enabled)
    {
        gap(
            "instance tags are not readable in IMDS (InstanceMetadataTags)",
            "a cell learns its pool from its tag in IMDS: without it every cell serves every pool",
            "MetadataOptions.InstanceMetadataTags: enabled",
        );
    }
    if data.instance_initiated_shutdown_behavior() != Some(&ShutdownBehavior::Terminate) {
        gap("shutdown behaviour is not terminate",
            "a cell that powers off (its fallback, or a failed start) stops instead of ending, and its disk keeps billing",
            "InstanceInitiatedShutdownBehavior: terminate");
    }
    let profile = data
        .iam_instance_profile()
        .and_then(|p| p.arn().or(p.name()).map(String::from));
    if profile.is_none() {
        gap(
            "no instance profile",
            "a cell has no credentials: it cannot read its config, S3, or launch and end cells",
            "IamInstanceProfile: the stack's CellInstanceProfile",
        );
    }
    let disk = (data.block_device_mappings().iter())
        .filter_map(|b| b.ebs().and_then(|e| e.volume_size()))
        .max();
    if disk.map_or(true, |gib| gib < min_disk_gib) {
        let size = disk.map_or("the image's own root disk".into(), |g| format!("{g} GiB"));
        gap(&format!("the disk is {size}, under {min_disk_gib} GiB"),
            "every job's scratch space (one slot per vCPU, about 3x each source) is on it: real videos hit ENOSPC",
            "BlockDeviceMappings with a larger VolumeSize (the stack's ScratchGiB parameter)");
    }
    if let Some(url) = config_url {
        let user_data = (data.user_data())
            .and_then(|u| aws_smithy_types::base64::decode(u).ok())
            .map(|b| String::from_utf8_lossy(&b).trim().to_string());
        if user_data.as_deref() != Some(url.to_string().as_str()) {
            gap(
                &format!("its user data is not the config URL {url}"),
                "a cell boots with the config its user data names: another farm's, or none",
                "UserData: the config URL, base64 (the stack sets it)",
            );
        }
    }
    (findings, profile)
}

/// The broker's `consumer_timeout` (as the config states it) outlasts the longest job.
pub fn consumer_timeout(config: &Config) -> Option<Finding> {
    let pools: Vec<String> = config.pools.keys().cloned().collect();
    let bound = config.unacked_bound_secs(&pools);
    (bound > config.amqp.consumer_timeout_secs).then(|| {
        finding(
            "consumer-timeout",
            format!(
                "amqp.consumer_timeout_secs = {} is shorter than the longest job can run ({bound} s, from the step timeouts)",
                config.amqp.consumer_timeout_secs
            ),
            "RabbitMQ redelivers a delivery unacked past consumer_timeout: long jobs run twice and count toward the delivery limit",
            format!("raise consumer_timeout in the broker's configuration to at least {} ms (and amqp.consumer_timeout_secs), or lower step_timeout_secs", bound * 1000),
        )
    })
}
