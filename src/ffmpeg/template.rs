//! FFmpeg argument templates: `{name}` placeholders inside list elements, never a shell
//! string. `{{` and `}}` stand for literal braces.
//!
//! Placeholders: `{input}` (the job's local copy of the source), `{out}` (the directory
//! whose files become outputs), `{work}` (scratch for intermediates), `{threads}` (FFmpeg
//! threads for this job), `{duration}` and `{video_duration}` (the probed source's
//! seconds: the file's, its video stream's), one per pipeline asset (`{intro}`,
//! `{outro}`, …) and one per pipeline var (see [`crate::config::Var`]).

use std::collections::BTreeMap;

/// Placeholders every pipeline has.
pub const BUILTIN: &[&str] = &[
    "input",
    "out",
    "work",
    "threads",
    "duration",
    "video_duration",
];

/// Checks one template argument against the builtins and `names` (the pipeline's
/// assets and vars).
pub fn check(arg: &str, names: &[&str]) -> Result<(), String> {
    for name in placeholders(arg)? {
        if !BUILTIN.contains(&name) && !names.contains(&name) {
            return Err(format!("unknown placeholder {{{name}}} in {arg:?}"));
        }
    }
    Ok(())
}

/// Substitutes `vars` into one argument. Every placeholder must have a value.
pub fn expand(arg: &str, vars: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if let Some(tail) = tail.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unclosed placeholder in {arg:?}"))?;
            let name = &tail[..end];
            let value = vars
                .get(name)
                .ok_or_else(|| format!("no value for {{{name}}} in {arg:?}"))?;
            out.push_str(value);
            rest = &tail[end + 1..];
        } else {
            return Err(format!(
                "unmatched '}}' in {arg:?} (write '}}}}' for a literal)"
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn placeholders(arg: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = arg;
    while let Some(i) = rest.find(['{', '}']) {
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            rest = &tail[2..];
        } else if let Some(tail) = tail.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unclosed placeholder in {arg:?}"))?;
            names.push(&tail[..end]);
            rest = &tail[end + 1..];
        } else {
            return Err(format!(
                "unmatched '}}' in {arg:?} (write '}}}}' for a literal)"
            ));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("input", "/s/j/source".to_string()),
            ("out", "/s/j/out".to_string()),
            ("intro", "/s/j/asset-intro".to_string()),
        ])
    }

    #[test]
    fn placeholders_expand_inside_one_argument() {
        assert_eq!(
            expand("{out}/720p.mp4", &vars()).unwrap(),
            "/s/j/out/720p.mp4"
        );
        assert_eq!(expand("-i", &vars()).unwrap(), "-i");
        assert_eq!(expand("{{x}}", &vars()).unwrap(), "{x}");
    }

    #[test]
    fn a_value_is_never_split_or_interpreted() {
        let mut v = vars();
        v.insert("input", "/s/j/a b;$(rm -rf /)".into());
        assert_eq!(expand("{input}", &v).unwrap(), "/s/j/a b;$(rm -rf /)");
    }

    #[test]
    fn unknown_and_malformed_placeholders_are_errors() {
        assert!(check("{intro}", &["intro"]).is_ok());
        assert!(check("{outro}", &["intro"])
            .unwrap_err()
            .contains("{outro}"));
        assert!(check("{input", &[]).unwrap_err().contains("unclosed"));
        assert!(check("a}b", &[]).unwrap_err().contains("unmatched"));
        assert!(expand("{outro}", &vars()).unwrap_err().contains("{outro}"));
    }
}
