//! Reading the Prometheus text format (0.0.4) back, strictly enough to catch a
//! malformed line: what a scraper would reject.

/// Checks every line: `# HELP` / `# TYPE` comments, else `name{labels} value` with a
/// well-formed name, braces that close, and a number; returns each sample as (series as
/// written, value), or the first bad line.
pub fn parse(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("no value: {line}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("bad value: {line}"))?,
        };
        let name = series.split('{').next().unwrap_or_default();
        let good_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !good_name {
            return Err(format!("bad metric name: {line}"));
        }
        let labels = &series[name.len()..];
        let closed = labels.starts_with('{') && labels.ends_with('}');
        if !(labels.is_empty() || closed) {
            return Err(format!("bad labels: {line}"));
        }
        samples.push((series.to_string(), value));
    }
    Ok(samples)
}

/// The value of `series` (a name with its labels, as written) in `samples`.
pub fn sample(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}
