//! The engine's modules form layers, not a circle: the journal is a leaf,
//! the status is built from the journal, the runner sits on top. Read from
//! the sources (paths like `super::journal::…` and `crate::firstboot::…`),
//! so a new import that closes a circle fails here, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

const BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/firstboot");

/// Each unit (a top-level file, or a directory module as a whole) and the
/// sibling units its non-test code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    for entry in fs::read_dir(BASE).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut text = String::new();
            for f in fs::read_dir(&path).unwrap() {
                text.push_str(&non_test(&f.unwrap().path()));
            }
            sources.insert(name, text);
        } else if name != "mod" {
            sources.insert(name, non_test(&path));
        }
    }
    let units: BTreeSet<String> = sources.keys().cloned().collect();
    sources
        .iter()
        .map(|(unit, text)| {
            let deps = units
                .iter()
                .filter(|other| *other != unit)
                .filter(|other| {
                    ["super::", "super::super::", "crate::firstboot::"]
                        .iter()
                        .any(|p| names(text, p, other))
                })
                .cloned()
                .collect();
            (unit.clone(), deps)
        })
        .collect()
}

/// Whether `text` names `unit` right after `prefix` (also inside a
/// `prefix{a, unit, …}` group).
fn names(text: &str, prefix: &str, unit: &str) -> bool {
    text.match_indices(prefix).any(|(i, _)| {
        let rest = &text[i + prefix.len()..];
        let first = |s: &str| {
            s.strip_prefix(unit)
                .is_some_and(|after| !after.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
        };
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            return group.split(',').any(|item| first(item.trim()));
        }
        first(rest)
    })
}

fn non_test(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[test]
fn no_module_of_the_engine_imports_itself_in_a_circle() {
    let g = graph();
    // Depth-first search; a unit met again on the current path is a circle.
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        unit: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|u| u == unit) {
            panic!("import circle: {} -> {unit}", path[at..].join(" -> "));
        }
        if done.contains(unit) {
            return;
        }
        path.push(unit.to_string());
        for dep in &g[unit] {
            visit(g, dep, path, done);
        }
        path.pop();
        done.insert(unit.to_string());
    }
    let mut done = BTreeSet::new();
    for unit in g.keys() {
        visit(&g, unit, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_journal_is_a_leaf_and_the_status_is_built_from_it() {
    let g = graph();
    let deps = |u: &str| g[u].iter().map(String::as_str).collect::<Vec<_>>();
    assert_eq!(deps("run_state"), Vec::<&str>::new());
    assert_eq!(deps("secrets"), Vec::<&str>::new());
    // The in-step progress channel: steps report into it, the runner
    // publishes from it; it knows neither, only the pure link rules.
    assert_eq!(deps("live"), ["link"]);
    assert_eq!(deps("link"), Vec::<&str>::new());
    assert_eq!(deps("journal"), ["host", "run_state"]);
    // What a step is (its name, outcome and failure): a leaf too.
    assert_eq!(deps("step"), Vec::<&str>::new());
    // troubleshooting: the table status points failures at; a leaf.
    assert_eq!(deps("troubleshooting"), Vec::<&str>::new());
    assert_eq!(
        deps("status"),
        [
            "host",
            "journal",
            "live",
            "run_state",
            "secrets",
            "troubleshooting"
        ]
    );
    for low in ["journal", "status", "report", "webhook"] {
        assert!(!g[low].contains("runner"), "{low} imports the runner");
    }
}

#[test]
fn the_reader_sees_a_circle_when_there_is_one() {
    // The check above can fail: a grouped import names its units.
    assert!(names(
        "use super::{host, runner::Scope};",
        "super::",
        "runner"
    ));
    assert!(names("use super::runner::Scope;", "super::", "runner"));
    assert!(!names("use super::runner_x::Scope;", "super::", "runner"));
    assert!(!names("use super::{host, status};", "super::", "runner"));
}
