//! A target machine under a temporary root for whole-loop tests: the files
//! preflight reads, a plan as the builder writes it, reboots that change the
//! boot id and empty /run, and stand-ins for the kernel and Cube steps (their
//! teams own the real ones) that make the same kind of idempotent changes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use cubeboot::digest::Sha256Digest;
use cubeboot::firstboot::host::{CmdOutput, CommandSpec, Host, ScriptedHost};
use cubeboot::firstboot::runner::{self, RunEnd, RunOptions, Scope, Steps};
use cubeboot::firstboot::{cache_path, Ctx, Outcome, StepId};
use cubeboot::plan::Plan;

pub const KVER: &str = "6.6.69-opencloudos9.cubesandbox.pvm.host-gtest";
pub const FREE_BYTES: u64 = 50 * 1024 * 1024 * 1024;
pub const UNIT_LINK: &str = "/etc/systemd/system/cloud-init.target.wants/cube-firstboot.service";

pub struct AssetFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl AssetFile {
    pub fn new(name: &str, len: usize, seed: u8) -> Self {
        let bytes = (0..len)
            .map(|i| {
                (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(seed as u32) as u8
            })
            .collect();
        Self {
            name: name.into(),
            bytes,
        }
    }

    pub fn sha256(&self) -> Sha256Digest {
        Sha256Digest::of(&self.bytes)
    }
}

/// The plan JSON as the builder would write it, for a Debian 12 control node.
pub fn plan_json(kernel: (&AssetFile, &[String]), bundle: (&AssetFile, &[String])) -> String {
    let asset = |a: &AssetFile, urls: &[String]| {
        serde_json::json!({
            "name": a.name, "urls": urls, "sha256": a.sha256().to_hex(), "size": a.bytes.len()
        })
    };
    let v = serde_json::json!({
        "version": 1,
        "generator": "cubeboot 0.0.0-test",
        "target": {
            "profile": "debian-12",
            "os_ids": ["debian"],
            "version_id": "12",
            "family": "deb",
            "bootloader": {
                "kind": "grub-mkconfig",
                "mkconfig": ["update-grub"],
                "reboot_once": "grub-reboot",
                "set_default": "grub-set-default",
                "editenv": "grub-editenv",
                "grub_cfg": "/boot/grub/grub.cfg",
                "grubenv": "/boot/grub/grubenv",
                "dropin_dir": "/etc/default/grub.d"
            },
            "packages": {
                "manager": "apt",
                "install": ["curl", "xfsprogs"],
                "docker": "distro",
                "hold": "apt-mark-hold"
            },
            "quirks": {"multipathd_cgroup_fix": true, "needs_resolver": true}
        },
        "assets": {"kernel": asset(kernel.0, kernel.1), "bundle": asset(bundle.0, bundle.1)},
        "kernel": {
            "kver": KVER,
            "package": format!("linux-image-{KVER}"),
            "package_version": "6.6.69-1",
            "kvm": "pvm",
            "boot_params": ["nopti", "pti=off"],
            "panic_seconds": 30
        },
        "cube": {
            "role": "control",
            "node_ip": "auto",
            "install_timeout_secs": 2700,
            "data_disk": {"mode": "auto"},
            "loopback_size_gib": 50,
            "hardening": true,
            "allow_from": [],
            "extra_env": {"CUBE_SANDBOX_MYSQL_PASSWORD": "s3cret-db-pass"}
        },
        "report": {},
        "max_reboots": 1
    });
    // Round-trip through the library so the text is exactly what
    // `Plan::to_json` (the builder's writer) produces.
    Plan::from_json(&v.to_string())
        .expect("test plan is valid")
        .to_json()
}

/// A fresh target: what preflight reads, the enabled unit, the plan, and
/// the assets served from /srv as file:// URLs.
pub struct Target {
    pub dir: tempfile::TempDir,
    pub host: ScriptedHost,
    pub kernel: AssetFile,
    pub bundle: AssetFile,
    pub boot: u32,
}

impl Target {
    pub fn new() -> Self {
        Self::with_plan_edit(|_| {})
    }

    /// A target whose plan JSON is edited before it is written.
    pub fn with_plan_edit(edit: impl FnOnce(&mut serde_json::Value)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        let kernel = AssetFile::new(&format!("linux-image-{KVER}_amd64.deb"), 150_000, 1);
        let bundle = AssetFile::new(
            "cube-sandbox-one-click-v0.0.0-fixture-amd64.tar.gz",
            220_000,
            2,
        );
        host.put(&format!("/srv/{}", kernel.name), &kernel.bytes);
        host.put(&format!("/srv/{}", bundle.name), &bundle.bytes);
        let ku = vec![format!("file:///srv/{}", kernel.name)];
        let bu = vec![format!("file:///srv/{}", bundle.name)];
        let mut plan: serde_json::Value =
            serde_json::from_str(&plan_json((&kernel, &ku), (&bundle, &bu))).unwrap();
        edit(&mut plan);
        host.put(
            "/etc/cubeboot/plan.json",
            Plan::from_json(&plan.to_string()).unwrap().to_json(),
        );
        lay_out_machine(&host);
        // A fixed disk size keeps step details identical between runs.
        host.set_free_bytes(Some(FREE_BYTES));
        let root = dir.path().to_path_buf();
        answer_systemctl(&host, root);
        Self {
            dir,
            host,
            kernel,
            bundle,
            boot: 1,
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn plan(&self) -> (Plan, Sha256Digest) {
        runner::load_plan(&self.host).unwrap()
    }

    /// What a reboot does to the files the helper sees: a new boot id and an
    /// empty /run (tmpfs), keeping cloud-init's result (it runs every boot).
    pub fn reboot(&mut self) {
        self.boot += 1;
        let _ = fs::remove_dir_all(self.host.path("/run/cubeboot"));
        self.host.put(
            "/proc/sys/kernel/random/boot_id",
            format!("boot-{}\n", self.boot),
        );
    }

    /// One start of the helper with the stand-in steps.
    pub fn run_once(&self, opts: &RunOptions) -> RunEnd {
        let (plan, digest) = self.plan();
        runner::run_with(&self.host, &plan, &digest, opts, &stand_in_steps(opts)).unwrap()
    }

    /// Start the helper, rebooting whenever it asks, until it ends (at most
    /// `max_starts` starts, so a looping machine fails the test).
    pub fn run_to_end(&mut self, opts: &RunOptions, max_starts: usize) -> RunEnd {
        self.run_steps_to_end(opts, &stand_in_steps(opts), max_starts)
    }

    /// [`Target::run_to_end`] with these steps.
    pub fn run_steps_to_end(
        &mut self,
        opts: &RunOptions,
        steps: &Steps,
        max_starts: usize,
    ) -> RunEnd {
        let (plan, digest) = self.plan();
        for _ in 0..max_starts {
            match runner::run_with(&self.host, &plan, &digest, opts, steps).unwrap() {
                RunEnd::Rebooting => self.reboot(),
                end => return end,
            }
        }
        panic!("helper still running after {max_starts} starts");
    }
}

pub fn lay_out_machine(host: &ScriptedHost) {
    host.put(
        "/proc/meminfo",
        "MemTotal:       16303916 kB\nMemFree:  1000 kB\n",
    );
    host.put(
        "/etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
    );
    host.put(
        "/run/cloud-init/result.json",
        r#"{"v1": {"datasource": "DataSourceNoCloud", "errors": []}}"#,
    );
    host.put("/etc/cloud/cloud.cfg", "# cloud-init\n");
    host.put("/etc/hostname", "node-1\n");
    host.put("/proc/sys/kernel/random/boot_id", "boot-1\n");
    // The unit and its wants-link, as the payload installs them.
    host.put(
        "/etc/systemd/system/cube-firstboot.service",
        cubeboot::firstboot::UNIT_FILE,
    );
    let link = host.path(UNIT_LINK);
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    let _ = std::os::unix::fs::symlink("/etc/systemd/system/cube-firstboot.service", link);
}

/// `systemctl [--root=R] disable UNIT...` removes each unit's wants-links
/// under the root, and refuses a unit whose file does not exist, as the
/// real one does (systemd: src/shared/install.c, unit_file_disable).
fn answer_systemctl(host: &ScriptedHost, root: PathBuf) {
    host.on(move |c: &CommandSpec| {
        if c.program != "systemctl" || !c.args.iter().any(|a| a == "disable") {
            return None;
        }
        let units = c.args.iter().filter(|a| a.ends_with(".service"));
        for unit in units.clone() {
            let file = format!("/etc/systemd/system/{unit}");
            if !cubeboot::firstboot::host::under_root(&root, &file).exists() {
                return Some(Ok(CmdOutput::failed(
                    1,
                    format!("Failed to disable unit: Unit file {unit} does not exist."),
                )));
            }
        }
        for unit in units {
            for wants in ["cloud-init.target.wants", "multi-user.target.wants"] {
                let link = format!("/etc/systemd/system/{wants}/{unit}");
                let _ = fs::remove_file(cubeboot::firstboot::host::under_root(&root, &link));
            }
        }
        Some(Ok(CmdOutput::ok("")))
    });
}

fn marker(ctx: &Ctx, path: &str, content: &str) -> Result<()> {
    ctx.host.write_atomic(path, content.as_bytes(), 0o644)
}

/// The standard steps, with stand-ins for the kernel and Cube stages that
/// depend on the engine's promises: verified assets in the cache, a journal
/// fact that survives the reboot, and the reboot itself.
pub fn stand_in_steps(opts: &RunOptions) -> Steps {
    Steps::standard(opts)
        .with(StepId::CubePrereqs, |ctx| {
            marker(ctx, "/var/lib/test/prereqs", "curl xfsprogs\n")?;
            Ok(Outcome::Done("packages present".into()))
        })
        .with(StepId::KernelInstall, |ctx| {
            let cached = cache_path(&ctx.plan.assets.kernel);
            // A dry run downloaded nothing; the real step prints its commands.
            if !ctx.host.is_dry_run()
                && Sha256Digest::of(&ctx.host.read(&cached)?) != ctx.plan.assets.kernel.sha256
            {
                bail!("kernel package in the cache is not verified");
            }
            let kver = ctx.plan.kernel.kver.clone();
            marker(ctx, &format!("/boot/vmlinuz-{kver}"), "kernel image\n")?;
            ctx.journal.facts.old_kernel = Some("6.1.0-26-amd64".into());
            Ok(Outcome::Done(format!("installed {kver}")))
        })
        .with(StepId::KernelBoot, |ctx| {
            let boot = ctx.host.boot_id().unwrap_or_default();
            marker(
                ctx,
                "/boot/grub/grubenv.next",
                &format!("pvm armed in {boot}\n"),
            )?;
            Ok(Outcome::RebootRequested("trial boot armed".into()))
        })
        .with(StepId::KernelVerify, |ctx| {
            let armed = ctx.host.read_string("/boot/grub/grubenv.next")?;
            let boot = ctx.host.boot_id().unwrap_or_default();
            if armed == format!("pvm armed in {boot}\n") {
                bail!("kernel verify ran in the boot that asked for the reboot");
            }
            if ctx.journal.facts.old_kernel.as_deref() != Some("6.1.0-26-amd64") {
                bail!("the fact recorded before the reboot is gone");
            }
            Ok(Outcome::Done("running the PVM kernel".into()))
        })
        .with(StepId::KvmLoad, |ctx| {
            marker(ctx, "/etc/modules-load.d/kvm-pvm.conf", "kvm_pvm\n")?;
            Ok(Outcome::Done("kvm_pvm loaded".into()))
        })
        .with(StepId::KernelCommit, |ctx| {
            marker(ctx, "/boot/grub/grubenv", "saved_entry=pvm\n")?;
            Ok(Outcome::Done("committed the PVM entry".into()))
        })
        .with(StepId::DataDisk, |ctx| {
            marker(ctx, "/var/lib/test/data-disk", "xfs\n")?;
            Ok(Outcome::Done("/data/cubelet on xfs".into()))
        })
        .with(StepId::CubeInstall, |ctx| {
            let cached = cache_path(&ctx.plan.assets.bundle);
            if !ctx.host.is_dry_run()
                && Sha256Digest::of(&ctx.host.read(&cached)?) != ctx.plan.assets.bundle.sha256
            {
                bail!("bundle in the cache is not verified");
            }
            marker(
                ctx,
                "/usr/local/services/cubetoolbox/.one-click.env",
                "CUBE_PVM_ENABLE=1\n",
            )?;
            Ok(Outcome::Done("installed".into()))
        })
        .with(StepId::CubeVerify, |ctx| {
            ctx.journal.record_check(
                cubeboot::status_schema::CheckName::CubeApi,
                true,
                "GET /health: 200",
            );
            Ok(Outcome::Done("healthy".into()))
        })
        .with(StepId::Harden, |ctx| {
            marker(ctx, "/var/lib/test/harden", "binds\n")?;
            Ok(Outcome::Done("hardened".into()))
        })
}

/// Every file under `root` (symlinks as `-> target`), with JSON files'
/// timestamps removed: the state of a target to compare between runs.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.file_type().is_symlink() {
            out.insert(rel, format!("-> {}", fs::read_link(&p).unwrap().display()));
        } else if meta.is_dir() {
            out.insert(format!("{rel}/"), String::new());
            walk(root, &p, out);
        } else {
            let bytes = fs::read(&p).unwrap();
            let text = if rel.ends_with(".json") {
                normalize_json(&String::from_utf8_lossy(&bytes))
            } else {
                format!("{} bytes sha256 {}", bytes.len(), Sha256Digest::of(&bytes))
            };
            out.insert(rel, text);
        }
    }
}

/// JSON without the keys that hold wall-clock time.
pub fn normalize_json(text: &str) -> String {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("at");
                m.remove("updated_at");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(mut v) => {
            strip(&mut v);
            serde_json::to_string_pretty(&v).unwrap()
        }
        Err(_) => text.to_string(),
    }
}

pub fn opts(scope: Scope) -> RunOptions {
    RunOptions {
        scope,
        ..RunOptions::default()
    }
}

pub fn read_json(host: &ScriptedHost, path: &str) -> serde_json::Value {
    serde_json::from_str(&host.read_string(path).unwrap()).unwrap()
}
