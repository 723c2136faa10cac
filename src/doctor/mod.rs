//! `cellfarm doctor`: checks an AWS account against what the farm in the config needs,
//! before a job is lost to a gap, and names every gap with why it matters and its fix.
//!
//! What it reads: the config (`[cloud.ec2]`, the pipelines' output buckets, the config
//! URL, the broker's `consumer_timeout`), and the account through EC2 (the launch
//! template, the subnets), IAM (the spot service-linked role, what the cells' and the
//! trigger's roles may do), Lambda (the trigger's role and ARN) and S3 (the buckets,
//! the config object, the inbox's notification). It changes nothing.
//!
//! The roles are checked with `iam:SimulatePrincipalPolicy` with the farm's own context
//! (its tags, `ec2:CreateAction`, `iam:PassedToService`); where simulation is missing
//! (moto) or refused, their policy documents are evaluated instead ([`policy`]).

mod checks;
mod policy;

use std::time::Instant;

use crate::config::Config;
use crate::s3url::S3Url;

pub use checks::{MIN_DISK_GIB, SPOT_ROLE_PATH};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The trigger Lambda function (name or ARN): its role, and the inbox's notification
    /// pointing at it, are checked.
    #[arg(long)]
    pub lambda: Option<String>,
    /// Where uploads are dropped, `s3://bucket/prefix/`: the bucket must exist, the
    /// roles must list and read it, and its notification must cover the prefix.
    #[arg(long, value_parser = S3Url::parse)]
    pub inbox: Option<S3Url>,
    /// The smallest root volume, in GiB, that passes (the scratch space of every slot).
    #[arg(long, default_value_t = MIN_DISK_GIB)]
    pub min_disk_gib: i32,
    /// The IAM and Lambda API endpoint, when it is not AWS (moto_server in tests); EC2
    /// and S3 come from the config.
    #[arg(long, value_name = "URL")]
    pub aws_endpoint: Option<String>,
}

/// One gap between the account and the farm.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Which check found it: `spot-role`, `launch-template`, `subnets`, `cell-role`,
    /// `trigger-role`, `buckets`, `notification`, `consumer-timeout`.
    pub check: &'static str,
    /// What is wrong, naming the resource.
    pub what: String,
    /// Why it matters to the farm.
    pub why: &'static str,
    /// How to fix it.
    pub fix: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {}\n    why: {}\n    fix: {}",
            self.check, self.what, self.why, self.fix
        )
    }
}

/// `cellfarm doctor`: prints every finding; an error when there is one.
pub async fn run(config: &Config, sdk: &aws_config::SdkConfig, args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let findings = examine(config, sdk, args).await?;
    for finding in &findings {
        println!("{finding}");
    }
    let secs = started.elapsed().as_secs_f64();
    if findings.is_empty() {
        println!("doctor: no gap found ({secs:.1} s)");
        Ok(())
    } else {
        anyhow::bail!("doctor: {} gap(s) found ({secs:.1} s)", findings.len())
    }
}

/// Every finding, in the order of the checks. An error only when the config has no
/// `[cloud.ec2]` to check against.
pub async fn examine(
    config: &Config,
    sdk: &aws_config::SdkConfig,
    args: &Args,
) -> anyhow::Result<Vec<Finding>> {
    let ec2 = config.cloud.ec2.as_ref().ok_or_else(|| {
        anyhow::anyhow!("the doctor checks the ec2 cloud: the config has no [cloud.ec2]")
    })?;
    let account = checks::Account::connect(config, ec2, sdk, args).await;
    let mut findings = Vec::new();
    findings.extend(account.spot_role().await);
    let (template, profile) = account.launch_template(ec2, args.min_disk_gib).await;
    findings.extend(template);
    findings.extend(account.subnets(ec2).await);
    let cell_role = match profile {
        Some(profile) => account.profile_role(&profile).await,
        None => Err(None),
    };
    let needs = checks::Needs::of(config, &account, args.inbox.as_ref());
    let cell = match cell_role {
        Ok(role) => {
            findings.extend(
                account
                    .role_can("cell-role", &role, &needs.cell(&role))
                    .await,
            );
            Some(role)
        }
        Err(gap) => {
            findings.extend(gap);
            None
        }
    };
    let trigger = match &args.lambda {
        Some(name) => account.trigger(name).await,
        None => Err(None),
    };
    match &trigger {
        Ok(t) => {
            let needs = needs.trigger(&t.role, cell.as_ref());
            findings.extend(account.role_can("trigger-role", &t.role, &needs).await);
        }
        Err(gap) => findings.extend(gap.clone()),
    }
    findings.extend(account.buckets(&needs).await);
    if let (Some(inbox), Ok(t)) = (&args.inbox, &trigger) {
        findings.extend(account.notification(inbox, &t.arn).await);
    }
    findings.extend(checks::consumer_timeout(config));
    Ok(findings)
}
