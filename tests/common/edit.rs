//! Test configs are TOML edited by key path, not text replaced: when the example loses
//! or renames a key a test sets, the test fails naming the key instead of running with
//! the example's value.
//!
//! A path is keys and array indexes joined by dots: `cell.max_attempts`,
//! `pipelines.thumbnails.steps.0.args.8`.

use toml::{Table, Value};

/// Parses TOML text; panics with the parser's error, which names the line.
pub fn parse(text: &str) -> Table {
    text.parse()
        .unwrap_or_else(|e| panic!("the test config is not TOML: {e}\n{text}"))
}

pub fn to_text(doc: &Table) -> String {
    toml::to_string(doc).expect("a TOML table serializes")
}

/// The value at `path`; panics naming the first part of the path that is not there.
pub fn get<'a>(doc: &'a mut Table, path: &str) -> &'a mut Value {
    let mut parts = path.split('.');
    let first = parts.next().unwrap_or_default();
    let mut at = doc
        .get_mut(first)
        .unwrap_or_else(|| panic!("no `{first}` in the config (for `{path}`)"));
    let mut walked = first.to_string();
    for part in parts {
        at = match at {
            Value::Table(t) => t.get_mut(part),
            Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .unwrap_or_else(|| panic!("no `{part}` in `{walked}` of the config (for `{path}`)"));
        walked = format!("{walked}.{part}");
    }
    at
}

/// Sets the value at `path`, which must be there already.
pub fn set(doc: &mut Table, path: &str, value: impl Into<Value>) {
    *get(doc, path) = value.into();
}

/// Sets the value at `path` to `to`; it must be `from` (so the edit means what it says).
pub fn swap(doc: &mut Table, path: &str, from: impl Into<Value>, to: impl Into<Value>) {
    let at = get(doc, path);
    let from = from.into();
    assert_eq!(
        *at, from,
        "`{path}` in the config is not what the test edits"
    );
    *at = to.into();
}

/// Adds a key the config does not have (`cell.lease_secs`) to a table that it has.
pub fn add(doc: &mut Table, path: &str, value: impl Into<Value>) {
    let (table, key) = path
        .rsplit_once('.')
        .unwrap_or_else(|| panic!("`{path}`: add a key to a table, not to the top level"));
    let table = get(doc, table)
        .as_table_mut()
        .unwrap_or_else(|| panic!("`{table}` in the config is not a table (for `{path}`)"));
    assert!(
        !table.contains_key(key),
        "`{path}` is in the config already: set it instead of adding it"
    );
    table.insert(key.to_string(), value.into());
}

/// Points every `s3://{from}/…` string in `doc` at bucket `to`; returns how many.
pub fn rename_bucket(doc: &mut Table, from: &str, to: &str) -> usize {
    let prefix = format!("s3://{from}/");
    let mut renamed = 0;
    let mut strings = Vec::new();
    for (_, value) in doc.iter_mut() {
        collect_strings(value, &mut strings);
    }
    for s in strings {
        if let Some(rest) = s.strip_prefix(&prefix) {
            *s = format!("s3://{to}/{rest}");
            renamed += 1;
        }
    }
    renamed
}

fn collect_strings<'a>(value: &'a mut Value, into: &mut Vec<&'a mut String>) {
    match value {
        Value::String(s) => into.push(s),
        Value::Array(a) => a.iter_mut().for_each(|v| collect_strings(v, into)),
        Value::Table(t) => t.iter_mut().for_each(|(_, v)| collect_strings(v, into)),
        _ => {}
    }
}
