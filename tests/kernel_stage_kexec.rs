//! The trial boot by kexec (plan `reboot: kexec`, src/firstboot/kernel/kexec.rs)
//! on a Debian target in a temporary root, through the runner: real dpkg,
//! real grub-mkconfig, real grubenv tools (kernel_common); `kexec --load` is
//! answered at the host seam, and the kexec'd boot is emulated as the
//! kernel /proc shows without GRUB running.

mod kernel_common;

use cubeboot::firstboot::host::{CmdOutput, ScriptedHost};
use cubeboot::firstboot::journal::StepState;
use cubeboot::firstboot::kernel::grubcfg;
use cubeboot::firstboot::runner::{self, RunEnd, Scope};
use cubeboot::firstboot::StepId;
use cubeboot::plan::RebootMode;
use kernel_common::*;

const PVM_ID: &str = "gnulinux-advanced-3f1c2b9a-5d7e-4c1a-9e8b-2a4f6d8c0e11>\
                      gnulinux-6.6.69-opencloudos9.cubesandbox.pvm.host-gfixture1-advanced-3f1c2b9a-5d7e-4c1a-9e8b-2a4f6d8c0e11";
const OLD_ID: &str = "gnulinux-advanced-3f1c2b9a-5d7e-4c1a-9e8b-2a4f6d8c0e11>\
                      gnulinux-6.1.0-28-amd64-advanced-3f1c2b9a-5d7e-4c1a-9e8b-2a4f6d8c0e11";

fn grubenv(root: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    grubcfg::parse_grubenv(&read(root, "/boot/grub/grubenv"))
}

/// A Debian target whose plan asks for kexec; `kexec` is installed when
/// `installed`, and the PVM kernel's initramfs is where its postinst puts it.
fn kexec_target(installed: bool) -> Target {
    let mut t = Target::debian("debian-12");
    t.plan.reboot = Some(RebootMode::Kexec);
    put(t.root(), &format!("/boot/initrd.img-{KVER}"), "initramfs");
    if installed {
        put(t.root(), "/usr/sbin/kexec", "");
    }
    t
}

/// `kexec --load` answers `out`; a success stages the kernel as the kernel
/// shows it (/sys/kernel/kexec_loaded). Returns nothing; the host records
/// the command line.
fn answer_kexec(host: &ScriptedHost, root: &std::path::Path, out: CmdOutput) {
    let r = root.to_path_buf();
    host.on(move |c| {
        let inner = chrooted(&r, c)?;
        (inner.program == "/usr/sbin/kexec").then(|| {
            if out.success() {
                put(&r, "/sys/kernel/kexec_loaded", "1\n");
            }
            Ok(out.clone())
        })
    });
}

/// The kexec'd kernel starts: no firmware, no GRUB, so grubenv is as the
/// helper left it; /proc shows the staged kernel and command line.
fn kexec_boot(root: &std::path::Path, cmdline: &str) {
    new_boot_id(root);
    set_running(root, KVER, cmdline);
    put(root, "/sys/kernel/kexec_loaded", "0\n");
}

/// The `--command-line=` the helper handed kexec.
fn staged_cmdline(host: &ScriptedHost) -> String {
    let cmds = host.commands();
    let load = cmds
        .iter()
        .find(|c| c.contains("/usr/sbin/kexec --load "))
        .unwrap_or_else(|| panic!("no kexec --load in {cmds:#?}"));
    let arg = load
        .split(" '--command-line=")
        .nth(1)
        .unwrap_or_else(|| panic!("{load}"));
    arg.trim_end_matches('\'').to_string()
}

#[test]
fn kexec_stages_the_pvm_entry_and_the_trial_boot_commits() {
    let t = kexec_target(true);
    let root = t.root();
    answer_kexec(&t.host, root, CmdOutput::ok(""));
    let digest = t.seed_journal();

    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    assert_eq!((t.host.kexecs(), t.host.reboots()), (1, 0));
    // The entry update-grub made: its image, its initramfs, its whole line.
    let cfg = read(root, "/boot/grub/grub.cfg");
    let pvm = grubcfg::find_kernel_entry(&cfg, KVER).unwrap();
    let load = t
        .host
        .commands()
        .into_iter()
        .find(|c| c.contains("kexec --load"))
        .unwrap();
    assert!(
        load.starts_with(&format!(
            "chroot {} /usr/sbin/kexec --load --no-checks /boot/vmlinuz-{KVER} --initrd=/boot/initrd.img-{KVER} "
            ,root.display()
        )),
        "{load}"
    );
    let cmdline = staged_cmdline(&t.host);
    assert_eq!(
        cmdline,
        format!("BOOT_IMAGE=/boot/vmlinuz-{KVER} {}", pvm.args.join(" "))
    );
    assert!(cmdline.contains("nopti pti=off panic=30"), "{cmdline}");
    let j = t.journal(&digest);
    assert_eq!(
        j.facts.trial_kexec.as_deref(),
        Some(format!("/boot/vmlinuz-{KVER} with /boot/initrd.img-{KVER} loaded").as_str())
    );
    assert!(
        j.steps[&StepId::Reboot].detail.contains("by kexec"),
        "{:?}",
        j.steps[&StepId::Reboot]
    );
    // The firmware trial stays armed behind the kexec.
    let env = grubenv(root);
    assert_eq!(
        (env["saved_entry"].as_str(), env["next_entry"].as_str()),
        (OLD_ID, PVM_ID)
    );

    // The kexec'd kernel: verified, the one-shot spent, kvm_pvm, committed.
    kexec_boot(root, &cmdline);
    let end = t.run(&digest, Scope::StopAfter(StepId::KernelCommit));
    assert_eq!(end, RunEnd::Stopped(StepId::KernelCommit));
    let j = t.journal(&digest);
    let verify = &j.steps[&StepId::KernelVerify];
    assert_eq!(verify.state, StepState::Done);
    assert!(verify.detail.contains("booted by kexec"), "{verify:?}");
    assert_eq!(j.state(StepId::KernelCommit), Some(StepState::Done));
    let env = grubenv(root);
    assert_eq!(env["saved_entry"], PVM_ID);
    assert!(!env.contains_key("next_entry"));
    assert_eq!((t.host.kexecs(), t.host.reboots()), (1, 0));
    assert_eq!(j.reboots, 1);
}

#[test]
fn without_kexec_the_trial_boot_goes_through_the_firmware() {
    let t = kexec_target(false);
    let digest = t.seed_journal();
    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    assert_eq!((t.host.kexecs(), t.host.reboots()), (0, 1));
    assert!(!t.host.commands().iter().any(|c| c.contains("kexec")));
    let j = t.journal(&digest);
    assert_eq!(j.facts.trial_kexec, None);
    let detail = &j.steps[&StepId::Reboot].detail;
    assert_eq!(
        detail,
        "trial boot of the PVM kernel through the firmware (kexec not used: kexec-tools is \
         not installed (no kexec in /usr/sbin, /sbin or /usr/bin))"
    );
    let status = t.status();
    assert!(
        status.contains("kexec not used: kexec-tools is not installed"),
        "{status}"
    );
    // GRUB boots the trial entry once, as with `reboot: firmware`.
    assert_eq!(grub_boot(t.root(), false), KVER);
}

#[test]
fn a_load_kexec_refuses_falls_back_to_the_firmware() {
    let t = kexec_target(true);
    answer_kexec(
        &t.host,
        t.root(),
        CmdOutput::failed(
            255,
            "kexec_load failed: Operation not permitted\nThe kernel is locked down",
        ),
    );
    let digest = t.seed_journal();
    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    assert_eq!((t.host.kexecs(), t.host.reboots()), (0, 1));
    let j = t.journal(&digest);
    assert_eq!(j.facts.trial_kexec, None);
    let detail = &j.steps[&StepId::Reboot].detail;
    assert!(
        detail.starts_with(&format!(
            "trial boot of the PVM kernel through the firmware (kexec not used: `kexec --load \
             /boot/vmlinuz-{KVER}` failed (exit 255): kexec_load failed: Operation not permitted"
        )),
        "{detail}"
    );
    assert!(j
        .warnings
        .iter()
        .any(|w| w.contains("The kernel is locked down")));
    assert_eq!(grub_boot(t.root(), false), KVER);
}

#[test]
fn a_load_that_stages_nothing_falls_back_to_the_firmware() {
    let t = kexec_target(true);
    let r = t.root().to_path_buf();
    // Exit 0, but the kernel has nothing staged.
    t.host.on(move |c| {
        let inner = chrooted(&r, c)?;
        (inner.program == "/usr/sbin/kexec").then(|| Ok(CmdOutput::ok("")))
    });
    let digest = t.seed_journal();
    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    assert_eq!((t.host.kexecs(), t.host.reboots()), (0, 1));
    let detail = &t.journal(&digest).steps[&StepId::Reboot].detail;
    assert!(
        detail.contains("kexec --load exited 0 but /sys/kernel/kexec_loaded says \"\""),
        "{detail}"
    );
}

/// The kexec'd kernel dies before its userspace: the firmware reboot finds
/// the one-shot still armed and GRUB boots the trial entry once, as a
/// firmware trial boot would; verified there, it commits.
#[test]
fn a_kexec_boot_that_dies_early_still_gets_the_firmware_trial_boot() {
    let t = kexec_target(true);
    let root = t.root();
    answer_kexec(&t.host, root, CmdOutput::ok(""));
    let digest = t.seed_journal();
    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    // No userspace ran in the kexec'd kernel; panic=N restarts the machine.
    assert_eq!(grub_boot(root, false), KVER);
    let end = t.run(&digest, Scope::StopAfter(StepId::KernelCommit));
    assert_eq!(end, RunEnd::Stopped(StepId::KernelCommit));
    let j = t.journal(&digest);
    assert!(
        !j.steps[&StepId::KernelVerify].detail.contains("kexec"),
        "GRUB spent the one-shot itself: {:?}",
        j.steps[&StepId::KernelVerify]
    );
    assert_eq!(grubenv(root)["saved_entry"], PVM_ID);
}

/// kvm_pvm takes the kexec'd trial kernel down: the one-shot was spent at
/// kernel-verify, so panic=N restarts into the old default and the helper
/// rolls back there, as after a firmware trial boot.
#[test]
fn a_crash_in_the_kexec_trial_boot_comes_back_on_the_old_kernel() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let t = kexec_target(true);
    let root = t.root();
    answer_kexec(&t.host, root, CmdOutput::ok(""));
    let crashes = Arc::new(AtomicBool::new(true));
    let (r, c2) = (root.to_path_buf(), crashes.clone());
    t.host.on(move |c| {
        let inner = chrooted(&r, c)?;
        if inner.program == "modprobe" && inner.args == ["kvm_pvm"] && c2.load(Ordering::SeqCst) {
            panic!("Kernel panic - not syncing: modprobe kvm_pvm (scripted crash)");
        }
        None
    });
    let digest = t.seed_journal();
    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    kexec_boot(root, &staged_cmdline(&t.host));
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runner::run(&t.host, &t.plan, &digest, Scope::All)
    }));
    assert!(crashed.is_err(), "the scripted crash did not happen");
    assert!(!grubenv(root).contains_key("next_entry"));

    assert_eq!(grub_boot(root, false), OLD_DEB_KERNEL);
    crashes.store(false, Ordering::SeqCst);
    t.run_expecting_debian_rollback(
        &digest,
        "kvm-load had started in the trial boot and never finished",
    );
    assert_eq!(grubenv(root)["saved_entry"], OLD_ID);
    assert_eq!((t.host.kexecs(), t.host.reboots()), (1, 0));
}
