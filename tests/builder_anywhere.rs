//! The installed builder: works outside the repository (built-in profiles),
//! exports and re-reads its profiles, prints JSON for scripts, completions
//! and a man page.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run cubeboot in `cwd`; (success, stdout, stderr).
fn cubeboot(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cubeboot"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_built_in_profiles_are_the_repository_profiles() {
    let mut on_disk: Vec<(String, String)> = std::fs::read_dir(repo().join("profiles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    on_disk.sort();
    let built_in: Vec<(String, String)> = cubeboot::builder::profile::BUILT_IN
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    assert_eq!(built_in, on_disk, "profiles/ and profile::BUILT_IN differ");
}

#[test]
fn builds_outside_the_repository_and_reads_exported_profiles_back() {
    let tmp = tempfile::tempdir().unwrap();
    let lock = repo().join("examples/release/cubeboot.lock");
    let lock = lock.to_str().unwrap();
    // No profiles/ here: the built-in ones.
    let (ok, out, err) = cubeboot(
        tmp.path(),
        &["build", "--lock", lock, "--profile", "rocky-9", "--json"],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &v["payloads"][0];
    assert_eq!(p["profile"], "rocky-9");
    let size = std::fs::metadata(tmp.path().join("out/rocky-9/user-data"))
        .unwrap()
        .len();
    assert_eq!(p["files"]["user-data"]["size"], size);
    assert_eq!(p["budget"]["cloud"], "aws");
    assert!(p["budget"]["size"].as_u64().unwrap() > 0);
    assert!(v["webhook_secret_file"].is_null());

    // Export, edit, build from the edited copy.
    let (ok, _, err) = cubeboot(tmp.path(), &["profiles", "--export", "mine"]);
    assert!(ok, "{err}");
    let rocky = tmp.path().join("mine/rocky-9.yaml");
    let text = std::fs::read_to_string(&rocky).unwrap();
    std::fs::write(&rocky, text.replace("version:", "version: 7\nx:")).unwrap();
    let (ok, _, err) = cubeboot(
        tmp.path(),
        &[
            "build",
            "--lock",
            lock,
            "--profile",
            "rocky-9",
            "--profiles-dir",
            "mine",
        ],
    );
    assert!(!ok);
    assert!(err.contains("mine/rocky-9.yaml"), "{err}");
    // A second export keeps the edit and says so.
    let (ok, _, err) = cubeboot(tmp.path(), &["profiles", "--export", "mine"]);
    assert!(!ok);
    assert!(err.contains("left 1 edited file(s) as they are"), "{err}");
    assert!(std::fs::read_to_string(&rocky).unwrap().contains("x:"));
}

#[test]
fn profiles_and_check_print_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out, err) = cubeboot(tmp.path(), &["profiles", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["profiles"].as_array().unwrap().len(), 9);
    assert_eq!(v["profiles"][2]["name"], "debian-12");
    assert_eq!(v["profiles"][2]["family"], "deb");

    let lock = repo().join("examples/release/cubeboot.lock");
    let (ok, out, err) = cubeboot(
        tmp.path(),
        &["check", "--json", "--lock", lock.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["profiles"], 9);
    // A profile directory with a broken profile: the error, as JSON, with
    // its file, key and line.
    std::fs::create_dir_all(tmp.path().join("p")).unwrap();
    std::fs::write(
        tmp.path().join("p/bad.yaml"),
        "version: 1\ndescription: x\nsha265: 1\n",
    )
    .unwrap();
    let (ok, out, _) = cubeboot(tmp.path(), &["check", "--json", "--profiles-dir", "p"]);
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(d["severity"], "error", "{d}");
    assert!(d["file"].as_str().unwrap().ends_with("p/bad.yaml"), "{d}");
    assert!(d["key"].as_str().unwrap().starts_with('$'), "{d}");
}

#[test]
fn completions_and_man_page() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out, err) = cubeboot(tmp.path(), &["completions", "bash"]);
    assert!(ok, "{err}");
    assert!(out.contains("watch") && out.contains("--webhook-secret-file"));
    // bash parses it.
    let script = tmp.path().join("cubeboot.bash");
    std::fs::write(&script, &out).unwrap();
    let st = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success());
    for shell in ["zsh", "fish"] {
        let (ok, out, _) = cubeboot(tmp.path(), &["completions", shell]);
        assert!(ok && out.contains("mirror"), "{shell}");
    }
    let (ok, out, err) = cubeboot(tmp.path(), &["man"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(".ie") || out.contains(".TH cubeboot"),
        "{out}"
    );
    let (ok, _, err) = cubeboot(tmp.path(), &["man", "--to", "man1"]);
    assert!(ok, "{err}");
    assert!(tmp.path().join("man1/cubeboot-watch.1").is_file());
}
