//! The whole state machine against a temporary root: uninterrupted runs,
//! a kill at every step boundary, a crash inside a step, the reboot cap,
//! a reboot that never happened, bad input, and the dry run.

mod support;

use cubeboot::firstboot::host::{Action, Host};
use cubeboot::firstboot::journal::{Journal, StepState};
use cubeboot::firstboot::run_state::Failure;
use cubeboot::firstboot::runner::{RunEnd, Scope};
use cubeboot::firstboot::status::Status;
use cubeboot::firstboot::{cache_path, Outcome, StepId, JOURNAL_PATH, STATUS_PATH};
use cubeboot::layout::{RESUME_LINK, RESUME_UNIT_FILE};
use cubeboot::plan::Plan;
use support::target::{opts, read_json, stand_in_steps, tree, Target, UNIT_LINK};

#[test]
fn uninterrupted_run_reboots_once_and_finishes() {
    let mut t = Target::new();
    assert_eq!(t.run_once(&opts(Scope::All)), RunEnd::Rebooting);
    assert_eq!(t.host.reboots(), 1);
    // Before the reboot: the journal is on disk with the request.
    let j = read_json(&t.host, JOURNAL_PATH);
    assert_eq!(j["steps"]["reboot"]["state"], "reboot-requested");
    assert_eq!(j["reboots"], 1);
    // The data disk needs nothing from the new kernel: done before the reboot.
    assert_eq!(j["steps"]["data-disk"]["state"], "done");
    assert_eq!(read_json(&t.host, STATUS_PATH)["state"], "rebooting");
    // The next boot starts the helper by the resume unit, not after
    // cloud-final again; only one of the two units is enabled.
    assert!(!t.host.exists(UNIT_LINK));
    assert_eq!(
        t.host.read_link(RESUME_LINK).unwrap().as_deref(),
        Some("/etc/systemd/system/cube-firstboot-resume.service")
    );
    assert_eq!(
        t.host
            .read_string("/etc/systemd/system/cube-firstboot-resume.service")
            .unwrap(),
        RESUME_UNIT_FILE
    );
    t.reboot();
    assert_eq!(t.run_once(&opts(Scope::All)), RunEnd::Done);
    assert_eq!(t.host.reboots(), 1);

    let status = read_json(&t.host, STATUS_PATH);
    assert_eq!(status["state"], "done");
    assert_eq!(status["progress"]["done"], StepId::ALL.len());
    assert_eq!(status["checks"]["cube-api"]["ok"], true);
    assert_eq!(status["hostname"], "node-1");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.starts_with("cube-firstboot finished: debian-12 (control) is a Cube Sandbox node"),
        "{message}"
    );
    // The last console line is the final message; the unit is disabled.
    assert_eq!(t.host.said().last().unwrap(), message);
    assert!(!t.host.exists(UNIT_LINK));
    assert!(!t.host.exists(RESUME_LINK));
    let disable = format!(
        "systemctl --root={} disable cube-firstboot.service cube-firstboot-resume.service",
        t.root().display()
    );
    assert!(
        t.host.commands().contains(&disable),
        "{:?}",
        t.host.commands()
    );
    // Both assets verified into the cache.
    let (plan, _) = t.plan();
    assert_eq!(
        t.host.read(&cache_path(&plan.assets.kernel)).unwrap(),
        t.kernel.bytes
    );
    assert_eq!(
        t.host.read(&cache_path(&plan.assets.bundle)).unwrap(),
        t.bundle.bytes
    );
    // A later start (the unit would not start it, a person might) is a no-op.
    let before = tree(t.root());
    assert_eq!(t.run_once(&opts(Scope::All)), RunEnd::Done);
    assert_eq!(tree(t.root()), before);
}

#[test]
fn killed_at_every_step_boundary_ends_like_an_uninterrupted_run() {
    let mut reference = Target::new();
    assert_eq!(reference.run_to_end(&opts(Scope::All), 5), RunEnd::Done);
    let want = tree(reference.root());
    assert!(want.contains_key("var/lib/cubeboot/state.json"));

    for step in StepId::ALL {
        let mut t = Target::new();
        // Run until the helper stops after `step` (rebooting on the way when
        // the step lies after the reboot), i.e. kill it at that boundary.
        let mut stopped = false;
        for _ in 0..4 {
            match t.run_once(&opts(Scope::StopAfter(step))) {
                RunEnd::Stopped(s) => {
                    assert_eq!(s, step);
                    stopped = true;
                    break;
                }
                RunEnd::Rebooting => t.reboot(),
                other => panic!("stop after {step}: {other:?}"),
            }
        }
        // The reboot step ends the process itself, by rebooting.
        assert!(
            stopped || step == StepId::Reboot,
            "never stopped after {step}"
        );
        // A kill also empties nothing but the process; the unit restarts it.
        assert_eq!(
            t.run_to_end(&opts(Scope::All), 4),
            RunEnd::Done,
            "after {step}"
        );
        assert_eq!(t.host.reboots(), 1, "after {step}: reboots");
        let got = tree(t.root());
        if got != want {
            let diff: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .map(|(k, _)| k.clone())
                .chain(got.keys().filter(|k| !want.contains_key(*k)).cloned())
                .collect();
            let first = &diff[0];
            panic!(
                "killed after {step}: final tree differs at {diff:?}\nwant {first}:\n{}\ngot:\n{}",
                want.get(first).cloned().unwrap_or_default(),
                got.get(first).cloned().unwrap_or_default()
            );
        }
    }
}

#[test]
fn a_crash_inside_a_step_repeats_that_step_only() {
    let mut reference = Target::new();
    assert_eq!(reference.run_to_end(&opts(Scope::All), 5), RunEnd::Done);
    let want = tree(reference.root());

    let mut t = Target::new();
    let o = opts(Scope::All);
    let (plan, digest) = t.plan();
    // The install step does half its work, then the process dies.
    let crashing = stand_in_steps(&o).with(StepId::CubeInstall, |ctx| {
        ctx.host
            .write_atomic("/usr/local/services/cubetoolbox/half", b"x", 0o644)?;
        panic!("power cut");
    });
    assert_eq!(
        cubeboot::firstboot::runner::run_with(&t.host, &plan, &digest, &o, &crashing).unwrap(),
        RunEnd::Rebooting
    );
    t.reboot();
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cubeboot::firstboot::runner::run_with(&t.host, &plan, &digest, &o, &crashing)
    }));
    assert!(crashed.is_err());
    let j = read_json(&t.host, JOURNAL_PATH);
    assert_eq!(j["steps"]["cube-install"]["state"], "started");
    assert_eq!(j["steps"]["cube-verify"], serde_json::Value::Null);
    // Restarted with the real step: it runs again, and the rest follows.
    assert_eq!(t.run_to_end(&o, 2), RunEnd::Done);
    let _ = std::fs::remove_file(t.host.path("/usr/local/services/cubetoolbox/half"));
    assert_eq!(tree(t.root()), want);
}

#[test]
fn reboots_are_capped_even_when_the_kernel_stage_keeps_asking() {
    let mut t = Target::new();
    let o = opts(Scope::All);
    let (plan, digest) = t.plan();
    assert_eq!(plan.max_reboots, 1);
    // A verify that always finds the old kernel and re-arms the trial boot.
    let stubborn = stand_in_steps(&o).with(StepId::KernelVerify, |ctx| {
        ctx.journal.steps.remove(&StepId::KernelBoot);
        ctx.journal.steps.remove(&StepId::Reboot);
        Err(anyhow::anyhow!("still on the old kernel"))
    });
    let mut ends = Vec::new();
    for _ in 0..6 {
        let end =
            cubeboot::firstboot::runner::run_with(&t.host, &plan, &digest, &o, &stubborn).unwrap();
        ends.push(end.clone());
        if end == RunEnd::Rebooting {
            t.reboot();
        }
        // Even with --retry semantics, the cap holds.
        let retry = cubeboot::firstboot::runner::RunOptions {
            retry_failed: true,
            ..o.clone()
        };
        let end = cubeboot::firstboot::runner::run_with(&t.host, &plan, &digest, &retry, &stubborn)
            .unwrap();
        if end == RunEnd::Rebooting {
            t.reboot();
        }
    }
    assert_eq!(t.host.reboots(), 1, "{ends:?}");
    let status = read_json(&t.host, STATUS_PATH);
    assert!(
        status["state"].as_str().unwrap().starts_with("failed"),
        "{status}"
    );
    let journal: Journal =
        serde_json::from_str(&t.host.read_string(JOURNAL_PATH).unwrap()).unwrap();
    assert_eq!(journal.reboots, 1);
    assert!(
        journal
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("reboot cap reached")
            || journal
                .last_error
                .as_deref()
                .unwrap_or("")
                .contains("still on the old kernel"),
        "{:?}",
        journal.last_error
    );
}

#[test]
fn a_reboot_that_did_not_happen_is_requested_again_not_counted_again() {
    let mut t = Target::new();
    assert_eq!(t.run_once(&opts(Scope::All)), RunEnd::Rebooting);
    // Killed before systemd rebooted: same boot id on the next start.
    assert_eq!(t.run_once(&opts(Scope::All)), RunEnd::Rebooting);
    assert_eq!(t.host.reboots(), 2, "asked twice");
    let j = read_json(&t.host, JOURNAL_PATH);
    assert_eq!(j["reboots"], 1, "counted once");
    assert_eq!(j["steps"]["kernel-verify"], serde_json::Value::Null);
    t.reboot();
    assert_eq!(t.run_once(&opts(Scope::All)), RunEnd::Done);
}

#[test]
fn distro_mismatch_fails_in_preflight_with_a_hint_and_changes_nothing() {
    let t = Target::new();
    t.host.put(
        "/etc/os-release",
        "ID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"24.04\"\n",
    );
    let end = t.run_once(&opts(Scope::All));
    assert_eq!(end, RunEnd::Failed(Failure::Step(StepId::Preflight)));
    let status = read_json(&t.host, STATUS_PATH);
    assert_eq!(status["state"], "failed: preflight");
    assert_eq!(
        status["last_error"],
        "preflight: this machine runs ubuntu 24.04, the plan was built for profile debian-12 (debian 12)"
    );
    assert_eq!(
        status["hints"][0],
        "build the payload with the profile for ubuntu 24.04, or boot a debian 12 image"
    );
    let said = t.host.said().join("\n");
    assert!(said.contains("step preflight: FAILED"), "{said}");
    assert!(
        said.contains("hint: build the payload with the profile for ubuntu 24.04"),
        "{said}"
    );
    // Nothing fetched, nothing run.
    assert!(t
        .host
        .list_dir("/var/lib/cubeboot/cache")
        .unwrap()
        .is_empty());
    assert!(t.host.commands().is_empty());
    // A later start keeps it failed and says so again (status rebuilt).
    let _ = std::fs::remove_dir_all(t.host.path("/run/cubeboot"));
    assert_eq!(
        t.run_once(&opts(Scope::All)),
        RunEnd::Failed(Failure::Step(StepId::Preflight))
    );
    assert_eq!(
        read_json(&t.host, STATUS_PATH)["state"],
        "failed: preflight"
    );
}

#[test]
fn preflight_reports_every_problem_at_once() {
    let t = Target::new();
    t.host.put("/proc/meminfo", "MemTotal: 4000000 kB\n");
    t.host.set_free_bytes(Some(1024 * 1024 * 1024));
    let _ = std::fs::remove_file(t.host.path("/run/cloud-init/result.json"));
    let t0 = t.host.now();
    assert!(matches!(t.run_once(&opts(Scope::All)), RunEnd::Failed(_)));
    let status = read_json(&t.host, STATUS_PATH);
    let err = status["last_error"].as_str().unwrap();
    assert!(err.starts_with("preflight found 3 problems:"), "{err}");
    assert!(
        err.contains("4000000 kB of memory; Cube Sandbox needs at least 7500000 kB"),
        "{err}"
    );
    assert!(
        err.contains("1024 MiB free on /; at least 4096 MiB"),
        "{err}"
    );
    assert!(
        err.contains("cloud-init did not finish within 900s"),
        "{err}"
    );
    // The wait was bounded and slept through the host (virtual clock).
    let waited = t.host.now().duration_since(t0).unwrap().as_secs();
    assert!((900..=905).contains(&waited), "waited {waited}s");
}

#[test]
fn cloud_init_finishing_late_is_waited_for() {
    let t = Target::new();
    let result = t.host.path("/run/cloud-init/result.json");
    let saved = std::fs::read(&result).unwrap();
    std::fs::remove_file(&result).unwrap();
    // cloud-init writes its result while the helper waits: emulate it with
    // a responder-free trick, a thread that writes after real time passes
    // would race the virtual clock, so stop after preflight and check the
    // wait, then let cloud-init "finish" and retry.
    assert!(matches!(
        t.run_once(&opts(Scope::StopAfter(StepId::Preflight))),
        RunEnd::Failed(_)
    ));
    std::fs::write(&result, saved).unwrap();
    let o = cubeboot::firstboot::runner::RunOptions {
        retry_failed: true,
        ..opts(Scope::StopAfter(StepId::Preflight))
    };
    assert_eq!(t.run_once(&o), RunEnd::Stopped(StepId::Preflight));
}

#[test]
fn full_disk_fails_fetch_before_downloading() {
    let t = Target::new();
    // Enough for preflight's 4 GiB on /, and the cache shares it... so make
    // preflight pass first, then shrink the disk for fetch.
    assert_eq!(
        t.run_once(&opts(Scope::StopAfter(StepId::Preflight))),
        RunEnd::Stopped(StepId::Preflight)
    );
    t.host.set_free_bytes(Some(100_000));
    assert_eq!(
        t.run_once(&opts(Scope::All)),
        RunEnd::Failed(Failure::Step(StepId::Fetch))
    );
    let status = read_json(&t.host, STATUS_PATH);
    let err = status["last_error"].as_str().unwrap();
    assert!(
        err.starts_with(
            "not enough free space in /var/lib/cubeboot/cache: the downloads need 361.3 KiB"
        ),
        "{err}"
    );
    assert!(
        status["hints"][0]
            .as_str()
            .unwrap()
            .starts_with("free space"),
        "{status}"
    );
    assert!(t
        .host
        .list_dir("/var/lib/cubeboot/cache")
        .unwrap()
        .is_empty());
    // Space freed, retried: the run goes on.
    t.host.set_free_bytes(Some(support::target::FREE_BYTES));
    let o = cubeboot::firstboot::runner::RunOptions {
        retry_failed: true,
        ..opts(Scope::StopAfter(StepId::Fetch))
    };
    assert_eq!(t.run_once(&o), RunEnd::Stopped(StepId::Fetch));
}

#[test]
fn asset_missing_on_every_mirror_fails_with_a_hint_and_installs_nothing() {
    let t = Target::with_plan_edit(|p| {
        p["assets"]["kernel"]["urls"] =
            serde_json::json!(["file:///srv/gone-1.deb", "file:///srv/gone-2.deb"]);
    });
    assert_eq!(
        t.run_once(&opts(Scope::All)),
        RunEnd::Failed(Failure::Step(StepId::Fetch))
    );
    let status = read_json(&t.host, STATUS_PATH);
    let err = status["last_error"].as_str().unwrap();
    assert!(err.contains("every mirror failed"), "{err}");
    assert!(err.contains("file:///srv/gone-1.deb: not found"), "{err}");
    assert!(status["hints"][0]
        .as_str()
        .unwrap()
        .starts_with("the asset is not at any of its URLs"));
    // The bundle still arrived (parallel, independent), the kernel did not,
    // and no later step ran.
    let (plan, _) = t.plan();
    assert!(t.host.exists(&cache_path(&plan.assets.bundle)));
    assert!(!t.host.exists(&cache_path(&plan.assets.kernel)));
    assert!(!t
        .host
        .exists(&format!("/boot/vmlinuz-{}", plan.kernel.kver)));
    let kernel_install = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "kernel-install")
        .unwrap();
    assert_eq!(kernel_install["state"], "pending");
}

#[test]
fn secrets_from_the_installer_environment_never_reach_the_status() {
    let t = Target::new();
    let o = opts(Scope::All);
    let (plan, digest) = t.plan();
    let leaky = stand_in_steps(&o).with(StepId::Preflight, |ctx| {
        let pass = ctx.plan.cube.extra_env["CUBE_SANDBOX_MYSQL_PASSWORD"].clone();
        Err(anyhow::anyhow!(
            "command failed: CUBE_SANDBOX_MYSQL_PASSWORD={pass} bash install.sh"
        ))
    });
    let end = cubeboot::firstboot::runner::run_with(&t.host, &plan, &digest, &o, &leaky).unwrap();
    assert!(matches!(end, RunEnd::Failed(_)));
    let text = t.host.read_string(STATUS_PATH).unwrap();
    assert!(!text.contains("s3cret-db-pass"), "{text}");
    assert!(text.contains("CUBE_SANDBOX_MYSQL_PASSWORD=***"), "{text}");
}

#[test]
fn dry_run_records_changes_in_order_and_makes_none() {
    let t = Target::new();
    let dry = cubeboot::firstboot::host::ScriptedHost::new(t.root()).dry_run();
    support::target::lay_out_machine(&dry);
    let before = tree(t.root());
    let (plan, digest) = t.plan();
    let o = opts(Scope::All);
    let end = cubeboot::firstboot::runner::run_with(&dry, &plan, &digest, &o, &stand_in_steps(&o))
        .unwrap();
    assert_eq!(end, RunEnd::Rebooting);
    assert_eq!(tree(t.root()), before, "a dry run changed files");
    let actions: Vec<String> = dry.actions().iter().map(|a| a.to_string()).collect();
    let pos = |needle: &str| {
        actions
            .iter()
            .position(|a| a.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {actions:#?}"))
    };
    let kernel_cache = cache_path(&plan.assets.kernel);
    assert!(pos("write   /run/cubeboot/status.json") < pos("write   /var/lib/cubeboot/state.json"));
    assert!(pos("mkdir   /var/lib/cubeboot/cache") < pos(&format!("write   {kernel_cache}")));
    assert!(
        pos(&format!("write   {kernel_cache}"))
            < pos(&format!("write   /boot/vmlinuz-{}", plan.kernel.kver))
    );
    assert_eq!(actions.last().unwrap(), "reboot");
    assert!(dry.actions().contains(&Action::Reboot));
}

#[test]
fn stand_in_steps_cover_every_step_but_the_reboot() {
    // Guard for the tests above: if a new step appears, the stand-ins must
    // learn it (the standard table would bail "not written yet").
    let t = Target::new();
    let mut t = t;
    assert_eq!(t.run_to_end(&opts(Scope::All), 3), RunEnd::Done);
    let status = Status::current(&t.host).unwrap().unwrap();
    // A finished run shows no step still waiting for its reboot: kernel-boot
    // reads done once the reboot came (issue 22 §12), in the file and in
    // what `cube-firstboot status` prints.
    let human = status.human();
    assert!(!human.contains("reboot-requested"), "{human}");
    for s in status.steps {
        let fine = s.state == Some(StepState::Done) || s.state == Some(StepState::Skipped);
        assert!(fine, "{} is {:?}", s.name, s.state);
    }
    let _ = Outcome::Done(String::new());
}

#[test]
fn webhook_gets_each_step_change_and_the_end_without_secrets() {
    let hook = support::server::Server::start();
    hook.route("/hook", b"", vec![]);
    let url = format!("{}?token=abc", hook.url("/hook"));
    let mut t = Target::with_plan_edit(|p| p["report"]["webhook"] = serde_json::json!(url));
    assert_eq!(t.run_to_end(&opts(Scope::All), 3), RunEnd::Done);
    let posts = hook.requests_to("/hook");
    let states: Vec<(String, String)> = posts
        .iter()
        .map(|r| {
            assert_eq!(r.method, "POST");
            assert_eq!(r.headers["content-type"], "application/json");
            let body = String::from_utf8(r.body.clone()).unwrap();
            assert!(!body.contains("s3cret-db-pass"), "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            (
                v["state"].as_str().unwrap().to_string(),
                v["step"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // The bundle's download ended beside the kernel stage and was recorded
    // then: its step has nothing left to run.
    let mut want: Vec<(String, String)> = StepId::ALL
        .iter()
        .filter(|s| **s != StepId::Bundle)
        .map(|s| ("running".to_string(), s.name().to_string()))
        .collect();
    // The reboot comes after the reboot step starts; then the rest.
    let reboot_starts = want.iter().position(|(_, s)| s == "reboot").unwrap();
    want.insert(reboot_starts + 1, ("rebooting".into(), "reboot".into()));
    want.push(("done".into(), String::new()));
    assert_eq!(states, want);
}

#[test]
fn each_installer_phase_is_posted_at_once_and_shown_by_status() {
    let hook = support::server::Server::start();
    hook.route("/hook", b"", vec![]);
    let url = hook.url("/hook");
    let mut t = Target::with_plan_edit(|p| p["report"]["webhook"] = serde_json::json!(url));
    let o = opts(Scope::StopAfter(StepId::CubeInstall));
    let (plan, digest) = t.plan();
    // The clock stands still: no rate limit lets these through, only the
    // rule that a phase change is posted at once.
    let steps = stand_in_steps(&o).with(StepId::CubeInstall, |ctx| {
        for phase in ["checking the host", "installing services"] {
            cubeboot::firstboot::status::set_phase(ctx.host, &ctx.progress, phase)?;
        }
        // What `cube-firstboot status` shows a person meanwhile.
        for _ in 0..200 {
            let now = Status::current(ctx.host)?.unwrap_or_default();
            if now.phase == "installing services" {
                assert!(now.human().contains("phase:    installing services"));
                return Ok(Outcome::Done("installed".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        anyhow::bail!("the status file never showed the last phase")
    });
    let mut end = RunEnd::Rebooting;
    for _ in 0..2 {
        end = cubeboot::firstboot::runner::run_with(&t.host, &plan, &digest, &o, &steps).unwrap();
        if end != RunEnd::Rebooting {
            break;
        }
        t.reboot();
    }
    assert_eq!(end, RunEnd::Stopped(StepId::CubeInstall));
    let posts: Vec<(String, String)> = hook
        .requests_to("/hook")
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            (
                v["step"].as_str().unwrap().to_string(),
                v["phase"].as_str().unwrap_or_default().to_string(),
            )
        })
        .filter(|(step, _)| step == "cube-install")
        .collect();
    let phases: Vec<&str> = posts.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(phases, ["", "checking the host", "installing services"]);
}

#[test]
fn a_dead_webhook_never_fails_the_run() {
    let hook = support::server::Server::start();
    hook.route_with_default("/hook", b"", vec![], support::server::Behavior::Status(500));
    let url = hook.url("/hook");
    let mut t = Target::with_plan_edit(|p| p["report"]["webhook"] = serde_json::json!(url));
    assert_eq!(t.run_to_end(&opts(Scope::All), 3), RunEnd::Done);
    // One report per step start, the reboot and the end, over two runs
    // (the reboot splits them): the first report of each run is retried
    // (6 attempts), then, the webhook being down, each later one tries once.
    // The bundle step does not start: its download, beside the kernel
    // stage, was recorded when it ended.
    let reports = StepId::ALL.len() - 1 + 2;
    assert_eq!(hook.requests_to("/hook").len(), 2 * 6 + (reports - 2));
    let said = t.host.said().join("\n");
    assert!(
        said.contains(&format!(
            "webhook {url}: {url}: HTTP 500; continuing without it"
        )),
        "{said}"
    );
}

#[test]
fn retry_fetches_again_a_cache_file_that_went_bad() {
    let mut t = Target::new();
    assert_eq!(
        t.run_once(&opts(Scope::StopAfter(StepId::Fetch))),
        RunEnd::Stopped(StepId::Fetch)
    );
    let (plan, _) = t.plan();
    // Torn by a power cut after the fetch step was recorded.
    t.host.put(&cache_path(&plan.assets.kernel), b"");
    assert_eq!(
        t.run_once(&opts(Scope::All)),
        RunEnd::Failed(Failure::Step(StepId::KernelInstall))
    );
    let retry = cubeboot::firstboot::runner::RunOptions {
        retry_failed: true,
        ..opts(Scope::All)
    };
    assert_eq!(t.run_to_end(&retry, 3), RunEnd::Done);
    assert_eq!(
        t.host.read(&cache_path(&plan.assets.kernel)).unwrap(),
        t.kernel.bytes
    );
    let status = read_json(&t.host, STATUS_PATH);
    assert_eq!(status["state"], "done");
    assert_eq!(status["last_error"], serde_json::Value::Null);
}

#[test]
fn stop_after_a_step_that_is_already_done_stops_there_again() {
    let t = Target::new();
    let o = opts(Scope::StopAfter(StepId::Fetch));
    assert_eq!(t.run_once(&o), RunEnd::Stopped(StepId::Fetch));
    let before = tree(t.root());
    // The second `run --stop-after fetch` used to skip the completed steps
    // before looking at the stop, and went on into cube-prereqs.
    assert_eq!(t.run_once(&o), RunEnd::Stopped(StepId::Fetch));
    assert!(!t.host.exists("/var/lib/test/prereqs"));
    assert!(t.host.commands().is_empty(), "{:?}", t.host.commands());
    let j = read_json(&t.host, JOURNAL_PATH);
    assert_eq!(j["steps"]["cube-prereqs"], serde_json::Value::Null);
    let mut after = tree(t.root());
    // Only the status file's timestamp may differ.
    after.remove("run/cubeboot/status.json");
    let mut before = before;
    before.remove("run/cubeboot/status.json");
    assert_eq!(after, before);
}

/// One start of the helper whose `step` resets the machine mid-way (a
/// kernel panic, a watchdog): the process dies inside the step.
fn start_and_reset_during(t: &mut Target, step: StepId) {
    let o = opts(Scope::All);
    let (plan, digest) = t.plan();
    let resetting = stand_in_steps(&o).with(step, move |_ctx| panic!("machine reset in {step}"));
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cubeboot::firstboot::runner::run_with(&t.host, &plan, &digest, &o, &resetting)
    }));
    match ran {
        Err(_) => t.reboot(),
        Ok(end) => panic!("{step} was not started: {end:?}"),
    }
}

#[test]
fn a_step_interrupted_by_two_unexpected_reboots_is_not_started_a_third_time() {
    let mut t = Target::new();
    assert_eq!(t.run_once(&opts(Scope::All)), RunEnd::Rebooting);
    t.reboot();
    // kvm-load crashes the machine in two boots running.
    start_and_reset_during(&mut t, StepId::KvmLoad);
    start_and_reset_during(&mut t, StepId::KvmLoad);
    let j = read_json(&t.host, JOURNAL_PATH);
    assert_eq!(j["steps"]["kvm-load"]["state"], "started");
    assert_eq!(
        j["steps"]["kvm-load"]["boots"],
        serde_json::json!(["boot-2", "boot-3"])
    );

    // The third boot: the step is refused, not run (its stand-in would
    // write the modules-load file).
    let end = t.run_once(&opts(Scope::All));
    assert_eq!(end, RunEnd::Failed(Failure::Interrupted(StepId::KvmLoad)));
    assert!(!t.host.exists("/etc/modules-load.d/kvm-pvm.conf"));
    assert_eq!(t.host.reboots(), 1, "no reboot asked for");
    let status = read_json(&t.host, STATUS_PATH);
    assert_eq!(
        status["state"],
        "failed: kvm-load interrupted by unexpected reboots"
    );
    assert_eq!(status["step"], "kvm-load");
    let err = status["last_error"].as_str().unwrap();
    assert!(
        err.contains("kvm-load was started in boots boot-2 and boot-3 and never finished"),
        "{err}"
    );
    assert!(
        status["hints"][0]
            .as_str()
            .unwrap()
            .contains("journalctl -b -1"),
        "{status}"
    );
    // Later starts keep it failed (the unit starts the helper every boot).
    t.reboot();
    assert_eq!(
        t.run_once(&opts(Scope::All)),
        RunEnd::Failed(Failure::Interrupted(StepId::KvmLoad))
    );
    assert!(!t.host.exists("/etc/modules-load.d/kvm-pvm.conf"));
    // An operator who fixed the cause retries, and the step runs again.
    let retry = cubeboot::firstboot::runner::RunOptions {
        retry_failed: true,
        ..opts(Scope::All)
    };
    assert_eq!(t.run_to_end(&retry, 2), RunEnd::Done);
    assert!(t.host.exists("/etc/modules-load.d/kvm-pvm.conf"));
}

#[test]
fn before_the_reboot_an_interrupted_kernel_install_leaves_the_old_kernel_default() {
    let mut t = Target::new();
    start_and_reset_during(&mut t, StepId::KernelInstall);
    start_and_reset_during(&mut t, StepId::KernelInstall);
    assert_eq!(
        t.run_once(&opts(Scope::All)),
        RunEnd::Failed(Failure::Interrupted(StepId::KernelInstall))
    );
    // No trial boot armed, no default written, no reboot asked for.
    assert!(!t.host.exists("/boot/grub/grubenv.next"));
    assert!(!t.host.exists("/boot/grub/grubenv"));
    assert_eq!(t.host.reboots(), 0);
}

#[test]
fn a_download_interrupted_by_reboots_is_resumed_not_refused() {
    let mut t = Target::new();
    start_and_reset_during(&mut t, StepId::Fetch);
    start_and_reset_during(&mut t, StepId::Fetch);
    start_and_reset_during(&mut t, StepId::Fetch);
    assert_eq!(t.run_to_end(&opts(Scope::All), 3), RunEnd::Done);
}

/// Every member of a .tar.gz as text.
fn tarball_texts(bytes: &[u8]) -> Vec<(String, String)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut e, &mut text).unwrap();
            (name, text)
        })
        .collect()
}

#[test]
fn secret_values_never_leave_the_helper_whatever_key_or_text_carries_them() {
    let hook = support::server::Server::start();
    hook.route("/hook", b"", vec![]);
    let url = hook.url("/hook");
    let mut t = Target::with_plan_edit(|p| {
        p["report"]["webhook"] = serde_json::json!(url);
        // A planned secret whose name has no PASSWORD/TOKEN/KEY in it.
        p["cube"]["extra_env"]["CUBE_DB_PASS"] = serde_json::json!("planned-db-pass-8812");
    });
    assert_eq!(t.run_once(&opts(Scope::All)), RunEnd::Rebooting);
    t.reboot();
    let o = opts(Scope::All);
    let (plan, digest) = t.plan();
    // The installer step generates the credentials, echoes them the way a
    // failing installer's `set -x` output does, collects diagnostics and fails.
    let leaky = stand_in_steps(&o).with(StepId::CubeInstall, |ctx| {
        let creds = cubeboot::firstboot::cube::install::ensure_credentials(ctx)?;
        let redis = &creds["CUBE_SANDBOX_REDIS_PASSWORD"];
        let e2b = &creds["E2B_API_KEY"];
        let db = &ctx.plan.cube.extra_env["CUBE_DB_PASS"];
        let output = format!(
            "+ redis-cli -a {redis} ping\n+ curl -H 'X-API-Key: {e2b}' ...\nmysql: access denied for cube@'%' (using password: {db})"
        );
        for line in output.lines() {
            ctx.host.say(&format!("install | {line}"));
        }
        ctx.journal.warn(format!("installer said: {}", output.lines().next().unwrap()));
        ctx.journal.record_check(cubeboot::status_schema::CheckName::CubeApi, false, output.lines().last().unwrap());
        cubeboot::firstboot::cube::diagnostics::collect(ctx, &output)?;
        Err(anyhow::anyhow!("install.sh failed:\n{output}"))
    });
    let end = cubeboot::firstboot::runner::run_with(&t.host, &plan, &digest, &o, &leaky).unwrap();
    assert_eq!(end, RunEnd::Failed(Failure::Step(StepId::CubeInstall)));

    let creds = t.host.read_string("/etc/cubeboot/credentials.env").unwrap();
    let value = |key: &str| {
        creds
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap()
            .trim_matches('"')
            .to_string()
    };
    let secrets = [
        value("CUBE_SANDBOX_REDIS_PASSWORD"),
        value("E2B_API_KEY"),
        "planned-db-pass-8812".to_string(),
    ];
    let mut channels: Vec<(String, String)> = vec![
        (
            "status.json".into(),
            t.host.read_string(STATUS_PATH).unwrap(),
        ),
        ("journal".into(), t.host.read_string(JOURNAL_PATH).unwrap()),
        ("console".into(), t.host.said().join("\n")),
    ];
    for (i, r) in hook.requests_to("/hook").iter().enumerate() {
        channels.push((
            format!("webhook POST {i}"),
            String::from_utf8(r.body.clone()).unwrap(),
        ));
    }
    let journal: Journal = serde_json::from_str(&channels[1].1).unwrap();
    let tarball = journal
        .facts
        .diagnostics
        .clone()
        .expect("diagnostics written");
    for (name, text) in tarball_texts(&t.host.read(&tarball).unwrap()) {
        channels.push((format!("diagnostics {name}"), text));
    }
    for (channel, text) in &channels {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{channel} carries {s}:\n{text}");
        }
    }
    // What the operator needs stays: which command, which step.
    let status = read_json(&t.host, STATUS_PATH);
    let err = status["last_error"].as_str().unwrap();
    assert!(err.contains("+ redis-cli -a *** ping"), "{err}");
    assert!(err.contains("(using password: ***)"), "{err}");
}

#[test]
fn secrets_from_the_installed_env_files_are_known_to_a_later_start() {
    let mut t = Target::new();
    assert_eq!(t.run_once(&opts(Scope::All)), RunEnd::Rebooting);
    t.reboot();
    // Written by an earlier start (the credentials) and by the installer
    // (its runtime env, from the bundle's .env), then the helper restarted.
    t.host.put(
        "/etc/cubeboot/credentials.env",
        "CUBE_SANDBOX_REDIS_PASSWORD=\"0f3a9c77d2e14b5a8e6f\"\n",
    );
    t.host.put(
        "/usr/local/services/cubetoolbox/.one-click.env",
        "CUBE_SANDBOX_NODE_IP=10.0.2.15\nCUBE_DB_PASS=from-installed-env-42\nCUBE_PVM_ENABLE=1\n",
    );
    let o = opts(Scope::All);
    let (plan, digest) = t.plan();
    let leaky = stand_in_steps(&o).with(StepId::CubeVerify, |_ctx| {
        Err(anyhow::anyhow!(
            "health: redis AUTH 0f3a9c77d2e14b5a8e6f refused; db from-installed-env-42 refused; node 10.0.2.15"
        ))
    });
    let end = cubeboot::firstboot::runner::run_with(&t.host, &plan, &digest, &o, &leaky).unwrap();
    assert!(matches!(end, RunEnd::Failed(_)));
    let status = t.host.read_string(STATUS_PATH).unwrap();
    let console = t.host.said().join("\n");
    for text in [&status, &console] {
        assert!(!text.contains("0f3a9c77d2e14b5a8e6f"), "{text}");
        assert!(!text.contains("from-installed-env-42"), "{text}");
        // Not a secret: stays readable.
        assert!(text.contains("node 10.0.2.15"), "{text}");
    }
}

/// A target whose assets come from a 127.0.0.1 server, with `kvm: auto`,
/// and the real kernel steps (they decide native vs PVM themselves).
fn served_auto_target(server: &support::server::Server) -> Target {
    let t = Target::with_plan_edit(|p| {
        p["kernel"]["kvm"] = serde_json::json!("auto");
        p["assets"]["kernel"]["urls"] = serde_json::json!([server.url("/kernel.deb")]);
        p["assets"]["bundle"]["urls"] = serde_json::json!([server.url("/bundle.tar.gz")]);
    });
    server.route("/kernel.deb", &t.kernel.bytes, vec![]);
    server.route("/bundle.tar.gz", &t.bundle.bytes, vec![]);
    t
}

/// One start with the real kernel steps on a native-KVM machine: it must
/// end `done` without a reboot and without asking for the kernel package.
fn run_native_without_reboot(t: &Target, server: &support::server::Server) -> Plan {
    use cubeboot::firstboot::kernel;
    let o = opts(Scope::All);
    let (plan, digest) = t.plan();
    let steps = support::target::stand_in_steps(&o)
        .with(StepId::KernelInstall, kernel::install)
        .with(StepId::KernelBoot, kernel::boot)
        .with(StepId::KernelVerify, kernel::verify)
        .with(StepId::KernelCommit, kernel::commit)
        .with(StepId::KvmLoad, kernel::load_kvm);
    let end = cubeboot::firstboot::runner::run_with(&t.host, &plan, &digest, &o, &steps).unwrap();
    assert_eq!(end, RunEnd::Done);
    assert_eq!(t.host.reboots(), 0);
    assert_eq!(server.requests_to("/kernel.deb").len(), 0);
    plan
}

#[test]
fn native_kvm_with_kvm_auto_never_downloads_the_kernel_package() {
    use cubeboot::firstboot::journal::KvmInUse;
    let server = support::server::Server::start();
    let t = served_auto_target(&server);
    // A machine whose hardware KVM works: kvm_intel loaded, /dev/kvm there.
    t.host.put(
        "/proc/modules",
        "kvm_intel 397312 0 - Live 0x0\nkvm 1142784 1 kvm_intel, Live 0x0\n",
    );
    t.host.put("/dev/kvm", "");
    t.host.put("/proc/sys/kernel/osrelease", "6.1.0-26-amd64\n");
    let plan = run_native_without_reboot(&t, &server);
    assert!(!server.requests_to("/bundle.tar.gz").is_empty());
    assert!(!t.host.exists(&cache_path(&plan.assets.kernel)));
    let j: Journal = serde_json::from_value(read_json(&t.host, JOURNAL_PATH)).unwrap();
    assert_eq!(j.facts.kvm_mode, Some(KvmInUse::Native));
    let fetch = read_json(&t.host, STATUS_PATH)["steps"][1].clone();
    assert_eq!(fetch["name"], "fetch");
    assert!(
        fetch["detail"]
            .as_str()
            .unwrap()
            .starts_with("kernel not needed (native /dev/kvm, kvm: auto)"),
        "{fetch}"
    );
}

#[test]
fn without_native_kvm_kvm_auto_still_downloads_the_kernel_package() {
    let server = support::server::Server::start();
    let mut t = served_auto_target(&server);
    // kvm_intel loaded but no /dev/kvm: hardware KVM does not work here.
    t.host.put(
        "/proc/modules",
        "kvm_intel 397312 0 - Live 0x0\nkvm 1142784 1 kvm_intel, Live 0x0\n",
    );
    assert_eq!(t.run_to_end(&opts(Scope::All), 3), RunEnd::Done);
    assert_eq!(t.host.reboots(), 1);
    assert_eq!(server.requests_to("/kernel.deb").len(), 1);
    let (plan, _) = t.plan();
    assert_eq!(
        t.host.read(&cache_path(&plan.assets.kernel)).unwrap(),
        t.kernel.bytes
    );
}

/// A target whose bundle comes from `server` in 10 slow chunks (about a
/// second in all) and whose kernel comes at once.
fn slow_bundle_target(server: &support::server::Server) -> Target {
    let t = Target::with_plan_edit(|p| {
        p["assets"]["kernel"]["urls"] = serde_json::json!([server.url("/kernel.deb")]);
        p["assets"]["bundle"]["urls"] = serde_json::json!([server.url("/bundle.tar.gz")]);
    });
    server.route("/kernel.deb", &t.kernel.bytes, vec![]);
    serve_slowly(server, "/bundle.tar.gz", &t.bundle.bytes, 10);
    t
}

/// Serve `body` at `path` in `pieces` chunks, 100 ms apart.
fn serve_slowly(server: &support::server::Server, path: &str, body: &[u8], pieces: usize) {
    server.route_with_default(
        path,
        body,
        vec![],
        support::server::Behavior::Slow {
            chunk: body.len() / pieces + 1,
            pause: std::time::Duration::from_millis(100),
        },
    );
}

/// Bytes of the bundle on the target: whole, or the partial download.
fn bundle_on_disk(host: &dyn Host, plan: &cubeboot::plan::Plan) -> (bool, u64) {
    let path = cache_path(&plan.assets.bundle);
    let partial = host
        .metadata(&format!("{path}.partial"))
        .unwrap()
        .map_or(0, |m| m.len);
    (host.exists(&path), partial)
}

#[test]
fn the_kernel_stage_runs_while_the_bundle_still_downloads() {
    let server = support::server::Server::start();
    let mut t = slow_bundle_target(&server);
    let o = opts(Scope::All);
    let (plan, _) = t.plan();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen_in = seen.clone();
    let steps = stand_in_steps(&o).with(StepId::KernelInstall, move |ctx| {
        *seen_in.lock().unwrap() = Some(bundle_on_disk(ctx.host, ctx.plan).0);
        ctx.journal.facts.old_kernel = Some("6.1.0-26-amd64".into());
        Ok(Outcome::Done("installed".into()))
    });
    assert_eq!(t.run_steps_to_end(&o, &steps, 3), RunEnd::Done);
    // The kernel install did not wait for the bundle (the old order fetched
    // both first); the bundle was whole before the Cube stage all the same,
    // and one request fetched it.
    assert_eq!(*seen.lock().unwrap(), Some(false));
    assert_eq!(
        t.host.read(&cache_path(&plan.assets.bundle)).unwrap(),
        t.bundle.bytes
    );
    assert_eq!(server.requests_to("/bundle.tar.gz").len(), 1);
    let status = read_json(&t.host, STATUS_PATH);
    let bundle = &status["steps"][10];
    assert_eq!(bundle["name"], "bundle");
    assert_eq!(bundle["state"], "done");
    // Less was left than a reboot takes: the reboot waited, and said so.
    assert!(
        t.host
            .said()
            .iter()
            .any(|l| l.starts_with("waiting for the last")
                && l.ends_with("before rebooting (less than a reboot takes)")),
        "{:#?}",
        t.host.said()
    );
}

#[test]
fn a_bundle_with_more_left_than_a_reboot_resumes_by_range_after_it() {
    let server = support::server::Server::start();
    let mut t = slow_bundle_target(&server);
    let o = cubeboot::firstboot::runner::RunOptions {
        reboot_estimate: std::time::Duration::from_millis(1),
        ..opts(Scope::All)
    };
    let (plan, digest) = t.plan();
    // The kernel stage's work takes until some of the bundle has arrived,
    // so its rate is known at the reboot.
    let steps = stand_in_steps(&o).with(StepId::KernelInstall, |ctx| {
        for _ in 0..500 {
            if bundle_on_disk(ctx.host, ctx.plan).1 > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        ctx.journal.facts.old_kernel = Some("6.1.0-26-amd64".into());
        Ok(Outcome::Done("installed".into()))
    });
    let run = |t: &Target| {
        cubeboot::firstboot::runner::run_with(&t.host, &plan, &digest, &o, &steps).unwrap()
    };
    assert_eq!(run(&t), RunEnd::Rebooting);
    let status = read_json(&t.host, STATUS_PATH);
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("of the bundle left") && message.contains("resumes after the reboot"),
        "{message}"
    );
    // Here the process outlived its reboot request; a real reboot cuts the
    // download: keep the first half as the partial file it would have left.
    let path = cache_path(&plan.assets.bundle);
    let half = t.bundle.bytes.len() / 2;
    t.host.remove_file(&path).unwrap();
    t.host
        .put(&format!("{path}.partial"), &t.bundle.bytes[..half]);
    t.reboot();
    assert_eq!(run(&t), RunEnd::Done);
    assert_eq!(t.host.read(&path).unwrap(), t.bundle.bytes);
    let ranges: Vec<_> = server
        .requests_to("/bundle.tar.gz")
        .into_iter()
        .filter_map(|r| r.range)
        .collect();
    assert_eq!(ranges, vec![format!("bytes={half}-")]);
}

/// A target whose kernel and bundle both come slowly from `server` (the
/// kernel in about two seconds), run with link rules that decide at once:
/// `yield_below` above any rate makes the bundle give way, zero keeps both.
fn slow_link_run(yield_below: f64) -> (Target, support::server::Server) {
    let server = support::server::Server::start();
    let mut t = slow_bundle_target(&server);
    serve_slowly(&server, "/kernel.deb", &t.kernel.bytes, 20);
    let o = cubeboot::firstboot::runner::RunOptions {
        link: cubeboot::firstboot::live::Rules {
            probe: std::time::Duration::from_millis(150),
            window: std::time::Duration::from_millis(150),
            yield_below,
            ..Default::default()
        },
        ..opts(Scope::All)
    };
    assert_eq!(t.run_to_end(&o, 3), RunEnd::Done);
    (t, server)
}

#[test]
fn on_a_shared_link_the_bundle_gives_way_to_the_kernel_and_resumes_by_range() {
    let (t, server) = slow_link_run(f64::INFINITY);
    let said = t.host.said();
    let at = |prefix: &str| {
        said.iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}: {said:#?}"))
    };
    let paused = at("fetch bundle: the kernel download slowed from ");
    assert!(said[paused].contains("(they share one link); pausing at "));
    // Not before the kernel had run alone, and back only once it is done.
    assert!(at("fetch kernel: downloading") < paused);
    assert!(paused < at("step fetch: done"));
    assert!(at("step fetch: done") < at("fetch bundle: resuming "));
    let ranges: Vec<Option<String>> = server
        .requests_to("/bundle.tar.gz")
        .into_iter()
        .map(|r| r.range)
        .collect();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let from: u64 = ranges[1].as_deref().unwrap()["bytes=".len()..]
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from > 0);
    let (plan, _) = t.plan();
    assert_eq!(
        t.host.read(&cache_path(&plan.assets.bundle)).unwrap(),
        t.bundle.bytes
    );
}

#[test]
fn with_separate_limits_the_bundle_keeps_downloading_beside_the_kernel() {
    let (t, server) = slow_link_run(0.0);
    let said = t.host.said();
    assert!(
        said.iter().any(
            |l| l.starts_with("fetch bundle: the kernel download keeps ")
                && l.ends_with("alone): both continue")
        ),
        "{said:#?}"
    );
    assert_eq!(server.requests_to("/bundle.tar.gz").len(), 1);
}

#[test]
fn the_status_shows_the_bundle_download_while_the_kernel_stage_runs() {
    let server = support::server::Server::start();
    let mut t = slow_bundle_target(&server);
    // Half the bundle, then silence: it is still downloading whenever the
    // kernel stage starts, however loaded this machine is; the retry
    // resumes it by Range.
    let half = t.bundle.bytes.len() / 2;
    server.route(
        "/bundle.tar.gz",
        &t.bundle.bytes,
        vec![support::server::Behavior::StallAfter(
            half,
            std::time::Duration::from_secs(4),
        )],
    );
    let o = opts(Scope::All);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen_in = seen.clone();
    let steps = stand_in_steps(&o).with(StepId::KernelInstall, move |ctx| {
        // Some of the bundle has arrived; the step's clock passes the
        // publication interval (again on each look: the publisher may read
        // the clock only after the first pass) and the counts are due.
        while bundle_on_disk(ctx.host, ctx.plan).1 == 0 && !bundle_on_disk(ctx.host, ctx.plan).0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for _ in 0..500 {
            ctx.host.sleep(cubeboot::firstboot::live::PUBLISH_EVERY);
            let status = read_json_opt(ctx.host, STATUS_PATH);
            if status["step"] == "kernel-install" && !status["download"].is_null() {
                *seen_in.lock().unwrap() = Some(status["download"].clone());
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        ctx.journal.facts.old_kernel = Some("6.1.0-26-amd64".into());
        Ok(Outcome::Done("installed".into()))
    });
    assert_eq!(t.run_steps_to_end(&o, &steps, 3), RunEnd::Done);
    let seen = seen
        .lock()
        .unwrap()
        .clone()
        .expect("no download in the status");
    assert_eq!(seen["asset"], "bundle");
    assert_eq!(seen["total"], t.bundle.bytes.len());
    assert!(seen["bytes"].as_u64().unwrap() > 0, "{seen}");
    // Once the bundle is verified, its counts leave the status.
    let status = read_json(&t.host, STATUS_PATH);
    assert!(status["download"].is_null(), "{status}");
}

fn read_json_opt(host: &dyn Host, path: &str) -> serde_json::Value {
    host.read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// An aarch64 target (docs/arm64.md): the plan built with `--arch aarch64`,
/// the machine saying `aarch64`, assets served from 127.0.0.1.
fn served_aarch64_target(server: &support::server::Server) -> Target {
    let t = Target::with_plan_edit(|p| {
        p["target"]["arch"] = serde_json::json!("aarch64");
        p["kernel"]["kvm"] = serde_json::json!("auto");
        p["assets"]["kernel"]["urls"] = serde_json::json!([server.url("/kernel.deb")]);
        p["assets"]["bundle"]["urls"] = serde_json::json!([server.url("/bundle.tar.gz")]);
    });
    server.route("/kernel.deb", &t.kernel.bytes, vec![]);
    server.route("/bundle.tar.gz", &t.bundle.bytes, vec![]);
    t.host.set_arch("aarch64");
    // No vendor module on arm64: KVM is part of the kernel.
    t.host.put("/proc/modules", "");
    t.host.put("/proc/sys/kernel/osrelease", "6.1.0-26-arm64\n");
    t
}

#[test]
fn aarch64_with_kvm_runs_every_stage_but_the_kernel_without_a_reboot() {
    use cubeboot::firstboot::journal::KvmInUse;
    let server = support::server::Server::start();
    let t = served_aarch64_target(&server);
    t.host.put("/dev/kvm", "");
    t.host.set_kvm_api_version(Ok(12));
    let plan = run_native_without_reboot(&t, &server);
    assert!(!t.host.exists(&cache_path(&plan.assets.kernel)));
    let j: Journal = serde_json::from_value(read_json(&t.host, JOURNAL_PATH)).unwrap();
    assert_eq!(j.facts.kvm_mode, Some(KvmInUse::Native));
    let status = read_json(&t.host, STATUS_PATH);
    let detail = |name: &str| {
        status["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {status}"))
            .clone()
    };
    assert_eq!(detail("kernel-install")["state"], "skipped");
    assert_eq!(
        detail("kernel-install")["detail"],
        "aarch64: /dev/kvm from the kernel's own KVM answers API version 12; the PVM kernel is \
         x86_64 only and not needed (Cube installs with CUBE_PVM_ENABLE=0)"
    );
    for step in [
        "kernel-boot",
        "reboot",
        "kernel-verify",
        "kvm-load",
        "kernel-commit",
    ] {
        assert_eq!(detail(step)["state"], "skipped", "{step}: {status}");
    }
    // The stand-in stages after the kernel ran as on x86_64.
    for step in ["data-disk", "cube-install", "cube-verify"] {
        assert_eq!(detail(step)["state"], "done", "{step}: {status}");
    }
    // No kernel command was run: no package, no bootloader.
    let commands = t.host.commands().join("\n");
    assert!(!commands.contains("grub"), "{commands}");
    assert!(!commands.contains("dpkg"), "{commands}");
}

#[test]
fn aarch64_without_a_working_dev_kvm_fails_preflight_before_fetching() {
    let server = support::server::Server::start();
    for (device, answer, why) in [
        (
            false,
            None,
            "KVM_GET_API_VERSION on /dev/kvm failed: cannot open it: No such file or directory",
        ),
        (
            true,
            Some(7),
            "KVM_GET_API_VERSION on /dev/kvm answered 7, not 12",
        ),
    ] {
        let t = served_aarch64_target(&server);
        if device {
            t.host.put("/dev/kvm", "");
        }
        if let Some(a) = answer {
            t.host.set_kvm_api_version(Ok(a));
        }
        let end = t.run_once(&opts(Scope::All));
        assert_eq!(end, RunEnd::Failed(Failure::Step(StepId::Preflight)));
        let status = read_json(&t.host, STATUS_PATH);
        assert_eq!(
            status["last_error"],
            format!(
                "preflight: this aarch64 machine has no working /dev/kvm ({why}); PVM is x86_64 \
                 only, so an aarch64 host needs the kernel's own KVM"
            )
        );
        assert!(
            status["hints"][0]
                .as_str()
                .unwrap()
                .starts_with("use an aarch64 instance with KVM"),
            "{status}"
        );
    }
    assert!(server.requests_to("/kernel.deb").is_empty());
    assert!(server.requests_to("/bundle.tar.gz").is_empty());
}

#[test]
fn a_plan_for_the_other_architecture_fails_preflight_naming_both() {
    // An x86_64 plan on an aarch64 machine, and the other way round.
    let t = Target::new();
    t.host.set_arch("aarch64");
    t.host.put("/dev/kvm", "");
    assert_eq!(
        t.run_once(&opts(Scope::All)),
        RunEnd::Failed(Failure::Step(StepId::Preflight))
    );
    let status = read_json(&t.host, STATUS_PATH);
    assert_eq!(
        status["last_error"],
        "preflight: this machine is aarch64 (uname -m), the plan was built for x86_64"
    );
    assert_eq!(
        status["hints"][0],
        "build the payload with `cubeboot build --arch aarch64`, or boot an x86_64 instance"
    );
    let t = Target::with_plan_edit(|p| p["target"]["arch"] = serde_json::json!("aarch64"));
    assert_eq!(
        t.run_once(&opts(Scope::All)),
        RunEnd::Failed(Failure::Step(StepId::Preflight))
    );
    assert_eq!(
        read_json(&t.host, STATUS_PATH)["last_error"],
        "preflight: this machine is x86_64 (uname -m), the plan was built for aarch64"
    );
    assert!(t.host.commands().is_empty());
}
