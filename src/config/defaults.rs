//! Defaults of the config's fields, each with why it has that value.
//!
//! serde's `default = "…"` takes a function, hence one small function per default.

/// Seconds a job lease lasts without renewal. Cells renew every heartbeat, so a lease only
/// runs out when its cell is dead or cut off; short enough that a killed cell's job is
/// picked up within half a minute.
pub(super) const DEFAULT_LEASE_SECS: u64 = 30;
/// Heartbeat and tick period. A few seconds keeps leases fresh at negligible cost.
pub(super) const DEFAULT_HEARTBEAT_SECS: u64 = 5;
/// Attempts before a job is dead-lettered. Three covers a crash plus a spot reclaim.
pub(super) const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// How long SIGTERM waits for running jobs before handing them back. Below systemd's
/// default stop timeout and the two-minute spot notice.
pub(super) const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 90;
/// Address-space cap per FFmpeg process: generous for 1080p x264, fatal for a decoder
/// bomb.
pub(super) const DEFAULT_FFMPEG_MEMORY_MIB: u64 = 4096;

/// The demuxers a source may be opened with. Playlists (`hls`), lists (`concat`) and
/// image sequences (`image2`) are left out on purpose: they make FFmpeg open other files.
pub const DEFAULT_DEMUXERS: &[&str] = &[
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "avi",
    "mpegts",
    "flv",
    "mpeg",
    "mxf",
    "wav",
    "mp3",
    "aac",
    "ogg",
    "flac",
    "png_pipe",
    "jpeg_pipe",
];

/// 64 MiB parts: few requests per file (a 4 GB output is 64 parts), 640 GB within S3's
/// 10,000 parts, and parts small enough that a retried one costs little.
pub(super) fn default_part_size() -> u64 {
    64
}
/// Eight transfers at once fill a cell's network link to S3 without crowding the other
/// jobs' transfers.
pub(super) fn default_s3_concurrency() -> usize {
    8
}
/// RabbitMQ's default `consumer_timeout`: 30 minutes.
pub(super) fn default_consumer_timeout() -> u64 {
    1800
}
/// A HEAD of the config object every half minute per cell costs nothing worth counting.
pub(super) fn default_config_check() -> u64 {
    30
}
pub(super) fn default_metadata_poll() -> u64 {
    2
}
/// A spot notice comes two minutes ahead; twenty seconds leaves time to kill FFmpeg,
/// record the hand-back and re-publish.
pub(super) fn default_interruption_margin() -> u64 {
    20
}
pub(super) fn default_template_version() -> String {
    "$Latest".into()
}
pub(super) fn default_allocation() -> String {
    "capacity-optimized".into()
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_schema() -> String {
    "cellfarm".into()
}
pub(super) fn default_scratch() -> String {
    "/var/tmp/cellfarm".into()
}
pub(super) fn default_lease() -> u64 {
    DEFAULT_LEASE_SECS
}
pub(super) fn default_heartbeat() -> u64 {
    DEFAULT_HEARTBEAT_SECS
}
/// Six hours: an S3 or database outage of a working day's morning, not a week's.
pub(super) fn default_fault_budget() -> u64 {
    6 * 3600
}
/// Five: one S3 hiccup spans a job or two; five in a row is this machine.
pub(super) fn default_max_faults_in_a_row() -> u32 {
    5
}
pub(super) fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
pub(super) fn default_grace() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_SECS
}
/// Two minutes: a process start and a short source's encode on a busy cell.
pub(super) fn default_min_step_timeout() -> u64 {
    120
}
/// 8K UHD: larger frames are bombs, or not video this farm is for.
pub(super) fn default_max_pixels() -> u64 {
    7680 * 4320
}
pub(super) fn default_max_streams() -> u32 {
    crate::ffmpeg::MAX_INPUT_STREAMS
}
/// The source, an output ladder about its size, and intermediates.
pub(super) fn default_scratch_factor() -> f64 {
    3.0
}
/// `nobody` exists on every system; an AMI may name a user of its own.
pub(super) fn default_sandbox_user() -> String {
    "nobody".into()
}
pub(super) fn default_ffmpeg() -> String {
    "ffmpeg".into()
}
pub(super) fn default_ffprobe() -> String {
    "ffprobe".into()
}
/// 64 GiB: hours of 4K at a high bitrate, and still short of filling a cell's disk.
pub(super) fn default_ffmpeg_max_file() -> u64 {
    64 * 1024
}
pub(super) fn default_memory() -> u64 {
    DEFAULT_FFMPEG_MEMORY_MIB
}
pub(super) fn default_demuxers() -> Vec<String> {
    DEFAULT_DEMUXERS.iter().map(|d| d.to_string()).collect()
}
pub(super) fn default_cost() -> f64 {
    1.0
}
/// Ten jobs a cell: FERMI's first mitosis factor was of this order.
pub(super) fn default_jobs_per_cell() -> u32 {
    10
}
/// A small ceiling by default: a typo must not launch a fleet.
pub(super) fn default_ceiling() -> u32 {
    4
}
pub(super) fn default_step() -> u32 {
    2
}
/// Long enough for launched cells to start beating.
pub(super) fn default_cooldown() -> u64 {
    30
}
/// A minute of idling before a cell gives its machine back.
pub(super) fn default_idle_grace() -> u64 {
    60
}
/// EC2 spot instances usually boot in one to three minutes.
pub(super) fn default_launch_timeout() -> u64 {
    300
}
/// A detector pass reads the source unless told otherwise.
pub(super) fn default_detect_input() -> String {
    "{input}".into()
}
pub(super) fn reject() -> super::Policy {
    super::Policy::Reject
}
pub(super) fn flag() -> super::Policy {
    super::Policy::Flag
}
pub(super) fn ignore() -> super::Policy {
    super::Policy::Ignore
}
/// A second of black, frozen picture or silence is a defect; a fade is not.
pub(super) fn default_min_defect_secs() -> f64 {
    1.0
}
/// From near-silence to louder than any mastered programme: only the absurd.
pub(super) fn default_loudness_lufs() -> [f64; 2] {
    [-40.0, -5.0]
}
/// About three video frames: more is audible lip-sync drift at the end.
pub(super) fn default_max_drift_secs() -> f64 {
    0.1
}
