//! Every citation resolves inside the repository (issue 20 §8): profiles
//! (which `profiles --export` hands to users), examples, docs, the README,
//! templates, scripts and the code cite only files a clone has. Background
//! notes kept outside the repository are never cited; their facts are
//! written into docs/ and cited there.

use std::path::{Path, PathBuf};

use crate::support::*;

/// Where citations live (the whole tree but target/ and out/).
const SCANNED: &[&str] = &[
    "src",
    "profiles",
    "examples",
    "docs",
    "templates",
    "scripts",
    "benches",
    "tests",
    ".ci",
    "README.md",
];

/// Directories whose paths are this repository's own (upstream's `docs/guide/…`
/// or `scripts/one-click/…` are cited by their upstream path on purpose).
const OWN_DIRS: &[&str] = &[
    "src/builder/",
    "src/firstboot/",
    "src/bin/",
    "tests/",
    "templates/",
    "profiles/",
    "examples/",
];

fn text_files(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for top in SCANNED.iter().map(|t| root.join(t)).filter(|t| t.exists()) {
        // The VM tier's image cache is build output (git-ignored), and a
        // guest image being built there has /proc mounted inside it.
        let walk = walkdir::WalkDir::new(top)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| !e.path().ends_with("tests/e2e/cache"));
        for entry in walk {
            let entry = entry.unwrap();
            // This checker's own examples are data, not citations.
            if !entry.file_type().is_file() || entry.path().ends_with(file!()) {
                continue;
            }
            // Binary fixtures (packages, archives, the helper) are not prose.
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                out.push((entry.path().to_path_buf(), text));
            }
        }
    }
    out
}

/// The names that point outside the repository, built at run time so this
/// file does not cite them itself.
fn outside_names() -> Vec<String> {
    [
        ["facts", " §"].concat(),
        ["prior", "-art"].concat(),
        ["cube-sandbox", "-facts"].concat(),
        ["pvm-deployment", "-guide"].concat(),
        ["vm-e2e", "-notes"].concat(),
        ["STYLE", ".md"].concat(),
        ["/work", "/shared"].concat(),
    ]
    .into()
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

/// Repository paths cited in `text` that do not exist under `root`:
/// `docs/NAME.md` anywhere, and any path under [`OWN_DIRS`] with a file
/// extension, when not part of a longer path (`deploy/docs/x.md`).
fn missing_paths(root: &Path, text: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for (i, _) in text.char_indices() {
        let rest = &text[i..];
        let own = OWN_DIRS.iter().any(|d| rest.starts_with(d));
        let doc = rest.starts_with("docs/");
        if !(own || doc) || text[..i].chars().next_back().is_some_and(is_path_char) {
            continue;
        }
        let path: String = rest.chars().take_while(|c| is_path_char(*c)).collect();
        let path = path.trim_end_matches(['.', '-', '/']);
        let name = path.rsplit('/').next().unwrap_or_default();
        if !name.contains('.') || rest[path.len()..].starts_with('*') {
            continue;
        }
        if doc && (path.matches('/').count() != 1 || !path.ends_with(".md")) {
            continue;
        }
        if !root.join(path).exists() {
            missing.push(path.to_string());
        }
    }
    missing
}

fn problems(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let outside = outside_names();
    for (file, text) in text_files(root) {
        let shown = file.strip_prefix(root).unwrap().display().to_string();
        for (n, line) in text.lines().enumerate() {
            for name in &outside {
                if line.contains(name.as_str()) {
                    found.push(format!("{shown}:{}: cites {name:?}: {line}", n + 1));
                }
            }
            for path in missing_paths(root, line) {
                found.push(format!(
                    "{shown}:{}: cites {path}, which the repo does not have",
                    n + 1
                ));
            }
        }
    }
    found
}

#[test]
fn every_citation_resolves_inside_the_repo() {
    let found = problems(&repo());
    assert!(
        found.is_empty(),
        "{} citations:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn the_citation_check_can_fail() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("docs")).unwrap();
    std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
    std::fs::write(dir.path().join("docs/real.md"), "x\n").unwrap();
    std::fs::write(
        dir.path().join("profiles/p.yaml"),
        format!(
            "# ok (docs/real.md), upstream docs/guide/x.md, deploy/docs/y.md\n# bad (docs/gone.md)\n# bad ({}5)\n# bad tests/none.rs\n",
            ["facts", " §"].concat()
        ),
    )
    .unwrap();
    let found = problems(dir.path());
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].starts_with("profiles/p.yaml:2: cites docs/gone.md"));
    assert!(found[1].starts_with("profiles/p.yaml:3: cites \"facts §\""));
    assert!(found[2].starts_with("profiles/p.yaml:4: cites tests/none.rs"));
}
