//! The house rules of docs/architecture.md, read from the source itself
//! (issue 20, "Done when"):
//!
//! - the import graph between the library's files (`crate::…`, `super::…`
//!   and `self::…` paths, in a `use` or written inline)
//!   has no circle, and no arrow runs from the builder (`src/builder/`) into
//!   the helper (`src/firstboot/`): `plan.json` and `src/layout.rs` are the
//!   only contract between them;
//! - no production file (its lines before its `#[cfg(test)] mod tests {`)
//!   is over 600 lines;
//! - no write method of the `Host` trait has a default body, so a new write
//!   cannot slip past the dry-run host.
//!
//! Each test lists every finding, so a failure says what to move.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_PRODUCTION_LINES: usize = 600;

/// `Host` methods whose default bodies change nothing on the target: they
/// read beneath the root, ask the kernel, or talk to the operator. Every
/// other method must be implemented by each host (the real one confines
/// its writes to the root, the dry run records them).
const HOST_METHODS_THAT_CHANGE_NOTHING: &[&str] = &[
    "run_streaming",
    "say",
    "record",
    "is_dry_run",
    "path",
    "check_change",
    "exists",
    "read",
    "read_string",
    "read_optional",
    "list_dir",
    "metadata",
    "open",
    "read_link",
    "random_bytes",
    "free_bytes",
    "kvm_api_version",
    "boot_id",
    "arch",
    "euid",
];

#[test]
fn import_graph_has_no_circle() {
    let graph = ImportGraph::of(&repo().join("src"));
    let circles = graph.circles();
    assert!(
        circles.is_empty(),
        "files that import each other (directly or round a circle):\n{}",
        circles.join("\n")
    );
}

#[test]
fn builder_never_imports_the_helper() {
    let graph = ImportGraph::of(&repo().join("src"));
    let arrows: Vec<String> = graph
        .arrows()
        .filter(|(from, to)| from.starts_with("builder/") && to.starts_with("firstboot/"))
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    assert!(
        arrows.is_empty(),
        "the builder reaches into the helper (use plan.json or src/layout.rs):\n{}",
        arrows.join("\n")
    );
}

#[test]
fn no_production_file_is_over_600_lines() {
    let mut over = Vec::new();
    for file in rust_files(&repo().join("src")) {
        let lines = production(&read(&file)).lines().count();
        if lines > MAX_PRODUCTION_LINES {
            over.push(format!("{} has {lines}", relative(&file)));
        }
    }
    assert!(
        over.is_empty(),
        "production lines (before the test module) over {MAX_PRODUCTION_LINES}:\n{}",
        over.join("\n")
    );
}

#[test]
fn host_writes_have_no_default_body() {
    let host =
        strip_comments_and_strings(&production(&read(&repo().join("src/firstboot/host.rs"))));
    let methods = trait_methods(&host, "Host");
    assert!(methods.len() > 20, "found only {methods:?} in trait Host");
    for name in HOST_METHODS_THAT_CHANGE_NOTHING {
        assert!(
            methods.iter().any(|(m, _)| m == name),
            "{name} is no longer a Host method: drop it from the list"
        );
    }
    let defaulted: Vec<&str> = methods
        .iter()
        .filter(|(name, has_body)| {
            *has_body && !HOST_METHODS_THAT_CHANGE_NOTHING.contains(&name.as_str())
        })
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        defaulted.is_empty(),
        "Host methods with a default body that may write (give each host its own, \
         or add a method that only reads to HOST_METHODS_THAT_CHANGE_NOTHING): {defaulted:?}"
    );
}

/// The checker itself: each rule must see what it is there to see.
#[test]
fn checker_finds_planted_faults() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let put = |path: &str, text: &str| {
        let path = src.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    put(
        "lib.rs",
        "pub mod a;\npub mod builder;\npub mod firstboot;\n",
    );
    put(
        "a.rs",
        "//! use crate::builder::b; (a comment)\nconst S: &str = \"crate::firstboot::x\";\npub fn f() { crate::firstboot::image::g() }\n",
    );
    put("builder/mod.rs", "pub mod b;\npub mod c;\n");
    put(
        "builder/b.rs",
        "use super::{c::{self, D}, *};\n#[cfg(test)]\nmod tests {\n    use crate::a;\n}\n",
    );
    put(
        "builder/c.rs",
        "pub mod inner {\n    use super::super::b;\n}\nuse crate::a as other;\n",
    );
    put(
        "firstboot/mod.rs",
        "pub mod image;\nuse image::Bare;\nuse self::image::Image;\nfn run() { let _ = 'x'; let _ = '{'; }\n",
    );
    put(
        "firstboot/image.rs",
        "pub struct Image<'a>(&'a str);\npub fn g() { super::run() }\n",
    );
    let graph = ImportGraph::of(src);
    let arrows: BTreeSet<String> = graph
        .arrows()
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    let want: BTreeSet<String> = [
        "a.rs -> firstboot/image.rs",
        "builder/b.rs -> builder/c.rs",
        "builder/b.rs -> builder/mod.rs",
        "builder/c.rs -> builder/b.rs",
        "builder/c.rs -> a.rs",
        "firstboot/mod.rs -> firstboot/image.rs",
        "firstboot/image.rs -> firstboot/mod.rs",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    assert_eq!(arrows, want);
    assert_eq!(
        graph.circles(),
        [
            "builder/b.rs -> builder/c.rs -> builder/b.rs",
            "firstboot/image.rs -> firstboot/mod.rs -> firstboot/image.rs",
        ]
    );

    let host = "pub trait Host: Send {\n    fn root(&self) -> &Path;\n    fn read(&self) -> Vec<u8> { vec![] }\n    fn write(&self, b: &[u8]) -> Result<()> where Self: Sized { Ok(()) }\n}\nimpl Host for X { fn root(&self) -> &Path { todo!() } }\n";
    assert_eq!(
        trait_methods(&strip_comments_and_strings(host), "Host"),
        [
            ("root".to_string(), false),
            ("read".to_string(), true),
            ("write".to_string(), true)
        ]
    );
    let text =
        "#[cfg(test)]\nmod scripted;\nfn a() {}\n#[cfg(test)]\n#[allow(x)]\nmod tests {\n}\n";
    assert_eq!(production(text).lines().count(), 3);
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// A file's production part: its lines before the `#[cfg(test)]` that
/// opens its inline test module (`#[cfg(test)] mod tests {`); a
/// `#[cfg(test)]` on one item or an out-of-line `mod x;` does not end it.
fn production(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| {
            lines[i].trim_start().starts_with("#[cfg(test)]")
                && lines[i + 1..]
                    .iter()
                    .find(|l| !l.trim_start().starts_with("#["))
                    .is_some_and(|l| opens_inline_module(l))
        })
        .unwrap_or(lines.len());
    lines[..end].iter().map(|l| format!("{l}\n")).collect()
}

fn opens_inline_module(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = usize::from(words.first().is_some_and(|w| w.starts_with("pub")));
    words.get(at) == Some(&"mod") && words.last() == Some(&"{")
}

/// `text` with comments, string literals and char literals blanked out
/// (lines kept), so only code is searched for paths and braces.
fn strip_comments_and_strings(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // Keep line breaks so positions stay readable; drop everything else.
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !is_ident(c[i - 1]))
        {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            while j < c.len() {
                if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                blank(&mut out, c[j]);
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = c.get(i) {
                    blank(&mut out, ch);
                }
                i += 1;
            }
            out.push_str("\"\"");
            i += 1;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{1F600}'), or a lifetime ('a).
            let end = if next == Some('\\') {
                (i + 3..c.len()).find(|&j| c[j] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    out.push_str("' '");
                    i = end + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The library's files (not the binaries) and the arrows between them.
struct ImportGraph {
    /// Module path (`["firstboot", "image"]`) → file, relative to src/.
    files: BTreeMap<Vec<String>, String>,
    arrows: BTreeSet<(String, String)>,
}

impl ImportGraph {
    fn of(src: &Path) -> Self {
        let mut files = BTreeMap::new();
        for file in rust_files(src) {
            let rel = file
                .strip_prefix(src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "main.rs" || rel.starts_with("bin/") {
                continue;
            }
            let mut module: Vec<String> = rel
                .trim_end_matches(".rs")
                .split('/')
                .map(String::from)
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            files.insert(module, rel);
        }
        let mut graph = Self {
            files,
            arrows: BTreeSet::new(),
        };
        let modules: Vec<(Vec<String>, String)> = graph
            .files
            .iter()
            .map(|(m, f)| (m.clone(), f.clone()))
            .collect();
        for (module, rel) in modules {
            let code = strip_comments_and_strings(&production(&read(&src.join(&rel))));
            for path in paths_in(&code, &module) {
                if let Some(to) = graph.file_of(&path) {
                    if to != rel {
                        graph.arrows.insert((rel.clone(), to));
                    }
                }
            }
        }
        graph
    }

    fn arrows(&self) -> impl Iterator<Item = (&str, &str)> {
        self.arrows.iter().map(|(a, b)| (a.as_str(), b.as_str()))
    }

    /// The file an absolute path leads into: the longest prefix that is a
    /// file's module.
    fn file_of(&self, path: &[String]) -> Option<String> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.files.get(&path[..n]).cloned())
    }

    /// Each set of files that import one another round a circle, as
    /// `a -> b -> a`, sorted.
    fn circles(&self) -> Vec<String> {
        let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (from, to) in self.arrows() {
            next.entry(from).or_default().push(to);
        }
        let mut circles = BTreeSet::new();
        for start in next.keys() {
            // The shortest way back to `start`, breadth first.
            let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([*start]);
            'search: while let Some(at) = queue.pop_front() {
                for &to in next.get(at).into_iter().flatten() {
                    if to == *start {
                        let mut circle = vec![at];
                        while let Some(&prev) = came_from.get(circle.last().unwrap()) {
                            circle.push(prev);
                        }
                        circle.reverse();
                        // Written from its smallest file, so each circle is listed once.
                        let min = (0..circle.len()).min_by_key(|&i| circle[i]).unwrap();
                        circle.rotate_left(min);
                        circle.push(circle[0]);
                        circles.insert(circle.join(" -> "));
                        break 'search;
                    }
                    if to != *start && !came_from.contains_key(to) {
                        came_from.insert(to, at);
                        queue.push_back(to);
                    }
                }
            }
        }
        circles.into_iter().collect()
    }
}

/// Every path in `code` (production code of the file whose module is
/// `file_module`) that starts with `crate::`, `super::` or `self::`, in a
/// `use` or written inline, made absolute from the crate root:
/// `crate::a::b` is `["a", "b"]`, `super::`/`self::` count from the
/// (inline) module the path is written in.
fn paths_in(code: &str, file_module: &[String]) -> Vec<Vec<String>> {
    let tokens = tokens(code);
    let mut out = Vec::new();
    // The inline modules (`mod v1 { … }`) around the current token.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        let module: Vec<String> = file_module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(m, _)| m.clone()))
            .collect();
        match tokens[i].as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).map(String::as_str) == Some("{") => {
                inline.push((tokens[i + 1].clone(), depth));
                depth += 1;
                i += 3;
                continue;
            }
            "use" => {
                let end = (i..tokens.len())
                    .find(|&j| tokens[j] == ";")
                    .unwrap_or(tokens.len());
                for path in use_tree(&tokens[i + 1..end]) {
                    out.extend(absolute(&path, &module));
                }
                i = end + 1;
                continue;
            }
            t if (t == "crate" || t == "super" || t == "self")
                && tokens.get(i + 1).map(String::as_str) == Some("::")
                && (i == 0 || tokens[i - 1] != "::") =>
            {
                let mut path = vec![t.to_string()];
                let mut j = i + 1;
                while tokens.get(j).map(String::as_str) == Some("::")
                    && tokens.get(j + 1).is_some_and(|t| t.chars().all(is_ident))
                {
                    path.push(tokens[j + 1].clone());
                    j += 2;
                }
                out.extend(absolute(&path, &module));
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// `path` made absolute from the crate root; `None` for a path that does
/// not start with `crate`, `super` or `self` (a dependency, or a parent
/// naming its own child module: the module tree itself, not an import).
fn absolute(path: &[String], module: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = module.to_vec();
    let mut rest = path;
    match path.first()?.as_str() {
        "crate" => {
            base.clear();
            rest = &path[1..];
        }
        "self" => rest = &path[1..],
        "super" => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    base.extend(rest.iter().filter(|s| *s != "self" && *s != "*").cloned());
    Some(base)
}

/// The paths a `use` tree names: `a::{b, c::{self, D}}` → `a::b`, `a::c`,
/// `a::c::D`. Renames (`as x`) are dropped.
fn use_tree(tokens: &[String]) -> Vec<Vec<String>> {
    fn walk(tokens: &[String], prefix: &[String], out: &mut Vec<Vec<String>>) {
        let mut path = prefix.to_vec();
        let mut i = 0;
        while i < tokens.len() {
            match tokens[i].as_str() {
                "::" => {}
                "{" => {
                    // Split the group at its top-level commas.
                    let mut depth = 0;
                    let mut start = i + 1;
                    for j in i..tokens.len() {
                        match tokens[j].as_str() {
                            "{" => depth += 1,
                            "}" => {
                                depth -= 1;
                                if depth == 0 {
                                    walk(&tokens[start..j], &path, out);
                                    return;
                                }
                            }
                            "," if depth == 1 => {
                                walk(&tokens[start..j], &path, out);
                                start = j + 1;
                            }
                            _ => {}
                        }
                    }
                    return;
                }
                "as" => break,
                t => path.push(t.to_string()),
            }
            i += 1;
        }
        if path.len() > prefix.len() {
            out.push(path);
        }
    }
    let mut out = Vec::new();
    walk(tokens, &[], &mut out);
    out
}

/// Identifiers, `::` and single punctuation, in order.
fn tokens(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_whitespace() {
            i += 1;
        } else if is_ident(c[i]) || (c[i] == '$' && c.get(i + 1).is_some_and(|&n| is_ident(n))) {
            let start = i;
            i += 1;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            out.push(c[i].to_string());
            i += 1;
        }
    }
    out
}

/// The methods of `trait NAME` and whether each has a default body.
fn trait_methods(code: &str, name: &str) -> Vec<(String, bool)> {
    let tokens = tokens(code);
    let start = (0..tokens.len())
        .find(|&i| tokens[i] == "trait" && tokens.get(i + 1) == Some(&name.to_string()))
        .unwrap_or_else(|| panic!("no trait {name}"));
    let open = (start..tokens.len()).find(|&i| tokens[i] == "{").unwrap();
    let mut methods = Vec::new();
    let mut depth = 0;
    let mut i = open;
    while i < tokens.len() {
        match tokens[i].as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            "fn" if depth == 1 => {
                // The signature ends at its first `;` (no body) or `{`
                // (a default body) outside parentheses and angle brackets.
                let mut nest = 0i32;
                let mut j = i + 2;
                while j < tokens.len() {
                    match tokens[j].as_str() {
                        "(" | "<" | "[" => nest += 1,
                        ")" | "]" => nest -= 1,
                        ">" if tokens[j - 1] != "-" => nest -= 1,
                        ";" | "{" if nest == 0 => break,
                        _ => {}
                    }
                    j += 1;
                }
                methods.push((tokens[i + 1].clone(), tokens[j] == "{"));
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    methods
}
