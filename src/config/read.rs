//! TOML text to a [`Config`], reporting every problem at once.
//!
//! serde stops at the first problem it meets. [`read`] reads again after each one it can
//! step over, so a config with three typos yields three lines, not three restarts:
//!
//! * an unknown key (every struct has `deny_unknown_fields`) is reported with the keys
//!   its table allows, both taken from serde's own error, and removed;
//! * a string serde refused (a URL that is not `s3://…`) is reported and replaced by a
//!   valid placeholder URL, so that its siblings are read too;
//! * any other bad value (a string where a number belongs, a missing key) is reported
//!   and removed with its key (a missing key: with its table), so that the rest is read.
//!
//! A config read without removing a bad value is then checked by `validate`; one that
//! lost a value is not, as its defaults would raise false alarms. The placeholders
//! never leave this module: a config with problems is an error.

use std::fmt;

use serde_path_to_error::{Path, Segment};

use super::Config;

/// Stands in for a refused string while the rest of the config is read.
const PLACEHOLDER: &str = "s3://placeholder/";

/// Every problem found in one config, each naming its key.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid config {}: {} problem(s): {}",
            self.source_name,
            self.problems.len(),
            self.problems.join("; ")
        )
    }
}

impl Config {
    /// Parses and validates a config; `source_name` (a path or URL) goes into errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_string(),
            problems,
        };
        let value: toml::Value = toml::from_str(text).map_err(|e| fail(vec![e.to_string()]))?;
        let mut problems = Vec::new();
        let mut config = read(value, &mut problems);
        if let Some(config) = &mut config {
            config.validate(&mut problems);
            config.resolve_guardrails(&mut problems);
        }
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(fail(problems)),
        }
    }
}

/// The typed config, or `None` when it had a bad value other than a URL; every problem
/// met goes into `problems`.
fn read(mut value: toml::Value, problems: &mut Vec<String>) -> Option<Config> {
    // Keys removed for a bad value: the config read without them is not the one written,
    // so it is not validated (its defaults would raise false alarms).
    let mut removed: Vec<String> = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let err = match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
            Ok(config) => return removed.is_empty().then_some(config),
            Err(err) => err,
        };
        let (path, message) = (err.path(), err.inner().message());
        let key = path.to_string();
        let unknown = unknown_field(message);
        if let Some(allowed) = &unknown {
            problems.push(format!("{key}: unknown key (allowed: {allowed})"));
        } else if last.as_ref() != Some(&key) && !follows_removal(message, &key, &removed) {
            problems.push(match path.iter().next() {
                None => message.to_string(),
                Some(_) => format!("{key}: {message}"),
            });
            if replace_string(&mut value, path) {
                last = Some(key);
                continue;
            }
        }
        if !remove(&mut value, path) {
            return None;
        }
        if unknown.is_none() {
            removed.push(key.clone());
        }
        last = Some(key);
    }
}

/// True for serde's "missing field `k`" at `key` when `key.k` was removed by [`read`]:
/// its problem is already reported.
fn follows_removal(message: &str, key: &str, removed: &[String]) -> bool {
    let field = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'));
    field.is_some_and(|f| removed.contains(&format!("{key}.{f}")))
}

/// The allowed keys from serde's `deny_unknown_fields` error ("unknown field `x`,
/// expected one of `a`, `b`"), as "a, b"; `None` for any other error.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (_, expected) = rest.split_once("`, ")?;
    let Some(list) = expected.strip_prefix("expected ") else {
        return Some("none".into());
    };
    let list = list.strip_prefix("one of ").unwrap_or(list);
    Some(list.replace("` or `", "`, `").replace('`', ""))
}

/// The value the path's parent table holds, and the path's last key.
fn parent<'v>(value: &'v mut toml::Value, path: &Path) -> Option<(&'v mut toml::Value, String)> {
    let segments: Vec<&Segment> = path.iter().collect();
    let (last, init) = segments.split_last()?;
    let Segment::Map { key } = last else {
        return None;
    };
    let mut at = value;
    for segment in init {
        at = match segment {
            Segment::Map { key } => at.get_mut(key.as_str())?,
            Segment::Seq { index } => at.get_mut(*index)?,
            _ => return None,
        };
    }
    Some((at, key.clone()))
}

/// Removes the key at `path`; false when there is none.
fn remove(value: &mut toml::Value, path: &Path) -> bool {
    parent(value, path)
        .and_then(|(table, key)| table.as_table_mut()?.remove(&key))
        .is_some()
}

/// Replaces the string at `path` by [`PLACEHOLDER`]; false when there is none.
fn replace_string(value: &mut toml::Value, path: &Path) -> bool {
    let Some((table, key)) = parent(value, path) else {
        return false;
    };
    match table.get_mut(key.as_str()) {
        // Never the placeholder itself: each pass changes something, so reading ends.
        Some(v @ toml::Value::String(_)) if v.as_str() != Some(PLACEHOLDER) => {
            *v = toml::Value::String(PLACEHOLDER.into());
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_s_unknown_field_errors_give_the_allowed_keys() {
        let one = "unknown field `urll`, expected `url`";
        assert_eq!(unknown_field(one).as_deref(), Some("url"));
        let two = "unknown field `x`, expected `url` or `schema`";
        assert_eq!(unknown_field(two).as_deref(), Some("url, schema"));
        let many = "unknown field `x`, expected one of `a`, `b`, `c`";
        assert_eq!(unknown_field(many).as_deref(), Some("a, b, c"));
        let none = "unknown field `x`, there are no fields";
        assert_eq!(unknown_field(none).as_deref(), Some("none"));
        assert_eq!(unknown_field("missing field `url`"), None);
    }
}
