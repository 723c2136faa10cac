//! What a set of IAM policy documents allows, by action and resource: the doctor's
//! answer where `iam:SimulatePrincipalPolicy` is missing (moto) or refused.
//!
//! This is the simulation without its context: an explicit Deny that matches wins, an
//! Allow that matches grants, and conditions are not evaluated (a statement with
//! conditions counts as matching: the stack's conditions hold on the farm's own
//! launches by construction, and this check is for the action or resource that is
//! missing altogether). `NotAction` and `NotResource` are honoured.

use serde_json::Value;

/// True when `documents` allow `action` on `resource` and no statement denies it.
pub fn allows(documents: &[Value], action: &str, resource: &str) -> bool {
    let statements: Vec<&Value> = documents.iter().flat_map(statements).collect();
    let matching = |effect: &str| {
        statements.iter().any(|s| {
            s.get("Effect").and_then(Value::as_str) == Some(effect)
                && covers(s, "Action", "NotAction", action, true)
                && covers(s, "Resource", "NotResource", resource, false)
        })
    };
    !matching("Deny") && matching("Allow")
}

/// A document's statements: `Statement` is one object or a list of them.
fn statements(document: &Value) -> Vec<&Value> {
    match document.get("Statement") {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        _ => Vec::new(),
    }
}

/// Whether the statement's `key` list (or, inverted, its `not_key` list) covers `value`.
fn covers(statement: &Value, key: &str, not_key: &str, value: &str, fold_case: bool) -> bool {
    let any = |field: &Value| {
        let patterns: Vec<&str> = match field {
            Value::String(s) => vec![s.as_str()],
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        patterns.iter().any(|p| {
            if fold_case {
                glob(&p.to_ascii_lowercase(), &value.to_ascii_lowercase())
            } else {
                glob(p, value)
            }
        })
    };
    match (statement.get(key), statement.get(not_key)) {
        (Some(field), _) => any(field),
        (None, Some(field)) => !any(field),
        (None, None) => false,
    }
}

/// IAM's wildcards: `*` any run of characters, `?` one character.
fn glob(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < v.len() {
        if i < p.len() && (p[i] == '?' || p[i] == v[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs_match_as_iam_does() {
        let cases = [
            ("*", "anything", true),
            ("ec2:Describe*", "ec2:DescribeInstances", true),
            ("ec2:Describe*", "ec2:RunInstances", false),
            ("arn:aws:s3:::b/*", "arn:aws:s3:::b/k/x.mp4", true),
            ("arn:aws:s3:::b/*", "arn:aws:s3:::b", false),
            ("arn:aws:s3:::b?", "arn:aws:s3:::b1", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
        ];
        for (p, v, want) in cases {
            assert_eq!(glob(p, v), want, "{p} ~ {v}");
        }
    }

    #[test]
    fn allow_deny_and_the_not_forms() {
        let docs = [
            json!({"Statement": [
                {"Effect": "Allow", "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
                 "Resource": "arn:aws:ec2:*:*:instance/*",
                 "Condition": {"StringEquals": {"aws:RequestTag/cellfarm:farm": "prod"}}},
                {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::in/*"},
                {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"},
            ]}),
            json!({"Statement": {"Effect": "Allow", "NotAction": "iam:*",
                                 "NotResource": "arn:aws:s3:::secret/*"}}),
        ];
        let cases = [
            (
                "ec2:runinstances",
                "arn:aws:ec2:eu-west-1:1:instance/*",
                true,
            ),
            ("s3:GetObject", "arn:aws:s3:::in/a.mp4", true),
            ("s3:DeleteObject", "arn:aws:s3:::in/a.mp4", false),
            ("s3:GetObject", "arn:aws:s3:::secret/a", false),
            (
                "ec2:TerminateInstances",
                "arn:aws:ec2:eu-west-1:1:instance/i-1",
                true,
            ),
            ("iam:PassRole", "arn:aws:iam::1:role/cell", false),
        ];
        for (action, resource, want) in cases {
            assert_eq!(allows(&docs, action, resource), want, "{action} {resource}");
        }
        assert!(!allows(&[], "s3:GetObject", "*"), "nothing allows nothing");
    }
}
