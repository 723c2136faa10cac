//! Logs fit where they go: a file or a pipe, or a collector that reads JSON.

mod common;

use common::Farm;

/// Property: a cell whose stderr is a file (not a terminal) writes no colour codes; with
/// `--log-format json` every line it writes is one JSON object with a level and fields.
#[tokio::test(flavor = "multi_thread")]
async fn logs_carry_no_colour_codes_and_parse_as_json() {
    let mut farm = Farm::new("logs", "").await;
    assert!(farm.run_cell_until_idle().success(), "{}", farm.logs());
    let text = farm.logs();
    assert!(text.contains("cell starting"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in a log file:\n{text}"
    );

    let mut cmd = farm.cellfarm();
    cmd.args(["--log-format", "json", "cell", "--until-idle", "2"]);
    let index = farm.start(cmd);
    let timeout = std::time::Duration::from_secs(120);
    let exit = farm
        .wait_exit(index, timeout, "the json cell to finish")
        .await;
    assert!(exit.success(), "{}", farm.logs());
    let log = std::fs::read_to_string(farm.dir.path().join(format!("cell{index}.log")))
        .expect("the second cell's log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty());
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["fields"].is_object()));
    assert!(lines
        .iter()
        .any(|l| l["fields"]["message"] == "cell starting"));
}

/// Property: an S3 failure is one line that names the operation, the object, the HTTP
/// status and S3's error code, not the SDK's debug structure.
#[tokio::test(flavor = "multi_thread")]
async fn an_s3_error_is_one_line_naming_the_call_and_the_status() {
    let farm = Farm::new("s3error", "").await;
    let url = format!("s3://{}/inbox/clip.mp4", farm.bucket);
    let out = farm
        .cellfarm()
        .args(["submit", &url, "--pipeline", "thumbnails"])
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .output()
        .expect("run cellfarm");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().expect("an error line");
    assert!(
        line.contains(&format!("S3 HEAD {url} failed: HTTP 403")),
        "{stderr}"
    );
    assert!(!stderr.contains("ServiceError"), "{stderr}");
}
