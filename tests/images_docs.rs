//! Docs are tests: the usage sections (console paste, Terraform single node,
//! Terraform cluster, Packer image) in README.md. Every
//! ```sh block runs, in order, in a scratch copy of the repo with the built
//! binaries on PATH. terraform and packer cannot reach a cloud here, so the
//! test defines them as shell functions that check what the real tools would
//! read (tests/images/hcl_refs.py check-*). Every `cube-firstboot VERB
//! --flag` and `cubeboot VERB --flag` quoted in the prose must exist.

#[path = "images/common.rs"]
mod common;

use std::process::Command;

use common::*;

const SECTIONS: [&str; 4] = [
    "Console paste",
    "Terraform: single node",
    "Terraform: cluster",
    "Packer image",
];

/// (heading, body) of every `## ` section of a markdown file.
fn sections(markdown: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_fence = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_fence = !in_fence;
        }
        if !in_fence && line.starts_with("## ") {
            out.push((line[3..].trim().to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// The contents of the ```sh fences in `body`.
fn sh_blocks(body: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in body.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The usage sections of README.md.
fn usage_sections() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut found = Vec::new();
    for (title, body) in sections(&text) {
        if SECTIONS.contains(&title.as_str()) && !found.iter().any(|(t, _)| *t == title) {
            found.push((title, body));
        }
    }
    let titles: Vec<&str> = found.iter().map(|(t, _)| t.as_str()).collect();
    for want in SECTIONS {
        assert!(
            titles.contains(&want),
            "section {want:?} is missing from the docs"
        );
    }
    found
}

#[test]
fn usage_sections_run_as_written() {
    let Some(python) = hcl_python() else { return };
    let scratch = scratch_repo();
    let mut script = String::from(
        "set -euo pipefail\n\
         terraform() { \"$HCL_PYTHON\" \"$HCL_REFS\" check-terraform \"$@\"; }\n\
         packer() { \"$HCL_PYTHON\" \"$HCL_REFS\" check-packer \"$@\"; }\n",
    );
    let mut count = 0;
    for (title, body) in usage_sections() {
        let blocks = sh_blocks(&body);
        assert!(!blocks.is_empty(), "section {title:?} has no sh block");
        for block in blocks {
            count += 1;
            script.push_str(&format!("echo '== {title}, block {count}' >&2\n"));
            script.push_str(&block);
        }
    }
    let out = Command::new("bash")
        .args(["-c", &script])
        .current_dir(scratch.path())
        .env("PATH", path_with_binaries())
        .env("HCL_PYTHON", &python)
        .env("HCL_REFS", repo().join("tests/images/hcl_refs.py"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the docs' commands failed:\n{stderr}\nstdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Every block ran (a `set -e` script that stopped early would not print these).
    for n in 1..=count {
        assert!(
            stderr.contains(&format!(", block {n}\n")),
            "block {n} did not run"
        );
    }
    // What the docs promise is there.
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("/usr/local/sbin/cube-firstboot"),
        "{listing}"
    );
    assert!(listing.contains("checked packer build of examples/packer: 1 files read"));
    assert!(listing.contains("checked terraform apply in examples/terraform/cluster"));
}

#[test]
fn a_failing_docs_command_fails_the_run() {
    // The harness must be able to fail: a terraform example pointed at a
    // payload that was never built.
    let Some(python) = hcl_python() else { return };
    let scratch = scratch_repo();
    let out = Command::new("bash")
        .args([
            "-c",
            "set -euo pipefail\n\"$HCL_PYTHON\" \"$HCL_REFS\" check-terraform \
             -chdir=examples/terraform/single-node apply\n",
        ])
        .current_dir(scratch.path())
        .env("HCL_PYTHON", &python)
        .env("HCL_REFS", repo().join("tests/images/hcl_refs.py"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("which does not exist"));
}

/// `cube-firstboot status --wait --timeout 3600` → ("cube-firstboot", "status", ["--wait", "--timeout"]).
fn quoted_commands(body: &str) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for (i, chunk) in body.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let words: Vec<&str> = chunk.split_whitespace().collect();
        match words.as_slice() {
            [bin @ ("cube-firstboot" | "cubeboot"), verb, rest @ ..]
                if verb.chars().all(|c| c.is_ascii_lowercase()) =>
            {
                let flags = rest
                    .iter()
                    .filter(|w| w.starts_with("--"))
                    .map(|w| w.split('=').next().unwrap_or(w).to_string())
                    .collect();
                out.push((bin.to_string(), verb.to_string(), flags));
            }
            _ => {}
        }
    }
    out
}

#[test]
fn commands_quoted_in_the_prose_exist_with_their_flags() {
    let mut checked = 0;
    for (title, body) in usage_sections() {
        for (bin, verb, flags) in quoted_commands(&body) {
            let exe = if bin == "cubeboot" {
                cubeboot()
            } else {
                helper()
            };
            let out = Command::new(&exe)
                .args([verb.as_str(), "--help"])
                .output()
                .unwrap();
            let help = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{title}: `{bin} {verb}` is not a verb"
            );
            for flag in flags {
                assert!(
                    help.contains(&flag),
                    "{title}: `{bin} {verb}` has no {flag}:\n{help}"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 6,
        "only {checked} flags quoted; the docs lost their commands?"
    );
}
