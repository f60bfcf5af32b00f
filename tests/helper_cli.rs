//! The built `cube-firstboot` binary: exit codes, bad plans, `status`,
//! `run --dry-run`, and a real `kill -9` in the middle of a download.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cubeboot::firstboot::host::{Host, ScriptedHost};
use cubeboot::firstboot::run_state::RunState;
use cubeboot::firstboot::status::exit;
use cubeboot::firstboot::{cache_path, JOURNAL_PATH, STATUS_PATH};
use cubeboot::plan::Plan;
use support::server::{Behavior, Server};
use support::target::{lay_out_machine, plan_json, tree, AssetFile};

const BIN: &str = env!("CARGO_BIN_EXE_cube-firstboot");

fn helper(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A target root the real host can run preflight against, with a plan
/// whose assets come from `urls`.
fn target_root(
    kernel: &AssetFile,
    kurl: &str,
    bundle: &AssetFile,
    burl: &str,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let host = ScriptedHost::new(dir.path());
    lay_out_machine(&host);
    host.put(
        "/etc/cubeboot/plan.json",
        plan_json((kernel, &[kurl.to_string()]), (bundle, &[burl.to_string()])),
    );
    dir
}

fn status_json(root: &Path) -> serde_json::Value {
    let p = root.join(STATUS_PATH.trim_start_matches('/'));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn bad_plans_exit_2_with_reason_and_hint_in_status_and_console() {
    let kernel = AssetFile::new("k.deb", 10, 1);
    let bundle = AssetFile::new("b.tgz", 10, 2);
    let good = plan_json(
        (&kernel, &["file:///k".into()]),
        (&bundle, &["file:///b".into()]),
    );
    let cases: Vec<(&str, Option<String>, &str, &str)> = vec![
        (
            "missing",
            None,
            "loading plan /etc/cubeboot/plan.json: reading /etc/cubeboot/plan.json: No such file or directory",
            "the payload did not deliver /etc/cubeboot/plan.json",
        ),
        (
            "truncated",
            Some(good[..good.len() / 2].to_string()),
            "loading plan /etc/cubeboot/plan.json: plan is not valid JSON: EOF while parsing",
            "/etc/cubeboot/plan.json is damaged or truncated",
        ),
        (
            "wrong version",
            Some(good.replacen("\"version\": 1", "\"version\": 7", 1)),
            "loading plan /etc/cubeboot/plan.json: plan version 7 is not supported by this helper (supported: [1])",
            "the plan is newer than this helper",
        ),
    ];
    for (name, content, error, hint) in cases {
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        lay_out_machine(&host);
        if let Some(c) = content {
            host.put("/etc/cubeboot/plan.json", c);
        }
        let before = tree(dir.path());
        let out = helper(&["run", "--root", dir.path().to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(exit::USAGE), "{name}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(error), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("hint: {hint}")),
            "{name}: {stderr}"
        );
        let status = status_json(dir.path());
        assert_eq!(status["state"], "failed: plan", "{name}");
        assert!(
            status["last_error"].as_str().unwrap().starts_with(error),
            "{name}"
        );
        assert!(
            status["hints"][0].as_str().unwrap().starts_with(hint),
            "{name}"
        );
        // Only the status file was written; no journal, nothing installed.
        let mut after = tree(dir.path());
        after.retain(|k, _| !k.starts_with("run/cubeboot"));
        assert_eq!(after, before, "{name}");

        let st = helper(&["status", "--root", dir.path().to_str().unwrap()]);
        assert_eq!(st.status.code(), Some(exit::FAILED), "{name}");
        assert!(
            text(&st.stdout).contains(&format!("hint:     {hint}")),
            "{name}"
        );
    }
}

#[test]
fn status_exit_codes_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let out = helper(&["status", "--root", root]);
    assert_eq!(out.status.code(), Some(exit::RUNNING));
    assert!(text(&out.stderr).contains("no run on this machine yet"));

    let host = ScriptedHost::new(dir.path());
    let mut s = cubeboot::firstboot::status::Status {
        state: RunState::Running,
        step: Some(cubeboot::firstboot::StepId::Fetch),
        ..Default::default()
    };
    s.write(&host).unwrap();
    let out = helper(&["status", "--root", root, "--json"]);
    assert_eq!(out.status.code(), Some(exit::RUNNING));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["step"], "fetch");
    // --wait gives up after the timeout with "still running".
    let out = helper(&["status", "--root", root, "--wait", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(exit::RUNNING));
    assert!(text(&out.stdout).starts_with("state:    running\nstep:     fetch\n"));

    s.state = RunState::Done;
    s.write(&host).unwrap();
    let out = helper(&["status", "--root", root, "--wait"]);
    assert_eq!(out.status.code(), Some(exit::DONE));
    s.state = RunState::Rebooting;
    s.write(&host).unwrap();
    assert_eq!(
        helper(&["status", "--root", root]).status.code(),
        Some(exit::REBOOTING)
    );

    let out = helper(&["status", "--timeout", "3"]);
    assert_eq!(out.status.code(), Some(2), "--timeout needs --wait");
}

#[test]
fn dry_run_prints_changes_in_order_and_makes_none() {
    let kernel = AssetFile::new("k.deb", 1000, 3);
    let bundle = AssetFile::new("b.tgz", 1000, 4);
    let dir = target_root(&kernel, "file:///srv/k.deb", &bundle, "file:///srv/b.tgz");
    let root = dir.path().to_str().unwrap();
    let before = tree(dir.path());
    let out = helper(&["run", "--dry-run", "--root", root]);
    assert_eq!(tree(dir.path()), before, "dry run changed files");
    let stdout = text(&out.stdout);
    let plan = Plan::from_json(
        &std::fs::read_to_string(dir.path().join("etc/cubeboot/plan.json")).unwrap(),
    )
    .unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in\n{stdout}"))
    };
    assert!(
        lines[0].starts_with("write   /run/cubeboot/status.json ("),
        "{stdout}"
    );
    assert!(pos("write   /var/lib/cubeboot/state.json") > 0);
    assert!(
        pos("mkdir   /var/lib/cubeboot/cache")
            < pos(&format!(
                "write   {} (1000 bytes)",
                cache_path(&plan.assets.kernel)
            ))
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("dry run:"), "{stderr}");
    assert!(
        stderr.contains("fetch kernel: would download file:///srv/k.deb"),
        "{stderr}"
    );
}

#[test]
fn kill_9_during_a_download_then_restart_resumes_it() {
    let server = Server::start();
    let kernel = AssetFile::new("k.deb", 4_000_000, 5);
    let bundle = AssetFile::new("b.tgz", 20_000, 6);
    server.route_with_default(
        "/k.deb",
        &kernel.bytes,
        vec![],
        Behavior::Slow {
            chunk: 64 * 1024,
            pause: Duration::from_millis(100),
        },
    );
    server.route("/b.tgz", &bundle.bytes, vec![]);
    let dir = target_root(
        &kernel,
        &server.url("/k.deb"),
        &bundle,
        &server.url("/b.tgz"),
    );
    let root = dir.path().to_str().unwrap();
    let plan = Plan::from_json(
        &std::fs::read_to_string(dir.path().join("etc/cubeboot/plan.json")).unwrap(),
    )
    .unwrap();
    let partial = dir
        .path()
        .join(format!("{}.partial", cache_path(&plan.assets.kernel)).trim_start_matches('/'));

    let mut child = Command::new(BIN)
        .args(["run", "--root", root, "--stop-after", "fetch"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once part of the kernel package is on disk.
    let mut seen = 0;
    for _ in 0..3000 {
        seen = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if seen >= 500_000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(seen >= 500_000, "download never got going");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < kernel.bytes.len() as u64);
    assert!(!dir
        .path()
        .join(cache_path(&plan.assets.kernel).trim_start_matches('/'))
        .exists());
    let journal: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(JOURNAL_PATH.trim_start_matches('/'))).unwrap(),
    )
    .unwrap();
    assert_eq!(journal["steps"]["fetch"]["state"], "started");

    // The unit restarts it: the download resumes where the kill left it.
    server.route("/k.deb", &kernel.bytes, vec![]);
    let out = helper(&["run", "--root", root, "--stop-after", "fetch"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let reqs = server.requests_to("/k.deb");
    let resumed = reqs.last().unwrap().range.clone().unwrap();
    let from: u64 = resumed
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    // It resumed exactly at what the killed process left on disk.
    assert_eq!(from, kept, "{resumed}");
    let host = ScriptedHost::new(dir.path());
    assert_eq!(
        host.read(&cache_path(&plan.assets.kernel)).unwrap(),
        kernel.bytes
    );
    assert_eq!(status_json(dir.path())["state"], "stopped");
}

#[test]
fn an_asset_missing_everywhere_fails_the_run_with_exit_1() {
    let server = Server::start();
    let kernel = AssetFile::new("k.deb", 1000, 7);
    let bundle = AssetFile::new("b.tgz", 1000, 8);
    server.route("/b.tgz", &bundle.bytes, vec![]);
    let dir = target_root(
        &kernel,
        &server.url("/nope.deb"),
        &bundle,
        &server.url("/b.tgz"),
    );
    let out = helper(&["run", "--root", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(exit::FAILED));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("step fetch: FAILED"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: not found (HTTP 404)",
            server.url("/nope.deb")
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: the asset is not at any of its URLs"),
        "{stderr}"
    );
    assert_eq!(status_json(dir.path())["state"], "failed: fetch");
}

/// Programs that change the machine they run on, shadowed first on PATH by
/// stand-ins that only log their command line to `log` and fail: a tripwire,
/// so a regression shows up as a logged line instead of a changed machine.
const MACHINE_CHANGERS: &[&str] = &[
    "apt-get",
    "apt-mark",
    "dnf",
    "yum",
    "dpkg",
    "rpm",
    "systemctl",
    "modprobe",
    "mount",
    "mkfs.xfs",
    "wipefs",
    "truncate",
    "nft",
    "timeout",
    "grubby",
    "grub-reboot",
    "grub-set-default",
    "grub-editenv",
    "update-grub",
    "reboot",
];

fn tripwire_path(dir: &Path, log: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    for name in MACHINE_CHANGERS {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\n{}echo \"{name} $*\" >> '{}'\nexit 1\n",
                // Queries change nothing: not logged (they fail all the same).
                if *name == "systemctl" {
                    "case \"$1\" in show|is-active|is-enabled|is-failed|status|cat) exit 1;; esac\n"
                } else {
                    ""
                },
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A root whose plan's assets are file:// URLs inside it, so `fetch`
/// completes without a server.
fn fetchable_root() -> tempfile::TempDir {
    let kernel = AssetFile::new("k.deb", 1000, 11);
    let bundle = AssetFile::new("b.tgz", 1000, 12);
    let dir = target_root(&kernel, "file:///srv/k.deb", &bundle, "file:///srv/b.tgz");
    let host = ScriptedHost::new(dir.path());
    host.put("/srv/k.deb", &kernel.bytes);
    host.put("/srv/b.tgz", &bundle.bytes);
    dir
}

fn helper_with_path(args: &[&str], path: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("PATH", path)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .unwrap()
}

#[test]
fn stop_after_a_step_already_done_stops_again_and_runs_nothing_more() {
    let dir = fetchable_root();
    let root = dir.path().to_str().unwrap();
    let wires = tempfile::tempdir().unwrap();
    let log = wires.path().join("ran.log");
    let path = tripwire_path(&wires.path().join("bin"), &log);
    for round in 1..=2 {
        let out = helper_with_path(&["run", "--root", root, "--stop-after", "fetch"], &path);
        assert_eq!(
            out.status.code(),
            Some(exit::DONE),
            "round {round}: {}",
            text(&out.stderr)
        );
        assert_eq!(status_json(dir.path())["state"], "stopped", "round {round}");
    }
    let ran = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(ran, "", "the helper ran programs past --stop-after fetch");
}

#[test]
fn with_a_temp_root_the_real_host_refuses_commands_that_change_this_machine() {
    let dir = fetchable_root();
    let root = dir.path().to_str().unwrap();
    let wires = tempfile::tempdir().unwrap();
    let log = wires.path().join("ran.log");
    let path = tripwire_path(&wires.path().join("bin"), &log);
    let out = helper_with_path(&["run", "--root", root], &path);
    assert_eq!(
        out.status.code(),
        Some(exit::FAILED),
        "{}",
        text(&out.stderr)
    );
    let ran = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(ran, "", "the helper ran programs on this machine");
    let st = status_json(dir.path());
    assert_eq!(st["state"], "failed: cube-prereqs", "{st}");
    let err = st["last_error"].as_str().unwrap();
    assert!(err.starts_with("refusing to run `"), "{err}");
    assert!(
        err.contains(&format!(
            "` on this machine: the helper works on {root}, not /, and this command would act on the running system"
        )),
        "{err}"
    );
}

/// `run --dry-run` of the example release's plan (as `cubeboot build`
/// writes it) on a machine already running the PVM kernel, with the assets
/// in the cache: the run goes through every step, and what it prints holds
/// real values (the node IP found by `ip`, the cached assets), never a
/// `<placeholder>`, and nothing under the root changes.
#[cfg(feature = "builder")]
#[test]
fn dry_run_of_the_example_plan_prints_real_values_not_placeholders() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let built = Command::new(env!("CARGO_BIN_EXE_cubeboot"))
        .args(["build", "--profile", "debian-12", "--lock"])
        .arg(repo.join("examples/release/cubeboot.lock"))
        // `auto` with no spare disk weighs the loopback image against this
        // machine's free space; the dry run is about placeholders, not that.
        .args(["--data-disk", "loopback", "--output"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built.stderr));
    let plan_path = out.path().join("debian-12/plan.json");
    let plan = Plan::from_json(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let host = ScriptedHost::new(dir.path());
    lay_out_machine(&host);
    // Already on the PVM kernel with its parameters; kvm_pvm not loaded yet
    // (a loaded one must answer KVM_GET_API_VERSION on a real /dev/kvm,
    // which no file under a temporary root can), so the dry run lists the
    // modprobe it would run.
    let kver = &plan.kernel.kver;
    host.put("/proc/sys/kernel/osrelease", format!("{kver}\n"));
    host.put(
        "/proc/cmdline",
        format!(
            "BOOT_IMAGE=/boot/vmlinuz-{kver} root=/dev/vda1 ro {} panic={}\n",
            plan.kernel.boot_params.join(" "),
            plan.kernel.panic_seconds
        ),
    );
    host.put("/proc/modules", "xfs 2043904 1 - Live 0x0\n");
    host.put(
        "/sys/fs/cgroup/cgroup.controllers",
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    );
    // The fetch step of an earlier run left the assets in the cache.
    for (_, asset) in plan.assets.all() {
        host.put(
            &cache_path(asset),
            std::fs::read(repo.join("examples/release").join(&asset.name)).unwrap(),
        );
    }
    let before = tree(dir.path());
    let run = helper(&[
        "run",
        "--dry-run",
        "--root",
        dir.path().to_str().unwrap(),
        "--plan",
        plan_path.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert_eq!(run.status.code(), Some(exit::DONE), "{stderr}");
    assert_eq!(tree(dir.path()), before, "a dry run changed files");
    let all = format!("{stdout}{stderr}");
    let placeholders: Vec<&str> = all
        .match_indices('<')
        .filter_map(|(i, _)| {
            let rest = &all[i + 1..];
            let end = rest.find('>')?;
            let word = &rest[..end];
            (!word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                .then(|| &all[i..i + end + 2])
        })
        .collect();
    assert!(placeholders.is_empty(), "{placeholders:?} in\n{all}");
    // The node IP is what `ip` reports on this machine, and the installer
    // line the dry run lists carries it.
    let ip = stderr
        .split("node IP ")
        .nth(1)
        .and_then(|s| s.split([',', ' ']).next())
        .unwrap_or_else(|| panic!("no node IP in\n{stderr}"));
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{ip:?}");
    assert!(
        stdout.contains(&format!("--node-ip={ip} --mode=install")),
        "{stdout}"
    );
    assert!(stderr.contains("already cached"), "{stderr}");
    assert!(stderr.contains("dry run: would load kvm_pvm"), "{stderr}");
}

#[test]
fn upgrade_needs_a_new_plan_or_a_bundle_and_refuses_a_node_with_no_run() {
    // Neither --to nor --bundle, or --helper without --to: usage.
    for args in [
        vec!["upgrade"],
        vec!["upgrade", "--bundle", "x", "--helper", "/x#y"],
    ] {
        let out = helper(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // A root with no run yet: refused with the reason and a hint, exit 1,
    // nothing written under the root.
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.next.json");
    std::fs::write(&plan, cubeboot::plan::testing::sample_plan().to_json()).unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let out = helper(&[
        "upgrade",
        "--root",
        root.to_str().unwrap(),
        "--to",
        plan.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "cube-firstboot: upgrade refused: no run on this node yet: an upgrade starts from a node whose first run is done\n\
         hint: provision the node with the user-data payload first (docs/upgrades.md)\n"
    );
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}
