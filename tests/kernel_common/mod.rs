//! Shared support for the kernel-stage tests: plans for the committed fixture
//! packages, temporary target roots, and responders for the [`ScriptedHost`]
//! that run the real tool where it can act on a temporary root (dpkg, rpm,
//! grub-editenv, grub-reboot, grub-set-default, Debian's grub-mkconfig) and
//! emulate only what cannot run here (modprobe, grubby, a GRUB boot).

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use cubeboot::digest::Sha256Digest;
use cubeboot::firstboot::host::{CmdOutput, CommandSpec, Host, ScriptedHost};
use cubeboot::firstboot::journal::{Journal, StepState};
use cubeboot::firstboot::kernel::grubcfg;
use cubeboot::firstboot::{cache_path, StepId};
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

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    fs::read(repo().join("examples/release").join(name)).expect("fixture package")
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
    new_boot_id(root);
    cache_kernel(root, plan);
    // An installed system has a grub.cfg already.
    update_grub(root).unwrap();
}

/// A Rocky 9 style target: rpm database, BLS entries named by another
/// machine-id, GRUB_DEFAULT=saved, UPDATEDEFAULT=yes.
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
    fs::create_dir_all(root.join("boot/grub2")).unwrap();
    put(root, GRUBBY_DEFAULT, format!("/boot/vmlinuz-{k}\n"));
    set_running(
        root,
        k,
        &format!("BOOT_IMAGE=(hd0,gpt2)/boot/vmlinuz-{k} root=UUID=abc ro crashkernel=1G-4G:192M console=ttyS0,115200n8"),
    );
    put(root, "/proc/modules", "xfs 2002944 1 - Live 0x0\n");
    new_boot_id(root);
    cache_kernel(root, plan);
}

/// The machine-id the image was built with (not this machine's).
pub const OTHER_MACHINE_ID: &str = "0f0e0d0c0b0a09080706050403020100";
/// Where the grubby emulation keeps its default (grubby reads grubenv's
/// saved_entry; the emulation keeps the kernel path it maps to).
pub const GRUBBY_DEFAULT: &str = "/var/lib/test-grubby-default";

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
        "dpkg" if c.args.iter().any(|a| a == "-i") => {
            // A real linux-image package's postinst runs
            // /etc/kernel/postinst.d/zz-update-grub; the fixture has no
            // scripts, so the test runs update-grub after it the same way.
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
            "apt-mark" if inner.args.first().map(String::as_str) == Some("hold") => {
                let sel: String = inner.args[1..]
                    .iter()
                    .map(|p| format!("{p} hold\n"))
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
/// loads nothing (the pre-emption trap, cube-sandbox-facts.md §11);
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

/// Responders for a Rocky target: real rpm; grub2-editenv as the real
/// grub-editenv; grubby and grub2-reboot emulated on the BLS files and the
/// real grubenv (what they do: edit `options`, set saved/next entry).
pub fn rocky_responders(host: &ScriptedHost, root: &Path) {
    let r = root.to_path_buf();
    host.on(move |c| match c.program.as_str() {
        "rpm" => {
            let out = real(c);
            // The real package's scriptlet runs installkernel/kernel-install,
            // which writes the BLS entry (named by machine-id). The fixture has
            // no scriptlets, so the test does what they do.
            if c.args.iter().any(|a| a == "-ivh") && matches!(&out, Ok(o) if o.success()) {
                put(
                    &r,
                    &format!("/boot/loader/entries/{OTHER_MACHINE_ID}-{KVER}.conf"),
                    bls_entry(
                        KVER,
                        "root=UUID=abc ro crashkernel=1G-4G:192M console=ttyS0,115200n8",
                    ),
                );
                // ... and makes the new kernel the default unless
                // /etc/sysconfig/kernel says UPDATEDEFAULT=no.
                let sysconfig =
                    fs::read_to_string(r.join("etc/sysconfig/kernel")).unwrap_or_default();
                if !sysconfig
                    .lines()
                    .any(|l| l == "UPDATEDEFAULT=no" || l == "UPDATEDEFAULT=\"no\"")
                {
                    put(&r, GRUBBY_DEFAULT, format!("/boot/vmlinuz-{KVER}\n"));
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
            "dnf" => ok(),
            "modprobe" => Some(emulate_modprobe(&r, &inner)),
            _ => None,
        }
    });
}

/// grubby on BLS entries: `--default-kernel`, `--set-default=PATH`,
/// `--update-kernel=PATH [--remove-args=…] --args=…` (remove listed
/// params, then per arg replace same-key values like grubby-bls does).
pub fn emulate_grubby(root: &Path, cmd: &CommandSpec) -> Result<CmdOutput> {
    let arg = |p: &str| {
        cmd.args
            .iter()
            .find_map(|a| a.strip_prefix(p).map(str::to_string))
    };
    if cmd.args.iter().any(|a| a == "--default-kernel") {
        return Ok(CmdOutput::ok(read(root, GRUBBY_DEFAULT)));
    }
    if let Some(path) = arg("--set-default=") {
        let entry =
            find_bls_by_path(root, &path).ok_or_else(|| anyhow!("grubby: no entry for {path}"))?;
        put(root, GRUBBY_DEFAULT, format!("{path}\n"));
        let env = root.join("boot/grub2/grubenv");
        return real(
            &CommandSpec::new("grub-editenv")
                .arg(env.to_string_lossy())
                .arg("set")
                .arg(format!("saved_entry={entry}")),
        );
    }
    if let Some(path) = arg("--update-kernel=") {
        let id =
            find_bls_by_path(root, &path).ok_or_else(|| anyhow!("grubby: no entry for {path}"))?;
        let file = format!("/boot/loader/entries/{id}.conf");
        let text = read(root, &file);
        let remove: Vec<String> = arg("--remove-args=")
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let add: Vec<String> = arg("--args=")
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let new: String = text
            .lines()
            .map(|l| match l.strip_prefix("options ") {
                Some(opts) => {
                    let mut o: Vec<String> = opts
                        .split_whitespace()
                        .filter(|p| !remove.iter().any(|r| r == p))
                        .map(str::to_string)
                        .collect();
                    for a in &add {
                        if !o.contains(a) {
                            o.push(a.clone());
                        }
                    }
                    format!("options {}\n", o.join(" "))
                }
                None => format!("{l}\n"),
            })
            .collect();
        put(root, &file, new);
        return Ok(CmdOutput::ok(""));
    }
    Ok(CmdOutput::failed(
        1,
        format!("grubby emulation: unexpected {:?}", cmd.args),
    ))
}

fn find_bls_by_path(root: &Path, path: &str) -> Option<String> {
    for e in fs::read_dir(root.join("boot/loader/entries")).ok()? {
        let e = e.ok()?;
        let text = fs::read_to_string(e.path()).ok()?;
        if text.lines().any(|l| l == format!("linux {path}")) {
            return e
                .file_name()
                .to_string_lossy()
                .strip_suffix(".conf")
                .map(str::to_string);
        }
    }
    None
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
