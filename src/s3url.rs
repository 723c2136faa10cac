//! `s3://bucket/key` URLs, parsed once.
//!
//! Below both [`crate::config`] (whose URL fields are typed with it) and
//! [`crate::store`] (which reads the objects they name), so neither imports the other
//! for it.

use std::fmt;

/// `s3://bucket/key`, parsed. The key may be empty or a prefix ending in `/`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

impl S3Url {
    pub fn parse(url: &str) -> Result<S3Url, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3:// URL"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{url:?} has no bucket"));
        }
        Ok(S3Url {
            bucket: bucket.into(),
            key: key.into(),
        })
    }
}

/// For config fields: the message follows the key (`update.binary_url: must be …`).
impl TryFrom<String> for S3Url {
    type Error = String;

    fn try_from(url: String) -> Result<S3Url, String> {
        S3Url::parse(&url).map_err(|e| format!("must be s3://bucket/key ({e})"))
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_parse() {
        let u = S3Url::parse("s3://b/in/a b.mp4").unwrap();
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("b", "in/a b.mp4"));
        assert_eq!(S3Url::parse("s3://b").unwrap().key, "");
        assert!(S3Url::parse("s3:///k").is_err());
        assert!(S3Url::parse("/etc/passwd").is_err());
        assert_eq!(u.to_string(), "s3://b/in/a b.mp4");
    }

    #[test]
    fn a_config_field_names_what_it_wants() {
        let err = S3Url::try_from("http://b/k".to_string()).unwrap_err();
        assert_eq!(
            err,
            "must be s3://bucket/key (\"http://b/k\" is not an s3:// URL)"
        );
    }
}
