//! docs/troubleshooting.md's table stays true: every row's message is in the
//! test it names (inside that test's function) and in the source that prints
//! it.

use std::path::Path;

use cubeboot::firstboot::troubleshooting::{parse, Row};

use crate::support::*;

/// Every table row, each checked to have the row shape.
fn rows(doc: &str) -> Vec<Row<'_>> {
    let table = doc
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| symptom"))
        .count();
    let rows = parse(doc);
    assert_eq!(rows.len(), table, "a row without `message` and `file` `fn`");
    rows
}

/// The text of `fn name` in `source`, to the next item.
fn function<'a>(source: &'a str, name: &str) -> Option<&'a str> {
    let start = source.find(&format!("fn {name}("))?;
    let body = &source[start..];
    let end = body[1..].find("\nfn ").map_or(body.len(), |e| e + 1);
    Some(&body[..end])
}

fn source_contains(root: &Path, needle: &str) -> bool {
    walkdir::WalkDir::new(root.join("src"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
        .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(needle)))
}

fn stale_rows(root: &Path, doc: &str) -> Vec<String> {
    let mut stale = Vec::new();
    for row in rows(doc) {
        let test = std::fs::read_to_string(root.join(row.test_file)).unwrap_or_default();
        match function(&test, row.test_fn) {
            None => stale.push(format!("{} has no fn {}", row.test_file, row.test_fn)),
            Some(body) if !body.contains(row.message) => stale.push(format!(
                "{}::{} does not produce {:?}",
                row.test_file, row.test_fn, row.message
            )),
            Some(_) => {}
        }
        if !source_contains(root, row.message) {
            stale.push(format!("no source under src/ prints {:?}", row.message));
        }
    }
    stale
}

#[test]
fn every_troubleshooting_message_is_still_produced() {
    let doc = std::fs::read_to_string(repo().join("docs/troubleshooting.md")).unwrap();
    assert!(rows(&doc).len() >= 11);
    let stale = stale_rows(&repo(), &doc);
    assert!(stale.is_empty(), "{}", stale.join("\n"));
}

#[test]
fn a_message_no_test_produces_is_caught() {
    let doc = std::fs::read_to_string(repo().join("docs/troubleshooting.md")).unwrap();
    let edited = doc.replacen(
        "`checksum mismatch: expected sha256`",
        "`checksum mismatch, expected sha256`",
        1,
    );
    let stale = stale_rows(&repo(), &edited);
    assert_eq!(stale.len(), 2, "{stale:?}");
    let gone = doc.replacen(
        "`a_corrupted_body_is_refused_with_both_digests`",
        "`no_such_test`",
        1,
    );
    assert_eq!(
        stale_rows(&repo(), &gone),
        ["tests/helper_fetch.rs has no fn no_such_test"]
    );
}
