//! The checks serde cannot make: ranges, names, references between tables, templates.
//! One function per section; each reports through `bad(key, why)` and goes on, so that
//! every problem is reported at once.

use std::collections::BTreeMap;

use super::{CloudKind, Config, ExpectedDuration, OutputSpec, Pipeline, SourceLimits, Var};
use crate::ffmpeg::{probe, template};
use crate::outkey;

/// Allocation strategies CreateFleet accepts.
const STRATEGIES: &[&str] = &[
    "capacity-optimized",
    "capacity-optimized-prioritized",
    "price-capacity-optimized",
    "lowest-price",
    "diversified",
];

impl Config {
    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        let mut bad = |key: String, why: &str| problems.push(format!("{key}: {why}"));
        self.validate_farm(&mut bad);
        self.validate_cell(&mut bad);
        self.validate_cloud(&mut bad);
        self.validate_routes(&mut bad);
        self.validate_update(&mut bad);
        self.validate_pools(&mut bad);
        self.validate_pipelines(&mut bad);
    }

    /// The farm's name and the endpoints of its systems.
    fn validate_farm(&self, bad: &mut impl FnMut(String, &str)) {
        if !valid_name(&self.farm.name) {
            bad("farm.name".into(), "must be 1-40 of [a-z0-9_-]");
        }
        if !valid_name(&self.postgres.schema) {
            bad("postgres.schema".into(), "must be 1-40 of [a-z0-9_-]");
        }
        check_url(&self.amqp.url, &["amqp", "amqps"], "amqp.url", bad);
        check_url(
            &self.postgres.url,
            &["postgres", "postgresql"],
            "postgres.url",
            bad,
        );
        check_url(&self.redis.url, &["redis", "rediss"], "redis.url", bad);
        if let Some(endpoint) = &self.s3.endpoint {
            check_url(endpoint, &["http", "https"], "s3.endpoint", bad);
        }
        self.validate_s3(bad);
    }

    /// Part size within S3's limits on a part, and at least one transfer at a time.
    fn validate_s3(&self, bad: &mut impl FnMut(String, &str)) {
        if !(5..=5120).contains(&self.s3.part_size_mib) {
            bad(
                "s3.part_size_mib".into(),
                "must be 5 to 5120 (S3's smallest part but the last is 5 MiB, its largest 5 GiB)",
            );
        }
        if self.s3.concurrency == 0 {
            bad("s3.concurrency".into(), "must be above 0");
        }
    }

    fn validate_cell(&self, bad: &mut impl FnMut(String, &str)) {
        let c = &self.cell;
        if c.lease_secs < 2 * c.heartbeat_secs {
            bad(
                "cell.lease_secs".into(),
                "must be at least twice cell.heartbeat_secs",
            );
        }
        if c.heartbeat_secs == 0 {
            bad("cell.heartbeat_secs".into(), "must be above 0");
        }
        if c.max_attempts == 0 {
            bad("cell.max_attempts".into(), "must be above 0");
        }
        if c.min_step_timeout_secs == 0 {
            bad("cell.min_step_timeout_secs".into(), "must be above 0");
        }
        if c.step_timeout_secs == Some(0) {
            bad("cell.step_timeout_secs".into(), "must be above 0");
        }
        if c.demuxers.is_empty() {
            bad("cell.demuxers".into(), "must name at least one demuxer");
        }
        self.validate_sandbox(bad);
    }

    /// The sandbox's user, programs and limits; whether its layers work is for the
    /// machine to say at start.
    fn validate_sandbox(&self, bad: &mut impl FnMut(String, &str)) {
        let c = &self.cell;
        let user = c.sandbox_user.trim();
        if user.is_empty() || user.contains(char::is_whitespace) {
            bad("cell.sandbox_user".into(), "must name a user, or uid:gid");
        } else if user == "root" || user.split(':').any(|id| id == "0") {
            bad(
                "cell.sandbox_user".into(),
                "must not be root: FFmpeg decodes untrusted media",
            );
        }
        for (key, program) in [("cell.ffmpeg", &c.ffmpeg), ("cell.ffprobe", &c.ffprobe)] {
            if program.trim().is_empty() {
                bad(key.into(), "must name a program or a path");
            }
        }
        if c.ffmpeg_max_file_mib == 0 {
            bad("cell.ffmpeg_max_file_mib".into(), "must be above 0");
        }
    }

    fn validate_cloud(&self, bad: &mut impl FnMut(String, &str)) {
        let cloud = &self.cloud;
        if let Some(url) = &cloud.metadata_url {
            check_url(url, &["http"], "cloud.metadata_url", bad);
        }
        if cloud.metadata_poll_secs == 0 {
            bad("cloud.metadata_poll_secs".into(), "must be above 0");
        }
        let Some(ec2) = &cloud.ec2 else {
            if cloud.kind == CloudKind::Ec2 {
                bad(
                    "cloud.ec2".into(),
                    "kind = \"ec2\" needs a [cloud.ec2] table",
                );
            }
            return;
        };
        if let Some(endpoint) = &ec2.endpoint {
            check_url(endpoint, &["http", "https"], "cloud.ec2.endpoint", bad);
        }
        if ec2.launch_template.is_none() {
            if ec2.image_id.is_none() {
                bad(
                    "cloud.ec2.image_id".into(),
                    "needed when no launch_template is given",
                );
            }
            if ec2.instance_types.is_empty() {
                bad(
                    "cloud.ec2.instance_types".into(),
                    "needed when no launch_template is given",
                );
            }
        }
        if ec2.on_demand_fallback && ec2.on_demand_ceiling == 0 {
            bad(
                "cloud.ec2.on_demand_ceiling".into(),
                "on_demand_fallback needs it above 0: how many of a pool's cells may be on-demand at once",
            );
        }
        if !STRATEGIES.contains(&ec2.allocation_strategy.as_str()) {
            bad(
                "cloud.ec2.allocation_strategy".into(),
                &format!("must be one of {}", STRATEGIES.join(", ")),
            );
        }
    }

    fn validate_routes(&self, bad: &mut impl FnMut(String, &str)) {
        for (i, r) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            if r.pipelines.is_empty() {
                bad(key("pipelines"), "at least one pipeline is needed");
            }
            for p in &r.pipelines {
                if !self.pipelines.contains_key(p) {
                    bad(key("pipelines"), &format!("no pipeline named {p:?}"));
                }
            }
            if let Some(pool) = &r.pool {
                if !self.pools.contains_key(pool) {
                    bad(key("pool"), &format!("no pool named {pool:?}"));
                }
            }
            for (k, v) in [("min_secs", r.min_secs), ("max_secs", r.max_secs)] {
                if v.is_some_and(|v| v.is_nan() || v < 0.0) {
                    bad(key(k), "must be 0 or more");
                }
            }
            if let (Some(min), Some(max)) = (r.min_secs, r.max_secs) {
                if min >= max {
                    bad(key("max_secs"), "must be above min_secs");
                }
            }
        }
    }

    /// `update.binary_url` is typed: serde has checked it.
    fn validate_update(&self, bad: &mut impl FnMut(String, &str)) {
        if let Some(u) = &self.update {
            if u.sha256.len() != 64 || !u.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bad("update.sha256".into(), "must be 64 hex digits (sha256sum)");
            }
        }
    }

    fn validate_pools(&self, bad: &mut impl FnMut(String, &str)) {
        if self.pools.is_empty() {
            bad("pools".into(), "at least one pool is needed");
        }
        if self.farm.max_cells == Some(0) {
            bad("farm.max_cells".into(), "must be above 0");
        }
        for (name, pool) in &self.pools {
            if !valid_name(name) {
                bad(format!("pools.{name}"), "pool names are 1-40 of [a-z0-9_-]");
            }
            if pool.jobs_per_cell == 0 {
                bad(format!("pools.{name}.jobs_per_cell"), "must be above 0");
            }
            if pool
                .work_secs_per_cell
                .is_some_and(|w| w.is_nan() || w <= 0.0)
            {
                bad(
                    format!("pools.{name}.work_secs_per_cell"),
                    "must be above 0",
                );
            }
            if pool.ceiling < pool.floor || pool.ceiling == 0 {
                bad(
                    format!("pools.{name}.ceiling"),
                    "must be above 0 and at least the floor",
                );
            }
            if pool.step == 0 {
                bad(format!("pools.{name}.step"), "must be above 0");
            }
            if pool.soak && self.farm.max_cells.is_none() {
                bad(
                    format!("pools.{name}.soak"),
                    "needs farm.max_cells: a soak pool's room is what the other pools leave under it",
                );
            }
        }
    }

    fn validate_pipelines(&self, bad: &mut impl FnMut(String, &str)) {
        if self.pipelines.is_empty() {
            bad("pipelines".into(), "at least one pipeline is needed");
        }
        for (name, p) in &self.pipelines {
            if !valid_name(name) {
                bad(
                    format!("pipelines.{name}"),
                    "pipeline names are 1-40 of [a-z0-9_-]",
                );
            }
            if !self.pools.contains_key(&p.pool) {
                bad(
                    format!("pipelines.{name}.pool"),
                    &format!("no pool named {:?}", p.pool),
                );
            }
            check_pipeline(p, &self.vars, &format!("pipelines.{name}"), bad);
        }
        // Shared vars may use builtins only: each pipeline has its own assets.
        check_vars(&self.vars, "vars", &[], bad);
    }
}

/// What a pipeline must hold by itself (its `output` and `assets` are typed: serde has
/// checked that they are `s3://` URLs; here, that `output` is a template we can expand).
fn check_pipeline(
    p: &Pipeline,
    shared: &BTreeMap<String, Var>,
    prefix: &str,
    bad: &mut impl FnMut(String, &str),
) {
    let key = |k: &str| format!("{prefix}.{k}");
    if let Err(e) = outkey::check(&p.output) {
        bad(key("output"), &e);
    }
    if p.cost_factor.is_nan() || p.cost_factor <= 0.0 {
        bad(key("cost_factor"), "must be above 0");
    }
    match &p.chunked {
        Some(c) => {
            if let Err(e) = c.validate() {
                bad(key("chunked"), &e);
            }
            if !p.steps.is_empty() || !p.outputs.is_empty() {
                bad(
                    key("chunked"),
                    "a chunked pipeline has no steps or outputs: it makes `chunked.output`",
                );
            }
            for arg in c.video.iter().chain(&c.audio).chain(&c.filter) {
                if let Err(e) = template::check(arg, &[]) {
                    bad(key("chunked"), &e);
                }
            }
            return;
        }
        None if p.steps.is_empty() => bad(key("steps"), "at least one step is needed"),
        None => {}
    }
    let assets: Vec<&str> = p.assets.keys().map(String::as_str).collect();
    check_vars(&p.vars, &format!("{prefix}.vars"), &assets, bad);
    check_limits(&p.limits, &key("limits"), bad);
    let names: Vec<&str> = assets
        .iter()
        .copied()
        .chain(p.vars.keys().map(String::as_str))
        .chain(shared.keys().map(String::as_str))
        .collect();
    for (i, step) in p.steps.iter().enumerate() {
        let at = key(&format!("steps[{i}]"));
        match &step.detect {
            Some(d) => {
                // With args, the detectors run inside that FFmpeg, on the source it reads.
                let inside = !step.args.is_empty();
                if inside && d.input != "{input}" {
                    bad(
                        format!("{at}.detect.input"),
                        "a step with args runs its detectors on the source it reads: \"{input}\"",
                    );
                }
                if inside && crate::ffmpeg::input_number(&step.args, "{input}").is_none() {
                    bad(
                        format!("{at}.args"),
                        "a step with detect must read the source: -i {input}",
                    );
                }
                check_detect(d, &format!("{at}.detect"), bad);
            }
            None if step.args.is_empty() => bad(format!("{at}.args"), "empty"),
            None => {}
        }
        for arg in &step.args {
            if let Err(e) = template::check(arg, &names) {
                bad(format!("{at}.args"), &e);
            }
        }
    }
    if p.outputs.is_empty() {
        bad(key("outputs"), "at least one output is needed");
    }
    for (i, o) in p.outputs.iter().enumerate() {
        check_output(o, &key(&format!("outputs[{i}]")), bad);
    }
}

/// A detector pass reads the source or a file of the job's own outputs, with sane knobs.
fn check_detect(d: &crate::config::Detect, prefix: &str, bad: &mut impl FnMut(String, &str)) {
    let plain = |rel: &str| {
        !rel.is_empty()
            && !rel.starts_with('/')
            && !rel.contains(['{', '}', '*'])
            && rel.split('/').all(|part| !part.is_empty() && part != "..")
    };
    if d.input != "{input}" && !d.output_path().is_some_and(plain) {
        bad(
            format!("{prefix}.input"),
            "must be \"{input}\" (the source) or \"{out}/<path>\" (an output), without * or ..",
        );
    }
    if d.min_secs.is_nan() || d.min_secs <= 0.0 {
        bad(format!("{prefix}.min_secs"), "must be above 0");
    }
    let [low, high] = d.loudness_lufs;
    if low.is_nan() || high.is_nan() || low >= high {
        bad(
            format!("{prefix}.loudness_lufs"),
            "must be [low, high] with low < high",
        );
    }
    if d.max_drift_secs.is_nan() || d.max_drift_secs < 0.0 {
        bad(format!("{prefix}.max_drift_secs"), "must be 0 or more");
    }
}

/// Vars: names that shadow nothing, known facts, templates of builtins and assets only.
fn check_vars(
    vars: &BTreeMap<String, Var>,
    prefix: &str,
    assets: &[&str],
    bad: &mut impl FnMut(String, &str),
) {
    for (name, var) in vars {
        let key = format!("{prefix}.{name}");
        if template::BUILTIN.contains(&name.as_str()) || assets.contains(&name.as_str()) {
            bad(key.clone(), "shadows a builtin placeholder or an asset");
        }
        if let Var::Choice { when, .. } = var {
            let (fact, _) = Var::condition(when);
            if !probe::FACTS.contains(&fact) {
                let known = probe::FACTS.join(", ");
                bad(
                    format!("{key}.when"),
                    &format!("unknown fact {fact:?} (known: {known}, each may follow a !)"),
                );
            }
        }
        for text in var.texts() {
            if let Err(e) = template::check(text, assets) {
                bad(
                    key.clone(),
                    &format!("{e} (a var may use builtins and assets)"),
                );
            }
        }
    }
}

fn check_limits(l: &SourceLimits, key: &str, bad: &mut impl FnMut(String, &str)) {
    if l.max_duration_secs.is_some_and(|d| d.is_nan() || d <= 0.0) {
        bad(format!("{key}.max_duration_secs"), "must be above 0");
    }
    if l.max_pixels == 0 {
        bad(format!("{key}.max_pixels"), "must be above 0");
    }
    if l.max_streams == 0 || l.max_streams > crate::ffmpeg::MAX_INPUT_STREAMS {
        let most = crate::ffmpeg::MAX_INPUT_STREAMS;
        bad(
            format!("{key}.max_streams"),
            &format!("must be 1 to {most} (the demuxer's own bound)"),
        );
    }
    if l.max_source_mib == Some(0) {
        bad(format!("{key}.max_source_mib"), "must be above 0");
    }
    if l.scratch_factor.is_nan() || l.scratch_factor < 1.0 {
        bad(
            format!("{key}.scratch_factor"),
            "must be at least 1 (the source itself)",
        );
    }
}

fn check_output(o: &OutputSpec, key: &str, bad: &mut impl FnMut(String, &str)) {
    let path = std::path::Path::new(&o.path);
    let escapes = path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)));
    if o.path.is_empty() || escapes {
        bad(
            format!("{key}.path"),
            "must be a relative path inside the job's output directory",
        );
    }
    if o.path.contains('*') && o.path.rsplit('/').skip(1).any(|d| d.contains('*')) {
        bad(
            format!("{key}.path"),
            "a `*` may appear only in the file name",
        );
    }
    if let Some(ExpectedDuration::Named(n)) = &o.duration {
        if n != "source" {
            bad(format!("{key}.duration"), "must be \"source\" or seconds");
        }
    }
}

fn check_url(url: &str, schemes: &[&str], key: &str, bad: &mut impl FnMut(String, &str)) {
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !scheme.is_some_and(|s| schemes.contains(&s)) {
        bad(
            key.into(),
            &format!("must be a URL with scheme {}", schemes.join(" or ")),
        );
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'-' || b.is_ascii_digit())
}
