//! The kernel stage on a Debian/Ubuntu target in a temporary root, through
//! the runner: real `dpkg --root` installs the fixture .deb, Debian's real
//! grub-mkconfig regenerates grub.cfg from the real drop-in, real
//! grub-set-default/grub-reboot edit the real grubenv; modprobe and the GRUB
//! boot itself are emulated (kernel_common).

mod kernel_common;

use cubeboot::firstboot::host::{Action, CmdOutput, Host, ScriptedHost};
use cubeboot::firstboot::journal::{Journal, KvmInUse, StepState};
use cubeboot::firstboot::kernel::{self, grubcfg};
use cubeboot::firstboot::run_state::{Failure, RunState};
use cubeboot::firstboot::runner::{self, RunEnd, Scope};
use cubeboot::firstboot::{Ctx, Outcome, StepId};
use cubeboot::plan::{boot_params, KvmMode};
use kernel_common::*;

const PVM_ID: &str = "gnulinux-advanced-3f1c2b9a-5d7e-4c1a-9e8b-2a4f6d8c0e11>\
                      gnulinux-6.6.69-opencloudos9.cubesandbox.pvm.host-gfixture1-advanced-3f1c2b9a-5d7e-4c1a-9e8b-2a4f6d8c0e11";
const OLD_ID: &str = "gnulinux-advanced-3f1c2b9a-5d7e-4c1a-9e8b-2a4f6d8c0e11>\
                      gnulinux-6.1.0-28-amd64-advanced-3f1c2b9a-5d7e-4c1a-9e8b-2a4f6d8c0e11";

/// GRUB's environment block as the next boot reads it.
fn grubenv(root: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    grubcfg::parse_grubenv(&read(root, "/boot/grub/grubenv"))
}

fn dpkg_status(root: &std::path::Path) -> String {
    let out = real(
        &cubeboot::firstboot::host::CommandSpec::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${Status} ${Version}", DEB_PACKAGE]),
    )
    .unwrap();
    out.stdout
}

#[test]
fn trial_boot_then_commit_on_debian_12() {
    let t = Target::debian("debian-12");
    let root = t.root();
    let digest = t.seed_journal();

    // Boot 1: install, parameters, trial boot armed, one reboot.
    let end = t.run(&digest, Scope::All);
    assert_eq!(end, RunEnd::Rebooting);
    assert_eq!(t.host.reboots(), 1);
    let cmds = t.host.commands();
    let deb =
        root.join(cubeboot::firstboot::cache_path(&t.plan.assets.kernel).trim_start_matches('/'));
    assert!(
        cmds.contains(&format!(
            "DEBIAN_FRONTEND=noninteractive dpkg --root={} -i {}",
            root.display(),
            deb.display()
        )),
        "{cmds:#?}"
    );
    // Real dpkg installed it and the real selection holds it.
    assert_eq!(
        dpkg_status(root),
        format!("hold ok installed {DEB_VERSION}")
    );
    assert!(exists(root, &format!("/boot/vmlinuz-{KVER}")));
    assert!(exists(
        root,
        &format!("/lib/modules/{KVER}/kernel/arch/x86/kvm/kvm-pvm.ko")
    ));
    // The drop-in carries the merged line; the cloud console drop-in survives.
    let dropin = read(root, "/etc/default/grub.d/99-cubeboot-pvm.cfg");
    assert!(
        dropin.contains("GRUB_CMDLINE_LINUX=\"nopti pti=off panic=30\"\n"),
        "{dropin}"
    );
    assert!(dropin.contains(
        "GRUB_CMDLINE_LINUX_DEFAULT=\"console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0\"\n"
    ));
    assert!(dropin.contains("GRUB_DEFAULT=\"saved\"\n"));
    // Real grub-mkconfig put them on the PVM entry.
    let cfg = read(root, "/boot/grub/grub.cfg");
    let pvm = grubcfg::find_kernel_entry(&cfg, KVER).unwrap();
    assert_eq!(pvm.id_path().unwrap(), PVM_ID);
    assert!(
        pvm.args
            .join(" ")
            .contains("ro nopti pti=off panic=30 console=tty0"),
        "{:?}",
        pvm.args
    );
    // Old kernel saved, PVM armed once, in that order.
    let env = grubenv(root);
    assert_eq!(env["saved_entry"], OLD_ID);
    assert_eq!(env["next_entry"], PVM_ID);
    let set = cmds
        .iter()
        .position(|c| c.starts_with("grub-set-default"))
        .unwrap();
    let once = cmds
        .iter()
        .position(|c| c.starts_with("grub-reboot"))
        .unwrap();
    assert!(set < once);
    assert_eq!(
        cmds[once],
        format!(
            "grub-reboot --boot-directory={}/boot '{PVM_ID}'",
            root.display()
        )
    );
    let j = t.journal(&digest);
    assert_eq!(j.facts.kvm_mode, Some(KvmInUse::Pvm));
    assert_eq!(j.facts.old_kernel.as_deref(), Some(OLD_DEB_KERNEL));
    assert_eq!(j.facts.pvm_entry.as_deref(), Some(PVM_ID));
    assert_eq!(j.facts.old_default_entry.as_deref(), Some(OLD_ID));
    assert_eq!(j.facts.direct_default.as_deref(), None);

    // The machine reboots: GRUB boots the PVM entry once.
    assert_eq!(grub_boot(root, false), KVER);

    // Boot 2: verified, kvm_pvm loaded and /dev/kvm proven, then committed.
    let end = t.run(&digest, Scope::StopAfter(StepId::KernelCommit));
    assert_eq!(end, RunEnd::Stopped(StepId::KernelCommit));
    let j = t.journal(&digest);
    assert_eq!(j.state(StepId::KernelVerify), Some(StepState::Done));
    assert_eq!(j.state(StepId::KvmLoad), Some(StepState::Done));
    assert_eq!(j.state(StepId::KernelCommit), Some(StepState::Done));
    assert_eq!(t.host.reboots(), 1);
    // The commit comes only after kvm_pvm is in and /dev/kvm answers.
    let cmds = t.host.commands();
    let modprobe = cmds
        .iter()
        .position(|c| c.ends_with("modprobe kvm_pvm"))
        .expect("modprobe kvm_pvm ran");
    let commit = cmds
        .iter()
        .rposition(|c| {
            c.starts_with("grub-set-default") && c.contains(&format!("gnulinux-{KVER}-"))
        })
        .expect("the PVM entry was committed");
    assert!(modprobe < commit, "{cmds:#?}");
    let env = grubenv(root);
    assert_eq!(env["saved_entry"], PVM_ID);
    assert!(!env.contains_key("next_entry"));
    assert_eq!(read(root, "/etc/modules-load.d/kvm-pvm.conf"), "kvm_pvm\n");
    assert!(read(root, "/proc/modules").contains("kvm_pvm "));
    // The next boot (e.g. a later maintenance reboot) stays on PVM.
    assert_eq!(grub_boot(root, false), KVER);
}

#[test]
fn package_scripts_cannot_make_the_unverified_kernel_the_default() {
    let t = Target::debian("debian-12");
    let root = t.root();
    let digest = t.seed_journal();
    // Stop right after the install: the package's update-grub has run and the
    // PVM kernel (6.6) is entry 0 of grub.cfg ...
    t.run(&digest, Scope::StopAfter(StepId::KernelInstall));
    let cfg = read(root, "/boot/grub/grub.cfg");
    assert_eq!(
        grubcfg::entries(&cfg)[0].kernel.as_deref(),
        Some(format!("/boot/vmlinuz-{KVER}").as_str())
    );
    // ... yet a reboot now (a crash, an operator) still boots the old kernel.
    assert_eq!(grub_boot(root, false), OLD_DEB_KERNEL);
    let actions: Vec<String> = t.host.actions().iter().map(|a| a.to_string()).collect();
    let pin = actions
        .iter()
        .position(|a| a.starts_with("write   /etc/default/grub.d/99-cubeboot-pvm.cfg"))
        .unwrap();
    let dpkg = actions
        .iter()
        .position(|a| a.contains("dpkg --root=") && a.contains(" -i "))
        .unwrap();
    assert!(pin < dpkg, "{actions:#?}");
}

#[test]
fn failed_trial_boot_rolls_back_with_exactly_one_reboot() {
    let t = Target::debian("debian-12");
    let root = t.root();
    let digest = t.seed_journal();

    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    // The PVM kernel panics; panic=30 reboots into the saved default.
    assert_eq!(grub_boot(root, true), OLD_DEB_KERNEL);

    let end = t.run(&digest, Scope::All);
    let want = Failure::RolledBack {
        to: OLD_DEB_KERNEL.to_string(),
    };
    assert_eq!(end, RunEnd::Failed(want.clone()));
    assert_eq!(t.host.reboots(), 1);
    let status = t.status();
    assert!(
        status.contains(&format!(
            "\"state\": \"{}\"",
            RunState::Failed(want.clone())
        )),
        "{status}"
    );
    assert!(
        status.contains("earlyprintk=serial,ttyS0,115200"),
        "{status}"
    );
    assert!(status.contains(&format!(
        "the trial boot came back on {OLD_DEB_KERNEL}, not {KVER}"
    )));
    // The old kernel is pinned by id and boots without the PVM parameters.
    let dropin = read(root, "/etc/default/grub.d/99-cubeboot-pvm.cfg");
    assert!(
        dropin.contains(&format!("GRUB_DEFAULT=\"{OLD_ID}\"")),
        "{dropin}"
    );
    assert!(!dropin.contains("pti=off"));
    let cfg = read(root, "/boot/grub/grub.cfg");
    let old = grubcfg::find_kernel_entry(&cfg, OLD_DEB_KERNEL).unwrap();
    assert!(!old.args.iter().any(|a| a == "pti=off"), "{:?}", old.args);
    assert_eq!(grub_boot(root, false), OLD_DEB_KERNEL);

    // Running again does nothing and never reboots.
    let end = t.run(&digest, Scope::All);
    assert_eq!(end, RunEnd::Failed(want));
    assert_eq!(t.host.reboots(), 1);
}

#[test]
fn ubuntu_cloud_image_consoles_survive_the_tencent_set() {
    let mut t = Target::debian("ubuntu-24.04-cloudimg");
    t.plan.kernel.boot_params = boot_params::TENCENT.iter().map(|s| s.to_string()).collect();
    let root = t.root();
    let digest = t.seed_journal();

    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    let cfg = read(root, "/boot/grub/grub.cfg");
    let pvm = grubcfg::find_kernel_entry(&cfg, KVER).unwrap();
    let line = pvm.args.join(" ");
    // 50-cloudimg-settings.cfg's `console=tty1 console=ttyS0` gave way to the
    // configured pair; the vendor drop-in's nvme timeout and earlyprintk stay.
    let consoles: Vec<&str> = pvm
        .args
        .iter()
        .map(String::as_str)
        .filter(|a| a.starts_with("console="))
        .collect();
    assert_eq!(consoles, vec!["console=ttyS0,115200", "console=tty0"]);
    assert!(line.contains("nvme_core.io_timeout=4294967295"));
    assert!(line.contains("earlyprintk=ttyS0"));
    let j = t.journal(&digest);
    let armed = t.plan.kernel.trial_params(j.facts.trial_panic.unwrap());
    assert!(cubeboot::cmdline::has_merged(&line, &armed));
    // NIC renaming and IPv6 were warned about.
    let w = j.warnings.join("\n");
    let status = t.status();
    assert!(
        status.contains("boot parameter net.ifnames=0 renames network interfaces"),
        "{status}"
    );
    assert!(
        w.contains("net.ifnames=0 renames network interfaces"),
        "{w}"
    );
    assert!(w.contains("ipv6.disable=1 disables IPv6"), "{w}");
    assert!(t
        .host
        .said()
        .iter()
        .any(|l| l.starts_with("warning: boot parameter biosdevname=0")));
    let detail = &j.steps[&StepId::KernelBoot].detail;
    assert!(
        detail.contains("; warning: boot parameter net.ifnames=0"),
        "{detail}"
    );
    // Ubuntu: the PVM kernel (6.6) is not the newest; still pinned by id.
    assert_eq!(grub_boot(root, false), KVER);

    // Idempotent: arming again yields the same drop-in and grub.cfg.
    let dropin = read(root, "/etc/default/grub.d/99-cubeboot-pvm.cfg");
    let mut j = t.journal(&digest);
    kernel::boot(&mut t.ctx(&mut j)).unwrap();
    assert_eq!(
        read(root, "/etc/default/grub.d/99-cubeboot-pvm.cfg"),
        dropin
    );
    assert_eq!(read(root, "/boot/grub/grub.cfg"), cfg);
}

#[test]
fn unwritable_grubenv_falls_back_to_a_direct_default() {
    let t = Target::debian_with_boot_on("debian-12", "lvm");
    let root = t.root();
    let digest = t.seed_journal();

    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    let j = t.journal(&digest);
    let why = j.facts.direct_default.as_deref().unwrap();
    assert_eq!(
        why,
        "/boot/grub is on lvm, where GRUB cannot write /boot/grub/grubenv at boot"
    );
    assert!(!t.ran("grub-reboot"));
    let dropin = read(root, "/etc/default/grub.d/99-cubeboot-pvm.cfg");
    assert!(
        dropin.contains(&format!("GRUB_DEFAULT=\"{PVM_ID}\"")),
        "{dropin}"
    );
    assert!(t
        .host
        .said()
        .iter()
        .any(|l| l.contains("no trial boot possible")));
    assert_eq!(grub_boot(root, false), KVER);
    // After the verified boot there is nothing to commit: it already is the default.
    t.run(&digest, Scope::StopAfter(StepId::KernelCommit));
    let j = t.journal(&digest);
    assert_eq!(j.state(StepId::KernelVerify), Some(StepState::Done));
    assert!(j.steps[&StepId::KernelCommit]
        .detail
        .contains("direct default"));
}

#[test]
fn submenu_disabled_entry_is_top_level() {
    let t = Target::debian("disable-submenu");
    let root = t.root();
    let digest = t.seed_journal();
    t.run(&digest, Scope::All);
    let env = grubenv(root);
    assert_eq!(
        env["next_entry"],
        format!("gnulinux-{KVER}-advanced-{ROOT_UUID}")
    );
    assert_eq!(
        env["saved_entry"],
        format!("gnulinux-{OLD_DEB_KERNEL}-advanced-{ROOT_UUID}")
    );
    assert_eq!(grub_boot(root, false), KVER);
}

#[test]
fn tampered_cache_is_never_installed() {
    let t = Target::debian("debian-12");
    let root = t.root();
    let cached = cubeboot::firstboot::cache_path(&t.plan.assets.kernel);
    let mut bytes = fixture_bytes(DEB_NAME);
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    put(root, &cached, bytes);
    let digest = t.seed_journal();

    let end = t.run(&digest, Scope::All);
    assert_eq!(end, RunEnd::Failed(Failure::Step(StepId::KernelInstall)));
    assert!(
        !t.host.commands().iter().any(|c| c.contains(" -i ")),
        "{:#?}",
        t.host.commands()
    );
    assert!(!exists(root, &format!("/boot/vmlinuz-{KVER}")));
    let status = t.status();
    assert!(
        status.contains(&format!("expected sha256 {}", t.plan.assets.kernel.sha256)),
        "{status}"
    );
    assert_eq!(t.host.reboots(), 0);
}

#[test]
fn dpkg_lock_is_waited_for_then_bounded() {
    let t = Target::debian("debian-12");
    let root = t.root();
    // unattended-upgrades holds the lock for the first three attempts.
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let tried = tries.clone();
    t.host.on(move |c| {
        (c.program == "dpkg"
            && c.args.iter().any(|a| a == "-i")
            && tried.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 3)
            .then(|| {
                Ok(CmdOutput::failed(
                    2,
                    "dpkg: error: dpkg frontend lock was locked by another process with pid 812\n\
                     Note: removing the lock file is always wrong, can damage the locked area\n",
                ))
            })
    });
    let start = t.host.now();
    let digest = t.seed_journal();
    let mut j = t.journal(&digest);
    let out = kernel::install(&mut t.ctx(&mut j)).unwrap();
    assert!(
        matches!(out, Outcome::Done(ref d) if d.starts_with("installed ")),
        "{out:?}"
    );
    assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert_eq!(t.host.now().duration_since(start).unwrap().as_secs(), 15);
    assert_eq!(
        dpkg_status(root),
        format!("hold ok installed {DEB_VERSION}")
    );

    // A lock that never goes away ends with a clear error, not a hang.
    let t2 = Target::debian("debian-12");
    t2.host.on(|c| {
        (c.program == "dpkg" && c.args.iter().any(|a| a == "-i")).then(|| {
            Ok(CmdOutput::failed(
                2,
                "dpkg: error: dpkg frontend lock was locked by another process with pid 812\n",
            ))
        })
    });
    let mut j2 = Journal::new("x");
    let err = kernel::install(&mut t2.ctx(&mut j2)).unwrap_err();
    assert!(
        err.to_string().starts_with("dpkg stayed locked for 900 s"),
        "{err}"
    );
}

#[test]
fn second_install_is_a_no_op_and_already_running_is_skipped() {
    let t = Target::debian("debian-12");
    let root = t.root();
    let mut j = Journal::new("x");
    let mut ctx = t.ctx(&mut j);
    kernel::install(&mut ctx).unwrap();
    let before = t.host.commands().len();
    let out = kernel::install(&mut ctx).unwrap();
    assert!(
        matches!(out, Outcome::Done(ref d) if d.contains("already installed")),
        "{out:?}"
    );
    assert!(!t.host.commands()[before..]
        .iter()
        .any(|c| c.contains(" -i ")));

    // Running the PVM kernel with every parameter: nothing to do.
    set_running(
        root,
        KVER,
        &format!("BOOT_IMAGE=/boot/vmlinuz-{KVER} ro nopti pti=off"),
    );
    let mut j = Journal::new("y");
    let mut ctx = t.ctx(&mut j);
    let before = t.host.commands().len();
    assert!(matches!(
        kernel::install(&mut ctx).unwrap(),
        Outcome::Skipped(_)
    ));
    assert!(matches!(
        kernel::boot(&mut ctx).unwrap(),
        Outcome::Skipped(_)
    ));
    assert!(matches!(
        kernel::verify(&mut ctx).unwrap(),
        Outcome::Skipped(_)
    ));
    assert_eq!(
        t.host.commands().len(),
        before,
        "{:#?}",
        &t.host.commands()[before..]
    );
    assert_eq!(j.facts.kvm_mode, Some(KvmInUse::Pvm));
}

#[test]
fn native_kvm_skips_pvm_when_auto_but_not_when_forced() {
    let mut t = Target::debian("debian-12");
    t.plan.kernel.kvm = KvmMode::Auto;
    let root = t.root();
    put(
        root,
        "/proc/modules",
        "kvm_intel 397312 0 - Live 0x0\nkvm 1142784 1 kvm_intel, Live 0x0\n",
    );
    put(root, "/dev/kvm", "");
    let mut j = Journal::new("x");
    let mut ctx = t.ctx(&mut j);
    let out = kernel::install(&mut ctx).unwrap();
    assert!(
        matches!(out, Outcome::Skipped(ref d) if d.contains("CUBE_PVM_ENABLE=0")),
        "{out:?}"
    );
    assert!(matches!(
        kernel::boot(&mut ctx).unwrap(),
        Outcome::Skipped(_)
    ));
    assert!(matches!(
        kernel::load_kvm(&mut ctx).unwrap(),
        Outcome::Skipped(_)
    ));
    assert_eq!(ctx.journal.facts.kvm_mode, Some(KvmInUse::Native));
    assert!(t.host.commands().is_empty(), "{:#?}", t.host.commands());

    t.plan.kernel.kvm = KvmMode::Pvm;
    let mut j = Journal::new("y");
    let mut ctx = t.ctx(&mut j);
    assert!(matches!(
        kernel::install(&mut ctx).unwrap(),
        Outcome::Done(_)
    ));
    assert_eq!(j.facts.kvm_mode, Some(KvmInUse::Pvm));
}

#[test]
fn kvm_pvm_preempted_by_kvm_intel_is_blacklisted_and_retried() {
    let t = Target::debian("debian-12");
    let root = t.root();
    put(
        root,
        "/proc/modules",
        "kvm_intel 397312 0 - Live 0x0\nkvm 1142784 1 kvm_intel, Live 0x0\n",
    );
    let mut j = Journal::new("x");
    j.facts.kvm_mode = Some(KvmInUse::Pvm);
    let out = kernel::load_kvm(&mut t.ctx(&mut j)).unwrap();
    assert!(
        matches!(out, Outcome::Done(ref d) if d.contains("after blacklisting kvm_intel")),
        "{out:?}"
    );
    let r = root.display();
    assert_eq!(
        t.host.commands(),
        vec![
            format!("chroot {r} modprobe kvm_pvm"),
            format!("chroot {r} modprobe -r kvm_intel"),
            format!("chroot {r} modprobe kvm_pvm"),
        ]
    );
    let bl = read(root, "/etc/modprobe.d/cubeboot-kvm-pvm-blacklist.conf");
    assert!(bl.contains("blacklist kvm_intel\ninstall kvm_intel /bin/false\n"));
    assert!(bl.contains("blacklist kvm_amd\ninstall kvm_amd /bin/false\n"));
    assert_eq!(read(root, "/etc/modules-load.d/kvm-pvm.conf"), "kvm_pvm\n");

    // modprobe "succeeding" without loading anything is a failure, not a pass.
    let dir2 = tempfile::tempdir().unwrap();
    let host2 = ScriptedHost::new(dir2.path());
    host2.on_program("chroot", CmdOutput::ok(""));
    let mut j2 = Journal::new("y");
    let mut ctx = Ctx::new(&host2, &t.plan, &mut j2);
    let err = kernel::load_kvm(&mut ctx).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("kvm_pvm is not loaded: /proc/modules has no kvm_pvm"),
        "{err}"
    );
    assert!(!host2.exists("/etc/modules-load.d/kvm-pvm.conf"));
}

#[test]
fn dry_run_changes_nothing_and_shows_every_edit() {
    // Queries still run in a dry run: answered as on the real target.
    let t = Target::debian_dry_run("debian-12");
    let root = t.root();
    let cfg_before = read(root, "/boot/grub/grub.cfg");
    let mut j = Journal::new("x");
    let mut ctx = t.ctx(&mut j);
    kernel::install(&mut ctx).unwrap();
    let out = kernel::boot(&mut ctx).unwrap();
    assert!(matches!(out, Outcome::RebootRequested(_)), "{out:?}");
    let actions = t.host.actions();
    let shown: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
    assert!(
        shown
            .iter()
            .any(|a| a.starts_with("run     DEBIAN_FRONTEND=noninteractive dpkg --root=")),
        "{shown:#?}"
    );
    assert!(actions.iter().any(|a| matches!(a, Action::Write { path, .. } if path == "/etc/default/grub.d/99-cubeboot-pvm.cfg")));
    assert!(shown.iter().any(|a| a.contains("update-grub")));
    // The one-shot names the entry update-grub would make, by its real id
    // (the old entry's, with the new version), not a placeholder.
    let reboot = shown
        .iter()
        .find(|a| a.starts_with("run     grub-reboot"))
        .unwrap();
    assert!(!reboot.contains('<'), "{reboot}");
    assert!(
        reboot.contains(&format!("gnulinux-{KVER}-advanced-")),
        "{reboot}"
    );
    assert!(!exists(root, "/etc/default/grub.d/99-cubeboot-pvm.cfg"));
    assert!(!exists(root, &format!("/boot/vmlinuz-{KVER}")));
    assert_eq!(read(root, "/boot/grub/grub.cfg"), cfg_before);
    assert!(!exists(root, "/boot/grub/grubenv"));
}

#[test]
fn a_later_dropin_overriding_ours_refuses_the_reboot_and_keeps_the_old_default() {
    let t = Target::debian("debian-12");
    let root = t.root();
    // Sorts after 99-cubeboot-pvm.cfg ('_' > '-') and resets the line.
    put(
        root,
        "/etc/default/grub.d/99_zz-local.cfg",
        "GRUB_CMDLINE_LINUX=\"\"\n",
    );
    let status = t.run_refused_at_boot();
    assert!(
        status.contains("/etc/default/grub.d/99-cubeboot-pvm.cfg is overridden by a later file"),
        "{status}"
    );
    assert!(!t.ran("grub-reboot"));
    // Whatever happens next, the machine boots its old kernel.
    assert_eq!(grub_boot(root, false), OLD_DEB_KERNEL);
}

/// The operator keeps a copy of the distro kernel's entry in
/// /etc/grub.d/40_custom (same id, other parameters): the fallback entry is
/// ambiguous, so nothing is pinned by guess, and nothing is installed either
/// (the package's update-grub would make the PVM kernel entry 0 on Debian 12
/// with nothing pinned): the machine keeps booting its old kernel.
#[test]
fn an_ambiguous_fallback_entry_refuses_the_install() {
    let t = Target::debian("debian-12");
    let root = t.root();
    let old = OLD_DEB_KERNEL;
    put(
        root,
        "/etc/grub.d/40_custom",
        format!(
            "#!/bin/sh\nexec tail -n +3 $0\n\
             menuentry 'Debian GNU/Linux, with Linux {old} (no mitigations)' --class debian \
             $menuentry_id_option 'gnulinux-{old}-advanced-{ROOT_UUID}' {{\n\
             \tsearch --no-floppy --fs-uuid --set=root {ROOT_UUID}\n\
             \tlinux\t/boot/vmlinuz-{old} root=UUID={ROOT_UUID} ro quiet mitigations=off\n\
             \tinitrd\t/boot/initrd.img-{old}\n}}\n"
        ),
    );
    update_grub(root).unwrap();
    let digest = t.seed_journal();
    let end = t.run(&digest, Scope::All);
    assert_eq!(end, RunEnd::Failed(Failure::Step(StepId::KernelInstall)));
    assert_eq!(t.host.reboots(), 0);
    let status = t.status();
    assert!(
        status.contains(&format!(
            "refusing to install {DEB_PACKAGE} {DEB_VERSION}: cannot pin the fallback kernel \
             {old}: 2 menu entries have the id of kernel {old}; refusing to guess which one to boot"
        )),
        "{status}"
    );
    assert!(!exists(root, &format!("/boot/vmlinuz-{KVER}")));
    assert!(!t.host.commands().iter().any(|c| c.contains(" -i ")));
    assert!(!t.ran("grub-reboot"));
    assert!(!t.ran("grub-set-default"));
    assert_eq!(grub_boot(root, false), old);
}

/// Upstream has a report of `modprobe kvm_pvm` crashing a RHEL 9.5 VM: the
/// PVM kernel boots, and loading the module takes the machine down. The crash
/// is a panic in the scripted modprobe (the helper process dies mid-step,
/// leaving the journal as it was); `panic=N` then reboots it. The new kernel
/// must not be the default by then, or the host would come back on it and
/// crash again, forever.
#[test]
fn kvm_pvm_crash_during_the_trial_boot_falls_back_to_the_old_kernel() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let t = Target::debian("debian-12");
    let root = t.root();
    let crashes = Arc::new(AtomicBool::new(true));
    let (r, c2) = (root.to_path_buf(), crashes.clone());
    t.host.on(move |c| {
        let inner = chrooted(&r, c)?;
        let load = inner.program == "modprobe" && inner.args == ["kvm_pvm"];
        if load && c2.load(Ordering::SeqCst) {
            panic!("Kernel panic - not syncing: modprobe kvm_pvm (scripted crash)");
        }
        None
    });
    let digest = t.seed_journal();

    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    assert_eq!(grub_boot(root, false), KVER);
    // Boot 2: the trial boot; kvm_pvm takes the machine down.
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runner::run(&t.host, &t.plan, &digest, Scope::All)
    }));
    assert!(crashed.is_err(), "the scripted crash did not happen");
    let env = grubenv(root);
    assert_eq!(
        env["saved_entry"], OLD_ID,
        "committed before kvm_pvm was proven"
    );

    // panic=N reboots: GRUB's default is still the old kernel.
    assert_eq!(grub_boot(root, false), OLD_DEB_KERNEL);
    crashes.store(false, Ordering::SeqCst);

    // Boot 3: the helper sees the trial boot ended on the old kernel, rolls
    // back and stops without another reboot.
    let end = t.run(&digest, Scope::All);
    let want = Failure::RolledBack {
        to: OLD_DEB_KERNEL.into(),
    };
    assert_eq!(end, RunEnd::Failed(want));
    assert_eq!(t.host.reboots(), 1);
    let j = t.journal(&digest);
    assert_eq!(j.state(StepId::KvmLoad), Some(StepState::Failed));
    assert_ne!(j.state(StepId::KernelCommit), Some(StepState::Done));
    let status = t.status();
    assert!(
        status.contains(&format!("came back on {OLD_DEB_KERNEL}")),
        "{status}"
    );
    // Issue 21 item 8: what the journal knows, not a guess.
    assert!(
        status.contains("kvm-load had started in the trial boot and never finished"),
        "{status}"
    );
    assert!(!status.contains("e.g. while loading"), "{status}");
    // The machine as it was: the failed package unheld and removed (the old
    // kernel runs), no PVM entry left in grub.cfg.
    assert!(
        status.contains(&format!("{DEB_PACKAGE} unheld and removed")),
        "{status}"
    );
    let dpkg = dpkg_status(root);
    assert!(
        !dpkg.contains("ok installed") && !dpkg.starts_with("hold"),
        "{dpkg}"
    );
    assert!(!exists(root, &format!("/boot/vmlinuz-{KVER}")));
    assert!(grubcfg::find_kernel_entry(&read(root, "/boot/grub/grub.cfg"), KVER).is_err());
    let env = grubenv(root);
    assert_eq!(env["saved_entry"], OLD_ID);
    assert_eq!(grub_boot(root, false), OLD_DEB_KERNEL);
}

/// /dev/kvm exists but does not work (KVM_GET_API_VERSION fails): the trial
/// boot is rolled back and the PVM entry never becomes the default.
#[test]
fn dev_kvm_that_does_not_answer_rolls_the_trial_boot_back() {
    let t = Target::debian("debian-12");
    let root = t.root();
    t.host
        .set_kvm_api_version(Err("Inappropriate ioctl for device (os error 25)".into()));
    let digest = t.seed_journal();

    t.run(&digest, Scope::All);
    assert_eq!(grub_boot(root, false), KVER);
    t.run_expecting_debian_rollback(
        &digest,
        "KVM_GET_API_VERSION on /dev/kvm failed: Inappropriate ioctl for device",
    );
    // Issue 21 item 8: rolled back while the trial kernel runs. One
    // journaled reboot into the old default follows, so the node runs what
    // its default says; the package is unheld but stays (it is the running
    // kernel until then).
    let status = t.status();
    assert!(
        status.contains(&format!(
            "{KVER}, the trial kernel, was still running: one reboot into {OLD_DEB_KERNEL} follows"
        )),
        "{status}"
    );
    assert_eq!(
        dpkg_status(root),
        format!("install ok installed {DEB_VERSION}")
    );
    assert_eq!(t.host.reboots(), 2);
    assert_eq!(t.journal(&digest).reboots, 2);
    assert_eq!(grub_boot(root, false), OLD_DEB_KERNEL);
    // Bounded: the run is finished, the next boot does nothing.
    let again = t.run(&digest, Scope::All);
    assert!(
        matches!(again, RunEnd::Failed(Failure::RolledBack { .. })),
        "{again:?}"
    );
    assert_eq!(t.host.reboots(), 2);
    assert!(!t
        .host
        .commands()
        .iter()
        .any(|c| c.starts_with("grub-set-default") && c.contains(&format!("gnulinux-{KVER}-"))));
    assert_eq!(grub_boot(root, false), OLD_DEB_KERNEL);

    // A KVM that answers another API version is no KVM the installer can use.
    let t = Target::debian("debian-12");
    let root = t.root();
    t.host.set_kvm_api_version(Ok(11));
    let digest = t.seed_journal();
    t.run(&digest, Scope::All);
    grub_boot(root, false);
    let end = t.run(&digest, Scope::All);
    assert!(matches!(end, RunEnd::Failed(_)), "{end:?}");
    let status = t.status();
    assert!(
        status.contains("KVM_GET_API_VERSION on /dev/kvm answered 11, not 12"),
        "{status}"
    );
}

/// An operator's own `panic=N` is kept for the trial boot (and after), not
/// replaced by the plan's default; the status says which value is in force.
#[test]
fn operators_panic_value_is_kept_for_the_trial_boot() {
    let t = Target::debian("debian-12");
    let root = t.root();
    // The operator's own drop-in, and the command line it gave the running kernel.
    put(
        root,
        "/etc/default/grub.d/20-operator.cfg",
        "GRUB_CMDLINE_LINUX_DEFAULT=\"$GRUB_CMDLINE_LINUX_DEFAULT panic=10\"\n",
    );
    update_grub(root).unwrap();
    set_running(
        root,
        OLD_DEB_KERNEL,
        &format!(
            "BOOT_IMAGE=/boot/vmlinuz-{OLD_DEB_KERNEL} root=UUID={ROOT_UUID} ro quiet panic=10"
        ),
    );
    let digest = t.seed_journal();

    t.run(&digest, Scope::All);
    let dropin = read(root, "/etc/default/grub.d/99-cubeboot-pvm.cfg");
    assert!(
        dropin.contains("GRUB_CMDLINE_LINUX=\"nopti pti=off panic=10\"\n"),
        "{dropin}"
    );
    let cfg = read(root, "/boot/grub/grub.cfg");
    let pvm = grubcfg::find_kernel_entry(&cfg, KVER).unwrap();
    let panics: Vec<&String> = pvm
        .args
        .iter()
        .filter(|a| a.starts_with("panic="))
        .collect();
    assert_eq!(panics, vec!["panic=10"], "{:?}", pvm.args);
    let status = t.status();
    assert!(
        status.contains("panic=10 in force (the operator's, from the running command line)"),
        "{status}"
    );

    assert_eq!(grub_boot(root, false), KVER);
    let end = t.run(&digest, Scope::StopAfter(StepId::KernelCommit));
    assert_eq!(end, RunEnd::Stopped(StepId::KernelCommit));
    let env = grubenv(root);
    assert_eq!(env["saved_entry"], PVM_ID);
}

/// A journal the previous step list wrote (version 2, no kernel-commit step):
/// there kernel-verify itself made the PVM entry the default. A helper with
/// kernel-commit resuming that journal (the helper was replaced mid-run, e.g.
/// killed during kvm-load) knows the commit happened: it does not commit a
/// second time and does not treat the committed kernel as a trial.
#[test]
fn a_journal_from_before_kernel_commit_resumes_as_committed() {
    let t = Target::debian("debian-12");
    let root = t.root();
    let digest = t.seed_journal();
    t.run(&digest, Scope::All);
    assert_eq!(grub_boot(root, false), KVER);
    // The previous helper verified and committed in kernel-verify, then was
    // killed in kvm-load: what it left is this journal and this grubenv.
    let (set_default, _) = grub_commands(&t.host);
    t.host
        .run(
            &cubeboot::firstboot::host::CommandSpec::new("grub-set-default")
                .arg(format!("--boot-directory={}/boot", root.display()))
                .arg(PVM_ID),
        )
        .unwrap();
    let path = root.join(cubeboot::firstboot::JOURNAL_PATH.trim_start_matches('/'));
    let mut old: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    old["version"] = serde_json::json!(2);
    old["steps"]["kernel-verify"] = serde_json::json!({
        "state": "done",
        "detail": format!("running {KVER} with its boot parameters; committed {PVM_ID}"),
        "at": 1_800_000_100u64,
    });
    old["steps"]["kvm-load"] = serde_json::json!({
        "state": "started", "detail": "", "at": 1_800_000_101u64, "boots": ["boot-2"],
    });
    std::fs::write(&path, serde_json::to_string_pretty(&old).unwrap()).unwrap();
    let (committed_by_old, _) = grub_commands(&t.host);
    assert_eq!(committed_by_old, set_default + 1);

    let end = t.run(&digest, Scope::StopAfter(StepId::KernelCommit));
    assert_eq!(end, RunEnd::Stopped(StepId::KernelCommit));
    let j = t.journal(&digest);
    assert_eq!(j.state(StepId::KvmLoad), Some(StepState::Done));
    assert_eq!(j.state(StepId::KernelCommit), Some(StepState::Done));
    assert!(
        j.steps[&StepId::KernelCommit]
            .detail
            .contains("committed by kernel-verify"),
        "{:?}",
        j.steps[&StepId::KernelCommit]
    );
    // Not committed again.
    assert_eq!(
        grub_commands(&t.host).0,
        committed_by_old,
        "{:#?}",
        t.host.commands()
    );
    let env = grubenv(root);
    assert_eq!(env["saved_entry"], PVM_ID);
}

/// How many grub-set-default and grub-reboot commands ran so far.
fn grub_commands(host: &ScriptedHost) -> (usize, usize) {
    let cmds = host.commands();
    let count = |p: &str| cmds.iter().filter(|c| c.starts_with(p)).count();
    (count("grub-set-default"), count("grub-reboot"))
}

/// Issue 21 item 3 on the target: the line is judged as the kernel will get
/// it, after the merge with the node's own parameters, before anything is
/// armed. The operator's `pti=on` in GRUB_CMDLINE_LINUX_DEFAULT comes after
/// GRUB_CMDLINE_LINUX, so it wins over a list with `nopti` alone; and an
/// operator's long parameter with ours goes over x86's 2,047 bytes. Either
/// way the status says why and the machine keeps booting its old kernel.
#[test]
fn a_line_the_kernel_would_not_honour_is_refused_before_arming() {
    let long = format!("x={}", "a".repeat(2000));
    for (linux_default, linux, params, why) in [
        (
            " pti=on",
            "",
            vec!["nopti"],
            "KPTI stays on: the last of the KPTI parameters is `pti=on`",
        ),
        (
            "",
            long.as_str(),
            vec!["nopti", "pti=off"],
            "over x86's 2047-byte limit by ",
        ),
    ] {
        let mut t = Target::debian("debian-12");
        t.plan.kernel.boot_params = params.into_iter().map(str::to_string).collect();
        let root = t.root();
        // The cloud drop-in sets GRUB_CMDLINE_LINUX_DEFAULT.
        let cloud = "/etc/default/grub.d/10_cloud.cfg";
        let dropin = read(root, cloud).replace(
            "consoleblank=0\"",
            &format!("consoleblank=0{linux_default}\""),
        );
        put(root, cloud, dropin);
        let grub = read(root, "/etc/default/grub").replace(
            "GRUB_CMDLINE_LINUX=\"\"",
            &format!("GRUB_CMDLINE_LINUX=\"{linux}\""),
        );
        put(root, "/etc/default/grub", grub);
        update_grub(root).unwrap();
        let status = t.run_refused_at_boot();
        assert!(
            status.contains("refusing to arm the trial boot"),
            "{status}"
        );
        assert!(status.contains(why), "{status}");
        assert!(!t.ran("grub-reboot"));
        assert!(!exists(root, "/boot/grub/grubenv") || !grubenv(root).contains_key("next_entry"));
        assert_eq!(grub_boot(root, false), OLD_DEB_KERNEL);
    }
}
