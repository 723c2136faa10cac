//! One AWS SDK configuration for every client this process builds (S3, EC2, the config
//! fetch): credentials and region from the usual chain (the instance profile on a cell),
//! with the timeouts and retry policy named once here.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// Time to open a connection to an AWS (or S3-compatible) endpoint. Generous for AWS,
/// short enough that a wrong endpoint fails a start quickly instead of hanging.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per call, including the first, with the SDK's standard exponential backoff
/// and jitter. Longer outages are the callers' to ride out (a job's retry, the next tick).
const MAX_ATTEMPTS: u32 = 3;

/// Loads the shared configuration once per process. Each client may still set its own
/// region and endpoint (`s3.region`, `cloud.ec2.endpoint`) on top of it.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .load()
        .await
}
