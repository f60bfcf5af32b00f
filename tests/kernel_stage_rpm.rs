//! The kernel stage on an RPM/BLS target (Rocky 9 layout) in a temporary
//! root, through the runner: real `rpm --root` installs the fixture .rpm
//! (`-ivh --oldpackage`) and real `dnf --installroot` the split repository
//! kernel from a createrepo_c repository; the packages' scriptlets run the
//! real systemd kernel-install, which writes the BLS entry; real
//! grub-editenv keeps grubenv; grubby (modelled on upstream's grubby-bls),
//! grub2-reboot, modprobe and the boot are emulated (kernel_common).

mod kernel_common;

use cubeboot::firstboot::host::{CmdOutput, CommandSpec};
use cubeboot::firstboot::journal::StepState;
use cubeboot::firstboot::kernel::grubcfg;
use cubeboot::firstboot::run_state::Failure;
use cubeboot::firstboot::runner::{RunEnd, Scope};
use cubeboot::firstboot::StepId;
use cubeboot::plan::KernelHold;
use kernel_common::*;

/// kernel-install names the new entry by this machine's id.
fn pvm_bls_id() -> String {
    format!("{THIS_MACHINE_ID}-{KVER}")
}

/// GRUB's environment block as the next boot reads it.
fn grubenv(root: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    grubcfg::parse_grubenv(&read(root, "/boot/grub2/grubenv"))
}

fn rpm_installed(root: &std::path::Path) -> String {
    real(
        &CommandSpec::new("rpm")
            .arg("--root")
            .arg(root.to_string_lossy())
            .args(["-q", "kernel"]),
    )
    .unwrap()
    .stdout
}

#[test]
fn trial_boot_then_commit_on_rocky_9() {
    let t = Target::rocky();
    let root = t.root();
    let digest = t.seed_journal();

    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    assert_eq!(t.host.reboots(), 1);
    let cmds = t.host.commands();
    let r = root.display();
    let cached =
        root.join(cubeboot::firstboot::cache_path(&t.plan.assets.kernel).trim_start_matches('/'));
    assert!(
        cmds.contains(&format!(
            "rpm --root {r} -ivh --oldpackage {}",
            cached.display()
        )),
        "{cmds:#?}"
    );
    assert!(!cmds.iter().any(|c| c.contains("-U")), "{cmds:#?}");
    assert_eq!(
        rpm_installed(root).trim(),
        format!("kernel-{RPM_VERSION}.x86_64")
    );
    assert!(exists(root, &format!("/boot/vmlinuz-{KVER}")));

    // Parameters on the BLS entry (named by another machine-id), via grubby.
    assert!(cmds.contains(&format!(
        "chroot {r} grubby --update-kernel=/boot/vmlinuz-{KVER} '--args=nopti pti=off panic=30'"
    )));
    let entry = read(root, &format!("/boot/loader/entries/{}.conf", pvm_bls_id()));
    assert!(
        entry.contains(
            "options root=UUID=abc ro crashkernel=1G-4G:192M console=ttyS0,115200n8 nopti pti=off panic=30\n"
        ),
        "{entry}"
    );
    // Old default pinned by path, PVM armed once by BLS id.
    assert!(cmds.contains(&format!(
        "chroot {r} grubby --set-default=/boot/vmlinuz-{OLD_RPM_KERNEL}"
    )));
    assert!(cmds.contains(&format!(
        "grub2-reboot --boot-directory={r}/boot {}",
        pvm_bls_id()
    )));
    let env = grubenv(root);
    assert_eq!(env["next_entry"], pvm_bls_id());
    assert_eq!(
        env["saved_entry"],
        format!("{OTHER_MACHINE_ID}-{OLD_RPM_KERNEL}")
    );
    // Held: versionlock, and new kernels no longer take the default.
    assert!(cmds.contains(&format!(
        "chroot {r} dnf versionlock add kernel-{RPM_VERSION}"
    )));
    assert!(read(root, "/etc/sysconfig/kernel").starts_with("UPDATEDEFAULT=\"no\"\n"));
    assert_eq!(
        read(root, "/etc/sysconfig/kernel.cubeboot.bak"),
        "UPDATEDEFAULT=yes\nDEFAULTKERNEL=kernel-core\n"
    );
    let j = t.journal(&digest);
    assert_eq!(
        j.facts.old_default_entry.as_deref(),
        Some(format!("/boot/vmlinuz-{OLD_RPM_KERNEL}").as_str())
    );
    assert_eq!(j.facts.pvm_entry.as_deref(), Some(pvm_bls_id().as_str()));

    assert_eq!(bls_boot(root, false), KVER);
    t.run(&digest, Scope::StopAfter(StepId::KernelCommit));
    let j = t.journal(&digest);
    assert_eq!(
        j.state(StepId::KernelVerify),
        Some(StepState::Done),
        "{:?}",
        j.steps
    );
    assert_eq!(j.state(StepId::KvmLoad), Some(StepState::Done));
    assert_eq!(j.state(StepId::KernelCommit), Some(StepState::Done));
    // grubby made the PVM kernel the default only after kvm_pvm was in.
    let cmds = t.host.commands();
    let modprobe = cmds.iter().position(|c| c.ends_with("modprobe kvm_pvm"));
    let commit = cmds
        .iter()
        .position(|c| c.ends_with(&format!("grubby --set-default=/boot/vmlinuz-{KVER}")));
    assert!(modprobe.is_some() && modprobe < commit, "{cmds:#?}");
    assert_eq!(grubby_default(root), format!("/boot/vmlinuz-{KVER}"));
    assert!(t.host.commands().contains(&format!(
        "chroot {r} grubby --set-default=/boot/vmlinuz-{KVER}"
    )));
    assert_eq!(t.host.reboots(), 1);
    assert_eq!(bls_boot(root, false), KVER);
}

#[test]
fn rpm_rollback_restores_the_old_default() {
    let t = Target::rocky();
    let root = t.root();
    let digest = t.seed_journal();

    t.run(&digest, Scope::All);
    // PVM boots but without its parameters (someone's grubby edit was lost).
    bls_boot(root, false);
    set_running(root, KVER, &format!("BOOT_IMAGE=/boot/vmlinuz-{KVER} ro"));
    let end = t.run(&digest, Scope::All);
    assert_eq!(
        end,
        RunEnd::Failed(Failure::RolledBack {
            to: OLD_RPM_KERNEL.to_string()
        })
    );
    // The trial kernel was running: one journaled reboot into the old
    // default follows the rollback (docs/bootloader.md, "After a rollback").
    assert_eq!(t.host.reboots(), 2);
    assert_eq!(
        grubby_default(root),
        format!("/boot/vmlinuz-{OLD_RPM_KERNEL}")
    );
    assert_eq!(bls_boot(root, false), OLD_RPM_KERNEL);
    let status = t.status();
    assert!(
        status.contains(&format!("{KVER} is running without nopti pti=off panic=30")),
        "{status}"
    );
    assert!(
        status.contains(&format!("one reboot into {OLD_RPM_KERNEL} follows")),
        "{status}"
    );
}

#[test]
fn scriptlet_that_makes_the_new_kernel_default_is_undone() {
    let t = Target::rocky();
    let root = t.root();
    // A fresh image: grubenv has no saved_entry, so grubby's default is the
    // first entry in `sort -Vr` order. The new entry kernel-install writes
    // (this machine's id) sorts first: the package moved the default.
    let out = std::process::Command::new("grub-editenv")
        .arg(root.join("boot/grub2/grubenv"))
        .args(["unset", "saved_entry"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let digest = t.seed_journal();
    t.run(&digest, Scope::StopAfter(StepId::KernelInstall));
    assert_eq!(
        grubby_default(root),
        format!("/boot/vmlinuz-{OLD_RPM_KERNEL}")
    );
    assert!(t.host.said().iter().any(|l| l.contains(&format!(
        "the package made /boot/vmlinuz-{KVER} the default"
    ))));
}

#[test]
fn dnf_exclude_hold_edits_dnf_conf_with_a_backup() {
    let mut t = Target::rocky();
    t.plan.target.packages.hold = KernelHold::DnfExclude;
    let root = t.root();
    put(
        root,
        "/etc/dnf/dnf.conf",
        "[main]\ngpgcheck=1\ninstallonly_limit=3\n",
    );
    let digest = t.seed_journal();
    t.run(&digest, Scope::StopAfter(StepId::KernelInstall));
    assert_eq!(
        read(root, "/etc/dnf/dnf.conf"),
        "[main]\nexclude=kernel\ngpgcheck=1\ninstallonly_limit=3\n"
    );
    assert_eq!(
        read(root, "/etc/dnf/dnf.conf.cubeboot.bak"),
        "[main]\ngpgcheck=1\ninstallonly_limit=3\n"
    );
    assert!(!t.host.commands().iter().any(|c| c.contains("versionlock")));
}

#[test]
fn tencent_set_replaces_the_entry_console_through_grubby() {
    let mut t = Target::rocky();
    t.plan.kernel.boot_params = cubeboot::plan::boot_params::TENCENT
        .iter()
        .map(|s| s.to_string())
        .collect();
    let root = t.root();
    let digest = t.seed_journal();
    t.run(&digest, Scope::All);
    let update = t
        .host
        .commands()
        .into_iter()
        .find(|c| c.contains("--update-kernel="))
        .unwrap();
    assert!(
        update.contains("'--remove-args=crashkernel=1G-4G:192M console=ttyS0,115200n8'"),
        "{update}"
    );
    let entry = read(root, &format!("/boot/loader/entries/{}.conf", pvm_bls_id()));
    let options = entry
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap();
    let j = t.journal(&digest);
    let armed = t.plan.kernel.trial_params(j.facts.trial_panic.unwrap());
    assert!(cubeboot::cmdline::has_merged(options, &armed), "{options}");
    assert_eq!(
        j.facts.bls_options_before.as_deref(),
        Some("root=UUID=abc ro crashkernel=1G-4G:192M console=ttyS0,115200n8")
    );
    assert_eq!(bls_boot(root, false), KVER);
}

#[test]
fn an_rpm_that_made_no_boot_entry_gets_one_from_kernel_install() {
    // The package's scriptlets ran nothing (no installkernel on the host,
    // or `rpm --noscripts` by someone): /boot/vmlinuz-KVER, no entry.
    let t = Target::rocky_with(Scriptlets::None);
    let root = t.root();
    let digest = t.seed_journal();

    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    let r = root.display();
    let cmds = t.host.commands();
    assert!(
        cmds.contains(&format!(
            "chroot {r} kernel-install add {KVER} /boot/vmlinuz-{KVER}"
        )),
        "{cmds:#?}"
    );
    // The real kernel-install wrote the entry; our parameters reached its
    // options line, and the initramfs is there.
    let entry = read(root, &format!("/boot/loader/entries/{}.conf", pvm_bls_id()));
    assert!(
        entry.contains(
            "options root=UUID=abc ro crashkernel=1G-4G:192M console=ttyS0,115200n8 nopti pti=off panic=30\n"
        ),
        "{entry}"
    );
    assert!(exists(root, &format!("/boot/initramfs-{KVER}.img")));
    let env = grubenv(root);
    assert_eq!(env["next_entry"], pvm_bls_id());
    assert_eq!(bls_boot(root, false), KVER);
}

#[test]
fn without_kernel_install_the_entry_comes_from_grubby_add_kernel() {
    let t = Target::rocky_with(Scriptlets::None);
    let root = t.root();
    let r = root.to_path_buf();
    t.host.on(move |c| {
        let inner = chrooted(&r, c)?;
        (inner.program == "kernel-install").then(|| {
            Ok(CmdOutput::failed(
                127,
                "chroot: failed to run command 'kernel-install': No such file or directory\n",
            ))
        })
    });
    let digest = t.seed_journal();

    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    let r = root.display();
    assert!(t.host.commands().contains(&format!(
        "chroot {r} grubby --add-kernel=/boot/vmlinuz-{KVER} '--title=PVM host kernel ({KVER})' --copy-default"
    )));
    // grubby names the entry by this machine's id, copies the default
    // entry's options, and --update-kernel then adds ours.
    let entry = read(root, &format!("/boot/loader/entries/{}.conf", pvm_bls_id()));
    assert!(
        entry.contains(&format!("linux /boot/vmlinuz-{KVER}\n")),
        "{entry}"
    );
    assert!(
        entry.contains(
            "options root=UUID=abc ro crashkernel=1G-4G:192M console=ttyS0,115200n8 nopti pti=off panic=30\n"
        ),
        "{entry}"
    );
    let env = grubenv(root);
    assert_eq!(env["next_entry"], pvm_bls_id());
    assert_eq!(
        grubby_default(root),
        format!("/boot/vmlinuz-{OLD_RPM_KERNEL}")
    );
}

#[test]
fn grubby_stand_in_edits_options_as_grubby_bls_does() {
    // update_args: a key given in --args replaces every value of that key,
    // all --args are appended in order; --remove-args KEY=VALUE drops one
    // exact token, a bare KEY every token of that key.
    let cases = [
        (
            "ro quiet console=ttyS0,115200n8",
            "",
            "console=tty0 console=ttyS0,115200",
            "ro quiet console=tty0 console=ttyS0,115200",
        ),
        ("ro pti=on nopti", "", "nopti pti=off", "ro nopti pti=off"),
        (
            "ro crashkernel=auto rhgb quiet",
            "crashkernel=auto",
            "",
            "ro rhgb quiet",
        ),
        ("ro rhgb quiet", "rhgb", "panic=30", "ro quiet panic=30"),
        // sed's non-overlapping matches: a bare match eats the space the
        // next same-key token needs, so that one survives.
        ("ro quiet quiet x", "", "quiet", "ro quiet x quiet"),
    ];
    for (args, remove, add, want) in cases {
        assert_eq!(
            grubby_update_args(args, remove, add),
            want,
            "{args} -{remove} +{add}"
        );
    }
}

#[test]
fn a_resumed_run_with_the_package_in_but_no_entry_gets_one() {
    let t = Target::rocky_with(Scriptlets::None);
    let root = t.root();
    // The package went in (its scriptlets made no entry) and the helper
    // stopped before making one: the install step now finds the package
    // installed and skips.
    let cached =
        root.join(cubeboot::firstboot::cache_path(&t.plan.assets.kernel).trim_start_matches('/'));
    let out = real(
        &CommandSpec::new("rpm")
            .arg("--root")
            .arg(root.to_string_lossy())
            .args(["-ivh", "--oldpackage"])
            .arg(cached.to_string_lossy()),
    )
    .unwrap();
    assert!(out.success(), "{}", out.stderr);
    let digest = t.seed_journal();
    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    let r = root.display();
    assert!(t.host.commands().contains(&format!(
        "chroot {r} kernel-install add {KVER} /boot/vmlinuz-{KVER}"
    )));
    let env = grubenv(root);
    assert_eq!(env["next_entry"], pvm_bls_id());
}

#[test]
fn a_dry_run_names_the_entry_kernel_install_would_make() {
    use cubeboot::firstboot::journal::Journal;
    use cubeboot::firstboot::{kernel, Outcome};
    // Queries still run in a dry run: answered as on the real target.
    let t = Target::rocky_dry_run();
    let root = t.root();
    let mut j = Journal::new("x");
    let mut ctx = t.ctx(&mut j);
    kernel::install(&mut ctx).unwrap();
    let out = kernel::boot(&mut ctx).unwrap();
    assert!(matches!(out, Outcome::RebootRequested(_)), "{out:?}");
    let shown: Vec<String> = t.host.actions().iter().map(|a| a.to_string()).collect();
    // No package went in, so no entry exists; the one-shot names the id
    // kernel-install gives it (this machine's id), not a placeholder.
    let one_shot = shown
        .iter()
        .find(|a| a.contains("grub2-reboot"))
        .unwrap_or_else(|| panic!("{shown:#?}"));
    assert!(one_shot.contains(&pvm_bls_id()), "{one_shot}");
    assert!(!one_shot.contains('<'), "{one_shot}");
    assert!(!exists(root, &format!("/boot/vmlinuz-{KVER}")));
}

/// Issue 21 item 3 on a BLS target: the PVM entry's options (from
/// /etc/kernel/cmdline, with an operator's long parameter) merged with the
/// plan's go over x86's 2,047 bytes: nothing is armed, the old kernel stays
/// the default and the status says by how much.
#[test]
fn bls_options_over_the_command_line_limit_are_refused_before_arming() {
    let t = Target::rocky();
    let root = t.root();
    let cmdline = read(root, "/etc/kernel/cmdline");
    put(
        root,
        "/etc/kernel/cmdline",
        format!("{} x={}\n", cmdline.trim_end(), "a".repeat(1990)),
    );
    let status = t.run_refused_at_boot();
    assert!(
        status.contains("refusing to arm the trial boot"),
        "{status}"
    );
    assert!(
        status.contains("over x86's 2047-byte limit by "),
        "{status}"
    );
    assert!(!t.ran("grub2-reboot"));
    assert_eq!(
        grubby_default(root),
        format!("/boot/vmlinuz-{OLD_RPM_KERNEL}")
    );
}

/// Issue 21 item 8 on a BLS target: the PVM kernel panics on its trial boot
/// and panic=30 brings back the old default. The rollback leaves the machine
/// as it was: the exclude this run added is gone from dnf.conf, the package
/// is erased (the old kernel runs) and its BLS entry with it.
#[test]
fn a_rolled_back_kernel_is_unheld_and_removed() {
    let mut t = Target::rocky();
    t.plan.target.packages.hold = KernelHold::DnfExclude;
    let root = t.root();
    put(root, "/etc/dnf/dnf.conf", "[main]\ngpgcheck=1\n");
    let digest = t.seed_journal();
    assert_eq!(t.run(&digest, Scope::All), RunEnd::Rebooting);
    assert!(read(root, "/etc/dnf/dnf.conf").contains("exclude=kernel\n"));
    assert_eq!(bls_boot(root, true), OLD_RPM_KERNEL);

    let end = t.run(&digest, Scope::All);
    assert_eq!(
        end,
        RunEnd::Failed(Failure::RolledBack {
            to: OLD_RPM_KERNEL.to_string()
        })
    );
    let status = t.status();
    assert!(status.contains("kernel unheld and removed"), "{status}");
    assert_eq!(read(root, "/etc/dnf/dnf.conf"), "[main]\ngpgcheck=1\n");
    assert!(
        rpm_installed(root).contains("is not installed"),
        "{}",
        rpm_installed(root)
    );
    assert!(!exists(root, &format!("/boot/vmlinuz-{KVER}")));
    assert!(!std::fs::read_dir(root.join("boot/loader/entries"))
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().contains(KVER)));
    assert_eq!(
        grubby_default(root),
        format!("/boot/vmlinuz-{OLD_RPM_KERNEL}")
    );
    assert_eq!(t.host.reboots(), 1);
}
