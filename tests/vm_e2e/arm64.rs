//! The VM tier on aarch64 (issue 23, "Proof"): a Debian 12 arm64 guest
//! (tests/e2e/guest-image.sh --arch aarch64) on `qemu-system-aarch64 -M
//! virt,virtualization=on -cpu max` under TCG. The emulated CPU has EL2, so
//! the guest's own Linux brings up KVM and /dev/kvm is a real one: native
//! KVM, no PVM kernel, no reboot. It boots through Debian's UEFI firmware
//! (qemu-efi-aarch64) and GRUB, like Debian's arm64 cloud images.

use super::*;
use cubeboot::firstboot::journal::KvmInUse;

/// The aarch64 scenarios run with the rest of the VM tier (CUBEBOOT_E2E=1);
/// CUBEBOOT_E2E_ARM64=0 leaves them out, e.g. to rerun the x86 ones alone
/// without building the arm64 image (tests/e2e/README.md, "The aarch64
/// guest").
fn arm64_enabled(test: &str) -> bool {
    if !e2e_enabled(test) {
        return false;
    }
    if std::env::var("CUBEBOOT_E2E_ARM64").as_deref() == Ok("0") {
        println!("{test}: skipped (CUBEBOOT_E2E_ARM64=0)");
        return false;
    }
    true
}

/// Debian's UEFI firmware for arm64 (package qemu-efi-aarch64).
const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// The cached arm64 guest disk and what its recipe reports about it.
pub(crate) struct Arm64Guest {
    pub(crate) disk: PathBuf,
    pub(crate) kver: String,
}

impl Arm64Guest {
    pub(crate) fn prepare() -> Self {
        let t = Instant::now();
        let dir = script_output("tests/e2e/guest-image.sh", &["--arch", "aarch64"]);
        let env = read_env(&dir.join("guest.env"));
        println!("arm64 guest image: {} ({:.0?})", dir.display(), t.elapsed());
        Self {
            disk: dir.join("disk.img"),
            kver: env["GUEST_DEFAULT_KVER"].clone(),
        }
    }

    /// Boots the guest with `user_data` on its NoCloud seed and runs it to
    /// the reporter's end.
    pub(crate) fn boot(&self, dir: &Path, user_data: &str, http: &HttpServer) -> Vm {
        RunningVm::start_machine(
            aarch64_machine(dir),
            &self.disk,
            dir,
            user_data,
            http,
            &VmSpec::default(),
        )
        .finish()
    }
}

/// qemu's `virt` board with EL2 (`virtualization=on`) and a GICv3, whose
/// emulation has the virtualization interface KVM needs; `-cpu max` for
/// VHE. `pauth-impdef=on`: the architected pointer-authentication algorithm
/// is costly to emulate and nothing here depends on which one runs. The
/// firmware's variable store is a per-run copy (it is written at boot).
fn aarch64_machine(dir: &Path) -> Command {
    let vars = dir.join("efi-vars.fd");
    fs::copy(AAVMF_VARS, &vars).unwrap_or_else(|e| panic!("copying {AAVMF_VARS}: {e}"));
    let mut qemu = Command::new("qemu-system-aarch64");
    qemu.args(["-M", "virt,virtualization=on,gic-version=3"])
        .args(["-accel", "tcg,thread=multi", "-cpu", "max,pauth-impdef=on"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={AAVMF_CODE}"
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ));
    qemu
}

/// The phases of an aarch64 first boot, for the timeline.
pub(crate) const BOOT_MARKS: [(&str, &str, usize); 6] = [
    ("UEFI firmware, then GRUB", "@@GRUB start", 1),
    ("kernel: KVM up at EL2", "initialized successfully", 1),
    ("userspace up (reporter)", "@@E2E boot ", 1),
    ("cloud-init final stage", "running 'modules:final'", 1),
    ("status terminal", "@@E2E final-begin", 1),
    ("reporter done", "@@E2E END", 1),
];

/// Harness self-test without the product: real cloud-init on the arm64
/// guest runs a small check that opens /dev/kvm, asks KVM_GET_API_VERSION
/// and creates a VM, and writes what it saw as the status the reporter
/// waits for. It proves the image, the UEFI boot, the seed and the nested
/// KVM on their own. Opt-in (CUBEBOOT_E2E_SMOKE=1), like the x86 smoke.
#[test]
#[ignore = "VM tier: needs root and qemu; CUBEBOOT_E2E=1 ... -- --include-ignored"]
fn vm_arm64_harness_smoke_cloud_init_and_native_kvm() {
    if !arm64_enabled("vm_arm64_harness_smoke") {
        return;
    }
    if std::env::var("CUBEBOOT_E2E_SMOKE").as_deref() != Ok("1") {
        println!("vm_arm64_harness_smoke: skipped (set CUBEBOOT_E2E_SMOKE=1)");
        return;
    }
    let _slot = VM_SLOT.lock().unwrap_or_else(|e| e.into_inner());
    let guest = Arm64Guest::prepare();
    let dir = scenario_dir("arm64-smoke");
    let release = dir.join("release");
    fs::create_dir_all(&release).unwrap();
    let http = HttpServer::start(&release);
    // _IO(KVMIO=0xAE, 0x00) and _IO(0xAE, 0x01), linux/kvm.h.
    let check = r#"#!/usr/bin/python3
# arm64 harness smoke: is /dev/kvm a working KVM?
import fcntl, json, os
KVM_GET_API_VERSION, KVM_CREATE_VM = 0xAE00, 0xAE01
result = {}
try:
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    result["api_version"] = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
    result["create_vm"] = "ok" if vm >= 0 else "failed"
    state = "done" if result == {"api_version": 12, "create_vm": "ok"} else "failed: kvm"
except OSError as e:
    result["error"] = str(e)
    state = "failed: " + str(e)
os.makedirs("/run/cubeboot", exist_ok=True)
with open("/run/cubeboot/status.json.tmp", "w") as f:
    json.dump({"state": state, "kvm": result}, f)
os.rename("/run/cubeboot/status.json.tmp", "/run/cubeboot/status.json")
"#;
    let user_data = format!(
        "#cloud-config\nwrite_files:\n  - path: /usr/local/sbin/kvm-check\n    permissions: '0755'\n    content: |\n{}runcmd:\n  - [ /usr/local/sbin/kvm-check ]\n",
        indent(check, 6)
    );
    let vm = guest.boot(&dir, &user_data, &http);
    vm.log.print_timeline(&BOOT_MARKS);
    let r = Report { log: &vm.log };
    let mut checks = Checks::default();
    let mut check = |ok: bool, what: String| checks.check(ok, what);
    let status = r.section("status").join("\n");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
    check(
        status["kvm"]["api_version"] == 12,
        format!("/dev/kvm answers KVM_GET_API_VERSION 12 (status {status})"),
    );
    check(
        status["kvm"]["create_vm"] == "ok",
        format!("KVM_CREATE_VM succeeds (status {status})"),
    );
    check(
        r.single("devkvm")
            .is_some_and(|l| l.starts_with('c') && l.contains("10, 232")),
        format!("/dev/kvm is char 10,232 (got {:?})", r.single("devkvm")),
    );
    check(
        r.single("uname").as_deref() == Some(guest.kver.as_str()),
        format!("the guest runs its own kernel {}", guest.kver),
    );
    check(
        vm.log.count("@@GRUB start") == 1,
        format!(
            "one boot, through GRUB: GRUB started {} times",
            vm.log.count("@@GRUB start")
        ),
    );
    check(
        vm.log.boot1_cloud_init_status() == Some("done".into()),
        format!(
            "`cloud-init status` is done (got {:?})",
            vm.log.boot1_cloud_init_status()
        ),
    );
    println!(
        "measured: VM {:.1}s; qemu peak RSS {} MiB",
        vm.log.lines.last().map(|l| l.0).unwrap_or(0.0),
        vm.peak_rss_kib.map(|k| k / 1024).unwrap_or(0)
    );
    checks.assert_all(&[&vm.log_path]);
}

/// The arm64 fixture bundle (tests/fixtures/bundle/make.sh).
const BUNDLE_ARM64: &str = "cube-sandbox-one-click-v0.0.0-fixture-arm64.tar.gz";
/// The name the aarch64 helper is served under, beside the x86_64 one's.
const HELPER_AARCH64: &str = "cube-firstboot-aarch64";

/// The product on aarch64: the REAL `cubeboot lock` and `cubeboot build
/// --arch aarch64`, real cloud-init, the cross-built static helper. The
/// helper proves /dev/kvm itself (KVM_GET_API_VERSION 12), skips the
/// kernel stage (no package fetched, no reboot) and installs Cube with
/// CUBE_PVM_ENABLE=0 from the arm64 fixture bundle.
#[test]
#[ignore = "VM tier: needs root and qemu; CUBEBOOT_E2E=1 ... -- --include-ignored"]
fn vm_arm64_first_boot_native_kvm_installs_cube_without_reboot() {
    if !arm64_enabled("vm_arm64_first_boot_native_kvm_installs_cube_without_reboot") {
        return;
    }
    let _slot = VM_SLOT.lock().unwrap_or_else(|e| e.into_inner());
    let guest = Arm64Guest::prepare();
    let t = Instant::now();
    let dir = scenario_dir("arm64-first-boot");
    let release = dir.join("release");
    fs::create_dir_all(&release).unwrap();
    // Plan version 1 still needs a kernel asset (docs/arm64.md, "What the
    // plan still carries"): the x86 fixture kernel, which an aarch64 run
    // must never fetch.
    let kdir = script_output("tests/e2e/fixture-kernel.sh", &[]);
    let kernel_deb = read_env(&kdir.join("kernel.env"))["FIXTURE_GOOD_DEB"].clone();
    let kernel = release.join(Path::new(&kernel_deb).file_name().unwrap());
    fs::copy(kdir.join(&kernel_deb), &kernel).unwrap();
    let helper_src = match std::env::var_os("CUBEBOOT_E2E_HELPER_AARCH64") {
        Some(path) => PathBuf::from(path),
        None => repo().join(script_output(
            "scripts/build-helper.sh",
            &["--arch", "aarch64"],
        )),
    };
    let helper = release.join(HELPER_AARCH64);
    fs::copy(&helper_src, &helper)
        .unwrap_or_else(|e| panic!("aarch64 helper {}: {e}", helper_src.display()));
    let bundle_src = repo().join("tests/fixtures/bundle").join(BUNDLE_ARM64);
    let bundle = release.join(BUNDLE_ARM64);
    fs::copy(&bundle_src, &bundle)
        .unwrap_or_else(|e| panic!("arm64 fixture bundle {}: {e}", bundle_src.display()));
    let http = HttpServer::start(&release);
    let base = format!("http://10.0.2.2:{}/", http.port);
    let lock = dir.join("cubeboot.lock");
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_cubeboot"))
            .current_dir(repo())
            .args(["lock", "--base-url", &base])
            .arg("--asset")
            .arg(&kernel)
            .arg("--asset")
            .arg(&bundle)
            .arg("--asset")
            .arg(&helper)
            .arg("--output")
            .arg(&lock),
    );
    let out = dir.join("out");
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_cubeboot"))
            .current_dir(repo())
            .args(["build", "--profile", "debian-12", "--arch", "aarch64"])
            .args(["--mirror", &base, "--data-disk", "loopback", "--lock"])
            .arg(&lock)
            .arg("--output")
            .arg(&out),
    );
    let user_data = find_file(&out, "user-data")
        .map(|p| fs::read_to_string(p).unwrap())
        .unwrap_or_else(|| panic!("cubeboot build wrote no user-data under {}", out.display()));
    let user_data_sha256 = sha256_hex(user_data.as_bytes());
    let prep = t.elapsed();

    let vm = guest.boot(&dir, &user_data, &http);
    let mut marks = BOOT_MARKS.to_vec();
    marks.splice(
        4..4,
        [
            ("helper: preflight starts", "step preflight: starting", 1),
            ("helper: fetch starts", "step fetch: starting", 1),
            // The data disk is made while the bundle downloads; the kernel
            // stage's skip is recorded once the download is in.
            ("helper: data-disk starts", "step data-disk: starting", 1),
            (
                "helper: kernel-install (skipped)",
                "step kernel-install: ",
                1,
            ),
            (
                "helper: cube-install starts",
                "step cube-install: starting",
                1,
            ),
            (
                "helper: cube-verify starts",
                "step cube-verify: starting",
                1,
            ),
        ],
    );
    vm.log.print_timeline(&marks);
    let r = Report { log: &vm.log };
    let mut checks = Checks::default();
    let mut check = |ok: bool, what: String| checks.check(ok, what);
    check(
        r.single("userdata-sha")
            .is_some_and(|l| l.starts_with(&user_data_sha256)),
        format!("cloud-init ran our payload (user-data sha256 {user_data_sha256})"),
    );
    check(
        vm.log.boot1_cloud_init_status() == Some("done".into()),
        format!(
            "`cloud-init status` is done (got {:?})",
            vm.log.boot1_cloud_init_status()
        ),
    );
    // No kernel switch: one boot, on the guest's own kernel.
    check(
        vm.log.count("@@GRUB start") == 1,
        format!(
            "no reboot: GRUB started {} times",
            vm.log.count("@@GRUB start")
        ),
    );
    check(
        r.single("uname").as_deref() == Some(guest.kver.as_str()),
        format!("still on the guest's own kernel {}", guest.kver),
    );
    let journal = r.journal();
    check(
        journal
            .as_ref()
            .is_some_and(|j| j.facts.kvm_mode == Some(KvmInUse::Native)),
        format!(
            "journal: native KVM (got {:?})",
            journal.as_ref().map(|j| j.facts.kvm_mode)
        ),
    );
    check(
        journal.as_ref().is_some_and(|j| j.reboots == 0),
        format!(
            "journal counts no reboot (got {:?})",
            journal.as_ref().map(|j| j.reboots)
        ),
    );
    let step_state = |s: StepId| {
        journal
            .as_ref()
            .and_then(|j| j.steps.get(&s))
            .map(|x| x.state)
    };
    for step in [
        StepId::KernelInstall,
        StepId::KernelBoot,
        StepId::Reboot,
        StepId::KernelVerify,
        StepId::KvmLoad,
        StepId::KernelCommit,
    ] {
        check(
            step_state(step) == Some(StepState::Skipped),
            format!("journal: step {step} skipped (got {:?})", step_state(step)),
        );
    }
    for step in [
        StepId::Preflight,
        StepId::Fetch,
        StepId::DataDisk,
        StepId::CubeInstall,
        StepId::CubeVerify,
    ] {
        check(
            step_state(step) == Some(StepState::Done),
            format!("journal: step {step} done (got {:?})", step_state(step)),
        );
    }
    // The helper's own proof of /dev/kvm, in its log.
    check(
        vm.log.lines.iter().any(|(_, l)| {
            l.contains("@@E2E helper") && l.contains("/dev/kvm") && l.contains("API version 12")
        }),
        "the helper's log says /dev/kvm answers API version 12".into(),
    );
    check(
        r.single("devkvm")
            .is_some_and(|l| l.starts_with('c') && l.contains("10, 232")),
        format!("/dev/kvm is char 10,232 (got {:?})", r.single("devkvm")),
    );
    check(
        !r.section("lsmod").iter().any(|l| l.starts_with("kvm_pvm ")),
        "kvm_pvm is not loaded".into(),
    );
    check(
        r.section("one-click-env")
            .iter()
            .any(|l| l == "CUBE_PVM_ENABLE=0"),
        "Cube ran with CUBE_PVM_ENABLE=0 (.one-click.env)".into(),
    );
    check(
        r.single("cubelet-fs").is_some_and(|l| l.starts_with("xfs")),
        format!("/data/cubelet is XFS (got {:?})", r.single("cubelet-fs")),
    );
    let kernel_name = kernel.file_name().unwrap().to_string_lossy().into_owned();
    check(
        http.fetched(&kernel_name) == 0
            && http.fetched(BUNDLE_ARM64) >= 1
            && http.fetched(HELPER_AARCH64) >= 1,
        format!(
            "the guest fetched the aarch64 helper and the arm64 bundle, never the kernel: {:?}",
            http.summary()
        ),
    );
    let status = r.status();
    check(
        status.as_ref().is_some_and(|s| s.state == RunState::Done),
        format!(
            "status is done (got {:?})",
            status.as_ref().map(|s| &s.state)
        ),
    );
    if let Some(s) = &status {
        check(
            !s.checks.is_empty(),
            "status carries the Cube checks".into(),
        );
        for (name, c) in &s.checks {
            check(c.ok, format!("Cube check {name}: {}", c.detail));
        }
    }
    println!(
        "measured: release+lock+build {prep:.1?}; VM {:.1}s; qemu peak RSS {} MiB; HTTP {:?}",
        vm.log.lines.last().map(|l| l.0).unwrap_or(0.0),
        vm.peak_rss_kib.map(|k| k / 1024).unwrap_or(0),
        http.summary()
    );
    checks.assert_all(&[&vm.log_path]);
}
