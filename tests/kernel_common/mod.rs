//! Shared support for the kernel-stage tests: plans for the committed fixture
//! packages, temporary target roots, and responders for the [`ScriptedHost`]
//! that run the real tool where it can act on a temporary root (dpkg, rpm,
//! dnf --installroot, systemd's kernel-install, grub-editenv, grub-reboot,
//! grub-set-default, Debian's grub-mkconfig) and emulate only what cannot
//! run here (modprobe, grubby, a GRUB boot).

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use cubeboot::digest::Sha256Digest;
use cubeboot::firstboot::host::{CmdOutput, CommandSpec, DryRunHost, Host, ScriptedHost};
use cubeboot::firstboot::journal::{Journal, StepState};
use cubeboot::firstboot::kernel::grubcfg;
use cubeboot::firstboot::run_state::Failure;
use cubeboot::firstboot::runner::{self, RunEnd, Scope};
use cubeboot::firstboot::{cache_path, Ctx, StepId};
use cubeboot::plan::testing::sample_plan;
use cubeboot::plan::*;

pub const KVER: &str = "6.6.69-opencloudos9.cubesandbox.pvm.host-gfixture1";
pub const DEB_NAME: &str =
    "linux-image-6.6.69-opencloudos9.cubesandbox.pvm.host-gfixture1_6.6.69-gfixture1-1_amd64.deb";
pub const DEB_PACKAGE: &str = "linux-image-6.6.69-opencloudos9.cubesandbox.pvm.host-gfixture1";
pub const DEB_VERSION: &str = "6.6.69-gfixture1-1";
pub const RPM_NAME: &str = "kernel-6.6.69_opencloudos9.cubesandbox.pvm.host_gfixture1-1.x86_64.rpm";
pub const RPM_VERSION: &str = "6.6.69_opencloudos9.cubesandbox.pvm.host_gfixture1-1";
pub const OLD_DEB_KERNEL: &str = "6.1.0-28-amd64";
pub const OLD_RPM_KERNEL: &str = "5.14.0-427.13.1.el9_4.x86_64";
/// Root filesystem UUID the fake grub-probe of make-grub.sh reports.
pub const ROOT_UUID: &str = "3f1c2b9a-5d7e-4c1a-9e8b-2a4f6d8c0e11";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A committed fixture package: a release asset, or one of the split
/// repository kernel's packages.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    ["examples/release", "tests/fixtures/kernel/repo"]
        .iter()
        .find_map(|d| fs::read(repo().join(d).join(name)).ok())
        .expect("fixture package")
}

fn asset(name: &str, bytes: &[u8]) -> Asset {
    Asset {
        name: name.into(),
        urls: vec![format!("file:///srv/{name}")],
        sha256: Sha256Digest::of(bytes),
        size: bytes.len() as u64,
    }
}

fn base_plan(family: PackageFamily, kernel: Asset) -> Plan {
    // The shared sample plan (debian-12), turned into a Rocky 9 / BLS plan
    // for the RPM family, with the committed fixture kernel.
    let deb = family == PackageFamily::Deb;
    let mut plan = sample_plan();
    plan.generator = "cubeboot test".into();
    if !deb {
        plan.target.profile = "rocky-9".into();
        plan.target.os_ids = vec!["rocky".into()];
        plan.target.version_id = "9".into();
        plan.target.family = family;
        plan.target.bootloader = Bootloader {
            kind: BootloaderKind::BlsGrubby,
            mkconfig: vec![
                "grub2-mkconfig".into(),
                "-o".into(),
                "/boot/grub2/grub.cfg".into(),
            ],
            reboot_once: "grub2-reboot".into(),
            set_default: "grub2-set-default".into(),
            editenv: "grub2-editenv".into(),
            grub_cfg: "/boot/grub2/grub.cfg".into(),
            grubenv: "/boot/grub2/grubenv".into(),
            dropin_dir: None,
        };
        plan.target.packages.manager = PackageManager::Dnf;
        plan.target.packages.hold = KernelHold::DnfVersionlock;
    }
    plan.target.packages.install = vec![];
    plan.target.quirks = Quirks::default();
    plan.assets.bundle = asset(
        "cube-sandbox-one-click-v0.0.0-fixture-amd64.tar.gz",
        b"bundle",
    );
    plan.assets.kernel = kernel;
    plan.kernel.kver = KVER.into();
    plan.kernel.package = if deb { DEB_PACKAGE } else { "kernel" }.into();
    plan.kernel.package_version = if deb { DEB_VERSION } else { RPM_VERSION }.into();
    plan
}

pub fn deb_plan() -> Plan {
    base_plan(
        PackageFamily::Deb,
        asset(DEB_NAME, &fixture_bytes(DEB_NAME)),
    )
}

pub fn rpm_plan() -> Plan {
    base_plan(
        PackageFamily::Rpm,
        asset(RPM_NAME, &fixture_bytes(RPM_NAME)),
    )
}

/// Write a file under `root` (test setup).
pub fn put(root: &Path, target: &str, content: impl AsRef<[u8]>) {
    let p = root.join(target.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

pub fn read(root: &Path, target: &str) -> String {
    fs::read_to_string(root.join(target.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("reading {target}: {e}"))
}

pub fn exists(root: &Path, target: &str) -> bool {
    root.join(target.trim_start_matches('/')).exists()
}

/// A new boot: /proc/sys/kernel/random/boot_id changes (the runner tells a
/// reboot that happened from one still to come by it).
pub fn new_boot_id(root: &Path) {
    static BOOTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = BOOTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    put(
        root,
        "/proc/sys/kernel/random/boot_id",
        format!("00000000-0000-4000-8000-{n:012x}\n"),
    );
}

/// The running kernel as /proc shows it.
pub fn set_running(root: &Path, kver: &str, cmdline: &str) {
    put(root, "/proc/sys/kernel/osrelease", format!("{kver}\n"));
    put(root, "/proc/cmdline", format!("{cmdline}\n"));
}

/// Place the plan's kernel package in the verified cache, as fetch would.
pub fn cache_kernel(root: &Path, plan: &Plan) {
    let name = &plan.assets.kernel.name;
    put(root, &cache_path(&plan.assets.kernel), fixture_bytes(name));
}

/// A Debian 12 target: dpkg database, two distro kernels, GRUB inputs from a
/// grub fixture scenario (`debian-12`, `ubuntu-24.04-cloudimg`, ...).
pub fn debian_root(root: &Path, scenario: &str, plan: &Plan) {
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "boot/grub"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    put(root, "/var/lib/dpkg/status", "");
    for k in ["6.1.0-26-amd64", OLD_DEB_KERNEL] {
        put(
            root,
            &format!("/boot/vmlinuz-{k}"),
            format!("fake kernel {k}\n"),
        );
        put(
            root,
            &format!("/boot/initrd.img-{k}"),
            format!("fake initrd {k}\n"),
        );
        put(
            root,
            &format!("/boot/config-{k}"),
            "CONFIG_LOCALVERSION=\"\"\n",
        );
    }
    let src = repo()
        .join("tests/fixtures/kernel/grub")
        .join(scenario)
        .join("etc/default");
    copy_tree(&src, &root.join("etc/default"));
    set_running(
        root,
        OLD_DEB_KERNEL,
        &format!("BOOT_IMAGE=/boot/vmlinuz-{OLD_DEB_KERNEL} root=UUID={ROOT_UUID} ro quiet"),
    );
    put(root, "/proc/modules", "ext4 1064960 1 - Live 0x0\n");
    // An ext4 root, and an XFS volume the operator attached at /data/cubelet:
    // the data-disk step (which runs before the kernel stage) keeps it.
    put(
        root,
        "/proc/self/mounts",
        "/dev/vda1 / ext4 rw,relatime 0 0\n/dev/vdb /data/cubelet xfs rw,relatime 0 0\n",
    );
    new_boot_id(root);
    cache_kernel(root, plan);
    // An installed system has a grub.cfg already.
    update_grub(root).unwrap();
}

/// A Rocky 9 style target: rpm database, BLS entries named by another
/// machine-id (the image's) while /etc/machine-id is this machine's, the
/// kernel command line in /etc/kernel/cmdline (what kernel-install puts in
/// new entries), GRUB_DEFAULT=saved, UPDATEDEFAULT=yes, and grubenv's
/// saved_entry on the old kernel's entry.
pub fn rocky_root(root: &Path, plan: &Plan) {
    let out = Command::new("rpm")
        .arg("--root")
        .arg(root)
        .arg("--initdb")
        .output()
        .unwrap();
    assert!(out.status.success(), "rpm --initdb: {out:?}");
    let k = OLD_RPM_KERNEL;
    put(root, &format!("/boot/vmlinuz-{k}"), "fake kernel\n");
    put(
        root,
        &format!("/boot/loader/entries/{OTHER_MACHINE_ID}-{k}.conf"),
        bls_entry(
            k,
            "root=UUID=abc ro crashkernel=1G-4G:192M console=ttyS0,115200n8",
        ),
    );
    put(
        root,
        "/etc/default/grub",
        "GRUB_TIMEOUT=1\nGRUB_DISTRIBUTOR=\"$(sed 's, release .*$,,g' /etc/system-release)\"\n\
         GRUB_DEFAULT=saved\nGRUB_DISABLE_SUBMENU=true\nGRUB_TERMINAL_OUTPUT=\"console\"\n\
         GRUB_CMDLINE_LINUX=\"crashkernel=1G-4G:192M console=ttyS0,115200n8\"\n\
         GRUB_DISABLE_RECOVERY=\"true\"\nGRUB_ENABLE_BLSCFG=true\n",
    );
    put(
        root,
        "/etc/sysconfig/kernel",
        "UPDATEDEFAULT=yes\nDEFAULTKERNEL=kernel-core\n",
    );
    put(root, "/etc/machine-id", format!("{THIS_MACHINE_ID}\n"));
    put(
        root,
        "/etc/kernel/cmdline",
        "root=UUID=abc ro crashkernel=1G-4G:192M console=ttyS0,115200n8\n",
    );
    put(
        root,
        "/etc/os-release",
        "NAME=\"Rocky Linux\"\nVERSION=\"9.4 (Blue Onyx)\"\nID=\"rocky\"\nVERSION_ID=\"9.4\"\n",
    );
    // dnf --installroot reads repositories from the root first; an empty
    // directory keeps the test machine's own out of it.
    fs::create_dir_all(root.join("etc/yum.repos.d")).unwrap();
    fs::create_dir_all(root.join("boot/grub2")).unwrap();
    let env = root.join("boot/grub2/grubenv");
    for args in [
        vec!["create".to_string()],
        vec!["set".into(), format!("saved_entry={OTHER_MACHINE_ID}-{k}")],
    ] {
        let out = Command::new("grub-editenv")
            .arg(&env)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "grub-editenv: {out:?}");
    }
    set_running(
        root,
        k,
        &format!("BOOT_IMAGE=(hd0,gpt2)/boot/vmlinuz-{k} root=UUID=abc ro crashkernel=1G-4G:192M console=ttyS0,115200n8"),
    );
    put(root, "/proc/modules", "xfs 2002944 1 - Live 0x0\n");
    // The RHEL family's default XFS root: the data-disk step keeps it.
    put(
        root,
        "/proc/self/mounts",
        "/dev/vda2 / xfs rw,relatime 0 0\n",
    );
    new_boot_id(root);
    cache_kernel(root, plan);
}

/// The machine-id the image was built with (not this machine's).
pub const OTHER_MACHINE_ID: &str = "0f0e0d0c0b0a09080706050403020100";
/// This machine's /etc/machine-id: entries kernel-install adds carry it.
/// It sorts above OTHER_MACHINE_ID, so grubby lists the new entry first.
pub const THIS_MACHINE_ID: &str = "5c4b3a2918f7e6d5c4b3a2918f7e6d5c";

/// What `grubby --default-kernel` prints on this root.
pub fn grubby_default(root: &Path) -> String {
    let out = emulate_grubby(root, &CommandSpec::new("grubby").arg("--default-kernel")).unwrap();
    assert!(out.success(), "grubby --default-kernel: {}", out.stderr);
    out.stdout.trim().to_string()
}

pub fn bls_entry(kver: &str, options: &str) -> String {
    format!(
        "title Rocky Linux ({kver}) 9.4 (Blue Onyx)\nversion {kver}\nlinux /boot/vmlinuz-{kver}\n\
         initrd /boot/initramfs-{kver}.img $tuned_initrd\noptions {options}\n\
         grub_users $grub_users\ngrub_arg --unrestricted\ngrub_class rocky\n"
    )
}

pub fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Run a command for real on this machine (the delegate for tools that can
/// act on a temporary root).
pub fn real(cmd: &CommandSpec) -> Result<CmdOutput> {
    real_with_stdin(cmd, None)
}

pub fn real_with_stdin(cmd: &CommandSpec, stdin: Option<&str>) -> Result<CmdOutput> {
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args)
        .envs(&cmd.env)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| anyhow!("spawning {}: {e}", cmd.display()))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output()?;
    Ok(CmdOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        timed_out: false,
    })
}

/// The command inside `chroot ROOT …`, if `cmd` is one for this root.
pub fn chrooted(root: &Path, cmd: &CommandSpec) -> Option<CommandSpec> {
    if cmd.program != "chroot" || cmd.args.first().map(PathBuf::from)? != root {
        return None;
    }
    let (program, args) = cmd.args[1..].split_first()?;
    Some(CommandSpec::new(program.clone()).args(args.iter().cloned()))
}

fn ok() -> Option<Result<CmdOutput>> {
    Some(Ok(CmdOutput::ok("")))
}

/// Responders for a Debian target: real dpkg/dpkg-query/grub-editenv/
/// grub-reboot/grub-set-default, real Debian grub-mkconfig as update-grub
/// (make-grub.sh --root), apt-mark hold as a real dpkg selection, grub-probe
/// answering `abstraction` with `abstraction` (e.g. "lvm") and fs ext2,
/// modprobe emulated (see [`emulate_modprobe`]).
pub fn debian_responders(host: &ScriptedHost, root: &Path, abstraction: &'static str) {
    let r = root.to_path_buf();
    let r2 = root.to_path_buf();
    host.on(move |c| match c.program.as_str() {
        "dpkg" if c.args.iter().any(|a| a == "-i" || a == "--purge") => {
            // A real linux-image package's postinst (and postrm) runs
            // /etc/kernel/postinst.d/zz-update-grub (postrm.d); the fixture
            // has no scripts, so the test runs update-grub after it the same way.
            let out = real(c);
            if matches!(&out, Ok(o) if o.success()) {
                if let Err(e) = update_grub(&r2) {
                    return Some(Err(e));
                }
            }
            Some(out)
        }
        "dpkg" | "dpkg-query" | "grub-editenv" | "grub-reboot" | "grub-set-default" => {
            Some(real(c))
        }
        _ => None,
    });
    host.on(move |c| {
        let inner = chrooted(&r, c)?;
        match inner.program.as_str() {
            "update-grub" => Some(update_grub(&r)),
            "apt-mark"
                if matches!(
                    inner.args.first().map(String::as_str),
                    Some("hold" | "unhold")
                ) =>
            {
                // apt-mark (un)hold is dpkg's selection: hold, or install.
                let want = if inner.args[0] == "hold" {
                    "hold"
                } else {
                    "install"
                };
                let sel: String = inner.args[1..]
                    .iter()
                    .map(|p| format!("{p} {want}\n"))
                    .collect();
                Some(real_with_stdin(
                    &CommandSpec::new("dpkg")
                        .arg(format!("--root={}", r.display()))
                        .arg("--set-selections"),
                    Some(&sel),
                ))
            }
            "grub-probe" => Some(Ok(CmdOutput::ok(
                if inner.args.iter().any(|a| a == "--target=abstraction") {
                    format!("{abstraction}\n")
                } else {
                    "ext2\n".to_string()
                },
            ))),
            "modprobe" => Some(emulate_modprobe(&r, &inner)),
            _ => None,
        }
    });
}

/// Debian's real grub-mkconfig for the temporary root (make-grub.sh --root).
pub fn update_grub(root: &Path) -> Result<CmdOutput> {
    let out = real(
        &CommandSpec::new(
            repo()
                .join("tests/fixtures/kernel/grub/make-grub.sh")
                .to_string_lossy(),
        )
        .arg("--root")
        .arg(root.to_string_lossy())
        .arg(root.join("boot/grub/grub.cfg").to_string_lossy()),
    )?;
    if !out.success() {
        return Err(anyhow!("make-grub.sh --root failed: {}", out.stderr));
    }
    Ok(out)
}

/// modprobe against the emulated /proc/modules: `kvm_pvm` loads (and /dev/kvm
/// appears) unless kvm_intel/kvm_amd is loaded, in which case it exits 0 and
/// loads nothing (the pre-emption trap,
/// docs/pvm-kernel.md);
/// `-r MOD` unloads MOD and kvm.
pub fn emulate_modprobe(root: &Path, cmd: &CommandSpec) -> Result<CmdOutput> {
    let modules = fs::read_to_string(root.join("proc/modules")).unwrap_or_default();
    let mut lines: Vec<String> = modules.lines().map(str::to_string).collect();
    let has = |lines: &[String], m: &str| lines.iter().any(|l| l.split(' ').next() == Some(m));
    match cmd.args.as_slice() {
        [m] if m == "kvm_pvm" => {
            if has(&lines, "kvm_intel") || has(&lines, "kvm_amd") {
                return Ok(CmdOutput::ok(""));
            }
            if !has(&lines, "kvm") {
                lines.push("kvm 1142784 1 kvm_pvm, Live 0x0".into());
            }
            lines.push("kvm_pvm 110592 0 - Live 0x0".into());
            put(root, "/dev/kvm", "");
        }
        [flag, m] if flag == "-r" => {
            lines.retain(|l| {
                let name = l.split(' ').next().unwrap_or("");
                name != m && name != "kvm"
            });
            let _ = fs::remove_file(root.join("dev/kvm"));
        }
        _ => {
            return Ok(CmdOutput::failed(
                1,
                format!("unexpected modprobe {:?}", cmd.args),
            ))
        }
    }
    put(root, "/proc/modules", lines.join("\n") + "\n");
    Ok(CmdOutput::ok(""))
}

/// What a kernel package's scriptlets do in these tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scriptlets {
    /// `kernel-install add` for each kernel the transaction put in place, as
    /// RHEL's kernel-core %posttrans and binrpm-pkg's %post (installkernel)
    /// do: the real systemd kernel-install with the 20-grub/50-dracut
    /// stand-ins ([`kernel_install`]).
    KernelInstall,
    /// Nothing: a package whose scriptlets made no boot entry.
    None,
}

/// Responders for a Rocky target (see [`rocky_responders_with`]), with
/// scriptlets that run kernel-install.
pub fn rocky_responders(host: &ScriptedHost, root: &Path) {
    rocky_responders_with(host, root, Scriptlets::KernelInstall);
}

/// Responders for a Rocky target: real rpm and real dnf (--installroot)
/// into the root, then the package scriptlets as `scriptlets` says; real
/// kernel-install when the helper runs it; grub2-editenv as the real
/// grub-editenv; grubby (modelled on upstream's grubby-bls, see
/// [`emulate_grubby`]) and grub2-reboot on the real entry files and grubenv.
pub fn rocky_responders_with(host: &ScriptedHost, root: &Path, scriptlets: Scriptlets) {
    let r = root.to_path_buf();
    host.on(move |c| match c.program.as_str() {
        "rpm" => {
            let before = boot_kernels(&r);
            let out = real(c);
            let ok = matches!(&out, Ok(o) if o.success());
            if c.args.iter().any(|a| a == "-ivh") && ok {
                if let Err(e) = run_scriptlets(&r, scriptlets, &before) {
                    return Some(Err(e));
                }
            }
            // A kernel package's %preun: `kernel-install remove KVER` for
            // each kernel the erase took away.
            if c.args.iter().any(|a| a == "-e") && ok && scriptlets != Scriptlets::None {
                let after = boot_kernels(&r);
                for kver in before.iter().filter(|k| !after.contains(k)) {
                    if let Err(e) = kernel_install(&r, &["remove".into(), kver.clone()]) {
                        return Some(Err(e));
                    }
                }
            }
            Some(out)
        }
        "grub2-editenv" => Some(real(&CommandSpec::new("grub-editenv").args(c.args.clone()))),
        "grub2-reboot" => {
            let env = r.join("boot/grub2/grubenv");
            Some(real(
                &CommandSpec::new("grub-editenv")
                    .arg(env.to_string_lossy())
                    .arg("set")
                    .arg(format!("next_entry={}", c.args.last().unwrap())),
            ))
        }
        _ => None,
    });
    let r = root.to_path_buf();
    host.on(move |c| {
        let inner = chrooted(&r, c)?;
        match inner.program.as_str() {
            "grubby" => Some(emulate_grubby(&r, &inner)),
            "grub2-probe" => Some(Ok(CmdOutput::ok(
                if inner.args.iter().any(|a| a == "--target=abstraction") {
                    "\n"
                } else {
                    "xfs\n"
                },
            ))),
            "grub2-mkconfig" => ok(),
            "dnf" if inner.args.iter().any(|a| a == "versionlock") => ok(),
            "dnf" => {
                let before = boot_kernels(&r);
                let out = real_dnf(&r, &inner);
                let installs = !inner.args.iter().any(|a| a == "--downloadonly");
                if installs && matches!(&out, Ok(o) if o.success()) {
                    if let Err(e) = run_scriptlets(&r, scriptlets, &before) {
                        return Some(Err(e));
                    }
                }
                Some(out)
            }
            "kernel-install" => Some(kernel_install(&r, &inner.args)),
            "modprobe" => Some(emulate_modprobe(&r, &inner)),
            _ => None,
        }
    });
}

/// Kernels (KVER) with a /lib/modules/KVER/vmlinuz or /boot/vmlinuz-KVER.
fn boot_kernels(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(root.join("lib/modules")) {
        for e in rd.flatten() {
            if e.path().join("vmlinuz").exists() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    if let Ok(rd) = fs::read_dir(root.join("boot")) {
        for e in rd.flatten() {
            if let Some(k) = e.file_name().to_string_lossy().strip_prefix("vmlinuz-") {
                out.push(k.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The scriptlets of the packages a transaction just installed: for each
/// new kernel, `kernel-install add KVER IMAGE` (the RHEL kernel-core's
/// %posttrans passes /lib/modules/KVER/vmlinuz; binrpm-pkg's %post runs
/// installkernel with the /boot image).
fn run_scriptlets(root: &Path, scriptlets: Scriptlets, before: &[String]) -> Result<()> {
    if scriptlets == Scriptlets::None {
        return Ok(());
    }
    for kver in boot_kernels(root) {
        if before.contains(&kver) {
            continue;
        }
        let modules = format!("/lib/modules/{kver}/vmlinuz");
        let image = if root.join(modules.trim_start_matches('/')).exists() {
            modules
        } else {
            format!("/boot/vmlinuz-{kver}")
        };
        let out = kernel_install(root, &["add".into(), kver.clone(), image])?;
        if !out.success() {
            return Err(anyhow!("kernel-install add {kver}: {}", out.stderr));
        }
    }
    Ok(())
}

/// systemd's real kernel-install (`/usr/bin/kernel-install`, systemd 252)
/// acting on `root` instead of `/`, as kernel-install(8) allows:
/// `KERNEL_INSTALL_CONF_ROOT` for /etc/kernel (install.conf, cmdline),
/// `BOOT_ROOT` for $BOOT, `MACHINE_ID` from the root's /etc/machine-id, and
/// `KERNEL_INSTALL_PLUGINS` naming the stand-ins of the plugins a RHEL 9
/// system runs (tests/fixtures/kernel/install.d: grub2's 20-grub.install and
/// dracut's 50-dracut.install), which write under `CUBEBOOT_TEST_ROOT`.
/// Absolute paths in `args` (the kernel image) are taken inside the root.
pub fn kernel_install(root: &Path, args: &[String]) -> Result<CmdOutput> {
    let machine_id = fs::read_to_string(root.join("etc/machine-id")).unwrap_or_default();
    let plugins = repo().join("tests/fixtures/kernel/install.d");
    let args: Vec<String> = args
        .iter()
        .map(|a| match a.strip_prefix('/') {
            Some(rel) => root.join(rel).to_string_lossy().into_owned(),
            None => a.clone(),
        })
        .collect();
    real(
        &CommandSpec::new("kernel-install")
            .args(args)
            .env(
                "KERNEL_INSTALL_CONF_ROOT",
                root.join("etc/kernel").to_string_lossy(),
            )
            .env("BOOT_ROOT", root.join("boot").to_string_lossy())
            .env("MACHINE_ID", machine_id.trim())
            .env(
                "KERNEL_INSTALL_PLUGINS",
                format!(
                    "{} {}",
                    plugins.join("20-grub.install").display(),
                    plugins.join("50-dracut.install").display()
                ),
            )
            .env("CUBEBOOT_TEST_ROOT", root.to_string_lossy()),
    )
}

/// The real dnf for `chroot ROOT dnf ARGS`: `--installroot=ROOT`, its cache
/// and logs inside the root, the root's (empty) repository directory, and
/// the helper's target paths (download directory, local packages) mapped
/// into the root. This machine's rpm and dnf state is not touched.
pub fn real_dnf(root: &Path, inner: &CommandSpec) -> Result<CmdOutput> {
    let in_root = |a: &str| -> String {
        if let Some(dir) = a.strip_prefix("--downloaddir=") {
            return format!(
                "--downloaddir={}",
                root.join(dir.trim_start_matches('/')).display()
            );
        }
        if a.starts_with("/var/cache/cubeboot/") {
            return root
                .join(a.trim_start_matches('/'))
                .to_string_lossy()
                .into_owned();
        }
        a.to_string()
    };
    // dnf takes reposdir and logdir inside the installroot, but a cachedir
    // given on the command line as it is: name the root's own.
    real(
        &CommandSpec::new("dnf")
            .arg(format!("--installroot={}", root.display()))
            .arg(format!(
                "--setopt=cachedir={}",
                root.join("var/cache/dnf").display()
            ))
            .args([
                "--releasever=9",
                "--setopt=reposdir=/etc/yum.repos.d",
                "--setopt=logdir=/var/log",
                "--setopt=install_weak_deps=False",
            ])
            .args(inner.args.iter().map(|a| in_root(a))),
    )
}

/// The BLS entries as grubby sees them: file stems in `sort -Vr` order
/// (grubby-bls `get_bls_values`), with their `key value` fields.
fn grubby_entries(root: &Path) -> Vec<(String, Vec<(String, String)>)> {
    let dir = root.join("boot/loader/entries");
    let mut stems: Vec<String> = fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_suffix(".conf")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    stems.sort_by(|a, b| version_sort(b, a));
    stems
        .into_iter()
        .map(|stem| {
            let text = fs::read_to_string(dir.join(format!("{stem}.conf"))).unwrap_or_default();
            let fields = text
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once([' ', '\t'])?;
                    Some((k.to_string(), v.trim_start().to_string()))
                })
                .collect();
            (stem, fields)
        })
        .collect()
}

/// `sort -V` order: digit runs compare as numbers, the rest as text.
fn version_sort(a: &str, b: &str) -> std::cmp::Ordering {
    fn runs(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let d = c.is_ascii_digit();
            match out.last_mut() {
                Some((kind, run)) if *kind == d => run.push(c),
                _ => out.push((d, c.to_string())),
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(rb.iter()) {
        let ord = match (x.0, y.0) {
            (true, true) => {
                x.1.parse::<u128>()
                    .unwrap_or(0)
                    .cmp(&y.1.parse::<u128>().unwrap_or(0))
            }
            _ => x.1.cmp(&y.1),
        };
        if ord != std::cmp::Ordering::Equal {
            return ord;
        }
    }
    ra.len().cmp(&rb.len())
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// grubby-bls `update_args`: each `--remove-args` item with `=` removes its
/// first exact occurrence, a bare one every occurrence of that key (bare or
/// `key=…`); each `--args` item first removes every occurrence of its key,
/// then all are appended in order. The sed expressions match
/// `(^|space)KEY(space|$)` without overlap, so a bare match swallows the
/// space the next token would need: that next token survives.
pub fn grubby_update_args(args: &str, remove: &str, add: &str) -> String {
    fn drop_key(tokens: Vec<String>, key: &str, only_first_exact: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        let mut swallowed = false;
        let mut done = false;
        for t in tokens {
            let hit = match only_first_exact {
                Some(exact) => !done && t == exact,
                None => {
                    !swallowed
                        && (t == key || t.strip_prefix(key).is_some_and(|r| r.starts_with('=')))
                }
            };
            if hit {
                done = true;
                // A bare `key` match consumes the following space too.
                swallowed = only_first_exact.is_none() && t == key;
                continue;
            }
            swallowed = false;
            out.push(t);
        }
        out
    }
    let mut tokens: Vec<String> = args.split_whitespace().map(str::to_string).collect();
    for r in remove.split_whitespace() {
        tokens = if r.contains('=') {
            drop_key(tokens, r, Some(r))
        } else {
            drop_key(tokens, r, None)
        };
    }
    for a in add.split_whitespace() {
        let key = a.split('=').next().unwrap_or(a);
        tokens = drop_key(tokens, key, None);
    }
    tokens.extend(add.split_whitespace().map(str::to_string));
    tokens.join(" ")
}

/// A stand-in for grubby on BLS systems, modelled on upstream's `grubby-bls`
/// (Fedora's grubby package, 8.40; RHEL 9 ships the same script; read from
/// the fedora-riscv/grubby mirror of that package, file `grubby-bls`), acting
/// on the real entry files and the real grubenv under `root`:
/// - entries are the `*.conf` stems in `sort -Vr` order; an index is a
///   position in that list;
/// - the default is grubenv's `saved_entry` matched against an entry's id
///   (file stem) or title, or a number; no saved_entry means index 0;
/// - a kernel path names every entry whose `linux` is that path or
///   `/` + its base name (`param_to_indexes`); nothing matching is
///   "The param PATH is incorrect", exit 1 (`--update-kernel`,
///   `--set-default`, `--info`);
/// - `--default-kernel` prints the default entry's `linux`;
/// - `--set-default=PATH` writes `saved_entry=<id>` of the first match;
/// - `--update-kernel=PATH [--remove-args=…] [--args=…]` rewrites the
///   `options` of every match by [`grubby_update_args`], with `$kernelopts`
///   expanded from grubenv first;
/// - `--add-kernel=PATH --title=T [--initrd=I] [--copy-default] [--args=A]`
///   needs /boot/vmlinuz-KVER and a title, writes
///   `<machine-id>-<KVER>.conf` (machine-id from /etc/machine-id) with
///   `options` = the default entry's options (`--copy-default`; without it
///   only their first word) followed by A;
/// - `--info=PATH` prints index, kernel, args, root, initrd, title, id.
///   /boot is on the root filesystem here, so no `/boot` prefix is
///   stripped or added.
pub fn emulate_grubby(root: &Path, cmd: &CommandSpec) -> Result<CmdOutput> {
    let arg = |p: &str| {
        cmd.args
            .iter()
            .find_map(|a| a.strip_prefix(p).map(str::to_string))
    };
    let flag = |f: &str| cmd.args.iter().any(|a| a == f);
    let env_path = root.join("boot/grub2/grubenv");
    let env = grubcfg::parse_grubenv(&fs::read_to_string(&env_path).unwrap_or_default());
    let entries = grubby_entries(root);
    let saved = env.get("saved_entry").cloned().unwrap_or_default();
    let default_index = if saved.is_empty() {
        Some(0)
    } else if let Ok(n) = saved.parse::<usize>() {
        Some(n)
    } else {
        entries
            .iter()
            .position(|(id, f)| *id == saved || field(f, "title") == saved)
    };
    let indexes = |param: &str| -> Vec<usize> {
        let base = format!("/{}", param.rsplit('/').next().unwrap_or(param));
        entries
            .iter()
            .enumerate()
            .filter(|(_, (_, f))| {
                let linux = field(f, "linux");
                linux == param || linux == base
            })
            .map(|(i, _)| i)
            .collect()
    };
    let incorrect = |param: &str| {
        Ok(CmdOutput::failed(
            1,
            format!("The param {param} is incorrect\n"),
        ))
    };
    let kernelopts = env.get("kernelopts").cloned().unwrap_or_default();
    let expanded = |f: &[(String, String)]| field(f, "options").replace("$kernelopts", &kernelopts);

    if flag("--default-kernel") {
        let linux = default_index
            .and_then(|i| entries.get(i))
            .map_or("", |(_, f)| field(f, "linux"));
        return Ok(CmdOutput::ok(format!("{linux}\n")));
    }
    if let Some(path) = arg("--info=") {
        let found = indexes(&path);
        if found.is_empty() {
            return incorrect(&path);
        }
        let mut out = String::new();
        for i in found {
            let f = &entries[i].1;
            let args = expanded(f);
            let root_arg = args
                .split_whitespace()
                .find_map(|a| a.strip_prefix("root="))
                .map(str::to_string);
            let rest: Vec<&str> = args
                .split_whitespace()
                .filter(|a| !a.starts_with("root="))
                .collect();
            out.push_str(&format!(
                "index={i}\nkernel=\"{}\"\nargs=\"{}\"\n",
                field(f, "linux"),
                rest.join(" ")
            ));
            if let Some(r) = root_arg {
                out.push_str(&format!("root=\"{r}\"\n"));
            }
            out.push_str(&format!(
                "initrd=\"{}\"\ntitle=\"{}\"\nid=\"{}\"\n",
                field(f, "initrd"),
                field(f, "title"),
                entries[i].0
            ));
        }
        return Ok(CmdOutput::ok(out));
    }
    if let Some(kernel) = arg("--add-kernel=") {
        let kver = kernel
            .rsplit("vmlinuz-")
            .next()
            .unwrap_or(&kernel)
            .to_string();
        if !root.join(format!("boot/vmlinuz-{kver}")).exists() {
            return Ok(CmdOutput::failed(
                1,
                format!("The {kver} kernel isn't installed in the machine\n"),
            ));
        }
        let Some(title) = arg("--title=") else {
            return Ok(CmdOutput::failed(1, "The kernel title must be specified\n"));
        };
        let default_opts = default_index
            .and_then(|i| entries.get(i))
            .map(|(_, f)| field(f, "options").to_string())
            .unwrap_or_default();
        let mut opts = if flag("--copy-default") {
            default_opts
        } else {
            default_opts.split(' ').next().unwrap_or("").to_string()
        };
        if let Some(a) = arg("--args=") {
            opts = format!("{opts} {a}");
        }
        let machine_id = fs::read_to_string(root.join("etc/machine-id")).unwrap_or_default();
        let target = format!("/boot/loader/entries/{}-{kver}.conf", machine_id.trim());
        if exists(root, &target) {
            return Ok(CmdOutput::failed(
                1,
                format!("grubby stand-in: {target} exists (custom entry names are not modelled)\n"),
            ));
        }
        let initrd = arg("--initrd=").unwrap_or_else(|| format!("/boot/initramfs-{kver}.img"));
        put(
            root,
            &target,
            format!(
                "title {title}\nversion {kver}\nlinux {kernel}\ninitrd {initrd}\noptions {}\nid linux-0-{kver}\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class kernel\n",
                opts.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
        );
        return Ok(CmdOutput::ok(""));
    }
    if let Some(path) = arg("--update-kernel=") {
        let found = indexes(&path);
        if found.is_empty() {
            return incorrect(&path);
        }
        let remove = arg("--remove-args=").unwrap_or_default();
        let add = arg("--args=").unwrap_or_default();
        for i in found {
            let (id, f) = &entries[i];
            let new = grubby_update_args(&expanded(f), &remove, &add);
            let file = format!("/boot/loader/entries/{id}.conf");
            let text: String = read(root, &file)
                .lines()
                .map(|l| {
                    if l.starts_with("options ") || l.starts_with("options\t") {
                        format!("options {new}\n")
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            put(root, &file, text);
        }
        return Ok(CmdOutput::ok(""));
    }
    if let Some(path) = arg("--set-default=") {
        let Some(&i) = indexes(&path).first() else {
            return incorrect(&path);
        };
        return real(
            &CommandSpec::new("grub-editenv")
                .arg(env_path.to_string_lossy())
                .arg("set")
                .arg(format!("saved_entry={}", entries[i].0)),
        );
    }
    Ok(CmdOutput::failed(
        1,
        format!("grubby stand-in: not modelled: {:?}", cmd.args),
    ))
}

/// Simulate the firmware + GRUB booting a Debian target: next_entry wins once
/// (00_header clears it), else the saved or configured default; /proc then
/// shows the booted kernel and its command line. With `panics`, the booted
/// kernel panics and `panic=N` reboots once more into the default.
pub fn grub_boot(root: &Path, panics: bool) -> String {
    let env_path = root.join("boot/grub/grubenv");
    let env = grubcfg::parse_grubenv(&fs::read_to_string(&env_path).unwrap_or_default());
    let cfg = read(root, "/boot/grub/grub.cfg");
    let next = env.get("next_entry").filter(|s| !s.is_empty()).cloned();
    if next.is_some() {
        let out = Command::new("grub-editenv")
            .arg(&env_path)
            .args(["unset", "next_entry"])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let chosen = match next {
        Some(n) if !panics => n,
        _ => default_entry(&cfg, &env),
    };
    let entries = grubcfg::entries(&cfg);
    let e = entries
        .iter()
        .find(|e| e.id_path().as_deref() == Some(chosen.as_str()))
        .or_else(|| if chosen == "0" { entries.first() } else { None })
        .unwrap_or_else(|| panic!("GRUB: no entry {chosen}"));
    let kernel = e.kernel.clone().unwrap();
    let kver = kernel.rsplit("vmlinuz-").next().unwrap().to_string();
    new_boot_id(root);
    set_running(
        root,
        &kver,
        &format!("BOOT_IMAGE={kernel} {}", e.args.join(" ")),
    );
    kver
}

fn default_entry(cfg: &str, env: &BTreeMap<String, String>) -> String {
    // 00_header: `set default="${saved_entry}"` with GRUB_DEFAULT=saved,
    // `set default="<GRUB_DEFAULT>"` otherwise (in the else branch of next_entry).
    let line = cfg
        .lines()
        .filter(|l| l.trim_start().starts_with("set default="))
        .nth(1)
        .or_else(|| {
            cfg.lines()
                .find(|l| l.trim_start().starts_with("set default="))
        })
        .unwrap();
    let v = line
        .trim()
        .trim_start_matches("set default=")
        .trim_matches('"');
    if v == "${saved_entry}" {
        env.get("saved_entry")
            .cloned()
            .unwrap_or_else(|| "0".into())
    } else {
        v.to_string()
    }
}

/// Simulate a BLS boot: next_entry (a BLS id) once, else saved_entry.
pub fn bls_boot(root: &Path, panics: bool) -> String {
    let env_path = root.join("boot/grub2/grubenv");
    let env = grubcfg::parse_grubenv(&fs::read_to_string(&env_path).unwrap_or_default());
    let next = env.get("next_entry").filter(|s| !s.is_empty()).cloned();
    if next.is_some() {
        let out = Command::new("grub-editenv")
            .arg(&env_path)
            .args(["unset", "next_entry"])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let id = match next {
        Some(n) if !panics => n,
        _ => env.get("saved_entry").cloned().expect("saved_entry"),
    };
    let text = read(root, &format!("/boot/loader/entries/{id}.conf"));
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")).map(str::to_string))
            .unwrap()
    };
    let kernel = field("linux");
    let kver = kernel.rsplit("vmlinuz-").next().unwrap().to_string();
    new_boot_id(root);
    set_running(
        root,
        &kver,
        &format!("BOOT_IMAGE=(hd0,gpt2){kernel} {}", field("options")),
    );
    kver
}

/// Journal for `plan` with the steps before the kernel stage complete (they
/// belong to other teams; the kernel tests start where they end).
pub fn seed_journal(host: &dyn Host, plan: &Plan) -> Sha256Digest {
    let digest = Sha256Digest::of(plan.to_json().as_bytes());
    let mut j = Journal::new(&digest.to_hex());
    for s in [StepId::Preflight, StepId::Fetch, StepId::CubePrereqs] {
        j.mark(host, s, StepState::Done, "seeded by the kernel tests");
    }
    j.save(host).unwrap();
    digest
}

pub fn journal(host: &dyn Host, digest: &Sha256Digest) -> Journal {
    Journal::load(host, &digest.to_hex()).unwrap()
}

pub fn shared(host: ScriptedHost) -> Arc<ScriptedHost> {
    Arc::new(host)
}

/// A target machine for a kernel-stage test: its temporary root (deleted on
/// drop), the plan it runs and the scripted host on that root, with the
/// responders of its distro family registered. A test changes the plan or
/// the root as its scenario needs before it runs anything (preparing the root
/// reads only the plan's kernel asset, and nothing runs before the test does).
pub struct Target<H = ScriptedHost> {
    dir: tempfile::TempDir,
    pub plan: Plan,
    pub host: H,
}

impl Target {
    /// A Debian target prepared by [`debian_root`] from a grub fixture
    /// scenario (`debian-12`, `ubuntu-24.04-cloudimg`, ...), /boot/grub on a
    /// plain filesystem.
    pub fn debian(scenario: &str) -> Self {
        Self::debian_with_boot_on(scenario, "")
    }

    /// A Debian target whose /boot/grub is on `abstraction` as grub-probe
    /// names it (e.g. "lvm"; see [`debian_responders`]).
    pub fn debian_with_boot_on(scenario: &str, abstraction: &'static str) -> Self {
        let (dir, plan) = debian_dir(scenario);
        let host = ScriptedHost::new(dir.path());
        debian_responders(&host, dir.path(), abstraction);
        Self { dir, plan, host }
    }

    /// A Rocky 9 target prepared by [`rocky_root`], whose kernel package
    /// scriptlets run kernel-install.
    pub fn rocky() -> Self {
        Self::rocky_with(Scriptlets::KernelInstall)
    }

    /// A Rocky 9 target whose kernel package scriptlets do as `scriptlets` says.
    pub fn rocky_with(scriptlets: Scriptlets) -> Self {
        let (dir, plan) = rocky_dir();
        let host = ScriptedHost::new(dir.path());
        rocky_responders_with(&host, dir.path(), scriptlets);
        Self { dir, plan, host }
    }

    /// One run from a fresh journal that must stop at kernel-boot, refusing
    /// to reboot; the status it left.
    pub fn run_refused_at_boot(&self) -> String {
        let digest = self.seed_journal();
        let end = self.run(&digest, Scope::All);
        assert_eq!(end, RunEnd::Failed(Failure::Step(StepId::KernelBoot)));
        assert_eq!(self.host.reboots(), 0);
        self.status()
    }

    /// Whether a command line starting with `prefix` has run on this target.
    pub fn ran(&self, prefix: &str) -> bool {
        self.host.commands().iter().any(|c| c.starts_with(prefix))
    }
}

impl Target<DryRunHost<ScriptedHost>> {
    /// [`Target::debian`] behind the dry-run wrapper: queries still reach
    /// the responders, changes are recorded and not made.
    pub fn debian_dry_run(scenario: &str) -> Self {
        let (dir, plan) = debian_dir(scenario);
        let host = ScriptedHost::new(dir.path()).dry_run();
        debian_responders(&host, dir.path(), "");
        Self { dir, plan, host }
    }

    /// [`Target::rocky`] behind the dry-run wrapper.
    pub fn rocky_dry_run() -> Self {
        let (dir, plan) = rocky_dir();
        let host = ScriptedHost::new(dir.path()).dry_run();
        rocky_responders(&host, dir.path());
        Self { dir, plan, host }
    }
}

impl<H: Host> Target<H> {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// See [`seed_journal`]: the steps before the kernel stage are done.
    pub fn seed_journal(&self) -> Sha256Digest {
        seed_journal(&self.host, &self.plan)
    }

    /// One run of the helper's runner on this target, as one boot does it.
    pub fn run(&self, digest: &Sha256Digest, scope: Scope) -> RunEnd {
        runner::run(&self.host, &self.plan, digest, scope).unwrap()
    }

    /// The journal as the last run saved it.
    pub fn journal(&self, digest: &Sha256Digest) -> Journal {
        journal(&self.host, digest)
    }

    /// What a step function takes, to run one step outside the runner.
    pub fn ctx<'a>(&'a self, journal: &'a mut Journal) -> Ctx<'a> {
        Ctx::new(&self.host, &self.plan, journal)
    }

    /// The status file the helper writes for operators.
    pub fn status(&self) -> String {
        read(self.root(), "/run/cubeboot/status.json")
    }

    /// Run on and expect the rollback to the old Debian kernel, with `why`
    /// in the status.
    pub fn run_expecting_debian_rollback(&self, digest: &Sha256Digest, why: &str) {
        let end = self.run(digest, Scope::All);
        assert_eq!(
            end,
            RunEnd::Failed(Failure::RolledBack {
                to: OLD_DEB_KERNEL.into()
            })
        );
        let status = self.status();
        assert!(status.contains(why), "{status}");
    }
}

fn debian_dir(scenario: &str) -> (tempfile::TempDir, Plan) {
    let dir = tempfile::tempdir().unwrap();
    let plan = deb_plan();
    debian_root(dir.path(), scenario, &plan);
    (dir, plan)
}

fn rocky_dir() -> (tempfile::TempDir, Plan) {
    let dir = tempfile::tempdir().unwrap();
    let plan = rpm_plan();
    rocky_root(dir.path(), &plan);
    (dir, plan)
}
