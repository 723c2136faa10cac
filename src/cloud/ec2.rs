//! The `ec2` cloud: a sibling cell is an EC2 spot instance booted from the farm's AMI.
//!
//! With a launch template, one CreateFleet `instant` request spreads the cells over every
//! configured instance type and subnet with the configured allocation strategy. Without
//! one, RunInstances is tried per instance type and subnet, in the configured order,
//! until the cells are launched. A capacity refusal moves on to the next choice at once (it is
//! not retried in the same place); any other error stops the launch. With
//! `on_demand_fallback`, what spot refused everywhere is launched on-demand, as long as
//! the pool's on-demand instances stay within `on_demand_ceiling`: the cloud counts
//! them by their lifecycle (every instance of the pool that is not spot), so the bound
//! holds across cells and restarts.
//!
//! Every instance carries the tags `cellfarm:farm`, `cellfarm:pool` and
//! `cellfarm:launched-by`; its user data is the config URL and nothing else (credentials
//! come from the instance profile). Its shutdown behaviour is `terminate`, so a cell
//! that powers off is gone for good. The tags are what [`Cloud::count`] counts, so the
//! ceiling holds even when Redis forgot the pending launches.

use async_trait::async_trait;
use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
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

use super::{Cloud, CloudError, Machine};
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

    /// One CreateFleet `instant` request for `n` cells of `market`.
    async fn fleet(
        &self,
        template: &str,
        pool: &str,
        n: u32,
        market: Market,
        token: &str,
    ) -> Result<(Vec<String>, Vec<String>), String> {
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
        let capacity = TargetCapacitySpecificationRequest::builder()
            .total_target_capacity(n as i32)
            .default_target_capacity_type(match market {
                Market::Spot => DefaultTargetCapacityType::Spot,
                Market::OnDemand => DefaultTargetCapacityType::OnDemand,
            })
            .build();
        let out = self
            .client
            .create_fleet()
            .r#type(FleetType::Instant)
            .launch_template_configs(config.build())
            .target_capacity_specification(capacity)
            .spot_options(
                SpotOptionsRequest::builder()
                    .allocation_strategy(SpotAllocationStrategy::from(
                        self.cfg.allocation_strategy.as_str(),
                    ))
                    .build(),
            )
            .tag_specifications(self.tags(pool))
            .client_token(client_token(token, "fleet"))
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            // The whole request refused for capacity: nothing launched, try elsewhere.
            Err(e) if is_capacity(&e) => return Ok((Vec::new(), vec![describe(e)])),
            Err(e) => return Err(describe(e)),
        };
        let ids = out
            .instances()
            .iter()
            .flat_map(|i| i.instance_ids().iter().cloned())
            .collect();
        let errors = out
            .errors()
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.error_code().unwrap_or("error"),
                    e.error_message().unwrap_or_default()
                )
            })
            .collect();
        Ok((ids, errors))
    }

    /// RunInstances for up to `n` cells of one instance type in one subnet.
    async fn run(
        &self,
        pool: &str,
        n: u32,
        instance_type: &str,
        subnet: Option<&str>,
        market: Market,
        token: &str,
    ) -> Result<Vec<String>, SdkError<RunInstancesError>> {
        let mut req = self
            .client
            .run_instances()
            .set_image_id(self.cfg.image_id.clone())
            .instance_type(InstanceType::from(instance_type))
            .min_count(1)
            .max_count(n as i32)
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
            .tag_specifications(self.tags(pool))
            .client_token(client_token(
                token,
                &format!("{instance_type}/{}", subnet.unwrap_or("")),
            ));
        if let Some(profile) = &self.cfg.instance_profile {
            let spec = IamInstanceProfileSpecification::builder();
            req = req.iam_instance_profile(if profile.starts_with("arn:") {
                spec.arn(profile).build()
            } else {
                spec.name(profile).build()
            });
        }
        if market == Market::Spot {
            req = req.instance_market_options(
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
        let out = req
            .customize()
            .config_override(
                aws_sdk_ec2::config::Builder::new().retry_classifier(NoRetryOnCapacity),
            )
            .send()
            .await?;
        Ok(out
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(String::from))
            .collect())
    }

    /// RunInstances over every (type, subnet) choice until `n` cells are running.
    async fn run_each(
        &self,
        pool: &str,
        n: u32,
        market: Market,
        token: &str,
        refusals: &mut Vec<String>,
    ) -> Result<Vec<String>, String> {
        let subnets: Vec<Option<&str>> = if self.cfg.subnets.is_empty() {
            vec![None]
        } else {
            self.cfg.subnets.iter().map(|s| Some(s.as_str())).collect()
        };
        let mut ids = Vec::new();
        for instance_type in &self.cfg.instance_types {
            for subnet in &subnets {
                let left = n - ids.len() as u32;
                if left == 0 {
                    return Ok(ids);
                }
                let market_token = format!("{token}-{}", market as u8);
                match self
                    .run(pool, left, instance_type, *subnet, market, &market_token)
                    .await
                {
                    Ok(launched) => ids.extend(launched),
                    Err(e) if is_capacity(&e) => refusals.push(format!(
                        "{instance_type} in {}: {}",
                        subnet.unwrap_or("the default subnet"),
                        describe(e)
                    )),
                    Err(e) => return Err(format!("RunInstances {instance_type}: {}", describe(e))),
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
        pool: &str,
        n: u32,
        market: Market,
        token: &str,
        refusals: &mut Vec<String>,
    ) -> Result<Vec<String>, String> {
        match &self.cfg.launch_template {
            Some(template) => {
                let market_token = format!("{token}-{}", market as u8);
                let (ids, errors) = self
                    .fleet(template, pool, n, market, &market_token)
                    .await
                    .map_err(|e| format!("CreateFleet: {e}"))?;
                refusals.extend(errors);
                Ok(ids)
            }
            None => self.run_each(pool, n, market, token, refusals).await,
        }
    }
}

#[async_trait]
impl Cloud for Ec2Cloud {
    async fn launch(&self, pool: &str, n: u32, token: &str) -> Result<Vec<String>, CloudError> {
        let fail = |reason: String| CloudError::Launch {
            pool: pool.into(),
            n,
            reason,
        };
        let mut refusals = Vec::new();
        let mut ids = self
            .launch_market(pool, n, Market::Spot, token, &mut refusals)
            .await
            .map_err(fail)?;
        if (ids.len() as u32) < n && self.cfg.on_demand_fallback {
            let rest = self
                .on_demand_room(pool, n - ids.len() as u32, &mut refusals)
                .await
                .map_err(fail)?;
            if rest > 0 {
                tracing::warn!(pool, wanted = n, spot = ids.len(), on_demand = rest,
                    refusals = ?refusals, "spot capacity refused; launching on-demand");
                ids.extend(
                    self.launch_market(pool, rest, Market::OnDemand, token, &mut refusals)
                        .await
                        .map_err(fail)?,
                );
            }
        }
        if ids.is_empty() {
            return Err(fail(format!(
                "no capacity: {}",
                if refusals.is_empty() {
                    "EC2 launched nothing and said nothing".to_string()
                } else {
                    refusals.join("; ")
                }
            )));
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

/// A ClientToken (at most 64 ASCII characters) unique to the decision and the request
/// within it (`fleet`, or the type and subnet of a RunInstances), so a retried request
/// launches nothing twice.
fn client_token(token: &str, request: &str) -> String {
    let digest = Sha256::digest(format!("{token}/{request}"));
    hex::encode(&digest[..16])
}

/// Makes a RunInstances refused for capacity fail at once instead of being retried in
/// the same place: EC2 answers capacity refusals with HTTP 500, which the SDK would
/// otherwise retry with backoff before the launch could move on.
#[derive(Debug)]
struct NoRetryOnCapacity;

impl ClassifyRetry for NoRetryOnCapacity {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let code = ctx
            .output_or_error()
            .and_then(Result::err)
            .and_then(|e| e.as_operation_error())
            .and_then(|e| e.downcast_ref::<RunInstancesError>())
            .and_then(ProvideErrorMetadata::code);
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

fn is_capacity<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|code| CAPACITY_ERRORS.contains(&code))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_fit_ec2_and_differ_per_request() {
        let a = client_token("demo-default-7-0", "fleet");
        assert_eq!(a.len(), 32);
        assert_eq!(a, client_token("demo-default-7-0", "fleet"));
        assert_ne!(a, client_token("demo-default-7-0", "c5.xlarge/subnet-1"));
        assert_ne!(a, client_token("demo-default-8-0", "fleet"));
    }
}
