//! The OpenCloudOS 9 repository kernel (`kernel-6.6.69-1.2.cubesandbox.oc9`,
//! split into kernel, kernel-core, kernel-modules) through the kernel stage
//! in a temporary root: a real dnf repository made by createrepo_c from the
//! committed fixture packages (tests/fixtures/kernel/repo), real
//! `dnf --installroot` downloads and installs, real rpm reports the
//! installed headers, kernel-core's %posttrans is the real systemd
//! kernel-install (kernel_common). Nothing touches this machine's own rpm
//! or dnf state.

mod kernel_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cubeboot::digest::Sha256Digest;
use cubeboot::firstboot::host::ScriptedHost;
use cubeboot::firstboot::journal::StepState;
use cubeboot::firstboot::kernel::grubcfg;
use cubeboot::firstboot::run_state::Failure;
use cubeboot::firstboot::runner::{self, RunEnd, Scope};
use cubeboot::firstboot::StepId;
use cubeboot::plan::{KernelHold, KernelRepo, Plan, RepoPackage};
use kernel_common::*;

const REPO_KVER: &str = "6.6.69-1.2.cubesandbox.oc9.x86_64";
const REPO_VR: &str = "6.6.69-1.2.cubesandbox.oc9";
const SUBS: [&str; 3] = ["kernel", "kernel-core", "kernel-modules"];

fn file_of(sub: &str) -> String {
    format!("{sub}-{REPO_VR}.x86_64.rpm")
}

/// A createrepo_c repository in `dir/repo` serving the split fixture
/// kernel; `swap` replaces one package with a file of the same name.
fn make_repo(dir: &Path, swap: Option<&Path>) -> PathBuf {
    let r = dir.join("repo");
    std::fs::create_dir_all(&r).unwrap();
    for sub in SUBS {
        let f = file_of(sub);
        std::fs::copy(
            repo().join("tests/fixtures/kernel/repo").join(&f),
            r.join(&f),
        )
        .unwrap();
    }
    if let Some(s) = swap {
        std::fs::copy(s, r.join(s.file_name().unwrap())).unwrap();
    }
    let out = Command::new("createrepo_c")
        .arg("--quiet")
        .arg(&r)
        .output()
        .unwrap();
    assert!(out.status.success(), "createrepo_c: {out:?}");
    r
}

/// An empty noarch package built by the real rpmbuild under `dir`.
fn noarch_rpm(dir: &Path, name: &str, version: &str, release: &str) -> PathBuf {
    let top = dir.join(format!("rpmbuild-{name}"));
    std::fs::create_dir_all(top.join("SPECS")).unwrap();
    let spec = top.join("SPECS/p.spec");
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: {version}\nRelease: {release}\nSummary: fixture\n\
             License: GPL-2.0-only\nBuildArch: noarch\n%description\nfixture\n%files\n"
        ),
    )
    .unwrap();
    let out = Command::new("rpmbuild")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg("--define")
        .arg(format!("_dbpath {}", top.join("db").display()))
        .args(["--quiet", "-bb"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(out.status.success(), "rpmbuild: {out:?}");
    top.join(format!("RPMS/noarch/{name}-{version}-{release}.noarch.rpm"))
}

/// What `rpm -qp` says about a package file (with a throwaway database:
/// even a query opens one, and this machine's is none of the test's business).
fn rpm_qp(path: &Path, qf: &str) -> String {
    let db = tempfile::tempdir().unwrap();
    let out = Command::new("rpm")
        .arg("--dbpath")
        .arg(db.path())
        .args(["-qp", "--qf", qf])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "rpm -qp: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// An opencloudos-9 plan whose kernel is the committed split set, pinned as
/// `cubeboot lock --kernel-repo` pins it (file digests and header digests).
fn repo_plan(baseurl: &str) -> Plan {
    let mut plan = rpm_plan();
    plan.target.profile = "opencloudos-9".into();
    plan.target.os_ids = vec!["opencloudos".into()];
    plan.target.packages.hold = KernelHold::DnfExclude;
    let fixtures = repo().join("tests/fixtures/kernel/repo");
    let packages: Vec<RepoPackage> = SUBS
        .iter()
        .map(|sub| {
            let path = fixtures.join(file_of(sub));
            let bytes = std::fs::read(&path).unwrap();
            RepoPackage {
                nevra: rpm_qp(&path, "%{NEVRA}"),
                location: file_of(sub),
                sha256: Sha256Digest::of(&bytes),
                size: bytes.len() as u64,
                header_sha256: rpm_qp(&path, "%{SHA256HEADER}").parse().unwrap(),
            }
        })
        .collect();
    plan.assets.kernel.name = file_of("kernel");
    plan.assets.kernel.urls = vec![format!("{baseurl}/{}", file_of("kernel"))];
    plan.assets.kernel.sha256 = packages[0].sha256;
    plan.assets.kernel.size = packages[0].size;
    plan.kernel.kver = REPO_KVER.into();
    plan.kernel.package = "kernel".into();
    plan.kernel.package_version = REPO_VR.into();
    plan.kernel.repo = Some(KernelRepo {
        baseurl: baseurl.into(),
        packages,
    });
    plan
}

fn installed(root: &Path) -> String {
    let out = Command::new("rpm")
        .arg("--root")
        .arg(root)
        .args(["-qa", "--qf", "%{NEVRA}\n"])
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines.join("\n")
}

#[test]
fn repo_kernel_installs_with_dnf_verified_before_the_trial_boot() {
    let dir = tempfile::tempdir().unwrap();
    let srv = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The distribution's kernel-headers sits in the same repository.
    let headers = noarch_rpm(srv.path(), "kernel-headers", "6.6.69", "1.oc9");
    let baseurl = format!("file://{}", make_repo(srv.path(), Some(&headers)).display());
    let plan = repo_plan(&baseurl);
    rocky_root(root, &plan);
    let host = ScriptedHost::new(root);
    rocky_responders(&host, root);
    let digest = seed_journal(&host, &plan);

    assert_eq!(
        runner::run(&host, &plan, &digest, Scope::All).unwrap(),
        RunEnd::Rebooting
    );
    let r = root.display();
    let cmds = host.commands();
    let nevras: Vec<String> = SUBS
        .iter()
        .map(|s| format!("{s}-{REPO_VR}.x86_64"))
        .collect();
    let repo_opts =
        format!("-y --repofrompath=cubeboot-kernel,{baseurl} --setopt=cubeboot-kernel.gpgcheck=0");
    // dnf downloads the pinned NEVRAs, then installs exactly those files,
    // then rpm shows the installed headers; all before grubby and the arm.
    let dl = format!(
        "chroot {r} dnf {repo_opts} install --downloadonly --downloaddir=/var/cache/cubeboot/kernel-repo {}",
        nevras.join(" ")
    );
    let files: Vec<String> = SUBS
        .iter()
        .map(|s| format!("/var/cache/cubeboot/kernel-repo/{}", file_of(s)))
        .collect();
    let inst = format!("chroot {r} dnf {repo_opts} install {}", files.join(" "));
    let query = format!(
        "rpm --root {r} -q --qf '%{{NEVRA}} %{{SHA256HEADER}}\n' {}",
        nevras.join(" ")
    );
    let pos = |c: &str| {
        cmds.iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{c} not run: {cmds:#?}"))
    };
    let update = cmds
        .iter()
        .position(|c| c.contains("grubby --update-kernel="))
        .unwrap();
    assert!(pos(&dl) < pos(&inst) && pos(&inst) < pos(&query) && pos(&query) < update);
    assert_eq!(installed(root), nevras.join("\n"));
    // kernel-core's %posttrans (real kernel-install) put the kernel in /boot
    // and wrote the entry; our parameters are in its options line.
    assert!(exists(root, &format!("/boot/vmlinuz-{REPO_KVER}")));
    let id = format!("{THIS_MACHINE_ID}-{REPO_KVER}");
    let entry = read(root, &format!("/boot/loader/entries/{id}.conf"));
    assert!(
        entry.contains(&format!("linux /boot/vmlinuz-{REPO_KVER}\n")),
        "{entry}"
    );
    assert!(
        entry.contains("options root=UUID=abc ro crashkernel=1G-4G:192M console=ttyS0,115200n8 nopti pti=off panic=30\n"),
        "{entry}"
    );
    let env = grubcfg::parse_grubenv(&read(root, "/boot/grub2/grubenv"));
    assert_eq!(env["next_entry"], id);
    assert_eq!(
        grubby_default(root),
        format!("/boot/vmlinuz-{OLD_RPM_KERNEL}")
    );
    // Held by exactly the names installed (issue 19 item 5): dnf on the node
    // hides kernel-core from the repository, but kernel-headers (which
    // `dnf install gcc` pulls in through glibc-devel) stays installable.
    assert!(read(root, "/etc/dnf/dnf.conf").contains("exclude=kernel kernel-core kernel-modules\n"));
    let available = |name: &str| {
        let out = real(
            &cubeboot::firstboot::host::CommandSpec::new("dnf")
                .arg(format!("--installroot={}", root.display()))
                .arg(format!(
                    "--config={}",
                    root.join("etc/dnf/dnf.conf").display()
                ))
                .arg(format!(
                    "--setopt=cachedir={}",
                    root.join("var/cache/dnf").display()
                ))
                .args(["-q", "--releasever=9", "--setopt=reposdir=/nonexistent"])
                .arg(format!("--repofrompath=node,{baseurl}"))
                .args([
                    "--setopt=node.gpgcheck=0",
                    "repoquery",
                    "--qf",
                    "%{name}",
                    name,
                ]),
        )
        .unwrap();
        assert!(out.success(), "dnf repoquery {name}: {}", out.stderr);
        out.stdout.trim().to_string()
    };
    assert_eq!(available("kernel-headers"), "kernel-headers");
    assert_eq!(available("kernel-core"), "");

    // The trial boot comes up; kvm_pvm is proven, then the stage commits it.
    assert_eq!(bls_boot(root, false), REPO_KVER);
    runner::run(
        &host,
        &plan,
        &digest,
        Scope::StopAfter(StepId::KernelCommit),
    )
    .unwrap();
    let j = journal(&host, &digest);
    assert_eq!(
        j.state(StepId::KernelVerify),
        Some(StepState::Done),
        "{:?}",
        j.steps
    );
    assert_eq!(grubby_default(root), format!("/boot/vmlinuz-{REPO_KVER}"));
}

#[test]
fn a_repo_package_with_other_bytes_is_refused_before_install() {
    let dir = tempfile::tempdir().unwrap();
    let srv = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The repository serves a kernel-modules with the same NEVRA but other
    // bytes (no kvm-pvm.ko) than the lock pinned.
    let other = repo().join(format!(
        "tests/fixtures/kernel/repo-nokvmpvm/{}",
        file_of("kernel-modules")
    ));
    let baseurl = format!("file://{}", make_repo(srv.path(), Some(&other)).display());
    let plan = repo_plan(&baseurl);
    rocky_root(root, &plan);
    let host = ScriptedHost::new(root);
    rocky_responders(&host, root);
    let digest = seed_journal(&host, &plan);

    let end = runner::run(&host, &plan, &digest, Scope::All).unwrap();
    assert_eq!(end, RunEnd::Failed(Failure::Step(StepId::KernelInstall)));
    assert_eq!(host.reboots(), 0);
    let pinned = plan.kernel.repo.as_ref().unwrap().packages[2].sha256;
    let served = Sha256Digest::of(&std::fs::read(&other).unwrap());
    let status = read(root, "/run/cubeboot/status.json");
    assert!(
        status.contains(&format!(
            "kernel-modules-{REPO_VR}.x86_64 from {baseurl} is not the package the lock pins"
        )),
        "{status}"
    );
    assert!(
        status.contains(&format!("expected sha256 {pinned}")),
        "{status}"
    );
    assert!(status.contains(&format!("computed {served}")), "{status}");
    // Nothing was installed; the old kernel stays the default.
    assert_eq!(installed(root), "");
    assert!(!host
        .commands()
        .iter()
        .any(|c| c.contains("grubby --update-kernel")));
    assert_eq!(
        grubby_default(root),
        format!("/boot/vmlinuz-{OLD_RPM_KERNEL}")
    );
}
