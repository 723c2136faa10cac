//! Reading and checking whole configs.

use super::defaults::DEFAULT_MAX_ATTEMPTS;
use super::*;

const GOOD: &str = r#"
    [farm]
    name = "demo"
    [amqp]
    url = "amqp://guest:guest@127.0.0.1:5672/%2f"
    [postgres]
    url = "postgres://postgres@127.0.0.1/test"
    [redis]
    url = "redis://127.0.0.1:6379"
    [pools.default]
    [pipelines.thumbs]
    pool = "default"
    output = "s3://out/thumbs/"
    steps = [{ args = ["-i", "{input}", "-frames:v", "1", "{out}/poster.jpg"] }]
    outputs = [{ path = "poster.jpg", video_codec = "mjpeg" }]
"#;

#[test]
fn a_good_config_loads_with_defaults() {
    let c = Config::parse(GOOD, "good.toml").unwrap();
    assert_eq!(c.cell.max_attempts, DEFAULT_MAX_ATTEMPTS);
    assert_eq!(c.postgres.schema, "cellfarm");
    assert_eq!(c.cell.slots_for(8), 8);
    assert_eq!(c.cell.threads_for(8), 1);
}

#[test]
fn every_bad_key_is_named_at_once() {
    let text = GOOD
        .replace("[redis]", "[redis]\nurll = \"x\"")
        .replace("pool = \"default\"", "pool = \"nope\"")
        .replace(
            "[pools.default]",
            "[pools.default]\n[cell]\nmax_attempts = 0",
        )
        .replace("{out}/poster.jpg", "{outt}/poster.jpg");
    let err = Config::parse(&text, "bad.toml").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("redis.urll: unknown key"), "{msg}");
    assert!(msg.contains("pipelines.thumbs.pool"), "{msg}");
    assert!(msg.contains("cell.max_attempts"), "{msg}");
    assert!(msg.contains("pipelines.thumbs.steps[0].args"), "{msg}");
    assert_eq!(err.problems.len(), 4, "{msg}");
}

#[test]
fn only_what_a_running_cell_can_change_is_changed_live() {
    let old = Config::parse(GOOD, "old").unwrap();
    let live = GOOD.replace("\"1\", \"{out}", "\"2\", \"{out}") + "\n[cell]\nslots = 3\n";
    assert!(old
        .restart_keys(&Config::parse(&live, "new").unwrap())
        .is_empty());
    let fixed = GOOD
        .replace("redis://127.0.0.1:6379", "redis://10.0.0.1:6379")
        .replace("[pools.default]", "[pools.default]\n[pools.more]");
    let keys = old.restart_keys(&Config::parse(&fixed, "new").unwrap());
    assert_eq!(keys, ["redis.url", "pools (names, max_queue_length)"]);
}

/// Property: the sandbox is on and required unless a config says otherwise, and its
/// keys are checked and named like any other.
#[test]
fn the_sandbox_is_required_by_default_and_its_keys_are_checked() {
    let c = Config::parse(GOOD, "good.toml").unwrap();
    assert_eq!(c.cell.sandbox, SandboxMode::Require);
    assert_eq!(c.cell.sandbox_user, "nobody");
    assert_eq!(
        (c.cell.ffmpeg.as_str(), c.cell.ffprobe.as_str()),
        ("ffmpeg", "ffprobe")
    );
    assert_eq!(c.cell.ffmpeg_max_file_mib, 64 * 1024);
    let relaxed = GOOD.replace(
        "[pools.default]",
        "[cell]\nsandbox = \"best-effort\"\nffmpeg = \"/opt/ff/ffmpeg\"\n[pools.default]",
    );
    let c = Config::parse(&relaxed, "c").unwrap();
    assert_eq!(c.cell.sandbox, SandboxMode::BestEffort);
    assert_eq!(c.cell.ffmpeg, "/opt/ff/ffmpeg");
    let old = Config::parse(GOOD, "old").unwrap();
    assert_eq!(
        old.restart_keys(&c).len(),
        1,
        "the sandbox is built at start"
    );
    let bad = GOOD.replace(
        "[pools.default]",
        "[cell]\nsandbox = \"maybe\"\n[pools.default]",
    );
    let msg = Config::parse(&bad, "c").unwrap_err().to_string();
    assert!(msg.contains("cell.sandbox"), "{msg}");
    let bad = GOOD.replace(
        "[pools.default]",
        "[cell]\nsandbox_user = \"0:0\"\nffprobe = \" \"\nffmpeg_max_file_mib = 0\n[pools.default]",
    );
    let msg = Config::parse(&bad, "c").unwrap_err().to_string();
    assert!(msg.contains("cell.sandbox_user: must not be root"), "{msg}");
    assert!(msg.contains("cell.ffprobe: must name a program"), "{msg}");
    assert!(
        msg.contains("cell.ffmpeg_max_file_mib: must be above 0"),
        "{msg}"
    );
    let root = GOOD.replace(
        "[pools.default]",
        "[cell]\nsandbox_user = \"root\"\n[pools.default]",
    );
    assert!(Config::parse(&root, "c").is_err());
}

#[test]
fn s3_parts_default_to_64_mib_8_at_once_and_stay_within_s3_limits() {
    let c = Config::parse(GOOD, "good.toml").unwrap();
    assert_eq!((c.s3.part_size_mib, c.s3.concurrency), (64, 8));
    let five = GOOD.replace(
        "[pools.default]",
        "[s3]\npart_size_mib = 5\n[pools.default]",
    );
    assert_eq!(Config::parse(&five, "five").unwrap().s3.part_size_mib, 5);
    let text = GOOD.replace(
        "[pools.default]",
        "[s3]\npart_size_mib = 4\nconcurrency = 0\n[pools.default]",
    );
    let msg = Config::parse(&text, "bad.toml").unwrap_err().to_string();
    assert!(msg.contains("s3.part_size_mib: must be 5 to 5120"), "{msg}");
    assert!(msg.contains("s3.concurrency: must be above 0"), "{msg}");
}

#[test]
fn the_unacked_bound_is_the_longest_job_with_timeouts_set_by_hand() {
    let derived = Config::parse(GOOD, "c").unwrap();
    let pools = vec!["default".to_string()];
    assert_eq!(
        derived.unacked_bound_secs(&pools),
        0,
        "no bound before a probe"
    );
    let text = format!("{GOOD}\n[cell]\nstep_timeout_secs = 3600\n");
    let c = Config::parse(&text, "c").unwrap();
    // One step, the source probe, one output probe: 3 × 3600 s.
    assert_eq!(c.unacked_bound_secs(&pools), 3 * 3600);
    assert_eq!(c.unacked_bound_secs(&["other".to_string()]), 0);
}

#[test]
fn output_paths_cannot_escape_the_output_directory() {
    for path in ["../x.mp4", "/etc/passwd", "a/../../b", "*/x.ts"] {
        let text = GOOD.replace("path = \"poster.jpg\"", &format!("path = {path:?}"));
        let err = Config::parse(&text, "c").unwrap_err();
        assert!(err.to_string().contains("outputs[0].path"), "{path}: {err}");
    }
}

#[test]
fn unknown_keys_are_named_with_their_path_at_any_depth() {
    let text = GOOD
        .replace(
            "pool = \"default\"",
            "pool = \"default\"\nassets.intro = \"s3://a/i.mp4\"",
        )
        .replace("[pools.default]", "[pools.default]\nfloors = 1")
        .replace("outputs = [{ path", "outputs = [{ codec = \"x\", path")
        .replace("{ args = [", "{ argz = 1, args = [")
        + "\n[[routes]]\npipelines = [\"thumbs\"]\nglobe = \"*\"\n";
    let err = Config::parse(&text, "bad.toml").unwrap_err();
    let msg = err.to_string();
    for key in [
        "pools.default.floors: unknown key (allowed: max_queue_length, jobs_per_cell,",
        "pipelines.thumbs.outputs[0].codec: unknown key",
        "pipelines.thumbs.steps[0].argz: unknown key (allowed: args, detect)",
        "routes[0].globe: unknown key",
    ] {
        assert!(msg.contains(key), "{key} in {msg}");
    }
    assert_eq!(err.problems.len(), 4, "{msg}");
}

#[test]
fn a_bad_url_is_named_with_every_other_problem() {
    let text = GOOD
        .replace("s3://out/thumbs/", "https://out/thumbs/")
        .replace("[redis]", "[redis]\nurll = \"x\"")
        .replace(
            "[pools.default]",
            "[pools.default]\n[cell]\nmax_attempts = 0",
        )
        + "\n[update]\nbinary_url = \"/usr/bin/cellfarm\"\nsha256 = \"x\"\n";
    let err = Config::parse(&text, "bad.toml").unwrap_err();
    let msg = err.to_string();
    for key in [
        "pipelines.thumbs.output: must be s3://bucket/key (\"https://out/thumbs/\" is not",
        "update.binary_url: must be s3://bucket/key",
        "redis.urll: unknown key (allowed: url)",
        "cell.max_attempts: must be above 0",
        "update.sha256: must be 64 hex digits",
    ] {
        assert!(msg.contains(key), "{key} in {msg}");
    }
    assert_eq!(err.problems.len(), 5, "{msg}");
}

#[test]
fn every_value_of_the_wrong_type_is_named() {
    let text = GOOD
        .replace(
            "[pools.default]",
            "[pools.default]\nceiling = \"four\"\n[cloud]\nkind = \"gcp\"",
        )
        .replace("[redis]", "[redis]\nurll = \"x\"")
        .replace("steps = [{", "steps = \"x\"\nstepz = [{");
    let err = Config::parse(&text, "bad.toml").unwrap_err();
    let msg = err.to_string();
    for problem in [
        "pools.default.ceiling: invalid type: string \"four\", expected u32",
        "cloud.kind: unknown variant `gcp`, expected one of `none`, `local`, `ec2`",
        "pipelines.thumbs.steps: invalid type: string \"x\", expected a sequence",
        "pipelines.thumbs.stepz: unknown key",
        "redis.urll: unknown key",
    ] {
        assert!(msg.contains(problem), "{problem} in {msg}");
    }
    // Not "missing field `steps`": that follows from the bad value, already named.
    assert_eq!(err.problems.len(), 5, "{msg}");
}

#[test]
fn a_config_that_lost_a_bad_value_is_not_validated() {
    // With lease_secs removed, its default (30) is below twice the heartbeat: a false
    // alarm that validating would raise.
    let text = GOOD.replace(
        "[pools.default]",
        "[pools.default]\n[cell]\nlease_secs = \"x\"\nheartbeat_secs = 20",
    );
    let err = Config::parse(&text, "bad.toml").unwrap_err();
    assert_eq!(
        err.problems,
        ["cell.lease_secs: invalid type: string \"x\", expected u64"]
    );
    let err = Config::parse("[farm]\nname = \"x\"", "short.toml").unwrap_err();
    assert_eq!(err.problems, ["missing field `amqp`"]);
}

#[test]
fn url_fields_are_parsed_once() {
    let text = GOOD.replace(
        "pool = \"default\"",
        "pool = \"default\"\nassets.intro = \"s3://a/i.mp4\"",
    );
    let c = Config::parse(&text, "c").unwrap();
    let p = c.pipeline("thumbs").unwrap();
    assert_eq!(
        (p.output.bucket.as_str(), p.output.key.as_str()),
        ("out", "thumbs/")
    );
    assert_eq!(p.assets["intro"].to_string(), "s3://a/i.mp4");
}

#[test]
fn vars_choose_on_the_probe_and_bad_ones_are_named() {
    let text = format!(
        "{GOOD}\n[vars]\nsdr = {{ when = \"hdr\", then = \"tonemap,\", else = \"\" }}\n\
         [pipelines.thumbs.vars]\nsound = {{ when = \"!audio\", then = \"anullsrc,atrim=end={{video_duration}}\" }}\n"
    )
    .replace("\"1\", \"{out}", "\"1\", \"-vf\", \"{sdr}scale\", \"-af\", \"{sound}\", \"{out}");
    let c = Config::parse(&text, "vars.toml").unwrap();
    let p = &c.pipelines["thumbs"];
    let silent = probe::Probe {
        format: "mov".into(),
        duration: Some(2.5),
        streams: vec![probe::Stream {
            kind: "video".into(),
            duration: Some(2.0),
            ..probe::Stream::default()
        }],
    };
    let vars = p.step_vars(&c.vars, &silent, BTreeMap::new()).unwrap();
    assert_eq!(vars["sdr"], "");
    assert_eq!(vars["sound"], "anullsrc,atrim=end=2.000");
    assert_eq!(vars["duration"], "2.500");

    let bad = text.replace("when = \"hdr\"", "when = \"loud\"").replace(
        "[pipelines.thumbs.vars]",
        "[pipelines.thumbs.vars]\ninput = \"x\"",
    );
    let msg = Config::parse(&bad, "bad.toml").unwrap_err().to_string();
    assert!(
        msg.contains("vars.sdr.when: unknown fact \"loud\""),
        "{msg}"
    );
    assert!(
        msg.contains("pipelines.thumbs.vars.input: shadows"),
        "{msg}"
    );
}

#[test]
fn limits_and_timeouts_are_checked_and_derived() {
    let text = GOOD.replace(
        "pool = \"default\"",
        "pool = \"default\"\ncost_factor = 0.5\nlimits = { max_pixels = 0, scratch_factor = 0.5 }",
    );
    let msg = Config::parse(&text, "bad.toml").unwrap_err().to_string();
    assert!(msg.contains("pipelines.thumbs.limits.max_pixels"), "{msg}");
    assert!(
        msg.contains("pipelines.thumbs.limits.scratch_factor"),
        "{msg}"
    );
    let c = Config::parse(GOOD, "good.toml").unwrap();
    let p = &c.pipelines["thumbs"];
    assert_eq!(p.derived_timeout_secs(10.0, 120), 120, "the floor");
    assert_eq!(
        p.derived_timeout_secs(3600.0, 120),
        14_400,
        "4× the estimate"
    );
    assert_eq!(c.cell.step_timeout_secs, None, "derived unless set");
}

#[test]
fn an_unknown_output_placeholder_names_the_pipeline_output() {
    let good = GOOD.replace("s3://out/thumbs/", "s3://out/{pipeline}/{source_stem}/");
    assert!(Config::parse(&good, "c").is_ok());
    let text = GOOD.replace("s3://out/thumbs/", "s3://out/{source_name}/");
    let err = Config::parse(&text, "bad.toml").unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert!(
        err.problems[0].starts_with("pipelines.thumbs.output: unknown placeholder {source_name}"),
        "{err}"
    );
}

#[test]
fn the_on_demand_fallback_needs_its_own_ceiling() {
    let ec2 = |extra: &str| {
        format!("{GOOD}\n[cloud]\nkind = \"ec2\"\n[cloud.ec2]\nimage_id = \"ami-1\"\ninstance_types = [\"c6i.xlarge\"]\n{extra}")
    };
    let c = Config::parse(&ec2(""), "good.toml").unwrap();
    let e = c.cloud.ec2.unwrap();
    assert!(!e.on_demand_fallback);
    assert_eq!(
        e.on_demand_ceiling, 0,
        "no on-demand unless a ceiling is written"
    );
    let err = Config::parse(&ec2("on_demand_fallback = true"), "bad.toml").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cloud.ec2.on_demand_ceiling"), "{msg}");
    let text = ec2("on_demand_fallback = true\non_demand_ceiling = 3");
    let c = Config::parse(&text, "good.toml").unwrap();
    assert_eq!(c.cloud.ec2.unwrap().on_demand_ceiling, 3);
}

#[test]
fn detector_steps_load_with_defaults_and_bad_ones_are_named() {
    let good = GOOD.replace(
        "steps = [{",
        "steps = [{ detect = { black = \"reject\" } }, { detect = { input = \"{out}/poster.jpg\" } }, {",
    );
    let c = Config::parse(&good, "good.toml").unwrap();
    let p = &c.pipelines["thumbs"];
    let d = p.steps[0].detect.as_ref().unwrap();
    assert_eq!(
        (d.input.as_str(), d.black, d.freeze),
        ("{input}", Policy::Reject, Policy::Flag)
    );
    assert_eq!(
        (d.decode_errors, d.loudness),
        (Policy::Reject, Policy::Ignore)
    );
    assert_eq!(
        p.steps[1].detect.as_ref().unwrap().output_path(),
        Some("poster.jpg")
    );
    assert_eq!(
        p.step_args().count(),
        1,
        "detector passes are not FFmpeg steps"
    );
    let bad = GOOD.replace(
        "steps = [{",
        "steps = [{ detect = { input = \"{out}/../x\", min_secs = 0, blak = \"flag\" } }, \
         { detect = { loudness_lufs = [-5, -40], black = \"reject\" }, args = [\"-i\"] }, \
         { detect = { black = \"maybe\" } }, {",
    );
    let msg = Config::parse(&bad, "bad.toml").unwrap_err().to_string();
    for key in [
        "pipelines.thumbs.steps[0].detect.blak: unknown key",
        "pipelines.thumbs.steps[2].detect.black",
    ] {
        assert!(msg.contains(key), "{key} in {msg}");
    }
    let bad = GOOD.replace(
        "steps = [{",
        "steps = [{ detect = { input = \"{out}/../x\", min_secs = 0 } }, \
         { detect = { loudness_lufs = [-5, -40] }, args = [\"-i\"] }, \
         { detect = { input = \"{out}/poster.jpg\" }, args = [\"-i\", \"{input}\", \"{out}/a.mp4\"] }, {",
    );
    let msg = Config::parse(&bad, "bad.toml").unwrap_err().to_string();
    for key in [
        "pipelines.thumbs.steps[0].detect.input",
        "pipelines.thumbs.steps[0].detect.min_secs",
        "pipelines.thumbs.steps[1].args: a step with detect must read the source",
        "pipelines.thumbs.steps[1].detect.loudness_lufs",
        "pipelines.thumbs.steps[2].detect.input: a step with args runs its detectors on the source",
    ] {
        assert!(msg.contains(key), "{key} in {msg}");
    }
}
