//! `cubeboot build --format overlay [--offline]` through the real CLI:
//! byte-identical on rebuild, listed by `cubeboot inspect` with the same
//! reader the tests use, readable by GNU tar and xz, and never carrying bytes
//! that do not match the lock.

#[path = "images/common.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use cubeboot::builder::overlay::{read_overlay, Kind, FALLBACK_MTIME};
use cubeboot::digest::Sha256Digest;

fn build(
    cwd: &Path,
    lock: &Path,
    out: &str,
    extra: &[&str],
    epoch: Option<&str>,
) -> std::process::Output {
    let mut cmd = Command::new(cubeboot());
    cmd.current_dir(cwd)
        .arg("build")
        .arg("--profiles-dir")
        .arg(repo().join("profiles"))
        .arg("--lock")
        .arg(lock)
        .args([
            "--profile",
            "debian-12",
            "--format",
            "overlay",
            "--output",
            out,
        ])
        .args(extra)
        .env_remove("SOURCE_DATE_EPOCH");
    if let Some(e) = epoch {
        cmd.env("SOURCE_DATE_EPOCH", e);
    }
    cmd.output().unwrap()
}

fn ok(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "cubeboot failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn rebuilds_are_byte_identical_and_inspect_lists_with_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let lock = fixture_lock(dir.path());
    // Two builds from different working and output directories.
    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b/c");
    fs::create_dir_all(&a_dir).unwrap();
    fs::create_dir_all(&b_dir).unwrap();
    // One cluster token file for both (a secret is an input: the first
    // build makes it, the second reads it).
    let token = dir.path().join("ops-token");
    let token = token.to_str().unwrap();
    ok(build(
        &a_dir,
        &lock,
        "out",
        &["--offline", "--ops-token-file", token],
        None,
    ));
    ok(build(
        &b_dir,
        &lock,
        "elsewhere",
        &["--offline", "--ops-token-file", token],
        None,
    ));
    let a = a_dir.join("out/debian-12");
    let b = b_dir.join("elsewhere/debian-12");
    for name in ["overlay.tar.xz", "plan.json", "SHA256SUMS"] {
        assert_eq!(
            fs::read(a.join(name)).unwrap(),
            fs::read(b.join(name)).unwrap(),
            "{name} differs between builds"
        );
    }
    let bytes = fs::read(a.join("overlay.tar.xz")).unwrap();
    let listed = read_overlay(&bytes).unwrap();
    assert!(listed
        .iter()
        .all(|l| l.mtime == FALLBACK_MTIME && l.uid == 0 && l.gid == 0));

    // The plan inside is the plan beside it; the cache holds each pinned
    // asset under its own SHA-256, content matching the name.
    let plan_bytes = fs::read(a.join("plan.json")).unwrap();
    let plan = listed
        .iter()
        .find(|l| l.path == "/etc/cubeboot/plan.json")
        .unwrap();
    assert_eq!(plan.sha256, Some(Sha256Digest::of(&plan_bytes)));
    assert_eq!(plan.mode, 0o600);
    let cached: Vec<_> = listed
        .iter()
        .filter(|l| l.path.starts_with("/var/lib/cubeboot/cache/") && l.kind == Kind::File)
        .collect();
    assert_eq!(cached.len(), 2, "kernel and bundle");
    for c in &cached {
        assert_eq!(
            c.path.rsplit('/').next().unwrap(),
            c.sha256.unwrap().to_hex(),
            "{} is not named by its content",
            c.path
        );
    }
    let plan_json: serde_json::Value = serde_json::from_slice(&plan_bytes).unwrap();
    for asset in ["kernel", "bundle"] {
        let sha = plan_json["assets"][asset]["sha256"].as_str().unwrap();
        assert!(
            cached.iter().any(|c| c.path.ends_with(sha)),
            "{asset} not cached"
        );
    }
    // The unit is enabled by a link, not by a command.
    let link = listed
        .iter()
        .find(|l| l.kind == Kind::Symlink)
        .expect("a wants link");
    assert!(
        link.path.ends_with(".wants/cube-firstboot.service"),
        "{}",
        link.path
    );
    assert_eq!(
        link.link_target.as_deref(),
        Some("/etc/systemd/system/cube-firstboot.service")
    );

    // `cubeboot inspect` prints exactly what the reader returns.
    let out = ok(Command::new(cubeboot())
        .arg("inspect")
        .arg(a.join("overlay.tar.xz"))
        .output()
        .unwrap());
    let lines: Vec<String> = listed.iter().map(ToString::to_string).collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        lines.join("\n") + "\n"
    );

    // GNU tar and xz agree: same paths, integrity check passes.
    let out = run(Command::new("xz")
        .arg("--test")
        .arg(a.join("overlay.tar.xz")));
    assert!(out.status.success());
    let out = run(Command::new("tar")
        .arg("-tJf")
        .arg(a.join("overlay.tar.xz")));
    let tar_paths: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| format!("/{}", l.trim_end_matches('/')))
        .collect();
    let ours: Vec<String> = listed.iter().map(|l| l.path.clone()).collect();
    assert_eq!(tar_paths, ours);
    let sums = fs::read_to_string(a.join("SHA256SUMS")).unwrap();
    assert!(sums.contains(&format!("{}  overlay.tar.xz\n", Sha256Digest::of(&bytes))));
}

#[test]
fn source_date_epoch_sets_every_mtime_and_without_offline_there_is_no_cache() {
    let dir = tempfile::tempdir().unwrap();
    let lock = fixture_lock(dir.path());
    ok(build(dir.path(), &lock, "out", &[], Some("1700000000")));
    let bytes = fs::read(dir.path().join("out/debian-12/overlay.tar.xz")).unwrap();
    let listed = read_overlay(&bytes).unwrap();
    assert!(listed.iter().all(|l| l.mtime == 1_700_000_000));
    assert!(!listed
        .iter()
        .any(|l| l.path.starts_with("/var/lib/cubeboot")));
    assert!(listed
        .iter()
        .any(|l| l.path == "/usr/local/sbin/cube-firstboot" && l.mode == 0o755));
}

#[test]
fn an_asset_changed_after_locking_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let lock = fixture_lock(dir.path());
    let bundle: PathBuf = fs::read_dir(dir.path().join("release"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .unwrap();
    let mut bytes = fs::read(&bundle).unwrap();
    let pinned = Sha256Digest::of(&bytes);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&bundle, &bytes).unwrap();
    let out = build(dir.path(), &lock, "out", &["--offline"], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "does not match its pin: expected {pinned}, computed {}",
            Sha256Digest::of(&bytes)
        )),
        "{stderr}"
    );
    assert!(!dir.path().join("out/debian-12").exists());
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("out"))
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn offline_without_the_overlay_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lock = fixture_lock(dir.path());
    let out = Command::new(cubeboot())
        .current_dir(dir.path())
        .arg("build")
        .arg("--profiles-dir")
        .arg(repo().join("profiles"))
        .arg("--lock")
        .arg(&lock)
        .args(["--profile", "debian-12", "--offline"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "--offline only applies to --format overlay (user-data cannot carry the assets)"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
