//! The farm's CloudFormation stack (deploy/cellfarm.yaml) created on moto_server, as a
//! user creates it on AWS: the trigger's zip uploaded first, then CreateStack with the
//! VPC, two subnets in distinct zones and the farm's buckets. The crate has no
//! CloudFormation SDK, so CreateStack goes through the query API by hand (moto does not
//! check signatures).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use aws_sdk_ec2::types::Filter;

use super::moto;

/// A created stack: its parameters and outputs.
pub struct Stack {
    pub farm: String,
    /// The security group the stack opens the servers' ports in.
    pub servers: String,
    pub inbox: String,
    pub output: String,
    pub config: String,
    pub subnets: Vec<String>,
    pub outputs: BTreeMap<String, String>,
}

impl Stack {
    pub fn output(&self, key: &str) -> &str {
        self.outputs
            .get(key)
            .unwrap_or_else(|| panic!("no stack output {key}: {:?}", self.outputs))
    }
}

/// An S3 client to moto's S3 (path style).
pub async fn s3() -> aws_sdk_s3::Client {
    let shared = cellfarm::aws::sdk_config().await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto::url())
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// An IAM client to moto.
pub async fn iam() -> aws_sdk_iam::Client {
    let shared = cellfarm::aws::sdk_config().await;
    let conf = aws_sdk_iam::config::Builder::from(&shared)
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto::url())
        .build();
    aws_sdk_iam::Client::from_conf(conf)
}

/// Creates the stack for a new farm named after `test`, without the spot
/// service-linked role (moto has no `AWS::IAM::ServiceLinkedRole`).
pub async fn create(test: &str) -> Stack {
    let farm = format!("{test}{}", rand::random::<u32>());
    let s3 = s3().await;
    let code = format!("{farm}-code");
    s3.create_bucket()
        .bucket(&code)
        .send()
        .await
        .expect("CreateBucket (moto)");
    s3.put_object()
        .bucket(&code)
        .key("bin/trigger.zip")
        // No zip: moto keeps the code and runs no function here.
        .body(b"the trigger's zip".to_vec().into())
        .send()
        .await
        .expect("PutObject (moto)");
    let ec2 = moto::client().await;
    let subnets = moto::subnets(&ec2).await;
    let vpc = ec2
        .describe_subnets()
        .subnet_ids(&subnets[0])
        .send()
        .await
        .expect("DescribeSubnets")
        .subnets()[0]
        .vpc_id()
        .expect("a VPC")
        .to_string();
    let servers = ec2
        .describe_security_groups()
        .filters(Filter::builder().name("vpc-id").values(&vpc).build())
        .filters(
            Filter::builder()
                .name("group-name")
                .values("default")
                .build(),
        )
        .send()
        .await
        .expect("DescribeSecurityGroups")
        .security_groups()[0]
        .group_id()
        .expect("a group id")
        .to_string();
    let stack = Stack {
        servers: servers.clone(),
        inbox: format!("{farm}-in"),
        output: format!("{farm}-out"),
        config: format!("{farm}-cfg"),
        farm,
        subnets,
        outputs: BTreeMap::new(),
    };
    let parameters = [
        ("FarmName", stack.farm.clone()),
        ("ImageId", "ami-12c6146b".into()),
        ("VpcId", vpc),
        ("SubnetIds", stack.subnets.join(",")),
        ("InstanceTypes", "c6i.xlarge,c5.xlarge".into()),
        ("InboxBucketName", stack.inbox.clone()),
        ("OutputBucketName", stack.output.clone()),
        ("ConfigBucketName", stack.config.clone()),
        ("TriggerCodeBucket", code),
        ("CreateSpotServiceLinkedRole", "false".into()),
        // The VPC's default group stands for the servers'.
        ("ServersSecurityGroupId", servers),
    ];
    let described = create_stack(&stack.farm, &parameters);
    Stack {
        outputs: outputs(&described),
        ..stack
    }
}

/// CreateStack of deploy/cellfarm.yaml as `name`; DescribeStacks' answer once it is
/// complete (moto creates a stack at once).
fn create_stack(name: &str, parameters: &[(&str, String)]) -> String {
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cellfarm.yaml"))
            .expect("deploy/cellfarm.yaml");
    let mut form = vec![
        ("Action".to_string(), "CreateStack".to_string()),
        ("Version".into(), "2010-05-15".into()),
        ("StackName".into(), name.to_string()),
        ("TemplateBody".into(), template),
        ("Capabilities.member.1".into(), "CAPABILITY_IAM".into()),
    ];
    for (i, (k, v)) in parameters.iter().enumerate() {
        form.push((
            format!("Parameters.member.{}.ParameterKey", i + 1),
            k.to_string(),
        ));
        form.push((
            format!("Parameters.member.{}.ParameterValue", i + 1),
            v.clone(),
        ));
    }
    let created = query("cloudformation", &form);
    assert!(created.contains("<StackId>"), "CreateStack: {created}");
    let described = query(
        "cloudformation",
        &[
            ("Action".into(), "DescribeStacks".into()),
            ("Version".into(), "2010-05-15".into()),
            ("StackName".into(), name.to_string()),
        ],
    );
    assert!(
        described.contains("<StackStatus>CREATE_COMPLETE</StackStatus>"),
        "the stack is not complete: {described}"
    );
    described
}

/// The outputs of a DescribeStacks answer.
fn outputs(xml: &str) -> BTreeMap<String, String> {
    let field = |item: &str, name: &str| -> Option<String> {
        let start = item.find(&format!("<{name}>"))? + name.len() + 2;
        let end = item[start..].find(&format!("</{name}>"))? + start;
        Some(item[start..end].to_string())
    };
    xml.split("<member>")
        .filter_map(|item| Some((field(item, "OutputKey")?, field(item, "OutputValue")?)))
        .collect()
}

/// One query-protocol call to moto for `service`; the answer's body.
pub fn query(service: &str, form: &[(String, String)]) -> String {
    let body = super::ec2_proxy::encode(form.iter().map(|(k, v)| (k, v)));
    let addr = moto::url().trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).expect("moto_server");
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=cellfarm/20261130/us-east-1/{service}/aws4_request, \
         SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}
