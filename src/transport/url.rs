//! The URL and proxy rules, pure: which proxy serves a URL (curl's
//! variables and NO_PROXY), a URL fit for logs, `Content-Range`, and the
//! percent-decoding of `file://` paths.

/// Which proxy serves `url`, from the curl-style variables read through the
/// caller's surroundings: `https_proxy`/`HTTPS_PROXY` for https, `http_proxy`/`HTTP_PROXY` for
/// http (the lower-case name wins, as in curl), `ALL_PROXY` as a fallback,
/// and `NO_PROXY`/`no_proxy` exceptions (comma list of host suffixes, `*`).
pub fn proxy_for(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = url_host(rest)?;
    let get = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| env(n).filter(|v| !v.trim().is_empty()))
    };
    let proxy = match scheme {
        "https" => get(&["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]),
        "http" => get(&["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]),
        _ => None,
    }?;
    let no_proxy = get(&["no_proxy", "NO_PROXY"]).unwrap_or_default();
    if no_proxy_matches(&no_proxy, &host) {
        return None;
    }
    Some(proxy.trim().to_string())
}

/// A URL fit for logs and status: no userinfo, query or fragment (webhook
/// tokens often live there).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.split(['?', '#']).next().unwrap_or("").to_string();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    format!("{scheme}://{authority}{path}")
}

/// `bytes 100-199/200` → (100, Some(200)); `bytes 100-199/*` → (100, None).
pub(super) fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, _last) = range.split_once('-')?;
    let first = first.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first, total))
}

/// Host part of `authority/path` (no brackets for IPv6, no port, no userinfo).
fn url_host(rest: &str) -> Option<String> {
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// curl's NO_PROXY rule: `*` matches all; otherwise each entry (leading `.`
/// or `*.` ignored) matches the host itself and any subdomain of it.
fn no_proxy_matches(list: &str, host: &str) -> bool {
    list.split(',').map(str::trim).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = entry
            .trim_start_matches("*.")
            .trim_start_matches('.')
            .to_ascii_lowercase();
        // Entries may carry a port (`host:8080`); hosts are matched by name.
        let entry = entry.split(':').next().unwrap_or("");
        !entry.is_empty()
            && (host == entry
                || host
                    .strip_suffix(entry)
                    .is_some_and(|prefix| prefix.ends_with('.')))
    })
}

pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn proxies_follow_scheme_and_no_proxy() {
        let env = env_of(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("http_proxy", "http://plain:8080"),
            ("NO_PROXY", "internal.example, .corp,10.0.0.1"),
        ]);
        let cases = [
            ("https://github.com/x", Some("http://proxy:3128")),
            ("http://mirror.example/x", Some("http://plain:8080")),
            ("https://a.internal.example/x", None),
            ("https://internal.example:8443/x", None),
            ("https://notinternal.example/x", Some("http://proxy:3128")),
            ("http://deep.sub.corp/x", None),
            ("http://10.0.0.1/x", None),
            ("file:///srv/x", None),
        ];
        for (url, want) in cases {
            assert_eq!(proxy_for(url, &env).as_deref(), want, "{url}");
        }
        let env = env_of(&[("HTTPS_PROXY", "http://p:1"), ("no_proxy", "*")]);
        assert_eq!(proxy_for("https://x/y", &env), None);
        assert_eq!(proxy_for("https://x/y", &env_of(&[])), None);
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range(""), None);
    }

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(
            redact_url("https://user:tok@hooks.example/p/q?key=s3cret#x"),
            "https://hooks.example/p/q"
        );
        assert_eq!(redact_url("http://h:8080"), "http://h:8080");
    }

    #[test]
    fn file_urls_decode_percent_escapes() {
        assert_eq!(percent_decode("/srv/a%20b.deb"), "/srv/a b.deb");
        assert_eq!(percent_decode("/srv/100%"), "/srv/100%");
        assert_eq!(percent_decode("/srv/%zz"), "/srv/%zz");
    }
}
