//! The `ec2` cloud: a sibling cell is an EC2 spot instance booted from the farm's AMI.
//!
//! With a launch template, one CreateFleet `instant` request spreads the cells over every
//! configured instance type and subnet with the configured allocation strategy; the
//! template carries what a fleet request cannot set (user data, IMDS options, shutdown
//! behaviour, instance profile, disk: `deploy/cellfarm.yaml` makes one). Without one,
//! RunInstances is tried per instance type and subnet, in the configured order, until
//! the cells are launched. A capacity refusal moves on to the next choice at once (it is
//! not retried in the same place). A denied launch (`UnauthorizedOperation`,
//! `AuthFailure`, the spot service-linked role missing) or an invalid one stops the
//! launch, and the cells launched before it are kept in the error. With
//! `on_demand_fallback`, what spot refused for capacity everywhere is launched
//! on-demand, as long as the pool's on-demand instances stay within
//! `on_demand_ceiling`: the cloud counts them by their lifecycle (every instance of the
//! pool that is not spot), so the bound holds across cells and restarts.
//!
//! A launch ends by [`LAUNCH_DEADLINE`], its requests' retries included, and every
//! request's ClientToken derives from the decision's token, which is random.
//!
//! Every instance carries the tags `cellfarm:farm`, `cellfarm:pool` and
//! `cellfarm:launched-by`; its user data is the config URL and nothing else (credentials
//! come from the instance profile). Its shutdown behaviour is `terminate`, so a cell
//! that powers off is gone for good. The tags are what [`Cloud::count`] counts, so the
//! ceiling holds even when Redis forgot the pending launches.

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::create_fleet::CreateFleetError;
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, Filter, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest, FleetType,
    HttpTokensState, IamInstanceProfileSpecification, Instance, InstanceInterruptionBehavior,
    InstanceLifecycleType, InstanceMarketOptionsRequest, InstanceMetadataOptionsRequest,
    InstanceMetadataTagsState, InstanceType, MarketType, ResourceType, ShutdownBehavior,
    SpotAllocationStrategy, SpotInstanceType, SpotMarketOptions, SpotOptionsRequest, Tag,
    TagSpecification, TargetCapacitySpecificationRequest,
};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{Cloud, CloudError, Machine, LAUNCH_DEADLINE};
use crate::config::Ec2;
use crate::metadata::{Metadata, POOL_TAG};

pub const FARM_TAG: &str = "cellfarm:farm";
pub const LAUNCHED_BY_TAG: &str = "cellfarm:launched-by";

/// Error codes that mean "no capacity here, try elsewhere", not "this request is wrong".
const CAPACITY_ERRORS: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientFreeAddressesInSubnet",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "UnfulfillableCapacity",
    "Unsupported",
];

pub struct Ec2Cloud {
    client: aws_sdk_ec2::Client,
    farm: String,
    cfg: Ec2,
    /// The user data of every sibling: where it loads its config from.
    config_url: String,
    /// This process, for the `cellfarm:launched-by` tag.
    launched_by: String,
    /// This machine's metadata, for terminate-self.
    metadata: Option<Metadata>,
}

/// Capacity of one kind (spot or on-demand) to launch.
#[derive(Clone, Copy, PartialEq)]
enum Market {
    Spot,
    OnDemand,
}

impl Ec2Cloud {
    /// The EC2 cloud on the process's shared AWS config, with `cfg`'s region and
    /// endpoint on top.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        farm: &str,
        cfg: Ec2,
        config_url: String,
        launched_by: String,
        metadata: Option<Metadata>,
    ) -> Ec2Cloud {
        let mut builder = aws_sdk_ec2::config::Builder::from(sdk);
        if let Some(region) = &cfg.region {
            builder = builder.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ec2Cloud {
            client: aws_sdk_ec2::Client::from_conf(builder.build()),
            farm: farm.into(),
            cfg,
            config_url,
            launched_by,
            metadata,
        }
    }

    fn tags(&self, pool: &str) -> TagSpecification {
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(tag(FARM_TAG, &self.farm))
            .tags(tag(POOL_TAG, pool))
            .tags(tag(LAUNCHED_BY_TAG, &self.launched_by))
            .tags(tag("Name", &format!("cellfarm-{}-{pool}", self.farm)))
            .build()
    }

    /// The fleet's one launch template config: the template, and every instance type
    /// in every subnet as its overrides.
    fn fleet_config(&self, template: &str) -> FleetLaunchTemplateConfigRequest {
        let mut spec = FleetLaunchTemplateSpecificationRequest::builder()
            .version(&self.cfg.launch_template_version);
        spec = if template.starts_with("lt-") {
            spec.launch_template_id(template)
        } else {
            spec.launch_template_name(template)
        };
        let mut config =
            FleetLaunchTemplateConfigRequest::builder().launch_template_specification(spec.build());
        // Every instance type in every subnet: the allocation strategy picks the pools
        // with the most spare capacity.
        let types: Vec<Option<&String>> = if self.cfg.instance_types.is_empty() {
            vec![None]
        } else {
            self.cfg.instance_types.iter().map(Some).collect()
        };
        let subnets: Vec<Option<&String>> = if self.cfg.subnets.is_empty() {
            vec![None]
        } else {
            self.cfg.subnets.iter().map(Some).collect()
        };
        for t in &types {
            for s in &subnets {
                let mut o = FleetLaunchTemplateOverridesRequest::builder();
                if let Some(t) = t {
                    o = o.instance_type(InstanceType::from(t.as_str()));
                }
                if let Some(s) = s {
                    o = o.subnet_id(s.as_str());
                }
                config = config.overrides(o.build());
            }
        }
        config.build()
    }

    /// One CreateFleet `instant` request for `n` cells of `market`. Capacity refusals
    /// (per override, or of the whole request) go to `refusals`; any other error in the
    /// answer fails the launch, with the instances the fleet did launch kept.
    async fn fleet(
        &self,
        template: &str,
        req: Request<'_>,
        refusals: &mut Vec<String>,
    ) -> Result<Vec<String>, Partial> {
        let capacity = TargetCapacitySpecificationRequest::builder()
            .total_target_capacity(req.n as i32)
            .default_target_capacity_type(match req.market {
                Market::Spot => DefaultTargetCapacityType::Spot,
                Market::OnDemand => DefaultTargetCapacityType::OnDemand,
            })
            .build();
        let out = self
            .client
            .create_fleet()
            .r#type(FleetType::Instant)
            .launch_template_configs(self.fleet_config(template))
            .target_capacity_specification(capacity)
            .spot_options(
                SpotOptionsRequest::builder()
                    .allocation_strategy(SpotAllocationStrategy::from(
                        self.cfg.allocation_strategy.as_str(),
                    ))
                    .build(),
            )
            .tag_specifications(self.tags(req.pool))
            .client_token(client_token(
                req.token,
                &format!("fleet-{}", req.market as u8),
            ))
            .customize()
            .config_override(bounded(req.deadline).map_err(Partial::none)?)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            // The whole request refused for capacity: nothing launched, try elsewhere.
            Err(e) if refusal(&e) == Some(Refusal::Capacity) => {
                refusals.push(describe(e));
                return Ok(Vec::new());
            }
            Err(e) => return Err(Partial::none(format!("CreateFleet: {}", describe(e)))),
        };
        fleet_answer(&out, refusals)
    }

    /// RunInstances for up to `req.n` cells of one instance type in one subnet.
    async fn run(
        &self,
        req: Request<'_>,
        instance_type: &str,
        subnet: Option<&str>,
    ) -> Result<Vec<String>, SdkError<RunInstancesError>> {
        let mut builder = self
            .client
            .run_instances()
            .set_image_id(self.cfg.image_id.clone())
            .instance_type(InstanceType::from(instance_type))
            .min_count(1)
            .max_count(req.n as i32)
            .set_subnet_id(subnet.map(String::from))
            .set_security_group_ids(
                (!self.cfg.security_groups.is_empty()).then(|| self.cfg.security_groups.clone()),
            )
            .set_key_name(self.cfg.key_name.clone())
            .user_data(aws_smithy_types::base64::encode(&self.config_url))
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            // IMDSv2 only, with the tags readable from metadata: a cell learns its pool
            // from `tags/instance/cellfarm:pool`. A hop limit of 1: a token's PUT answer
            // dies one hop out, so nothing behind another network layer (a container, a
            // namespace with a route out) gets a token.
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_put_response_hop_limit(1)
                    .instance_metadata_tags(InstanceMetadataTagsState::Enabled)
                    .build(),
            )
            .tag_specifications(self.tags(req.pool))
            .client_token(client_token(
                req.token,
                &format!(
                    "{}/{instance_type}/{}",
                    req.market as u8,
                    subnet.unwrap_or("")
                ),
            ));
        if let Some(profile) = &self.cfg.instance_profile {
            let spec = IamInstanceProfileSpecification::builder();
            builder = builder.iam_instance_profile(if profile.starts_with("arn:") {
                spec.arn(profile).build()
            } else {
                spec.name(profile).build()
            });
        }
        if req.market == Market::Spot {
            builder = builder.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            );
        }
        let overrides = bounded(req.deadline).map_err(SdkError::construction_failure)?;
        let out = builder
            .customize()
            .config_override(overrides)
            .send()
            .await?;
        Ok(out
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(String::from))
            .collect())
    }

    /// RunInstances over every (type, subnet) choice until `req.n` cells are running.
    /// A capacity refusal moves on to the next choice; any other error ends the launch
    /// with the cells launched so far.
    async fn run_each(
        &self,
        req: Request<'_>,
        refusals: &mut Vec<String>,
    ) -> Result<Vec<String>, Partial> {
        let subnets: Vec<Option<&str>> = if self.cfg.subnets.is_empty() {
            vec![None]
        } else {
            self.cfg.subnets.iter().map(|s| Some(s.as_str())).collect()
        };
        let mut ids = Vec::new();
        for instance_type in &self.cfg.instance_types {
            for subnet in &subnets {
                let left = req.n - ids.len() as u32;
                if left == 0 {
                    return Ok(ids);
                }
                let one = Request { n: left, ..req };
                match self.run(one, instance_type, *subnet).await {
                    Ok(launched) => ids.extend(launched),
                    Err(e) if refusal(&e) == Some(Refusal::Capacity) => refusals.push(format!(
                        "{instance_type} in {}: {}",
                        subnet.unwrap_or("the default subnet"),
                        describe(e)
                    )),
                    Err(e) => {
                        return Err(Partial {
                            launched: ids,
                            reason: format!("RunInstances {instance_type}: {}", describe(e)),
                        })
                    }
                }
            }
        }
        Ok(ids)
    }

    /// The pool's instances that exist (booting or running), by their tags.
    async fn instances(&self, pool: &str) -> Result<Vec<Instance>, String> {
        let filter = |name: &str, values: &[&str]| {
            Filter::builder()
                .name(name)
                .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
                .build()
        };
        let mut instances = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let out = self
                .client
                .describe_instances()
                .filters(filter(&format!("tag:{FARM_TAG}"), &[&self.farm]))
                .filters(filter(&format!("tag:{POOL_TAG}"), &[pool]))
                .filters(filter("instance-state-name", &["pending", "running"]))
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| format!("DescribeInstances: {}", describe(e)))?;
            instances.extend(
                out.reservations()
                    .iter()
                    .flat_map(|r| r.instances().iter().cloned()),
            );
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => return Ok(instances),
            }
        }
    }

    /// How many of `wanted` cells may be launched on-demand: what `on_demand_ceiling`
    /// leaves after the pool's existing on-demand instances. A full ceiling is recorded
    /// in `refusals`, so the launch error says why nothing came of the fallback.
    async fn on_demand_room(
        &self,
        pool: &str,
        wanted: u32,
        refusals: &mut Vec<String>,
    ) -> Result<u32, String> {
        let on_demand = self
            .instances(pool)
            .await?
            .iter()
            .filter(|i| i.instance_lifecycle() != Some(&InstanceLifecycleType::Spot))
            .count() as u32;
        let room = self.cfg.on_demand_ceiling.saturating_sub(on_demand);
        if room < wanted {
            refusals.push(format!(
                "on-demand ceiling: {on_demand} of {} on-demand cells already run",
                self.cfg.on_demand_ceiling
            ));
        }
        Ok(room.min(wanted))
    }

    async fn launch_market(
        &self,
        req: Request<'_>,
        refusals: &mut Vec<String>,
    ) -> Result<Vec<String>, Partial> {
        match &self.cfg.launch_template {
            Some(template) => self.fleet(template, req, refusals).await,
            None => self.run_each(req, refusals).await,
        }
    }

    /// Spot first, then on-demand for what spot refused (with `on_demand_fallback`).
    /// Only capacity refusals fall back: a denied or invalid request fails as it is.
    async fn launch_within(
        &self,
        spot: Request<'_>,
        refusals: &mut Vec<String>,
    ) -> Result<Vec<String>, Partial> {
        let mut ids = self.launch_market(spot, refusals).await?;
        let short = spot.n - ids.len() as u32;
        if short == 0 || !self.cfg.on_demand_fallback {
            return Ok(ids);
        }
        let rest = match self.on_demand_room(spot.pool, short, refusals).await {
            Ok(rest) => rest,
            Err(reason) => {
                return Err(Partial {
                    launched: ids,
                    reason,
                })
            }
        };
        if rest > 0 {
            tracing::warn!(pool = spot.pool, wanted = spot.n, spot = ids.len(), on_demand = rest,
                refusals = ?refusals, "spot capacity refused; launching on-demand");
            let on_demand = Request {
                n: rest,
                market: Market::OnDemand,
                ..spot
            };
            match self.launch_market(on_demand, refusals).await {
                Ok(more) => ids.extend(more),
                Err(mut p) => {
                    ids.append(&mut p.launched);
                    return Err(Partial { launched: ids, ..p });
                }
            }
        }
        Ok(ids)
    }
}

#[async_trait]
impl Cloud for Ec2Cloud {
    async fn launch(&self, pool: &str, n: u32, token: &str) -> Result<Vec<String>, CloudError> {
        let fail = |reason: String, launched: Vec<String>| CloudError::Launch {
            pool: pool.into(),
            n,
            reason,
            launched,
        };
        let spot = Request {
            pool,
            n,
            market: Market::Spot,
            token,
            deadline: Instant::now() + LAUNCH_DEADLINE,
        };
        let mut refusals = Vec::new();
        let ids = self
            .launch_within(spot, &mut refusals)
            .await
            .map_err(|p| fail(p.reason, p.launched))?;
        if ids.is_empty() {
            return Err(fail(
                format!(
                    "no capacity: {}",
                    if refusals.is_empty() {
                        "EC2 launched nothing and said nothing".to_string()
                    } else {
                        refusals.join("; ")
                    }
                ),
                Vec::new(),
            ));
        }
        if (ids.len() as u32) < n {
            tracing::warn!(pool, wanted = n, launched = ids.len(), refusals = ?refusals,
                "launched fewer cells than wanted; the next tick asks again");
        }
        Ok(ids)
    }

    async fn machines(&self, pool: &str) -> Result<Option<Vec<Machine>>, CloudError> {
        let fail = |reason: String| CloudError::Count {
            pool: pool.into(),
            reason,
        };
        let instances = self.instances(pool).await.map_err(fail)?;
        Ok(Some(
            instances
                .iter()
                .filter_map(|i| {
                    Some(Machine {
                        id: i.instance_id()?.to_string(),
                        launched_at: i.launch_time().map_or(0, |t| t.secs()),
                    })
                })
                .collect(),
        ))
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), CloudError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| CloudError::TerminateOthers {
                ids: ids.to_vec(),
                reason: format!("TerminateInstances: {}", describe(e)),
            })?;
        Ok(())
    }

    async fn terminate_self(&self) -> Result<(), CloudError> {
        let fail = |reason: String| CloudError::Terminate { reason };
        let metadata = self.metadata.as_ref().ok_or_else(|| {
            fail("no instance metadata address to learn this instance's id".into())
        })?;
        let id = metadata
            .instance()
            .await
            .map_err(|e| fail(e.to_string()))?
            .instance_id;
        match self
            .client
            .terminate_instances()
            .instance_ids(&id)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(instance = %id, "TerminateInstances accepted");
                Ok(())
            }
            Err(e) if self.cfg.poweroff_fallback => {
                tracing::warn!(instance = %id, error = %describe(e),
                    "TerminateInstances failed; powering off (shutdown behaviour is terminate)");
                let status = tokio::process::Command::new("systemctl")
                    .arg("poweroff")
                    .status()
                    .await
                    .map_err(|e| fail(format!("systemctl poweroff: {e}")))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(fail(format!("systemctl poweroff: {status}")))
                }
            }
            Err(e) => Err(fail(format!("TerminateInstances {id}: {}", describe(e)))),
        }
    }
}

/// The instances of a CreateFleet answer; its capacity refusals go to `refusals`, and
/// any other error fails the launch with the instances kept.
fn fleet_answer(
    out: &aws_sdk_ec2::operation::create_fleet::CreateFleetOutput,
    refusals: &mut Vec<String>,
) -> Result<Vec<String>, Partial> {
    let ids: Vec<String> = out
        .instances()
        .iter()
        .flat_map(|i| i.instance_ids().iter().cloned())
        .collect();
    let mut fatal = Vec::new();
    for e in out.errors() {
        let (code, message) = (
            e.error_code().unwrap_or("error"),
            e.error_message().unwrap_or_default(),
        );
        match classify(code, message) {
            Refusal::Capacity => refusals.push(format!("{code}: {message}")),
            Refusal::Denied | Refusal::Invalid => fatal.push(format!("{code}: {message}")),
        }
    }
    if fatal.is_empty() {
        Ok(ids)
    } else {
        Err(Partial {
            launched: ids,
            reason: format!("CreateFleet: {}", fatal.join("; ")),
        })
    }
}

/// A ClientToken (at most 64 ASCII characters) unique to the decision's token (random
/// per decision: EC2 remembers a token for at least a day after its instances end) and
/// the request within it (the market, and a RunInstances' type and subnet), so a
/// retried request launches nothing twice.
fn client_token(token: &str, request: &str) -> String {
    let digest = Sha256::digest(format!("{token}/{request}"));
    hex::encode(&digest[..16])
}

/// Attempts per launch request, the first included: one retry of a throttled or
/// dropped request. Capacity refusals are never retried in place
/// ([`NoRetryOnCapacity`]), and [`LAUNCH_DEADLINE`] bounds the whole launch anyway.
const LAUNCH_ATTEMPTS: u32 = 2;

/// The per-request config of a launch request: what is left of the launch's deadline
/// as its operation timeout (retries included), [`LAUNCH_ATTEMPTS`], and no retry of a
/// capacity refusal. An error once the deadline has passed.
fn bounded(deadline: Instant) -> Result<aws_sdk_ec2::config::Builder, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(format!(
            "the launch deadline ({} s) passed",
            LAUNCH_DEADLINE.as_secs()
        ));
    }
    Ok(aws_sdk_ec2::config::Builder::new()
        .retry_config(RetryConfig::standard().with_max_attempts(LAUNCH_ATTEMPTS))
        .retry_classifier(NoRetryOnCapacity)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(crate::aws::CONNECT_TIMEOUT.min(left))
                .operation_timeout(left)
                .build(),
        ))
}

/// Makes a launch refused for capacity fail at once instead of being retried in the
/// same place: EC2 answers capacity refusals with HTTP 500, which the SDK would
/// otherwise retry with backoff before the launch could move on.
#[derive(Debug)]
struct NoRetryOnCapacity;

impl ClassifyRetry for NoRetryOnCapacity {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let error = ctx
            .output_or_error()
            .and_then(Result::err)
            .and_then(|e| e.as_operation_error());
        let code = error.and_then(|e| {
            let run = e.downcast_ref::<RunInstancesError>().map(|e| e.code());
            let fleet = e.downcast_ref::<CreateFleetError>().map(|e| e.code());
            run.or(fleet).flatten()
        });
        if code.is_some_and(|c| CAPACITY_ERRORS.contains(&c)) {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "no retry on capacity refusals"
    }
}

/// What a refused launch (or part of one) means for the rest of the launch.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Refusal {
    /// No capacity there: try the next choice, then on-demand.
    Capacity,
    /// The caller may not launch (a missing permission, the spot service-linked role
    /// that cannot be created): no other place or market will do better.
    Denied,
    /// The request is wrong (a bad template, type or subnet): fails as it is.
    Invalid,
}

/// Sorts an EC2 error code (and its message: CreateFleet wraps an authorisation
/// failure such as `AuthFailure.ServiceLinkedRoleCreationNotPermitted` in an
/// `UnfulfillableCapacity` entry) into a [`Refusal`].
fn classify(code: &str, message: &str) -> Refusal {
    let denied = |s: &str| {
        s.contains("UnauthorizedOperation")
            || s.contains("AuthFailure")
            || s.contains("ServiceLinkedRole")
            || s.contains("not authorized")
            || s.contains("OptInRequired")
            || s.contains("Blocked")
    };
    if denied(code) || denied(message) {
        Refusal::Denied
    } else if CAPACITY_ERRORS.contains(&code) {
        Refusal::Capacity
    } else {
        Refusal::Invalid
    }
}

/// The refusal of a request EC2 answered with an error; `None` when it did not answer
/// (a timeout, a dropped connection): not a capacity refusal.
fn refusal<E: ProvideErrorMetadata>(e: &SdkError<E>) -> Option<Refusal> {
    let s = e.as_service_error()?;
    Some(classify(
        s.code().unwrap_or_default(),
        s.message().unwrap_or_default(),
    ))
}

fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(e: SdkError<E>) -> String {
    match e.as_service_error() {
        Some(s) => format!(
            "{}: {}",
            s.code().unwrap_or("error"),
            s.message().unwrap_or_default()
        ),
        None => crate::failure::chain(&e),
    }
}

/// A launch that failed after launching `launched`.
#[derive(Debug)]
struct Partial {
    launched: Vec<String>,
    reason: String,
}

impl Partial {
    /// A failure before anything was launched.
    fn none(reason: String) -> Partial {
        Partial {
            launched: Vec::new(),
            reason,
        }
    }
}

/// One launch request: `n` cells of `pool` in `market`, within the launch's deadline.
#[derive(Clone, Copy)]
struct Request<'a> {
    pool: &'a str,
    n: u32,
    market: Market,
    /// The decision's token, which every ClientToken of the launch derives from.
    token: &'a str,
    deadline: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_fit_ec2_and_differ_per_request() {
        let a = client_token("demo-default-7", "fleet-0");
        assert_eq!(a.len(), 32);
        assert_eq!(a, client_token("demo-default-7", "fleet-0"));
        assert_ne!(a, client_token("demo-default-7", "fleet-1"));
        assert_ne!(a, client_token("demo-default-7", "0/c5.xlarge/subnet-1"));
        assert_ne!(a, client_token("demo-default-8", "fleet-0"));
    }

    #[test]
    fn refusals_are_sorted_by_what_another_try_could_change() {
        let cases = [
            ("InsufficientInstanceCapacity", "no capacity", Refusal::Capacity),
            ("UnfulfillableCapacity", "Unable to fulfill capacity due to your request configuration. Please adjust your request and try again.", Refusal::Capacity),
            ("UnauthorizedOperation", "You are not authorized to perform this operation.", Refusal::Denied),
            ("AuthFailure", "", Refusal::Denied),
            (
                "UnfulfillableCapacity",
                "AuthFailure.ServiceLinkedRoleCreationNotPermitted: The provided credentials do not have permission to create the service-linked role for EC2 Spot Instances.",
                Refusal::Denied,
            ),
            ("InvalidLaunchTemplateName.NotFoundException", "no template", Refusal::Invalid),
            ("InvalidParameterValue", "bad subnet", Refusal::Invalid),
        ];
        for (code, message, want) in cases {
            assert_eq!(classify(code, message), want, "{code}: {message}");
        }
    }
}
