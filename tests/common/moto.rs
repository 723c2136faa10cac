//! moto_server's EC2 API (scripts/services.sh starts it on 127.0.0.1:5000), as the EC2
//! tests reach it directly: to set up a network and look at what was launched.

use aws_sdk_ec2::types::{
    Filter, LaunchTemplateInstanceMarketOptionsRequest, MarketType, RequestLaunchTemplateData,
};

/// moto_server's address.
pub fn url() -> String {
    super::env("CELLFARM_TEST_EC2", "http://127.0.0.1:5000")
}

/// An EC2 client straight to moto.
pub async fn client() -> aws_sdk_ec2::Client {
    let shared = cellfarm::aws::sdk_config().await;
    let conf = aws_sdk_ec2::config::Builder::from(&shared)
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(url())
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

/// Two default subnets of moto's default VPC.
pub async fn subnets(ec2: &aws_sdk_ec2::Client) -> Vec<String> {
    let out = ec2
        .describe_subnets()
        .filters(
            Filter::builder()
                .name("default-for-az")
                .values("true")
                .build(),
        )
        .send()
        .await
        .expect("DescribeSubnets (is moto_server running? scripts/services.sh)");
    let mut subnets: Vec<String> = out
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id().map(String::from))
        .collect();
    subnets.sort();
    subnets.truncate(2);
    subnets
}

/// Creates the launch template `cellfarm-<farm>` (spot in its data, as a farm's would
/// be, with `user_data` when given) and returns its name.
pub async fn launch_template(
    ec2: &aws_sdk_ec2::Client,
    farm: &str,
    user_data: Option<&str>,
) -> String {
    let name = format!("cellfarm-{farm}");
    ec2.create_launch_template()
        .launch_template_name(&name)
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id("ami-12c6146b")
                .set_user_data(user_data.map(aws_smithy_types::base64::encode))
                .instance_market_options(
                    LaunchTemplateInstanceMarketOptionsRequest::builder()
                        .market_type(MarketType::Spot)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("CreateLaunchTemplate");
    name
}

/// The instances `ids` as moto describes them.
pub async fn instances(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
) -> Vec<aws_sdk_ec2::types::Instance> {
    let out = ec2
        .describe_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .send()
        .await
        .expect("DescribeInstances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances().iter().cloned())
        .collect()
}
