//! Shared support for the images tests (tests/images_*.rs): where the repo
//! and the built binaries are, the python-hcl2 venv, and a temporary copy of
//! the repo's inputs in which documented commands run as a user would.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn cubeboot() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cubeboot"))
}

pub fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cube-firstboot"))
}

/// The venv python with python-hcl2 (.ci/run makes it): `CUBEBOOT_HCL_PYTHON`
/// or target/hcl-venv. Missing on a developer machine: `None` (the caller
/// skips, saying so); missing in CI (CI=true): a failure, never a skip.
pub fn hcl_python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("CUBEBOOT_HCL_PYTHON").map(PathBuf::from),
        Some(repo().join("target/hcl-venv/bin/python")),
    ];
    for c in candidates.into_iter().flatten() {
        let ok = Command::new(&c)
            .args(["-c", "import hcl2"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Some(c);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "python-hcl2 is missing: .ci/run installs it into target/hcl-venv \
         (or set CUBEBOOT_HCL_PYTHON)"
    );
    eprintln!(
        "SKIPPED: python-hcl2 not installed; run: python3 -m venv target/hcl-venv && \
         target/hcl-venv/bin/pip install python-hcl2==8.1.4"
    );
    None
}

/// Run tests/images/hcl_refs.py; returns its JSON report.
pub fn hcl_refs(python: &Path, args: &[&str], cwd: &Path) -> serde_json::Value {
    let script = repo().join("tests/images/hcl_refs.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running hcl_refs.py");
    assert!(
        out.status.success(),
        "hcl_refs.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("hcl_refs.py prints JSON")
}

/// Copy a directory tree (files and symlinks).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let ty = entry.file_type().unwrap();
        let dest = to.join(entry.file_name());
        if ty.is_dir() {
            copy_tree(&entry.path(), &dest);
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), &dest).unwrap();
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A scratch checkout: the inputs a user's clone has (profiles, examples,
/// templates, docs), with `out/` empty, so documented commands write nowhere
/// near the real repo.
pub fn scratch_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["profiles", "examples", "templates"] {
        let src = repo().join(sub);
        if src.exists() {
            copy_tree(&src, &dir.path().join(sub));
        }
    }
    fs::create_dir_all(dir.path().join("out")).unwrap();
    dir
}

/// A PATH with the freshly built `cubeboot` and `cube-firstboot` first.
pub fn path_with_binaries() -> String {
    let bins = cubeboot().parent().unwrap().to_path_buf();
    format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawning command");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The example release's fixture assets (kernel .rpm/.deb, bundle) and its
/// static helper, copied into `dir/release` and pinned by the real
/// `cubeboot lock` at a `file://` base that does not exist, so nothing built
/// from it can download anything. (The static helper, ~2.7 MB, not the
/// 90 MB debug one, keeps xz quick; `lock` reads a helper's architecture
/// from its ELF header, so it must be a real executable, docs/arm64.md.)
pub fn fixture_lock(dir: &Path) -> PathBuf {
    let rel = dir.join("release");
    fs::create_dir_all(&rel).unwrap();
    let mut lock = Command::new(cubeboot());
    lock.args(["lock", "--base-url", "file:///nonexistent/release"]);
    for entry in fs::read_dir(repo().join("examples/release")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let wanted = name.ends_with(".rpm")
            || name.ends_with(".deb")
            || name == "cube-firstboot"
            || (name.starts_with("cube-sandbox-one-click-") && name.ends_with(".tar.gz"));
        if wanted {
            fs::copy(repo().join("examples/release").join(&name), rel.join(&name)).unwrap();
            lock.arg("--asset").arg(rel.join(&name));
        }
    }
    lock.arg("--output").arg(rel.join("cubeboot.lock"));
    run(&mut lock);
    rel.join("cubeboot.lock")
}
