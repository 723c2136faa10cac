//! Where a job's outputs go: a pipeline's `output` template, expanded once, at
//! submission, into the job message's `output` prefix.
//!
//! A template is an `s3://bucket/key` URL whose key may hold placeholders:
//! `{source_key}`, `{source_stem}` (the file name without its extension),
//! `{source_dir}` (the key's directory part, empty at the root), `{pipeline}` and
//! `{job_id}`; `{{` and `}}` are literal braces. A template without placeholders is a
//! plain prefix and gets [`DEFAULT_SUFFIX`] appended: outputs of `inbox/clip1.mp4` go
//! under `<prefix>/inbox/clip1.mp4/<job id>/`.
//!
//! Keys are data. A source's key is inserted one `/`-segment at a time: empty segments
//! are dropped, a `.` or `..` segment is escaped (`%2E`, `%2E%2E`) so that nothing climbs
//! out of the prefix (S3 servers on a file system, and tools that copy a bucket to disk,
//! read keys as paths), and a segment's leading `-` becomes `%2D` so that no tool reads a
//! segment as an option. Everything else stays as it is, UTF-8: spaces, unicode, `;`,
//! `$()`, `+`, and `%2B` (so `%2E` in a key and an escaped `.` look the same; the job id
//! in the default layout keeps them apart).
//!
//! The expanded prefix always starts with the template's fixed part (the text before
//! its first placeholder), ends in `/`, and is at most [`MAX_PREFIX_BYTES`] long, leaving
//! the rest of S3's 1024 bytes for the outputs' relative paths: a source part that does
//! not fit is cut at a character boundary and marked `~` + 8 hex digits of the SHA-256
//! of the whole source key, so that two long keys still differ.

use sha2::{Digest, Sha256};

use crate::job::JobMessage;
use crate::s3url::S3Url;

/// Appended to a template without placeholders.
pub const DEFAULT_SUFFIX: &str = "{source_key}/{job_id}/";
/// The placeholders a template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "source_key",
    "source_stem",
    "source_dir",
    "pipeline",
    "job_id",
];
/// S3's limit on a key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Bytes of a key kept for an output's path relative to the prefix (and the manifest's
/// name).
pub const OUTPUT_ROOM_BYTES: usize = 256;
/// The longest expanded prefix, in bytes.
pub const MAX_PREFIX_BYTES: usize = MAX_KEY_BYTES - OUTPUT_ROOM_BYTES;
/// The manifest's name under a job's prefix, written last (see [`manifest_key`]).
pub const MANIFEST_NAME: &str = "_manifest.json";

/// The most bytes a `{pipeline}` can take (config names are 1-40 bytes).
const PIPELINE_BYTES: usize = 40;
/// A job id: 16 bytes as hex.
const JOB_ID_BYTES: usize = 32;
/// The least room a template must leave each source placeholder: the cut mark
/// (`~` + 8 hex) and some of the name.
const MIN_SOURCE_BYTES: usize = 64;
/// Hex digits of the SHA-256 that mark a cut source part.
const CUT_HASH_HEX: usize = 8;

/// Why a job's output location cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutKeyError {
    #[error("output template {template}: {reason}")]
    Template { template: String, reason: String },
    #[error("output template {template} expands to {key:?} for source key {source_key:?}, which {reason}")]
    Expansion {
        template: String,
        source_key: String,
        key: String,
        reason: &'static str,
    },
}

/// What a template is expanded with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vars<'a> {
    pub source_key: &'a str,
    pub pipeline: &'a str,
    pub job_id: &'a str,
}

impl<'a> Vars<'a> {
    /// The job's source key, pipeline and id.
    pub fn of(job: &'a JobMessage) -> Vars<'a> {
        Vars {
            source_key: &job.source.key,
            pipeline: &job.pipeline,
            job_id: &job.job_id,
        }
    }
}

/// A template, parsed.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Lit(String),
    Var(Placeholder),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Placeholder {
    SourceKey,
    SourceStem,
    SourceDir,
    Pipeline,
    JobId,
}

impl Placeholder {
    fn parse(name: &str) -> Option<Placeholder> {
        Some(match name {
            "source_key" => Placeholder::SourceKey,
            "source_stem" => Placeholder::SourceStem,
            "source_dir" => Placeholder::SourceDir,
            "pipeline" => Placeholder::Pipeline,
            "job_id" => Placeholder::JobId,
            _ => return None,
        })
    }
}

/// Checks a pipeline's `output` template: known placeholders, in the key only, no `.`
/// or `..` segment, and room left for the source's name. The message follows the
/// config key (`pipelines.hls.output: …`).
pub fn check(template: &S3Url) -> Result<(), String> {
    if template.bucket.contains(['{', '}']) {
        return Err("placeholders go in the key, not the bucket".into());
    }
    let tokens = effective(&template.key)?;
    if template
        .key
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err("a `.` or `..` segment is not allowed".into());
    }
    let mut worst = 1;
    for token in &tokens {
        worst += match token {
            Token::Lit(text) => text.len(),
            Token::Var(Placeholder::Pipeline) => PIPELINE_BYTES,
            Token::Var(Placeholder::JobId) => JOB_ID_BYTES,
            Token::Var(_) => MIN_SOURCE_BYTES,
        };
    }
    if worst > MAX_PREFIX_BYTES {
        return Err(format!(
            "too long: with its placeholders it can reach {worst} bytes, and an output \
             prefix may have {MAX_PREFIX_BYTES} (S3 keys have {MAX_KEY_BYTES})"
        ));
    }
    Ok(())
}

/// The job's output prefix (`s3://bucket/prefix/`) from its pipeline's template.
pub fn for_job(template: &S3Url, job: &JobMessage) -> Result<String, OutKeyError> {
    Ok(expand(template, &Vars::of(job))?.to_string())
}

/// Expands `template` for one job; the key of the result ends in `/`.
pub fn expand(template: &S3Url, vars: &Vars<'_>) -> Result<S3Url, OutKeyError> {
    let failed = |reason: String| OutKeyError::Template {
        template: template.to_string(),
        reason,
    };
    check(template).map_err(failed)?;
    let tokens = effective(&template.key).map_err(failed)?;
    let fixed = match tokens.first() {
        Some(Token::Lit(text)) => text.as_str(),
        _ => "",
    };
    let source = Source::of(vars.source_key);
    let mut key = normalize(fixed, &render(&tokens, vars, &source, None));
    if key.len() > MAX_PREFIX_BYTES {
        let cap = source_cap(&tokens, vars);
        key = normalize(fixed, &render(&tokens, vars, &source, Some(cap)));
    }
    let bad = |reason: &'static str| OutKeyError::Expansion {
        template: template.to_string(),
        source_key: vars.source_key.into(),
        key: key.clone(),
        reason,
    };
    if !key.starts_with(fixed) {
        return Err(bad("does not start with the template's fixed part"));
    }
    if key.is_empty() {
        return Err(bad("is empty: outputs would land at the bucket's root"));
    }
    if key.len() > MAX_PREFIX_BYTES {
        return Err(bad("is too long for an output prefix"));
    }
    Ok(S3Url {
        bucket: template.bucket.clone(),
        key,
    })
}

/// The key of the manifest of the job whose outputs are under `prefix` (the key of its
/// `output`, which ends in `/`): written last, so a reader that sees it sees every
/// output.
pub fn manifest_key(prefix: &str) -> String {
    format!("{prefix}{MANIFEST_NAME}")
}

/// A source key in the parts a template can take, each already escaped.
struct Source {
    key: String,
    stem: String,
    dir: String,
    /// `~` and the first hex digits of the SHA-256 of the raw key.
    mark: String,
}

impl Source {
    fn of(raw: &str) -> Source {
        let segments: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
        let (name, dirs) = segments
            .split_last()
            .map_or(("", &[][..]), |(n, d)| (*n, d));
        // `.mp4` is a name, not an extension.
        let stem = match name.rfind('.') {
            Some(i) if i > 0 => &name[..i],
            _ => name,
        };
        let join = |parts: &[&str]| {
            parts
                .iter()
                .map(|s| escape(s))
                .collect::<Vec<_>>()
                .join("/")
        };
        let hash = hex::encode(Sha256::digest(raw.as_bytes()));
        Source {
            key: join(&segments),
            stem: escape(stem),
            dir: join(dirs),
            mark: format!("~{}", &hash[..CUT_HASH_HEX]),
        }
    }

    fn part(&self, p: Placeholder) -> &str {
        match p {
            Placeholder::SourceKey => &self.key,
            Placeholder::SourceStem => &self.stem,
            _ => &self.dir,
        }
    }
}

/// One segment of a source key as it may appear in an output key.
fn escape(segment: &str) -> String {
    match segment {
        "." => "%2E".into(),
        ".." => "%2E%2E".into(),
        s => match s.strip_prefix('-') {
            Some(rest) => format!("%2D{rest}"),
            None => s.into(),
        },
    }
}

/// The template with its values in; a source part longer than `cap` bytes is cut to fit
/// `cap` with its mark.
fn render(tokens: &[Token], vars: &Vars<'_>, source: &Source, cap: Option<usize>) -> String {
    let mut out = String::new();
    for token in tokens {
        match token {
            Token::Lit(text) => out.push_str(text),
            Token::Var(Placeholder::Pipeline) => out.push_str(vars.pipeline),
            Token::Var(Placeholder::JobId) => out.push_str(vars.job_id),
            Token::Var(p) => {
                let part = source.part(*p);
                match cap {
                    Some(cap) if part.len() > cap => {
                        let keep = cap.saturating_sub(source.mark.len());
                        let end = (0..=keep)
                            .rev()
                            .find(|i| part.is_char_boundary(*i))
                            .unwrap_or(0);
                        out.push_str(&part[..end]);
                        out.push_str(&source.mark);
                    }
                    _ => out.push_str(part),
                }
            }
        }
    }
    out
}

/// The bytes each source placeholder may take so that the prefix fits.
fn source_cap(tokens: &[Token], vars: &Vars<'_>) -> usize {
    let mut others = 1; // the closing `/`
    let mut sources = 0;
    for token in tokens {
        match token {
            Token::Lit(text) => others += text.len(),
            Token::Var(Placeholder::Pipeline) => others += vars.pipeline.len(),
            Token::Var(Placeholder::JobId) => others += vars.job_id.len(),
            Token::Var(_) => sources += 1,
        }
    }
    MAX_PREFIX_BYTES.saturating_sub(others) / sources.max(1)
}

/// `key` with every segment after the fixed part's last `/` cleaned: empty ones dropped,
/// `.` and `..` escaped; and a closing `/`.
fn normalize(fixed: &str, key: &str) -> String {
    let kept = fixed.rfind('/').map_or(0, |i| i + 1);
    let (head, tail) = key.split_at(kept);
    let segments: Vec<String> = tail
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "." | ".." => escape(s),
            s => s.into(),
        })
        .collect();
    let mut out = head.to_string();
    if !segments.is_empty() {
        out.push_str(&segments.join("/"));
        out.push('/');
    }
    out
}

/// The template as expanded: parsed, with [`DEFAULT_SUFFIX`] after a plain prefix (one
/// `/` between them).
fn effective(key: &str) -> Result<Vec<Token>, String> {
    let tokens = parse(key)?;
    if tokens.iter().any(|t| matches!(t, Token::Var(_))) {
        return Ok(tokens);
    }
    let plain = key.trim_end_matches('/');
    let joined = if plain.is_empty() {
        DEFAULT_SUFFIX.to_string()
    } else {
        // The plain prefix came from `key`, so its braces are still escaped.
        format!("{plain}/{DEFAULT_SUFFIX}")
    };
    parse(&joined)
}

/// The template's literal text and placeholders; `{{` and `}}` are literal braces.
fn parse(template: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut lit = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        lit.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            lit.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if let Some(tail) = tail.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unclosed placeholder in {template:?}"))?;
            let name = &tail[..end];
            let p = Placeholder::parse(name).ok_or_else(|| {
                format!(
                    "unknown placeholder {{{name}}} (known: {})",
                    PLACEHOLDERS
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            if !lit.is_empty() {
                tokens.push(Token::Lit(std::mem::take(&mut lit)));
            }
            tokens.push(Token::Var(p));
            rest = &tail[end + 1..];
        } else {
            return Err(format!(
                "unmatched '}}' in {template:?} (write '}}}}' for a literal)"
            ));
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        tokens.push(Token::Lit(lit));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "23f33461c0ffee0123456789abcdef01";

    fn url(s: &str) -> S3Url {
        S3Url::parse(s).unwrap()
    }

    /// The prefix `template` gives `source_key` through pipeline `thumbnails`.
    fn prefix(template: &str, source_key: &str) -> String {
        let vars = Vars {
            source_key,
            pipeline: "thumbnails",
            job_id: ID,
        };
        expand(&url(template), &vars).unwrap().to_string()
    }

    #[test]
    fn a_plain_prefix_gets_the_source_key_and_the_job_id() {
        let want = format!("s3://o/outputs/thumbnails/inbox/clip1.mp4/{ID}/");
        assert_eq!(
            prefix("s3://o/outputs/thumbnails/", "inbox/clip1.mp4"),
            want
        );
        assert_eq!(prefix("s3://o/outputs/thumbnails", "inbox/clip1.mp4"), want);
        assert_eq!(
            prefix("s3://o", "clip1.mp4"),
            format!("s3://o/clip1.mp4/{ID}/")
        );
    }

    #[test]
    fn placeholders_expand_to_the_parts_of_the_source() {
        let t = "s3://o/by-name/{source_dir}/{source_stem}/{pipeline}-{job_id}";
        assert_eq!(
            prefix(t, "inbox/2024/clip1.mp4"),
            format!("s3://o/by-name/inbox/2024/clip1/thumbnails-{ID}/")
        );
        // At the root the directory is empty, and so is its segment.
        assert_eq!(
            prefix(t, "clip1.mp4"),
            format!("s3://o/by-name/clip1/thumbnails-{ID}/")
        );
        assert_eq!(
            prefix("s3://o/x/{source_stem}", "a/archive.tar.gz"),
            "s3://o/x/archive.tar/"
        );
        assert_eq!(
            prefix("s3://o/x/{source_stem}", "a/.hidden"),
            "s3://o/x/.hidden/"
        );
        assert_eq!(
            prefix("s3://o/{{x}}/{source_stem}", "a/b.mp4"),
            "s3://o/{x}/b/"
        );
    }

    #[test]
    fn odd_keys_stay_as_they_are() {
        for key in [
            "inbox/with space.mp4",
            "inbox/ünïcødé ✓.mp4",
            "inbox/semi;colon.mp4",
            "inbox/$(touch pwned).mp4",
            "inbox/a+b.mp4",
            "inbox/a%2Bb.mp4",
            "inbox/..dots...mp4",
            "inbox/in-dash.mp4",
        ] {
            assert_eq!(
                prefix("s3://o/out/", key),
                format!("s3://o/out/{key}/{ID}/"),
                "{key}"
            );
        }
    }

    #[test]
    fn nothing_climbs_out_of_the_prefix() {
        let cases = [
            ("odd/../x.mp4", "odd/%2E%2E/x.mp4"),
            ("../../etc/passwd", "%2E%2E/%2E%2E/etc/passwd"),
            ("./a/./b.mp4", "%2E/a/%2E/b.mp4"),
            ("//a//b.mp4/", "a/b.mp4"),
            ("-rf.mp4", "%2Drf.mp4"),
            ("in/--x/-y.mp4", "in/%2D-x/%2Dy.mp4"),
        ];
        for (key, escaped) in cases {
            assert_eq!(
                prefix("s3://o/out/", key),
                format!("s3://o/out/{escaped}/{ID}/"),
                "{key}"
            );
        }
        // A stem or a directory is escaped like a key.
        assert_eq!(
            prefix("s3://o/x/{source_stem}/", "a/...mp4"),
            "s3://o/x/%2E%2E/"
        );
        assert_eq!(prefix("s3://o/x/{source_stem}/", "a/.."), "s3://o/x/%2E/");
        assert_eq!(
            prefix("s3://o/x/{source_dir}/", "../b.mp4"),
            "s3://o/x/%2E%2E/"
        );
        // A segment made of a literal and an empty value is escaped too.
        assert_eq!(
            prefix("s3://o/x/{source_dir}../", "b.mp4"),
            "s3://o/x/%2E%2E/"
        );
    }

    #[test]
    fn a_long_key_is_cut_and_marked_with_its_hash() {
        let long = format!("long/{}", "ü/abc".repeat(170)); // 1005 bytes
        assert!(long.len() > 1000);
        let got = prefix("s3://o/outputs/thumbnails/", &long);
        let key = got.strip_prefix("s3://o/").unwrap();
        assert!(key.len() <= MAX_PREFIX_BYTES, "{}", key.len());
        let hash = hex::encode(Sha256::digest(long.as_bytes()));
        let mark = format!("~{}/{ID}/", &hash[..8]);
        let cut = key
            .strip_prefix("outputs/thumbnails/")
            .and_then(|k| k.strip_suffix(&mark))
            .unwrap_or_else(|| panic!("{key}"));
        assert!(long.starts_with(cut) && cut.len() > 600, "{cut}");
        // Two keys alike up to the cut still differ.
        let other = format!("{long}x");
        assert_ne!(prefix("s3://o/outputs/thumbnails/", &other), got);
        // Two source parts share the room; a short one is not cut.
        let got = prefix("s3://o/{source_dir}/{source_stem}/", &long);
        assert!(got.ends_with(&format!("~{}/abc/", &hash[..8])), "{got}");
        let both = format!("{}/{}.mp4", "d".repeat(600), "n".repeat(600));
        let got = prefix("s3://o/{source_dir}/{source_stem}/", &both);
        assert!(got.len() - "s3://o/".len() <= MAX_PREFIX_BYTES);
        let hash = hex::encode(Sha256::digest(both.as_bytes()));
        assert_eq!(got.matches(&hash[..8]).count(), 2, "{got}");
    }

    #[test]
    fn a_short_key_is_not_cut() {
        let key = format!("a/{}", "b".repeat(600));
        assert_eq!(
            prefix("s3://o/out/", &key),
            format!("s3://o/out/{key}/{ID}/")
        );
    }

    #[test]
    fn templates_are_checked() {
        assert!(check(&url("s3://o/out/")).is_ok());
        assert!(check(&url("s3://o/{source_dir}/{source_stem}/{job_id}/")).is_ok());
        let err = check(&url("s3://o/out/{source_name}/")).unwrap_err();
        assert!(err.contains("unknown placeholder {source_name}"), "{err}");
        assert!(err.contains("{source_key}, {source_stem}"), "{err}");
        assert!(check(&url("s3://o/out/{job_id"))
            .unwrap_err()
            .contains("unclosed"));
        assert!(check(&url("s3://o/out/a}"))
            .unwrap_err()
            .contains("unmatched"));
        assert!(check(&url("s3://{pipeline}/x/"))
            .unwrap_err()
            .contains("bucket"));
        assert!(check(&url("s3://o/out/../{job_id}/"))
            .unwrap_err()
            .contains(".."));
        let long = format!("s3://o/{}/", "x".repeat(MAX_PREFIX_BYTES));
        assert!(check(&url(&long)).unwrap_err().contains("too long"));
        let err = expand(
            &url("s3://o/{nope}/"),
            &Vars {
                source_key: "a",
                pipeline: "p",
                job_id: ID,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("s3://o/{nope}/"), "{err}");
    }

    #[test]
    fn an_empty_expansion_is_an_error() {
        let vars = Vars {
            source_key: "clip.mp4",
            pipeline: "p",
            job_id: ID,
        };
        let err = expand(&url("s3://o/{source_dir}"), &vars).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn the_manifest_is_under_the_prefix() {
        assert_eq!(
            manifest_key("outputs/thumbnails/inbox/clip1.mp4/j/"),
            "outputs/thumbnails/inbox/clip1.mp4/j/_manifest.json"
        );
    }
}
