//! `cube-firstboot apply --root DIR --stage kernel` on a temporary image
//! root: the real fixture kernel package installed by real dpkg / real
//! `rpm --root`, real grub-editenv / grub-set-default / grub-reboot and
//! Debian's real grub-mkconfig on the root's files; only grubby, grub-probe
//! and the boot itself are emulated (kernel_common, the kernel team's test
//! support). Then `reset --for-image`, a simulated first power-on of an
//! instance made from the image, and the first-boot run on that root: the
//! kernel stage is skipped and nothing is rebooted.

#[path = "kernel_common/mod.rs"]
mod kernel_common;

use std::path::Path;

use cubeboot::digest::Sha256Digest;
use cubeboot::firstboot::host::ScriptedHost;
use cubeboot::firstboot::image::{self, ResetOptions, Stage};
use cubeboot::firstboot::journal::{Journal, StepState};
use cubeboot::firstboot::runner::{self, RunEnd, Scope};
use cubeboot::firstboot::{cache_path, StepId, JOURNAL_PATH, STATUS_PATH};
use cubeboot::plan::{Plan, PLAN_PATH};
use cubeboot::transport::FetchConfig;
use kernel_common::*;

/// What an offline overlay leaves in an image: plan, both assets cached.
fn overlay_state(root: &Path, plan: &Plan, os_release: &str) -> Sha256Digest {
    let text = plan.to_json();
    put(root, PLAN_PATH, &text);
    put(root, "/etc/os-release", os_release);
    put(root, &cache_path(&plan.assets.bundle), b"bundle");
    Sha256Digest::of(text.as_bytes())
}

fn grubenv(root: &Path, path: &str) -> std::collections::BTreeMap<String, String> {
    cubeboot::firstboot::kernel::grubcfg::parse_grubenv(&read(root, path))
}

/// The first-boot run up to the end of the kernel stage, on the image's
/// root as an instance sees it.
fn first_boot_kernel_stage(
    root: &Path,
    plan: &Plan,
    digest: &Sha256Digest,
    responders: impl Fn(&ScriptedHost),
) -> (Journal, u32) {
    let host = ScriptedHost::new(root);
    responders(&host);
    // Preflight, fetch and prereqs belong to other stages; they are seeded as
    // done so this run exercises exactly the kernel stage on the image.
    let mut j = Journal::new(&digest.to_hex());
    for s in [StepId::Preflight, StepId::Fetch, StepId::CubePrereqs] {
        j.mark(&host, s, StepState::Done, "seeded");
    }
    j.save(&host).unwrap();
    let end = runner::run(&host, plan, digest, Scope::StopAfter(StepId::KernelVerify)).unwrap();
    // (The runner reports the stop at KernelVerify; what matters is that no
    // reboot was requested.)
    assert_eq!(end, RunEnd::Stopped(StepId::KernelVerify));
    let journal = Journal::load(&host, &digest.to_hex()).unwrap();
    (journal, host.reboots())
}

#[test]
fn deb_image_boots_pvm_at_once_and_first_boot_skips_the_kernel_stage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let plan = deb_plan();
    debian_root(root, "debian-12", &plan);
    let digest = overlay_state(root, &plan, "ID=debian\nVERSION_ID=\"12\"\n");

    // apply --stage kernel
    let host = ScriptedHost::new(root);
    debian_responders(&host, root, "");
    let report = image::apply(&host, Stage::Kernel, &FetchConfig::default()).unwrap();
    assert_eq!(host.reboots(), 0);
    assert_eq!(report.kver, KVER);
    // Installed into the root by the real dpkg: its database says so.
    let out = std::process::Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Status} ${Version}", DEB_PACKAGE])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("hold ok installed {DEB_VERSION}")
    );
    assert!(exists(root, &format!("/boot/vmlinuz-{KVER}")));
    assert!(exists(
        root,
        &format!("/lib/modules/{KVER}/kernel/arch/x86/kvm/kvm-pvm.ko")
    ));
    // The PVM entry is the saved default; no one-shot left armed.
    let env = grubenv(root, "/boot/grub/grubenv");
    let saved = env.get("saved_entry").cloned().unwrap_or_default();
    assert!(
        saved.ends_with(&format!("gnulinux-{KVER}-advanced-{ROOT_UUID}")),
        "{env:?}"
    );
    assert!(!env.contains_key("next_entry"), "{env:?}");
    // No journal or status left behind for the instance to trust.
    assert!(!exists(root, JOURNAL_PATH) && !exists(root, STATUS_PATH));
    // The bootloader tools ran inside the image, never on this machine.
    for c in host.commands() {
        assert!(
            !c.starts_with("update-grub") && !c.starts_with("grub-mkconfig"),
            "{c}"
        );
    }

    // Idempotent: a second apply changes nothing.
    let again = image::apply(&host, Stage::Kernel, &FetchConfig::default()).unwrap();
    assert_eq!(
        again.steps,
        vec![(StepId::KernelBoot, "already the default entry".to_string())]
    );

    image::reset_for_image(&host, ResetOptions { keep_cache: true }).unwrap();

    // First power-on of an instance: GRUB boots the saved default.
    assert_eq!(grub_boot(root, false), KVER);
    let cmdline = read(root, "/proc/cmdline");
    assert!(
        cmdline.contains("nopti pti=off") && cmdline.contains("panic=30"),
        "{cmdline}"
    );

    let (journal, reboots) =
        first_boot_kernel_stage(root, &plan, &digest, |h| debian_responders(h, root, ""));
    assert_eq!(reboots, 0);
    for step in [
        StepId::KernelInstall,
        StepId::KernelBoot,
        StepId::Reboot,
        StepId::KernelVerify,
    ] {
        assert_eq!(
            journal.state(step),
            Some(StepState::Skipped),
            "{step}: {:?}",
            journal.steps.get(&step)
        );
    }
    // And a second power-on still boots PVM (the default, not a one-shot).
    assert_eq!(grub_boot(root, false), KVER);
}

#[test]
fn rpm_image_boots_pvm_at_once_and_first_boot_skips_the_kernel_stage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let plan = rpm_plan();
    rocky_root(root, &plan);
    let digest = overlay_state(
        root,
        &plan,
        "NAME=\"Rocky Linux\"\nID=\"rocky\"\nVERSION_ID=\"9.4\"\n",
    );

    let host = ScriptedHost::new(root);
    rocky_responders(&host, root);
    let report = image::apply(&host, Stage::Kernel, &FetchConfig::default()).unwrap();
    assert_eq!(host.reboots(), 0);
    assert_eq!(report.kver, KVER);
    // The real rpm database in the root has the package.
    let out = std::process::Command::new("rpm")
        .arg("--root")
        .arg(root)
        .args(["-q", "--qf", "%{VERSION}-%{RELEASE}", "kernel"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), RPM_VERSION);
    assert_eq!(grubby_default(root), format!("/boot/vmlinuz-{KVER}"));
    let env = grubenv(root, "/boot/grub2/grubenv");
    assert!(!env.contains_key("next_entry"), "{env:?}");

    image::reset_for_image(&host, ResetOptions { keep_cache: true }).unwrap();
    assert_eq!(bls_boot(root, false), KVER);
    let (journal, reboots) =
        first_boot_kernel_stage(root, &plan, &digest, |h| rocky_responders(h, root));
    assert_eq!(reboots, 0);
    for step in [
        StepId::KernelInstall,
        StepId::KernelBoot,
        StepId::Reboot,
        StepId::KernelVerify,
    ] {
        assert_eq!(
            journal.state(step),
            Some(StepState::Skipped),
            "{step}: {:?}",
            journal.steps.get(&step)
        );
    }
    assert_eq!(bls_boot(root, false), KVER);
}

#[test]
fn apply_refuses_an_image_of_another_distro_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let plan = deb_plan();
    debian_root(root, "debian-12", &plan);
    overlay_state(root, &plan, "ID=ubuntu\nVERSION_ID=\"24.04\"\n");
    let host = ScriptedHost::new(root);
    debian_responders(&host, root, "");
    let err = image::apply(&host, Stage::Kernel, &FetchConfig::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the image runs ubuntu 24.04, the plan was built for profile debian-12 (debian 12)"
    );
    assert!(host.commands().is_empty());
    assert!(!exists(root, &format!("/boot/vmlinuz-{KVER}")));
}

#[test]
fn apply_refuses_a_cached_kernel_that_does_not_match_its_pin() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let plan = deb_plan();
    debian_root(root, "debian-12", &plan);
    overlay_state(root, &plan, "ID=debian\nVERSION_ID=12\n");
    // Same name, other bytes: neither used nor installed.
    put(root, &cache_path(&plan.assets.kernel), b"tampered");
    let host = ScriptedHost::new(root);
    debian_responders(&host, root, "");
    let err = image::apply(&host, Stage::Kernel, &FetchConfig::default()).unwrap_err();
    assert!(!exists(root, &format!("/boot/vmlinuz-{KVER}")), "{err:#}");
    assert!(
        !host
            .commands()
            .iter()
            .any(|c| c.contains("dpkg") && c.contains(" -i ")),
        "{:?}",
        host.commands()
    );
}

#[test]
fn apply_on_a_root_already_running_pvm_still_makes_it_the_default() {
    // E.g. an image made from a machine that finished its first boot's trial
    // but was captured before the commit: the kernel stage has nothing to
    // arm, and apply finds the entry in grub.cfg itself.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let plan = deb_plan();
    debian_root(root, "debian-12", &plan);
    overlay_state(root, &plan, "ID=debian\nVERSION_ID=12\n");
    let host = ScriptedHost::new(root);
    debian_responders(&host, root, "");
    image::apply(&host, Stage::Kernel, &FetchConfig::default()).unwrap();
    let pvm = grubenv(root, "/boot/grub/grubenv")["saved_entry"].clone();
    // Back to the old default, PVM running with its parameters.
    let out = std::process::Command::new("grub-editenv")
        .arg(root.join("boot/grub/grubenv"))
        .arg("set")
        .arg(format!("saved_entry=gnulinux-advanced-{ROOT_UUID}>gnulinux-{OLD_DEB_KERNEL}-advanced-{ROOT_UUID}"))
        .output()
        .unwrap();
    assert!(out.status.success());
    set_running(
        root,
        KVER,
        &format!("BOOT_IMAGE=/boot/vmlinuz-{KVER} ro nopti pti=off panic=30"),
    );

    let report = image::apply(&host, Stage::Kernel, &FetchConfig::default()).unwrap();
    assert_eq!(
        report
            .steps
            .iter()
            .find(|(s, _)| *s == StepId::KernelInstall)
            .map(|(_, d)| d.as_str()),
        Some(format!("already running {KVER} with its boot parameters").as_str())
    );
    assert_eq!(grubenv(root, "/boot/grub/grubenv")["saved_entry"], pvm);
    assert_eq!(host.reboots(), 0);
}
