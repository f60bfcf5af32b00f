//! `cubeboot build --upgrade`: out/<profile>/upgrade.sh, parsed by the real
//! sh and run for real as `ssh root@NODE sh -s < upgrade.sh` runs it, inside
//! a private mount namespace where /var/lib is a fresh tmpfs (we are root;
//! nothing on this machine changes), against a 127.0.0.1 server. Only
//! `systemctl` and `systemd-run` are stubs that record their arguments.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::bootstrap::{served, served_with, which};
use crate::support::*;

/// `build --upgrade` of debian-12 into a new directory.
fn build_upgrade(lock: &Path, extra: &[&str]) -> tempfile::TempDir {
    let out = tempdir();
    let mut args = vec!["build", "--lock", lock.to_str().unwrap()];
    args.extend(["--profile", "debian-12", "--upgrade"]);
    args.extend(["--output", out.path().to_str().unwrap()]);
    args.extend_from_slice(extra);
    ok(&args);
    out
}

struct Ran {
    ok: bool,
    log: String,
    systemd_run: String,
    systemctl: String,
    helper: Option<(Vec<u8>, u32)>,
    plan: Option<(Vec<u8>, u32)>,
    leftovers: Vec<String>,
}

fn kept(path: &Path) -> Option<(Vec<u8>, u32)> {
    let bytes = std::fs::read(path).ok()?;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    Some((bytes, mode))
}

/// The helper built from this tree: upgrade.sh runs its `upgrade --check`.
fn this_helper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cube-firstboot"))
}

/// Feed `script` to `sh -s` on stdin, as ssh does, with only these tools,
/// on a node where /var/lib and /usr/local are fresh tmpfs and /etc an
/// overlay whose writes stay in the namespace; with `finished`, the node's
/// run of that plan file is done.
fn run_upgrade(script: &Path, finished: Option<&Path>) -> Ran {
    run_upgrade_beside(script, finished, "none")
}

/// [`run_upgrade`] while the unit `active` runs on the node.
fn run_upgrade_beside(script: &Path, finished: Option<&Path>, active: &str) -> Ran {
    let work = tempdir();
    let w = work.path();
    let mut seed = String::new();
    if let Some(plan) = finished {
        let text = std::fs::read_to_string(plan).unwrap();
        let digest = cubeboot::digest::Sha256Digest::of(text.as_bytes());
        let mut j = cubeboot::firstboot::journal::Journal::new(&digest.to_hex());
        j.finished = Some(cubeboot::firstboot::run_state::RunState::Done);
        std::fs::write(w.join("state.json"), serde_json::to_string(&j).unwrap()).unwrap();
        seed = format!(
            "mkdir -p /var/lib/cubeboot /etc/cubeboot\ncp {} /etc/cubeboot/plan.json\ncp {w}/state.json /var/lib/cubeboot/state.json",
            plan.display(),
            w = w.display()
        );
    }
    let tools = w.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    for t in ["mkdir", "rm", "chmod", "mv", "sha256sum", "base64", "curl"] {
        symlink(which(t), tools.join(t)).unwrap();
    }
    // systemctl: `is-active` says active only for `active`.
    for (stub, code) in [
        ("systemd-run", "0".to_string()),
        (
            "systemctl",
            format!("$([ \"$3\" = {active} ] && echo 0 || echo 3)"),
        ),
    ] {
        std::fs::write(
            tools.join(stub),
            format!(
                "#!/bin/sh\necho \"$*\" >> {}/{stub}.log\nexit {code}\n",
                w.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(tools.join(stub), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let runner = format!(
        r#"set -e
mount -t tmpfs tmpfs /var/lib
mount -t tmpfs tmpfs /usr/local
mkdir -p {w}/upper {w}/ovl
mount -t overlay overlay -o lowerdir=/etc,upperdir={w}/upper,workdir={w}/ovl /etc
{seed}
rc=0
env -i PATH={tools} /bin/sh -s < {script} > {w}/log 2>&1 || rc=$?
mkdir -p {w}/kept
cp -p /var/lib/cubeboot/cube-firstboot.upgrade {w}/kept/helper 2>/dev/null || true
cp -p /var/lib/cubeboot/plan.next.json {w}/kept/plan 2>/dev/null || true
ls -A /var/lib/cubeboot > {w}/listing 2>/dev/null || true
exit $rc
"#,
        tools = tools.display(),
        script = script.display(),
        w = w.display(),
    );
    std::fs::write(w.join("runner"), runner).unwrap();
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "/bin/sh"])
        .arg(w.join("runner"))
        .stdin(Stdio::null())
        .status()
        .unwrap();
    let read = |name: &str| std::fs::read_to_string(w.join(name)).unwrap_or_default();
    Ran {
        ok: status.success(),
        log: read("log"),
        systemd_run: read("systemd-run.log"),
        systemctl: read("systemctl.log"),
        helper: kept(&w.join("kept/helper")),
        plan: kept(&w.join("kept/plan")),
        leftovers: read("listing")
            .lines()
            .filter(|l| l.ends_with(".part"))
            .map(str::to_string)
            .collect(),
    }
}

#[test]
fn the_upgrade_payload_parses_and_is_reproducible_and_secret_with_the_plan() {
    let s = served();
    let a = build_upgrade(&s.lock, &["--webhook", "http://10.0.0.9:8740/"]);
    let script = a.path().join("debian-12/upgrade.sh");
    for shell in ["sh", "dash", "bash"] {
        if which_opt(shell).is_none() {
            continue;
        }
        let out = Command::new(shell).arg("-n").arg(&script).output().unwrap();
        assert!(out.status.success(), "{shell} -n: {out:?}");
    }
    // The plan carries the webhook secret: so does upgrade.sh.
    let mode = std::fs::metadata(&script).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let manifest = std::fs::read_to_string(a.path().join("debian-12/manifest.json")).unwrap();
    assert!(manifest.contains("\"upgrade.sh\""), "{manifest}");
    let sums = std::fs::read_to_string(a.path().join("debian-12/SHA256SUMS")).unwrap();
    assert!(sums.contains("  upgrade.sh\n"));
    // Same lock and secret, same bytes.
    let secret = a.path().join("webhook-secret");
    let b = build_upgrade(
        &s.lock,
        &[
            "--webhook",
            "http://10.0.0.9:8740/",
            "--webhook-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(&script).unwrap(),
        std::fs::read(b.path().join("debian-12/upgrade.sh")).unwrap()
    );
    // Without --upgrade there is none; with an overlay it is refused.
    let plain = tempdir();
    ok(&[
        "build",
        "--lock",
        s.lock.to_str().unwrap(),
        "--profile",
        "debian-12",
        "--output",
        plain.path().to_str().unwrap(),
    ]);
    assert!(!plain.path().join("debian-12/upgrade.sh").exists());
    let err = fails(&[
        "build",
        "--lock",
        s.lock.to_str().unwrap(),
        "--profile",
        "debian-12",
        "--upgrade",
        "--format",
        "overlay",
        "--output",
        plain.path().to_str().unwrap(),
    ]);
    assert!(
        err.contains("--upgrade writes upgrade.sh for running nodes"),
        "{err}"
    );
}

fn which_opt(tool: &str) -> Option<std::path::PathBuf> {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

#[test]
fn the_upgrade_payload_keeps_the_checked_helper_and_plan_then_starts_the_helper_detached() {
    let s = served_with(this_helper());
    // The node runs the plan of an earlier build (another node IP).
    let before = build_upgrade(&s.lock, &["--node-ip", "10.0.0.5"]);
    let out = build_upgrade(&s.lock, &[]);
    let node_plan = before.path().join("debian-12/plan.json");
    let r = run_upgrade(&out.path().join("debian-12/upgrade.sh"), Some(&node_plan));
    assert!(r.ok, "{}", r.log);
    let helper = std::fs::read(this_helper()).unwrap();
    assert_eq!(r.helper, Some((helper, 0o700)));
    let plan = std::fs::read(out.path().join("debian-12/plan.json")).unwrap();
    assert_eq!(r.plan, Some((plan, 0o600)));
    assert!(r.leftovers.is_empty(), "{:?}", r.leftovers);
    // The helper's own check said what changes before anything started.
    let sha = sha256_hex(this_helper());
    assert!(
        r.log
            .contains(&format!("helper none -> {}; kernel ", &sha[..12]))
            && r.log.contains("; bundle unchanged\n"),
        "{}",
        r.log
    );
    // No helper was running (the stub says inactive to each it was asked).
    assert_eq!(
        r.systemctl,
        "is-active --quiet cube-firstboot-upgrade.service\n\
         is-active --quiet cube-firstboot.service\n\
         is-active --quiet cube-firstboot-resume.service\n"
    );
    assert_eq!(
        r.systemd_run,
        format!(
            "--unit=cube-firstboot-upgrade --collect --quiet --property=EnvironmentFile=-/etc/cubeboot/environment \
             /var/lib/cubeboot/cube-firstboot.upgrade upgrade --to /var/lib/cubeboot/plan.next.json \
             --helper /var/lib/cubeboot/cube-firstboot.upgrade#{sha}\n"
        )
    );
}

#[test]
fn the_upgrade_payload_keeps_and_starts_nothing_when_the_helper_hash_differs() {
    let s = served();
    let out = build_upgrade(&s.lock, &[]);
    // The server now hands out other bytes than the lock pinned.
    std::fs::write(
        s.dir.path().join("cube-firstboot"),
        b"#!/bin/sh\necho evil\n",
    )
    .unwrap();
    let r = run_upgrade(&out.path().join("debian-12/upgrade.sh"), None);
    assert!(!r.ok);
    assert_eq!(r.helper, None);
    assert_eq!(r.plan, None);
    assert_eq!(r.systemd_run, "");
    assert!(r.leftovers.is_empty(), "{:?}", r.leftovers);
    let want = sha256_hex(&release().helper);
    assert!(
        r.log.ends_with(&format!(
            "cubeboot upgrade: no helper with sha256 {want}; nothing changed\n"
        )),
        "{}",
        r.log
    );
}

#[test]
fn the_upgrade_docs_scripts_parse_and_their_flags_exist() {
    let doc = std::fs::read_to_string(repo().join("docs/upgrades.md")).unwrap();
    let blocks: Vec<&str> = doc
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 2, "{blocks:?}");
    for block in &blocks {
        let mut sh = Command::new("sh")
            .arg("-n")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut sh.stdin.take().unwrap(), block.as_bytes()).unwrap();
        let out = sh.wait_with_output().unwrap();
        assert!(out.status.success(), "sh -n: {out:?}\n{block}");
    }
    // The loop goes on only on watch's "done" and stops on the others.
    let roll = blocks
        .iter()
        .find(|b| b.contains("cubeboot watch"))
        .unwrap();
    assert!(roll.contains("0) echo \"$node: done\" ;;"), "{roll}");
    let build = ok(&["build", "--help"]);
    assert!(build.contains("--upgrade"), "{build}");
    let watch = ok(&["watch", "--help"]);
    for flag in ["--listen", "--secret-file", "--timeout"] {
        assert!(roll.contains(flag) && watch.contains(flag), "{flag}");
    }
}

#[test]
fn the_helpers_refusal_reaches_the_operator_and_nothing_is_started() {
    let s = served_with(this_helper());
    let out = build_upgrade(&s.lock, &[]);
    // A node with no run yet: the helper refuses before anything starts.
    let r = run_upgrade(&out.path().join("debian-12/upgrade.sh"), None);
    assert!(!r.ok);
    assert_eq!(r.systemd_run, "");
    assert!(
        r.log.contains(
            "cube-firstboot: upgrade refused: no run on this node yet: an upgrade starts from a node whose first run is done\n"
        ) && r
            .log
            .ends_with("cubeboot upgrade: the helper refused (above); nothing changed\n"),
        "{}",
        r.log
    );
}

#[test]
fn the_upgrade_payload_waits_for_no_helper_but_refuses_beside_a_running_one() {
    let s = served();
    let out = build_upgrade(&s.lock, &[]);
    let script = out.path().join("debian-12/upgrade.sh");
    for unit in [
        "cube-firstboot-upgrade.service",
        "cube-firstboot-resume.service",
    ] {
        let r = run_upgrade_beside(&script, None, unit);
        assert!(!r.ok, "{unit}");
        assert_eq!((r.helper, r.plan), (None, None), "{unit}");
        assert_eq!(r.systemd_run, "", "{unit}");
        assert!(
            r.log.ends_with(&format!(
                "cubeboot upgrade: {unit} is running on this node (journalctl -u {unit}); nothing changed\n"
            )),
            "{}",
            r.log
        );
    }
}
