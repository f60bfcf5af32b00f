//! `--json` of build, check and profiles (issue 22 §6): one versioned
//! document on stdout, also on failure, with the diagnostics; every key is
//! documented in docs/json.md.

use std::collections::BTreeSet;

use crate::support::*;

/// Run, returning (exit code, the JSON document on stdout).
fn json(args: &[&str]) -> (i32, serde_json::Value) {
    let out = cubeboot(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not one JSON document ({e}): {stdout}"));
    (out.status.code().unwrap(), doc)
}

/// The keys docs/json.md lists for `verb` (its "## `cubeboot VERB --json`"
/// section, each key as a table row starting with "| `key`").
fn documented_keys(verb: &str) -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo().join("docs/json.md")).unwrap();
    let mut keys = BTreeSet::new();
    for section in [
        "## Every document".to_string(),
        format!("## `cubeboot {verb} --json`"),
    ] {
        let body = doc
            .split(&section)
            .nth(1)
            .unwrap_or_else(|| panic!("docs/json.md has no {section}"));
        let body = body.split("\n## ").next().unwrap();
        for line in body.lines().filter(|l| l.starts_with("| `")) {
            keys.insert(line[3..].split('`').next().unwrap().to_string());
        }
    }
    keys
}

fn assert_documented(verb: &str, doc: &serde_json::Value) {
    let keys = documented_keys(verb);
    for k in doc.as_object().unwrap().keys() {
        assert!(keys.contains(k), "{verb}: key {k:?} is not in docs/json.md");
    }
    for d in doc["diagnostics"].as_array().unwrap() {
        for k in d.as_object().unwrap().keys() {
            assert!(
                documented_keys("build").contains(&format!("diagnostics[].{k}")),
                "diagnostics[].{k} is not in docs/json.md"
            );
        }
    }
}

fn common(doc: &serde_json::Value, verb: &str, ok: bool) {
    assert_eq!(doc["format"], "cubeboot-json", "{doc}");
    assert_eq!(doc["version"], 1, "{doc}");
    assert_eq!(doc["verb"], verb, "{doc}");
    assert_eq!(doc["ok"], ok, "{doc}");
    assert_documented(verb, doc);
}

#[test]
fn build_json_on_success_and_on_failure() {
    let rel = release();
    let dir = tempdir();
    let out = dir.path().join("out");
    let lock = rel.lock.to_str().unwrap();
    let args = [
        "build",
        "--json",
        "--lock",
        lock,
        "--output",
        out.to_str().unwrap(),
    ];
    let (code, doc) = json(&[&args[..], &["--profile", "debian-12"]].concat());
    assert_eq!(code, 0);
    common(&doc, "build", true);
    assert_eq!(doc["payloads"][0]["profile"], "debian-12");
    assert_eq!(doc["diagnostics"], serde_json::json!([]));
    assert!(doc["error"].is_null());

    // A lock error: the diagnostic with its file, key and line.
    let bad = dir.path().join("bad.lock");
    let text = std::fs::read_to_string(&rel.lock).unwrap();
    std::fs::write(&bad, text.replacen("version: 1", "version: 9", 1)).unwrap();
    let out2 = dir.path().join("out2");
    let (code, doc) = json(&[
        "build",
        "--json",
        "--lock",
        bad.to_str().unwrap(),
        "--output",
        out2.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    common(&doc, "build", false);
    assert_eq!(doc["payloads"], serde_json::json!([]));
    let d = &doc["diagnostics"][0];
    assert_eq!(d["severity"], "error");
    assert_eq!(d["file"], bad.to_str().unwrap());
    assert_eq!(d["line"], 2, "{d}");
    assert!(doc["error"].as_str().unwrap().contains("version"), "{doc}");
    assert!(!out2.exists());

    // An error that is not about a file: one diagnostic without a place.
    let (code, doc) = json(&[&args[..], &["--profile", "nope"]].concat());
    assert_eq!(code, 1);
    common(&doc, "build", false);
    let d = &doc["diagnostics"][0];
    assert!(d["file"].is_null() && d["line"].is_null(), "{d}");
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .starts_with("no profile named \"nope\""),
        "{d}"
    );
}

#[test]
fn check_and_profiles_json_are_versioned_and_carry_diagnostics() {
    let (code, doc) = json(&["check", "--json"]);
    assert_eq!(code, 0);
    common(&doc, "check", true);
    assert_eq!(doc["profiles"], 9);

    let (code, doc) = json(&["profiles", "--json"]);
    assert_eq!(code, 0);
    common(&doc, "profiles", true);
    assert_eq!(doc["profiles"].as_array().unwrap().len(), 9);
    assert_eq!(doc["profiles"][2]["name"], "debian-12");

    // A directory with one good and one broken profile.
    let dir = tempdir();
    let p = dir.path().join("p");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::copy(
        repo().join("profiles/debian-12.yaml"),
        p.join("debian-12.yaml"),
    )
    .unwrap();
    std::fs::write(
        p.join("bad.yaml"),
        "version: 1\ndescription: x\nsha265: 1\n",
    )
    .unwrap();
    for verb in ["profiles", "check"] {
        let (code, doc) = json(&[verb, "--json", "--profiles-dir", p.to_str().unwrap()]);
        assert_eq!(code, 1, "{verb}");
        common(&doc, verb, false);
        let d = &doc["diagnostics"][0];
        assert!(d["file"].as_str().unwrap().ends_with("p/bad.yaml"), "{d}");
        assert!(d["line"].as_u64().is_some(), "{d}");
    }
    let (_, doc) = json(&["profiles", "--json", "--profiles-dir", p.to_str().unwrap()]);
    assert_eq!(doc["profiles"][0]["name"], "debian-12");
}
