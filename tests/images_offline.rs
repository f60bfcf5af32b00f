//! The image path end to end on a temporary root, with no network at all:
//! the real `cubeboot lock` pins the example release with `file://` URLs to a
//! directory that does not exist, the real `cubeboot build --format overlay
//! --offline` writes the overlay, real GNU tar unpacks it into a Debian 12
//! root (as the Packer template does), and the helper's whole first boot
//! then runs on that root. Any attempt to download would fail, so a finished
//! run proves the offline cache carried everything (CubeSandbox #361).
//!
//! Real where this machine can be: dpkg installing the fixture kernel,
//! grub-editenv/grub-reboot/grub-set-default and Debian's grub-mkconfig on
//! the root's files (kernel_common), the fixture one-click installer run by
//! bash. Emulated at the host seam: what would change this machine or needs
//! hardware (modprobe, mkfs.xfs, mount, apt-get, systemctl, nft, the GRUB
//! boot). Cube's health endpoints are a server on 127.0.0.1.

#[path = "kernel_common/mod.rs"]
mod kernel_common;

#[path = "images/common.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cubeboot::digest::Sha256Digest;
use cubeboot::firstboot::cube::http;
use cubeboot::firstboot::cube::verify::{verify_with_probe, Endpoints};
use cubeboot::firstboot::host::{under_root, CmdOutput, CommandSpec, Host, ScriptedHost};
use cubeboot::firstboot::image::{self, ResetOptions, Stage};
use cubeboot::firstboot::journal::{Journal, StepState};
use cubeboot::firstboot::runner::{self, RunEnd, RunOptions, Scope, Steps};
use cubeboot::firstboot::{StepId, CACHE_DIR};
use cubeboot::plan::Plan;
use cubeboot::transport::FetchConfig;

const TOOLBOX: &str = "/usr/local/services/cubetoolbox";
const IP_ADDR: &str = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
 {"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet","local":"10.0.2.15","prefixlen":24,"scope":"global"}]}]"#;
const IP_ROUTE: &str = r#"[{"dst":"default","gateway":"10.0.2.2","dev":"eth0"},{"dst":"10.0.2.0/24","dev":"eth0","prefsrc":"10.0.2.15"}]"#;
const LSBLK: &str = r#"{"blockdevices": [
  {"name":"vda","type":"disk","size":21474836480,"fstype":null,"mountpoint":null,"pttype":"gpt","children":[
    {"name":"vda1","type":"part","size":21473787392,"fstype":"ext4","mountpoint":"/","pttype":"gpt"}]}]}"#;

/// `cubeboot build --format overlay --offline` for debian-12; returns the
/// overlay and the plan it carries.
fn build_overlay(dir: &Path, lock: &Path) -> (PathBuf, Plan) {
    let out = dir.join("out");
    common::run(
        Command::new(common::cubeboot())
            .arg("build")
            .arg("--profiles-dir")
            .arg(common::repo().join("profiles"))
            .arg("--lock")
            .arg(lock)
            .args(["--profile", "debian-12", "--format", "overlay", "--offline"])
            .args(["--data-disk", "loopback"])
            .arg("--output")
            .arg(&out),
    );
    let plan = Plan::from_json(&std::fs::read_to_string(out.join("debian-12/plan.json")).unwrap())
        .unwrap();
    (out.join("debian-12/overlay.tar.xz"), plan)
}

/// A Debian 12 machine's root with the overlay unpacked by GNU tar the way
/// the Packer template does it.
fn image_root(root: &Path, overlay: &Path, plan: &Plan) {
    kernel_common::debian_root(root, "debian-12", plan);
    common::run(
        Command::new("tar")
            .args(["--no-overwrite-dir", "-xJf"])
            .arg(overlay)
            .arg("-C")
            .arg(root),
    );
    kernel_common::put(root, "/etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n");
    kernel_common::put(root, "/proc/meminfo", "MemTotal:       16384000 kB\n");
    kernel_common::put(root, "/etc/resolv.conf", "nameserver 10.0.2.3\n");
    // bpffs as systemd mounts it (cube-prereqs checks it).
    kernel_common::put(
        root,
        "/proc/self/mounts",
        "/dev/vda1 / ext4 rw 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n",
    );
    kernel_common::put(
        root,
        "/sys/fs/cgroup/cgroup.controllers",
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    );
    kernel_common::put(
        root,
        "/sys/fs/cgroup/cgroup.subtree_control",
        "memory pids\n",
    );
}

/// Everything the first boot runs that is not the kernel team's tools.
fn first_boot_responders(host: &ScriptedHost, root: &Path) {
    kernel_common::debian_responders(host, root, "");
    host.on_program("apt-get", CmdOutput::ok(""));
    host.on_program("systemctl", CmdOutput::ok(""));
    host.on_program("nft", CmdOutput::ok(""));
    host.on_program("journalctl", CmdOutput::ok("-- No entries --\n"));
    host.on_program("pgrep", CmdOutput::failed(1, ""));
    host.on_program("lsblk", CmdOutput::ok(LSBLK));
    host.on_program("truncate", CmdOutput::ok(""));
    host.on_program("mkfs.xfs", CmdOutput::ok(""));
    // A fresh sparse image holds nothing (blkid exits 2).
    host.on(|c| (c.program == "blkid").then(|| Ok(CmdOutput::failed(2, ""))));
    let r = root.to_path_buf();
    host.on(move |c| {
        (c.program == "mount").then(|| {
            let mounts = r.join("proc/self/mounts");
            let mut text = std::fs::read_to_string(&mounts).unwrap_or_default();
            text.push_str("/dev/loop0 /data/cubelet xfs rw 0 0\n");
            std::fs::write(&mounts, text).unwrap();
            Ok(CmdOutput::ok(""))
        })
    });
    host.on(|c| {
        (c.program == "ip" && c.args == ["-j", "addr"]).then(|| Ok(CmdOutput::ok(IP_ADDR)))
    });
    host.on(|c| {
        (c.program == "ip" && c.args == ["-j", "route"]).then(|| Ok(CmdOutput::ok(IP_ROUTE)))
    });
    // The vendor installer, for real (bash), installing under the root.
    let r = root.to_path_buf();
    host.on(move |c| (c.program == "timeout").then(|| run_installer(c, &r)));
}

fn run_installer(c: &CommandSpec, root: &Path) -> anyhow::Result<CmdOutput> {
    let mut cmd = Command::new(&c.program);
    cmd.args(&c.args)
        .envs(&c.env)
        .env(
            "CUBE_SANDBOX_INSTALL_ROOT",
            under_root(root, TOOLBOX).display().to_string(),
        )
        .env("ONE_CLICK_FIXTURE_ALLOW_NONROOT", "1")
        .stdin(Stdio::null());
    if let Some(cwd) = &c.cwd {
        cmd.current_dir(under_root(root, cwd));
    }
    let out = cmd.output()?;
    Ok(CmdOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        timed_out: false,
    })
}

/// CubeAPI and CubeMaster health on 127.0.0.1 (the verify step's only
/// network use; the test points it here instead of the node IP).
fn health_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
    port
}

/// One first-boot run with the standard steps (verify's endpoints on the
/// local server) and no download retries to wait through.
fn first_boot(host: &ScriptedHost, plan: &Plan, digest: &Sha256Digest, port: u16) -> RunEnd {
    let opts = RunOptions {
        scope: Scope::All,
        fetch: FetchConfig {
            attempts_per_mirror: 1,
            ..FetchConfig::default()
        },
        ..RunOptions::default()
    };
    let steps = Steps::standard(&opts).with(StepId::CubeVerify, move |ctx| {
        let endpoints = Endpoints {
            cube_api: Some(format!("http://127.0.0.1:{port}/health")),
            cube_master: Some(format!("http://127.0.0.1:{port}/notify/health")),
            registration: None,
            node_ip: "10.0.2.15".into(),
        };
        verify_with_probe(ctx, &endpoints, Duration::from_secs(30), &http::get)
    });
    let end = runner::run_with(host, plan, digest, &opts, &steps).unwrap();
    if matches!(end, RunEnd::Failed(_)) {
        eprintln!("helper said:\n{}", host.said().join("\n"));
        eprintln!("commands:\n{}", host.commands().join("\n"));
    }
    end
}

fn journal(host: &dyn Host, digest: &Sha256Digest) -> Journal {
    Journal::load(host, &digest.to_hex()).unwrap()
}

fn assert_offline_and_installed(host: &ScriptedHost, root: &Path, j: &Journal) {
    // Nothing was downloaded: the fetch step reused the overlay's cache.
    let fetch = &j.steps[&StepId::Fetch];
    assert_eq!(fetch.state, StepState::Done, "{fetch:?}");
    assert!(
        fetch.detail.contains("kernel reused from cache"),
        "{}",
        fetch.detail
    );
    // The bundle has its own step (its download runs beside the kernel
    // stage when there is one to do).
    let bundle = &j.steps[&StepId::Bundle];
    assert!(
        bundle.detail.contains("bundle reused from cache"),
        "{}",
        bundle.detail
    );
    assert!(host
        .commands()
        .iter()
        .all(|c| !c.starts_with("curl ") && !c.starts_with("wget ")));
    // Cube is installed by state: the installer's env file says PVM.
    let env = kernel_common::read(root, &format!("{TOOLBOX}/.one-click.env"));
    assert!(env.contains("\nCUBE_PVM_ENABLE=1\n"), "{env}");
    for step in [StepId::CubeInstall, StepId::CubeVerify, StepId::KvmLoad] {
        assert_eq!(
            j.state(step),
            Some(StepState::Done),
            "{step}: {:?}",
            j.steps.get(&step)
        );
    }
}

#[test]
fn offline_overlay_first_boot_completes_without_network() {
    let dir = tempfile::tempdir().unwrap();
    let lock = common::fixture_lock(dir.path());
    let (overlay, plan) = build_overlay(dir.path(), &lock);
    assert!(plan
        .assets
        .all()
        .iter()
        .all(|(_, a)| a.urls.iter().all(|u| u.starts_with("file:///nonexistent/"))));
    let root = dir.path().join("root");
    image_root(&root, &overlay, &plan);
    let digest = Sha256Digest::of(plan.to_json().as_bytes());
    let port = health_server();

    // Boot 1: kernel installed from the cache, trial boot armed, reboot.
    let host = ScriptedHost::new(&root);
    first_boot_responders(&host, &root);
    assert_eq!(first_boot(&host, &plan, &digest, port), RunEnd::Rebooting);
    assert_eq!(host.reboots(), 1);
    // GRUB takes the one-shot; boot 2 finishes the job.
    assert_eq!(kernel_common::grub_boot(&root, false), kernel_common::KVER);
    let host = ScriptedHost::new(&root);
    first_boot_responders(&host, &root);
    assert_eq!(first_boot(&host, &plan, &digest, port), RunEnd::Done);
    assert_eq!(host.reboots(), 0);
    let j = journal(&host, &digest);
    assert_eq!(j.state(StepId::KernelVerify), Some(StepState::Done));
    assert_offline_and_installed(&host, &root, &j);
}

#[test]
fn image_with_kernel_applied_first_boot_skips_kernel_stage_without_network() {
    let dir = tempfile::tempdir().unwrap();
    let lock = common::fixture_lock(dir.path());
    let (overlay, plan) = build_overlay(dir.path(), &lock);
    let root = dir.path().join("root");
    image_root(&root, &overlay, &plan);
    let digest = Sha256Digest::of(plan.to_json().as_bytes());

    // What the Packer template runs inside the build VM.
    let builder = ScriptedHost::new(&root);
    kernel_common::debian_responders(&builder, &root, "");
    image::apply(&builder, Stage::Kernel, &FetchConfig::default()).unwrap();
    image::reset_for_image(&builder, ResetOptions { keep_cache: true }).unwrap();
    assert_eq!(builder.reboots(), 0);
    assert_eq!(
        builder.list_dir(CACHE_DIR).unwrap().len(),
        2,
        "the offline cache survives the reset"
    );

    // An instance's first power-on: the image's default is the PVM kernel.
    assert_eq!(kernel_common::grub_boot(&root, false), kernel_common::KVER);
    let port = health_server();
    let host = ScriptedHost::new(&root);
    first_boot_responders(&host, &root);
    assert_eq!(first_boot(&host, &plan, &digest, port), RunEnd::Done);
    assert_eq!(host.reboots(), 0, "an image made with apply never reboots");
    let j = journal(&host, &digest);
    for step in [
        StepId::KernelInstall,
        StepId::KernelBoot,
        StepId::Reboot,
        StepId::KernelVerify,
    ] {
        assert_eq!(
            j.state(step),
            Some(StepState::Skipped),
            "{step}: {:?}",
            j.steps.get(&step)
        );
    }
    // No package manager ran for the kernel at first boot.
    assert!(
        !host
            .commands()
            .iter()
            .any(|c| c.contains("dpkg") && c.contains(" -i ")),
        "{:?}",
        host.commands()
    );
    assert_offline_and_installed(&host, &root, &j);
    // A second power-on still boots PVM.
    assert_eq!(kernel_common::grub_boot(&root, false), kernel_common::KVER);
}
