//! `cube-firstboot upgrade --to PLAN`: a Debian node whose first run is done
//! (the real kernel stage installed, trial-booted and committed the fixture
//! PVM kernel in a temporary root) rolled onto a new plan. Real dpkg and
//! Debian's grub-mkconfig act on the root; GRUB's boot and modprobe are
//! emulated (kernel_common); the Cube steps after the kernel stage are
//! stand-ins that record what they were asked (tests/cube_stage.rs runs the
//! real installer in upgrade mode).

mod kernel_common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cubeboot::digest::Sha256Digest;
use cubeboot::firstboot::cube;
use cubeboot::firstboot::host::{CmdOutput, Host};
use cubeboot::firstboot::journal::StepState;
use cubeboot::firstboot::run_state::{Failure, RunState};
use cubeboot::firstboot::runner::{self, RunEnd, RunOptions, Scope, Steps};
use cubeboot::firstboot::upgrade::{self, PinnedHelper, Upgraded, NEXT_HELPER_PATH};
use cubeboot::firstboot::{cache_path, Outcome, StepId};
use cubeboot::layout::HELPER_PATH;
use cubeboot::plan::{Asset, Plan, PLAN_PATH};
use kernel_common::*;

const NEW_KVER: &str = "6.6.70-opencloudos9.cubesandbox.pvm.host-gfixture2";

/// A node whose first run is done on the fixture PVM kernel (KVER): the
/// real kernel stage through the runner, the steps after it recorded as a
/// finished run leaves them, the plan where the payload put it.
fn provisioned() -> Target {
    provisioned_on(Target::debian("debian-12"), grub_boot)
}

/// [`provisioned`] on `t`, whose firmware and bootloader boot as `boot` does.
fn provisioned_on(t: Target, boot: fn(&Path, bool) -> String) -> Target {
    t.host.on_program("systemctl", CmdOutput::ok(""));
    let digest = t.seed_journal();
    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    assert_eq!(boot(t.root(), false), KVER);
    let end = t.run(&digest, Scope::StopAfter(StepId::KernelCommit));
    assert_eq!(end, RunEnd::Stopped(StepId::KernelCommit));
    let mut j = t.journal(&digest);
    for s in [
        StepId::Bundle,
        StepId::CubeInstall,
        StepId::CubeVerify,
        StepId::Harden,
        StepId::Report,
    ] {
        j.mark(&t.host, s, StepState::Done, "the first run");
    }
    j.finished = Some(RunState::Done);
    j.save(&t.host).unwrap();
    put(t.root(), PLAN_PATH, t.plan.to_json());
    t
}

/// What the stand-in Cube steps were asked, in order.
type Asked = Arc<Mutex<Vec<String>>>;

/// The standard steps with the Cube stage after the kernel as stand-ins:
/// cube-install records the installer mode the real step would use.
fn steps(asked: &Asked) -> Steps {
    let opts = RunOptions::default();
    let (a, b, c) = (asked.clone(), asked.clone(), asked.clone());
    Steps::standard(&opts)
        .with(StepId::CubeInstall, move |ctx| {
            let mode = cube::install_mode(ctx).as_str();
            a.lock()
                .unwrap()
                .push(format!("cube-install --mode={mode}"));
            Ok(Outcome::Done(format!("installed ({mode})")))
        })
        .with(StepId::CubeVerify, move |_| {
            b.lock().unwrap().push("cube-verify".into());
            Ok(Outcome::Done("verified".into()))
        })
        .with(StepId::Harden, move |_| {
            c.lock().unwrap().push("harden".into());
            Ok(Outcome::Done("hardened".into()))
        })
}

fn upgrade_to(t: &Target, plan: &Plan, helper: Option<&PinnedHelper>, asked: &Asked) -> Upgraded {
    upgrade::run_with(
        &t.host,
        &plan.to_json(),
        helper,
        &RunOptions::default(),
        &steps(asked),
    )
    .unwrap()
}

/// After a reboot: what the resume unit runs (`cube-firstboot run`, the
/// plan from its file).
fn resume(t: &Target, asked: &Asked) -> RunEnd {
    let (plan, digest) = runner::load_plan(&t.host).unwrap();
    runner::run_with(
        &t.host,
        &plan,
        &digest,
        &RunOptions::default(),
        &steps(asked),
    )
    .unwrap()
}

fn status(t: &Target) -> serde_json::Value {
    serde_json::from_str(&t.status()).unwrap()
}

/// A Debian kernel package for NEW_KVER, built with dpkg-deb, in the
/// node's verified cache; `plan` is changed to install it.
fn with_new_kernel(t: &Target, plan: &mut Plan) {
    let build = tempfile::tempdir().unwrap();
    let tree = build.path().join("tree");
    let module = tree.join(format!("lib/modules/{NEW_KVER}/kernel/arch/x86/kvm"));
    std::fs::create_dir_all(&module).unwrap();
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::write(
        tree.join(format!("boot/vmlinuz-{NEW_KVER}")),
        "fixture kernel 2\n",
    )
    .unwrap();
    std::fs::write(module.join("kvm-pvm.ko"), "kvm-pvm fixture 2\n").unwrap();
    let package = format!("linux-image-{NEW_KVER}");
    std::fs::write(
        tree.join("DEBIAN/control"),
        format!("Package: {package}\nVersion: 6.6.70-gfixture2-1\nArchitecture: amd64\nMaintainer: cubeboot tests <t@example.invalid>\nDescription: fixture kernel 2\n"),
    )
    .unwrap();
    let deb = build.path().join("new.deb");
    let out = std::process::Command::new("dpkg-deb")
        .args(["-Zxz", "--root-owner-group", "--build"])
        .arg(&tree)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg-deb: {out:?}");
    let bytes = std::fs::read(&deb).unwrap();
    let name = format!("{package}_6.6.70-gfixture2-1_amd64.deb");
    plan.kernel.package = package;
    to_new_kernel(t, plan, name, bytes, "6.6.70-gfixture2-1");
}

/// `plan` installs the package `bytes` (NEW_KVER), in the node's verified
/// cache as fetch would leave it.
fn to_new_kernel(t: &Target, plan: &mut Plan, name: String, bytes: Vec<u8>, version: &str) {
    plan.assets.kernel = Asset {
        urls: vec![format!("file:///srv/{name}")],
        name,
        sha256: Sha256Digest::of(&bytes),
        size: bytes.len() as u64,
    };
    plan.kernel.kver = NEW_KVER.into();
    plan.kernel.package_version = version.into();
    put(t.root(), &cache_path(&plan.assets.kernel), bytes);
}

/// The GRUB entry id of `kver` (10_linux's, as the fixture grub.cfg has it).
fn entry_id(root: &Path, kver: &str) -> String {
    let cfg = read(root, "/boot/grub/grub.cfg");
    cubeboot::firstboot::kernel::grubcfg::find_kernel_entry(&cfg, kver)
        .unwrap()
        .id_path()
        .unwrap()
}

fn saved_entry(root: &Path) -> String {
    cubeboot::firstboot::kernel::grubcfg::parse_grubenv(&read(root, "/boot/grub/grubenv"))
        ["saved_entry"]
        .clone()
}

#[test]
fn the_plan_the_node_runs_is_a_no_op_and_says_so() {
    let t = provisioned();
    let asked = Asked::default();
    let before = t.host.commands().len();
    let out = upgrade_to(&t, &t.plan, None, &asked);
    let Upgraded::NothingToDo(message) = out else {
        panic!("{out:?}")
    };
    assert!(upgrade::check(&t.host, &t.plan.to_json(), None)
        .unwrap()
        .ends_with(": nothing to do"));
    assert!(
        message.starts_with("nothing to do: this node already runs plan "),
        "{message}"
    );
    assert_eq!(t.host.commands().len(), before, "no command ran");
    assert_eq!(t.host.reboots(), 1, "only the first run's reboot");
    assert!(asked.lock().unwrap().is_empty());
    // Said where `cubeboot watch` and `cube-firstboot status` look.
    let st = status(&t);
    assert_eq!(st["state"], "done");
    assert_eq!(st["message"], message.as_str());
    assert!(t.host.said().contains(&message));
}

#[test]
fn a_new_kernel_is_trial_booted_then_committed_and_a_second_run_does_nothing() {
    let t = provisioned();
    let root = t.root();
    let old_id = entry_id(root, KVER);
    assert_eq!(saved_entry(root), old_id);
    let mut plan = t.plan.clone();
    with_new_kernel(&t, &mut plan);
    let asked = Asked::default();

    // `upgrade --check` (upgrade.sh runs it first) says what will change
    // and changes nothing.
    let before = t.host.actions().len();
    let said = upgrade::check(&t.host, &plan.to_json(), None).unwrap();
    assert!(
        said.ends_with(&format!(
            ": kernel {KVER} -> {NEW_KVER}; helper, bundle unchanged"
        )),
        "{said}"
    );
    assert_eq!(t.host.actions().len(), before);

    // Before the reboot: installed, held, armed once, old kernel the default.
    let out = upgrade_to(&t, &plan, None, &asked);
    assert_eq!(out, Upgraded::Ran(RunEnd::Rebooting));
    assert_eq!(t.host.reboots(), 2);
    assert!(t.host.said().iter().any(|l| l.ends_with(&format!(
        "kernel {KVER} -> {NEW_KVER}; helper, bundle unchanged"
    ))));
    let new_id = entry_id(root, NEW_KVER);
    let env =
        cubeboot::firstboot::kernel::grubcfg::parse_grubenv(&read(root, "/boot/grub/grubenv"));
    assert_eq!(env["saved_entry"], old_id);
    assert_eq!(env["next_entry"], new_id);
    // The node's plan is the new one, so the resume unit continues it.
    assert_eq!(runner::load_plan(&t.host).unwrap().0, plan);

    // GRUB boots the new kernel once; the resume unit verifies and commits.
    assert_eq!(grub_boot(root, false), NEW_KVER);
    assert_eq!(resume(&t, &asked), RunEnd::Done);
    assert_eq!(saved_entry(root), new_id);
    assert_eq!(grub_boot(root, false), NEW_KVER);
    // The Cube bundle did not change: the installer never ran.
    assert_eq!(*asked.lock().unwrap(), ["cube-verify", "harden"]);
    let st = status(&t);
    assert_eq!(st["state"], "done");
    let j = t.journal(&Sha256Digest::of(plan.to_json().as_bytes()));
    assert_eq!(j.state(StepId::CubeInstall), Some(StepState::Skipped));
    assert_eq!(j.state(StepId::KernelCommit), Some(StepState::Done));

    // The same plan again: nothing.
    let before = t.host.commands().len();
    let again = upgrade_to(&t, &plan, None, &asked);
    assert!(matches!(again, Upgraded::NothingToDo(_)), "{again:?}");
    assert_eq!(t.host.commands().len(), before);
    assert_eq!(t.host.reboots(), 2);
}

#[test]
fn a_new_kernel_that_fails_its_trial_boot_rolls_back_and_the_node_keeps_its_pvm_and_cube() {
    let t = provisioned();
    let root = t.root();
    let old_id = entry_id(root, KVER);
    let mut plan = t.plan.clone();
    with_new_kernel(&t, &mut plan);
    let asked = Asked::default();
    assert_eq!(
        upgrade_to(&t, &plan, None, &asked),
        Upgraded::Ran(RunEnd::Rebooting)
    );
    // The new kernel panics; panic=N reboots into the saved default.
    assert_eq!(grub_boot(root, true), KVER);
    let end = resume(&t, &asked);
    assert_eq!(
        end,
        RunEnd::Failed(Failure::RolledBack {
            to: KVER.to_string()
        })
    );
    assert_eq!(t.host.reboots(), 2, "no reboot after this rollback");
    // The old PVM kernel stays the default, with the boot parameters PVM
    // needs on every later boot, and Cube was never touched.
    assert_eq!(saved_entry(root), old_id);
    let cfg = read(root, "/boot/grub/grub.cfg");
    let old = cubeboot::firstboot::kernel::grubcfg::find_kernel_entry(&cfg, KVER).unwrap();
    for p in &t.plan.kernel.boot_params {
        assert!(old.args.contains(p), "{p} missing from {:?}", old.args);
    }
    assert_eq!(grub_boot(root, false), KVER);
    assert!(asked.lock().unwrap().is_empty(), "{asked:?}");
    let st = status(&t);
    assert_eq!(st["state"], format!("failed: rolled back to {KVER}"));

    // The same payload again: refused, and said again where watch hears it.
    let _ = std::fs::remove_file(t.host.path(cubeboot::firstboot::STATUS_PATH));
    let err = upgrade::check(&t.host, &plan.to_json(), None).unwrap_err();
    assert!(format!("{err:#}").ends_with(&format!("ended failed: rolled back to {KVER}")));
    let err = upgrade::run_with(
        &t.host,
        &plan.to_json(),
        None,
        &RunOptions::default(),
        &steps(&asked),
    )
    .unwrap_err();
    assert!(format!("{err:#}").ends_with(&format!("ended failed: rolled back to {KVER}")));
    assert_eq!(
        status(&t)["state"],
        format!("failed: rolled back to {KVER}")
    );
    assert_eq!(t.host.reboots(), 2);
}

#[test]
fn a_new_bundle_runs_the_installer_in_upgrade_mode_without_a_reboot() {
    let t = provisioned();
    let mut plan = t.plan.clone();
    let bytes = b"bundle, the next release".to_vec();
    plan.assets.bundle = Asset {
        name: "cube-sandbox-one-click-v0.0.1-fixture-amd64.tar.gz".into(),
        urls: vec!["file:///srv/cube-sandbox-one-click-v0.0.1-fixture-amd64.tar.gz".into()],
        sha256: Sha256Digest::of(&bytes),
        size: bytes.len() as u64,
    };
    put(t.root(), &cache_path(&plan.assets.bundle), &bytes);
    let asked = Asked::default();
    let out = upgrade_to(&t, &plan, None, &asked);
    assert_eq!(out, Upgraded::Ran(RunEnd::Done));
    assert_eq!(t.host.reboots(), 1, "only the first run's reboot");
    assert_eq!(
        *asked.lock().unwrap(),
        ["cube-install --mode=upgrade", "cube-verify", "harden"]
    );
    let j = t.journal(&Sha256Digest::of(plan.to_json().as_bytes()));
    assert_eq!(j.state(StepId::KernelInstall), Some(StepState::Skipped));
    assert_eq!(j.state(StepId::Bundle), Some(StepState::Done));
    assert_eq!(status(&t)["state"], "done");
}

#[test]
fn a_new_helper_replaces_the_installed_one_atomically_and_only_from_matching_bytes() {
    let t = provisioned();
    // The real helper (~2.8 MB) as the new one; the node runs an older one.
    let new = std::fs::read(repo().join("examples/release/cube-firstboot")).unwrap();
    assert!(new.len() > 2_000_000);
    let mut old = new.clone();
    old[1000] ^= 0xff;
    put(t.root(), HELPER_PATH, &old);
    put(t.root(), NEXT_HELPER_PATH, &new);
    let asked = Asked::default();

    // A pin the bytes do not match: refused, nothing written or run.
    let wrong = PinnedHelper {
        path: NEXT_HELPER_PATH.into(),
        sha256: Sha256Digest::of(b"another helper"),
    };
    let mut plan = t.plan.clone();
    plan.generator = "cubeboot next".into();
    let before = t.host.actions().len();
    let err = upgrade::run_with(
        &t.host,
        &plan.to_json(),
        Some(&wrong),
        &RunOptions::default(),
        &steps(&asked),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").starts_with(&format!(
            "refusing to install {NEXT_HELPER_PATH}: its SHA-256 is {}",
            Sha256Digest::of(&new)
        )),
        "{err:#}"
    );
    assert_eq!(std::fs::read(t.host.path(HELPER_PATH)).unwrap(), old);
    assert_eq!(
        t.host.actions().len(),
        before,
        "{:?}",
        &t.host.actions()[before..]
    );
    assert_eq!(runner::load_plan(&t.host).unwrap().0, t.plan);

    let pin = PinnedHelper {
        path: NEXT_HELPER_PATH.into(),
        sha256: Sha256Digest::of(&new),
    };
    let out = upgrade_to(&t, &plan, Some(&pin), &asked);
    assert_eq!(out, Upgraded::Ran(RunEnd::Done));
    let installed = t.host.path(HELPER_PATH);
    assert_eq!(std::fs::read(&installed).unwrap(), new);
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    // One atomic write of the whole file, before any step ran.
    let actions: Vec<String> = t.host.actions()[before..]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let write = actions
        .iter()
        .position(|a| a == &format!("write   {HELPER_PATH} ({} bytes)", new.len()))
        .unwrap_or_else(|| panic!("{actions:#?}"));
    let report = actions
        .iter()
        .position(|a| a.contains("systemctl") && a.contains("disable"))
        .unwrap();
    assert!(write < report);
    assert_eq!(*asked.lock().unwrap(), ["cube-verify", "harden"]);
    assert!(t
        .host
        .said()
        .iter()
        .any(|l| l.contains("helper ") && l.ends_with("; kernel, bundle unchanged")));
}

#[test]
fn a_node_whose_run_is_not_done_or_whose_plan_is_not_its_runs_is_refused_and_left_alone() {
    let t = Target::debian("debian-12");
    let asked = Asked::default();
    let mut next = t.plan.clone();
    next.generator = "cubeboot next".into();
    let refused = |t: &Target| {
        let before = t.host.actions().len();
        let err = upgrade::run_with(
            &t.host,
            &next.to_json(),
            None,
            &RunOptions::default(),
            &steps(&asked),
        )
        .unwrap_err();
        assert_eq!(
            t.host.actions().len(),
            before,
            "{:?}",
            &t.host.actions()[before..]
        );
        format!("{err:#}")
    };
    assert_eq!(
        refused(&t),
        "no run on this node yet: an upgrade starts from a node whose first run is done"
    );
    // A first run still under way (the kernel tests' seeded journal).
    t.seed_journal();
    put(t.root(), PLAN_PATH, t.plan.to_json());
    assert_eq!(
        refused(&t),
        "this node's run has not finished well (still running): an upgrade starts from a node whose run is done"
    );
    drop(t);

    // Done, but /etc/cubeboot/plan.json is not the plan that run finished.
    let t = provisioned();
    put(t.root(), PLAN_PATH, "{\"version\": 1}");
    let err = refused(&t);
    assert!(
        err.starts_with("/etc/cubeboot/plan.json (SHA-256 ")
            && err.contains(") is not the plan this node's run finished ("),
        "{err}"
    );
    assert!(asked.lock().unwrap().is_empty());
}

/// An RPM kernel package for NEW_KVER, built with rpmbuild, in the node's
/// verified cache; `plan` is changed to install it.
fn with_new_rpm_kernel(t: &Target, plan: &mut Plan) {
    let top = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(top.path().join("SPECS")).unwrap();
    let spec = format!(
        "Name: kernel\nVersion: 6.6.70\nRelease: 1\nSummary: fixture\nLicense: GPL-2.0\n\
         BuildArch: x86_64\nAutoReqProv: no\n%description\nfixture kernel 2\n%install\n\
         mkdir -p %{{buildroot}}/boot %{{buildroot}}/lib/modules/{NEW_KVER}/kernel/arch/x86/kvm\n\
         echo fixture > %{{buildroot}}/boot/vmlinuz-{NEW_KVER}\n\
         echo fixture > %{{buildroot}}/lib/modules/{NEW_KVER}/kernel/arch/x86/kvm/kvm-pvm.ko\n\
         %files\n/boot/vmlinuz-{NEW_KVER}\n/lib/modules/{NEW_KVER}\n"
    );
    std::fs::write(top.path().join("SPECS/k.spec"), spec).unwrap();
    let out = std::process::Command::new("rpmbuild")
        .arg("-bb")
        .arg("--define")
        .arg(format!("_topdir {}", top.path().display()))
        .arg("SPECS/k.spec")
        .current_dir(top.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "rpmbuild: {out:?}");
    let name = "kernel-6.6.70-1.x86_64.rpm".to_string();
    let bytes = std::fs::read(top.path().join("RPMS/x86_64").join(&name)).unwrap();
    to_new_kernel(t, plan, name, bytes, "6.6.70-1");
}

/// On Rocky 9 (BLS, grubby): the new kernel's trial boot; with `panics`,
/// it panics and the run rolls back. Returns the node.
fn rocky_kernel_upgrade(panics: bool) -> Target {
    let t = provisioned_on(Target::rocky(), bls_boot);
    let root = t.root();
    let mut plan = t.plan.clone();
    with_new_rpm_kernel(&t, &mut plan);
    let asked = Asked::default();
    assert_eq!(
        upgrade_to(&t, &plan, None, &asked),
        Upgraded::Ran(RunEnd::Rebooting)
    );
    assert_eq!(bls_boot(root, panics), if panics { KVER } else { NEW_KVER });
    let end = resume(&t, &asked);
    if panics {
        let to = KVER.to_string();
        assert_eq!(end, RunEnd::Failed(Failure::RolledBack { to }));
        assert!(asked.lock().unwrap().is_empty(), "{asked:?}");
    } else {
        assert_eq!(end, RunEnd::Done);
        assert_eq!(*asked.lock().unwrap(), ["cube-verify", "harden"]);
    }
    assert_eq!(t.host.reboots(), 2);
    t
}

/// The next boot, with no one-shot left, is `kver`'s, with every boot
/// parameter of the plan.
fn boots_by_default(t: &Target, kver: &str) {
    assert_eq!(bls_boot(t.root(), false), kver);
    let cmdline = read(t.root(), "/proc/cmdline");
    for p in &t.plan.kernel.boot_params {
        assert!(cmdline.contains(p.as_str()), "{p} missing from {cmdline}");
    }
}

#[test]
fn on_rocky_a_new_kernel_is_trial_booted_then_committed() {
    boots_by_default(&rocky_kernel_upgrade(false), NEW_KVER);
}

#[test]
fn on_rocky_a_new_kernel_that_fails_rolls_back_to_the_old_one_with_its_parameters() {
    boots_by_default(&rocky_kernel_upgrade(true), KVER);
}
