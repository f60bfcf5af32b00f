//! Shell-style `KEY=value` files: the bundle `.env` (sourced by install.sh
//! with `set -a`, so it overrides the environment: docs/cube-installer.md),
//! `.one-click.env`, and our credentials file.

use std::collections::BTreeMap;

use super::super::host::shell_quote;

/// Marker above the lines we append, so an operator sees where they came from.
pub const MARKER: &str =
    "# cubeboot: planned values (install.sh sources this file over the environment)";

/// Set each key in `values`: an existing `KEY=`/`export KEY=` line is
/// replaced in place (all of them: the last one would win when sourced),
/// missing keys are appended under [`MARKER`]. Other lines are kept.
pub fn upsert(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut written: BTreeMap<&str, bool> = BTreeMap::new();
    for line in text.lines() {
        match line_key(line).and_then(|k| values.get_key_value(k)) {
            Some((k, v)) => {
                if !written.contains_key(k.as_str()) {
                    out.push_str(&format!("{k}={}\n", shell_quote(v)));
                    written.insert(k, true);
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let missing: Vec<(&String, &String)> = values
        .iter()
        .filter(|(k, _)| !written.contains_key(k.as_str()))
        .collect();
    if !missing.is_empty() {
        if !text.contains(MARKER) {
            out.push_str(MARKER);
            out.push('\n');
        }
        for (k, v) in missing {
            out.push_str(&format!("{k}={}\n", shell_quote(v)));
        }
    }
    out
}

/// The key an assignment line sets, if it is one.
fn line_key(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let t = t.strip_prefix("export ").map(str::trim_start).unwrap_or(t);
    let (k, _) = t.split_once('=')?;
    (!k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(k)
}

/// The value assignments in a file, as bash would see them for simple
/// lines (`KEY=v`, `KEY="v"`, `KEY='v'`); the last assignment wins.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(k) = line_key(line) else { continue };
        let raw = line
            .split_once('=')
            .map(|(_, v)| v.trim())
            .unwrap_or_default();
        out.insert(k.to_string(), unquote(raw));
    }
    out
}

fn unquote(raw: &str) -> String {
    if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
        raw[1..raw.len() - 1].replace("\\\"", "\"")
    } else if raw.starts_with('\'') {
        // shell_quote's form: 'a'\''b'
        raw.split("'\\''")
            .map(|p| p.trim_matches('\''))
            .collect::<Vec<_>>()
            .join("'")
    } else {
        raw.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pitfall_line_is_replaced_and_missing_keys_appended() {
        let env_example = "# comment\nCUBE_PVM_ENABLE=0\nONE_CLICK_DEPLOY_ROLE=control\nexport CUBE_PVM_ENABLE=0\n";
        let out = upsert(
            env_example,
            &map(&[
                ("CUBE_PVM_ENABLE", "1"),
                ("ONE_CLICK_DEPLOY_ROLE", "compute"),
                ("MIRROR", "cn"),
            ]),
        );
        assert_eq!(
            out,
            format!("# comment\nCUBE_PVM_ENABLE=1\nONE_CLICK_DEPLOY_ROLE=compute\n{MARKER}\nMIRROR=cn\n")
        );
        assert_eq!(parse(&out)["CUBE_PVM_ENABLE"], "1");
    }

    #[test]
    fn values_are_quoted_for_bash_and_parse_back() {
        let out = upsert("", &map(&[("A", "it's a b"), ("B", "plain")]));
        assert_eq!(out, format!("{MARKER}\nA='it'\\''s a b'\nB=plain\n"));
        let back = parse(&out);
        assert_eq!(back["A"], "it's a b");
        assert_eq!(back["B"], "plain");
        // Upserting again is a fixed point.
        assert_eq!(
            upsert(&out, &map(&[("A", "it's a b"), ("B", "plain")])),
            out
        );
    }
}
