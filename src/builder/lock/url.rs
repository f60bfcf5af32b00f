//! A lock's download URL, checked while parsed: what every asset and
//! mirror entry holds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A download URL: `https://`, `http://` or `file://`, checked while parsing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Url(String);

impl Url {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }

    /// The path after the host (after `file://` for a file URL), without
    /// its leading slash, query or fragment, still percent-encoded:
    /// `releases/download/v1/b.tar.gz`. A mirror serves each asset there
    /// (`cubeboot mirror`, `build --mirror URL`).
    pub fn path(&self) -> &str {
        let rest = ["https://", "http://", "file://"]
            .iter()
            .find_map(|p| self.0.strip_prefix(p))
            .unwrap_or(&self.0);
        let path = if self.0.starts_with("file://") {
            rest
        } else {
            rest.find('/').map_or("", |i| &rest[i..])
        };
        let end = path.find(['?', '#']).unwrap_or(path.len());
        path[..end].trim_start_matches('/')
    }

    /// `<base>/<name>` with exactly one slash between.
    pub fn join(base: &str, name: &str) -> Result<Self, String> {
        format!("{}/{}", base.trim_end_matches('/'), name).parse()
    }
}

impl FromStr for Url {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rest = ["https://", "http://", "file://"]
            .iter()
            .find_map(|p| s.strip_prefix(p));
        let Some(rest) = rest else {
            return Err(format!(
                "expected an https://, http:// or file:// URL, got {s:?}"
            ));
        };
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("URL {s:?} contains whitespace"));
        }
        if !s.starts_with("file://") && rest.split('/').next().unwrap_or("").is_empty() {
            return Err(format!("URL {s:?} has no host"));
        }
        Ok(Self(s.to_string()))
    }
}

impl TryFrom<String> for Url {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Url> for String {
    fn from(u: Url) -> Self {
        u.0
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
