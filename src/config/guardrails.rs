//! The pools' cost guardrails: the vCPU ceiling (worked out from the instance types or
//! this machine) and the daily budget's keys.

use super::{CloudKind, Config, Pool};

/// Instance families whose sizes follow EC2's common rule (`large` 2 vCPUs, `xlarge` 4,
/// `Nxlarge` 4 N, `medium` 1): the compute, general purpose and memory families a
/// cellfarm pool is made of.
const FAMILIES: &[&str] = &[
    "c5", "c5a", "c5ad", "c5d", "c5n", "c6a", "c6g", "c6gd", "c6gn", "c6i", "c6id", "c6in", "c7a",
    "c7g", "c7gd", "c7gn", "c7i", "c8g", "m5", "m5a", "m5ad", "m5d", "m5n", "m6a", "m6g", "m6gd",
    "m6i", "m6id", "m6in", "m7a", "m7g", "m7gd", "m7i", "m8g", "r5", "r5a", "r5d", "r5n", "r6a",
    "r6g", "r6gd", "r6i", "r6id", "r7a", "r7g", "r7i", "r8g",
];

/// vCPUs of an EC2 instance type of a known family, e.g. 8 for `c6i.2xlarge`; `None`
/// for other families and for `metal` (whose count varies by family).
pub fn vcpus_of_type(instance_type: &str) -> Option<u32> {
    let (family, size) = instance_type.split_once('.')?;
    if !FAMILIES.contains(&family) {
        return None;
    }
    match size {
        "medium" => Some(1),
        "large" => Some(2),
        "xlarge" => Some(4),
        _ => {
            let n: u32 = size.strip_suffix("xlarge")?.parse().ok()?;
            (n > 0).then(|| n * 4)
        }
    }
}

impl Config {
    /// Checks the budget keys and works out each pool's `vcpu_ceiling`; every problem
    /// goes into `problems`.
    pub(super) fn resolve_guardrails(&mut self, problems: &mut Vec<String>) {
        let kind = self.cloud.kind;
        let types: Vec<String> = (self.cloud.ec2.iter())
            .flat_map(|e| e.instance_types.clone())
            .collect();
        for (name, pool) in &mut self.pools {
            check_budget(name, pool, problems);
            let Some(max_vcpus) = pool.max_vcpus else {
                continue;
            };
            let per_cell = match vcpus_per_cell(name, pool, kind, &types) {
                Ok(n) => n,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            let cells = max_vcpus / per_cell;
            if cells == 0 || cells < pool.floor {
                problems.push(format!(
                    "pools.{name}.max_vcpus: {max_vcpus} vCPUs hold {cells} cell(s) of \
                     {per_cell} vCPUs, fewer than 1 and the floor ({})",
                    pool.floor
                ));
            }
            pool.vcpu_ceiling = Some(cells);
        }
    }
}

fn check_budget(name: &str, pool: &Pool, problems: &mut Vec<String>) {
    let positive = |v: Option<f64>| v.map_or(true, |v| v.is_finite() && v > 0.0);
    for (key, value) in [
        ("budget_per_day", pool.budget_per_day),
        ("price_per_hour", pool.price_per_hour),
        ("on_demand_per_hour", pool.on_demand_per_hour),
    ] {
        if !positive(value) {
            problems.push(format!("pools.{name}.{key}: must be above 0"));
        }
    }
    if pool.budget_per_day.is_some() && pool.price_per_hour.is_none() {
        problems.push(format!(
            "pools.{name}.budget_per_day: needs pools.{name}.price_per_hour (dollars per cell-hour)"
        ));
    }
    if pool.vcpus_per_cell == Some(0) {
        problems.push(format!("pools.{name}.vcpus_per_cell: must be above 0"));
    }
}

/// vCPUs of one of the pool's cells: its own `vcpus_per_cell`, else the largest of the
/// EC2 instance types (the fleet may launch any), else this machine's for `local`.
fn vcpus_per_cell(
    name: &str,
    pool: &Pool,
    kind: CloudKind,
    types: &[String],
) -> Result<u32, String> {
    if let Some(n) = pool.vcpus_per_cell {
        return Ok(n.max(1));
    }
    match kind {
        CloudKind::Ec2 if types.is_empty() => Err(format!(
            "pools.{name}.max_vcpus: cloud.ec2.instance_types is empty (a launch \
             template's types are not read): set pools.{name}.vcpus_per_cell"
        )),
        CloudKind::Ec2 => {
            let mut most = 0;
            for t in types {
                let n = vcpus_of_type(t).ok_or_else(|| {
                    format!(
                        "cloud.ec2.instance_types: no vCPU count known for {t:?} (for \
                         pools.{name}.max_vcpus): set pools.{name}.vcpus_per_cell"
                    )
                })?;
                most = most.max(n);
            }
            Ok(most)
        }
        CloudKind::Local => Ok(std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))),
        CloudKind::None => Err(format!(
            "pools.{name}.max_vcpus: cloud.kind is none: set pools.{name}.vcpus_per_cell"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpus_of_common_types() {
        let cases = [
            ("c5.large", Some(2)),
            ("c6i.xlarge", Some(4)),
            ("c7i.2xlarge", Some(8)),
            ("m5.24xlarge", Some(96)),
            ("c6g.medium", Some(1)),
            ("c5.9xlarge", Some(36)),
            ("c6i.metal", None),
            ("t3.small", None),
            ("p4d.24xlarge", None),
            ("c5", None),
            ("c5.0xlarge", None),
        ];
        for (t, want) in cases {
            assert_eq!(vcpus_of_type(t), want, "{t}");
        }
    }

    fn config(cloud: &str, pool: &str) -> Result<Config, String> {
        let text = format!(
            r#"
            [farm]
            name = "t"
            [amqp]
            url = "amqp://127.0.0.1"
            [postgres]
            url = "postgres://127.0.0.1/test"
            [redis]
            url = "redis://127.0.0.1"
            {cloud}
            [pools.p]
            ceiling = 10
            {pool}
            [pipelines.x]
            pool = "p"
            output = "s3://out/x/"
            steps = [{{ args = ["-i", "{{input}}", "{{out}}/a.mp4"] }}]
            outputs = [{{ path = "a.mp4" }}]
            "#
        );
        Config::parse(&text, "guardrails test").map_err(|e| e.to_string())
    }

    const EC2: &str = r#"
        [cloud]
        kind = "ec2"
        [cloud.ec2]
        image_id = "ami-1"
        instance_types = ["c6i.2xlarge", "c5.4xlarge"]
    "#;

    #[test]
    fn the_vcpu_quota_lowers_the_ceiling() {
        let c = config(EC2, "max_vcpus = 64").unwrap();
        assert_eq!(
            c.pools["p"].effective_ceiling(),
            4,
            "64 vCPUs hold 4 cells of the largest type (16 vCPUs)"
        );
        let c = config(EC2, "max_vcpus = 6400").unwrap();
        assert_eq!(
            c.pools["p"].effective_ceiling(),
            10,
            "the ceiling still holds"
        );
        let c = config("", "max_vcpus = 20\nvcpus_per_cell = 8").unwrap();
        assert_eq!(c.pools["p"].effective_ceiling(), 2);
        let c = config("", "").unwrap();
        assert_eq!(c.pools["p"].effective_ceiling(), 10, "no quota, no change");
        let c = config("[cloud]\nkind = \"local\"", "max_vcpus = 100000").unwrap();
        assert_eq!(c.pools["p"].effective_ceiling(), 10);
    }

    #[test]
    fn guardrail_errors_name_the_key() {
        let unknown = EC2.replace("c5.4xlarge", "x2iezn.2xlarge");
        let cases = [
            (
                unknown.as_str(),
                "max_vcpus = 64",
                "cloud.ec2.instance_types",
            ),
            ("", "max_vcpus = 64", "pools.p.vcpus_per_cell"),
            (EC2, "max_vcpus = 8", "pools.p.max_vcpus"),
            ("", "budget_per_day = 10.0", "pools.p.price_per_hour"),
            (
                "",
                "budget_per_day = -1.0\nprice_per_hour = 0.1",
                "pools.p.budget_per_day",
            ),
            ("", "price_per_hour = 0.0", "pools.p.price_per_hour"),
        ];
        for (cloud, pool, key) in cases {
            let err = config(cloud, pool).unwrap_err();
            assert!(err.contains(key), "{pool}: {err}");
        }
        let c = config("", "budget_per_day = 10.0\nprice_per_hour = 0.1").unwrap();
        assert_eq!(c.pools["p"].budget_per_day, Some(10.0));
    }
}
