//! The kernel stage on an RPM/BLS target (Rocky 9 layout) in a temporary
//! root, through the runner: real `rpm --root` installs the fixture .rpm
//! (`-ivh --oldpackage`), real grub-editenv keeps grubenv; grubby,
//! grub2-reboot, modprobe and the boot are emulated (kernel_common).

mod kernel_common;

use cubeboot::firstboot::host::{CommandSpec, ScriptedHost};
use cubeboot::firstboot::journal::{facts, StepState};
use cubeboot::firstboot::kernel::grubcfg;
use cubeboot::firstboot::runner::{self, RunEnd, Scope};
use cubeboot::firstboot::StepId;
use cubeboot::plan::KernelHold;
use kernel_common::*;

fn pvm_bls_id() -> String {
    format!("{OTHER_MACHINE_ID}-{KVER}")
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
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let plan = rpm_plan();
    rocky_root(root, &plan);
    let host = ScriptedHost::new(root);
    rocky_responders(&host, root);
    let digest = seed_journal(&host, &plan);

    assert_eq!(
        runner::run(&host, &plan, &digest, Scope::All).unwrap(),
        RunEnd::Rebooting
    );
    assert_eq!(host.reboots(), 1);
    let cmds = host.commands();
    let r = root.display();
    let cached =
        root.join(cubeboot::firstboot::cache_path(&plan.assets.kernel).trim_start_matches('/'));
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
    let env = grubcfg::parse_grubenv(&read(root, "/boot/grub2/grubenv"));
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
    let j = journal(&host, &digest);
    assert_eq!(
        j.fact(facts::OLD_DEFAULT_ENTRY),
        Some(format!("/boot/vmlinuz-{OLD_RPM_KERNEL}").as_str())
    );
    assert_eq!(j.fact(facts::PVM_ENTRY), Some(pvm_bls_id().as_str()));

    assert_eq!(bls_boot(root, false), KVER);
    runner::run(&host, &plan, &digest, Scope::StopAfter(StepId::KvmLoad)).unwrap();
    let j = journal(&host, &digest);
    assert_eq!(
        j.state(StepId::KernelVerify),
        Some(StepState::Done),
        "{:?}",
        j.steps
    );
    assert_eq!(j.state(StepId::KvmLoad), Some(StepState::Done));
    assert_eq!(
        read(root, GRUBBY_DEFAULT).trim(),
        format!("/boot/vmlinuz-{KVER}")
    );
    assert!(host.commands().contains(&format!(
        "chroot {r} grubby --set-default=/boot/vmlinuz-{KVER}"
    )));
    assert_eq!(host.reboots(), 1);
    assert_eq!(bls_boot(root, false), KVER);
}

#[test]
fn rpm_rollback_restores_the_old_default() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let plan = rpm_plan();
    rocky_root(root, &plan);
    let host = ScriptedHost::new(root);
    rocky_responders(&host, root);
    let digest = seed_journal(&host, &plan);

    runner::run(&host, &plan, &digest, Scope::All).unwrap();
    // PVM boots but without its parameters (someone's grubby edit was lost).
    bls_boot(root, false);
    set_running(root, KVER, &format!("BOOT_IMAGE=/boot/vmlinuz-{KVER} ro"));
    let end = runner::run(&host, &plan, &digest, Scope::All).unwrap();
    assert_eq!(
        end,
        RunEnd::Failed(format!("failed: rolled back to {OLD_RPM_KERNEL}"))
    );
    assert_eq!(host.reboots(), 1);
    assert_eq!(
        read(root, GRUBBY_DEFAULT).trim(),
        format!("/boot/vmlinuz-{OLD_RPM_KERNEL}")
    );
    let status = read(root, "/run/cubeboot/status.json");
    assert!(
        status.contains(&format!("{KVER} is running without nopti pti=off panic=30")),
        "{status}"
    );
}

#[test]
fn scriptlet_that_makes_the_new_kernel_default_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let plan = rpm_plan();
    rocky_root(root, &plan);
    // No /etc/sysconfig/kernel: the (emulated) scriptlet makes the new kernel
    // the default, as kernel-install does by default.
    std::fs::remove_file(root.join("etc/sysconfig/kernel")).unwrap();
    let host = ScriptedHost::new(root);
    rocky_responders(&host, root);
    let digest = seed_journal(&host, &plan);
    runner::run(
        &host,
        &plan,
        &digest,
        Scope::StopAfter(StepId::KernelInstall),
    )
    .unwrap();
    assert_eq!(
        read(root, GRUBBY_DEFAULT).trim(),
        format!("/boot/vmlinuz-{OLD_RPM_KERNEL}")
    );
    assert!(host.said().iter().any(|l| l.contains(&format!(
        "the package made /boot/vmlinuz-{KVER} the default"
    ))));
}

#[test]
fn dnf_exclude_hold_edits_dnf_conf_with_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut plan = rpm_plan();
    plan.target.packages.hold = KernelHold::DnfExclude;
    rocky_root(root, &plan);
    put(
        root,
        "/etc/dnf/dnf.conf",
        "[main]\ngpgcheck=1\ninstallonly_limit=3\n",
    );
    let host = ScriptedHost::new(root);
    rocky_responders(&host, root);
    let digest = seed_journal(&host, &plan);
    runner::run(
        &host,
        &plan,
        &digest,
        Scope::StopAfter(StepId::KernelInstall),
    )
    .unwrap();
    assert_eq!(
        read(root, "/etc/dnf/dnf.conf"),
        "[main]\nexclude=kernel*\ngpgcheck=1\ninstallonly_limit=3\n"
    );
    assert_eq!(
        read(root, "/etc/dnf/dnf.conf.cubeboot.bak"),
        "[main]\ngpgcheck=1\ninstallonly_limit=3\n"
    );
    assert!(!host.commands().iter().any(|c| c.contains("versionlock")));
}

#[test]
fn tencent_set_replaces_the_entry_console_through_grubby() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut plan = rpm_plan();
    plan.kernel.boot_params = cubeboot::plan::boot_params::TENCENT
        .iter()
        .map(|s| s.to_string())
        .collect();
    rocky_root(root, &plan);
    let host = ScriptedHost::new(root);
    rocky_responders(&host, root);
    let digest = seed_journal(&host, &plan);
    runner::run(&host, &plan, &digest, Scope::All).unwrap();
    let update = host
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
    assert!(
        cubeboot::cmdline::has_merged(
            options,
            &cubeboot::firstboot::kernel::required_params(&plan)
        ),
        "{options}"
    );
    let j = journal(&host, &digest);
    assert_eq!(
        j.fact("kernel.bls-options-before"),
        Some("root=UUID=abc ro crashkernel=1G-4G:192M console=ttyS0,115200n8")
    );
    assert_eq!(bls_boot(root, false), KVER);
}
