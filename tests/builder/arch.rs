//! aarch64 payloads (docs/arm64.md): the lock pins one helper per
//! architecture, read from each helper's ELF header; `build --arch aarch64`
//! writes OUTPUT/<profile>-aarch64 for the profiles that list aarch64, with
//! the aarch64 helper and the arm64 bundle, and refuses every mismatch by
//! name.

use std::path::{Path, PathBuf};

use crate::support::*;

const ARM_BUNDLE: &str = "cube-sandbox-one-click-v0.0.0-test-arm64.tar.gz";

/// An aarch64 helper for the builder's tests: the real x86_64 helper with
/// its ELF `e_machine` set to EM_AARCH64 (183). The builder never runs a
/// helper; it reads the header, hashes the bytes and serves or embeds them,
/// and this copy is larger than the real aarch64 build (2.36 MB measured by
/// scripts/build-helper.sh --arch aarch64), so no size limit gets easier.
fn aarch64_helper(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(&release().helper).unwrap();
    assert_eq!(&bytes[18..20], &62u16.to_le_bytes(), "the x86_64 helper");
    bytes[18..20].copy_from_slice(&183u16.to_le_bytes());
    let path = dir.join("cube-firstboot-aarch64");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A one-click-shaped bundle for `arch` (upstream's suffix) in `dir`.
fn bundle(dir: &Path, name: &str) -> PathBuf {
    let stem = name.trim_end_matches(".tar.gz");
    std::fs::create_dir_all(dir.join(stem)).unwrap();
    std::fs::write(dir.join(stem).join("install.sh"), "#!/bin/sh\nexit 0\n").unwrap();
    sh(&format!("tar -czf {name} {stem} && rm -r {stem}"), dir);
    dir.join(name)
}

/// The test release's kernels and x86_64 helper, the aarch64 helper (when
/// `with_arm_helper`) and a bundle named `bundle_name`, locked into `dir`.
fn lock(dir: &Path, bundle_name: &str, with_arm_helper: bool) -> PathBuf {
    let rel = release();
    let b = bundle(dir, bundle_name);
    let arm = aarch64_helper(dir);
    let mut assets = vec![
        rel.deb.as_path(),
        rel.rpm.as_path(),
        b.as_path(),
        rel.helper.as_path(),
    ];
    if with_arm_helper {
        assets.push(arm.as_path());
    }
    lock_assets(dir, &assets)
}

/// `build --arch aarch64 --profile debian-12` of `lock` into `out`.
fn build_debian_12_aarch64(lock: &Path, out: &Path, extra: &[&str]) {
    let (lock, out) = (lock.to_str().unwrap(), out.to_str().unwrap());
    let mut args = vec![
        "build",
        "--lock",
        lock,
        "--arch",
        "aarch64",
        "--profile",
        "debian-12",
    ];
    args.extend_from_slice(extra);
    args.extend(["--output", out]);
    ok(&args);
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn each_helper_is_pinned_in_the_slot_its_elf_header_names() {
    let dir = tempdir();
    let lock = lock(dir.path(), ARM_BUNDLE, true);
    let text = std::fs::read_to_string(&lock).unwrap();
    let arm = dir.path().join("cube-firstboot-aarch64");
    assert!(
        text.contains(&format!(
            "  helper:\n    name: cube-firstboot\n    url: https://github.com/TencentCloud/CubeSandbox/releases/download/{TAG}/cube-firstboot\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "  helper-aarch64:\n    name: cube-firstboot-aarch64\n    url: https://github.com/TencentCloud/CubeSandbox/releases/download/{TAG}/cube-firstboot-aarch64\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("    sha256: {}\n", sha256_hex(&arm))),
        "{text}"
    );

    // The name does not decide: an x86_64 binary called -aarch64 is the
    // x86_64 helper.
    let other = tempdir();
    let misnamed = other.path().join("cube-firstboot-aarch64");
    std::fs::copy(&release().helper, &misnamed).unwrap();
    let lock = lock_assets(other.path(), &[&misnamed]);
    let text = std::fs::read_to_string(lock).unwrap();
    assert!(
        text.contains("  helper:\n    name: cube-firstboot-aarch64\n"),
        "{text}"
    );
    assert!(!text.contains("helper-aarch64:"), "{text}");

    // Not an executable for either architecture: refused by name.
    let script = other.path().join("cube-firstboot");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let out = other.path().join("x.lock");
    let err = fails(&[
        "lock",
        "--asset",
        script.to_str().unwrap(),
        "--tag",
        TAG,
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("cube-firstboot is not an ELF executable: a helper is the static cube-firstboot that scripts/build-helper.sh builds (--arch x86_64 or aarch64)"),
        "{err}"
    );
    assert!(!out.exists());

    // An aarch64-only lock is complete for aarch64 builds: no warning.
    let arm_only = other.path().join("arm.lock");
    let said = ok_stderr(&[
        "lock",
        "--asset",
        arm.to_str().unwrap(),
        "--tag",
        TAG,
        "--output",
        arm_only.to_str().unwrap(),
    ]);
    assert!(
        said.contains("locked helper-aarch64 cube-firstboot-aarch64 ("),
        "{said}"
    );
    assert!(!said.contains("pins no helper"), "{said}");

    // Two aarch64 helpers: one per slot.
    let second = other.path().join("cube-firstboot-arm");
    std::fs::copy(&arm, &second).unwrap();
    let err = fails(&[
        "lock",
        "--asset",
        arm.to_str().unwrap(),
        "--asset",
        second.to_str().unwrap(),
        "--tag",
        TAG,
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("two helper-aarch64 assets: cube-firstboot-aarch64 and cube-firstboot-arm; lock one per kind"),
        "{err}"
    );
}

#[test]
fn an_aarch64_build_writes_profile_aarch64_with_the_aarch64_helper_and_the_arm64_bundle() {
    let dir = tempdir();
    let lock = lock(dir.path(), ARM_BUNDLE, true);
    let out = dir.path().join("out");
    let said = ok_stderr(&[
        "build",
        "--lock",
        lock.to_str().unwrap(),
        "--arch",
        "aarch64",
        "--output",
        out.to_str().unwrap(),
    ]);
    let mut dirs: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(
        dirs,
        [
            "debian-12-aarch64",
            "ubuntu-22.04-aarch64",
            "ubuntu-24.04-aarch64"
        ]
    );
    assert!(
        said.contains(&format!(
            "built {}/debian-12-aarch64/user-data (",
            out.display()
        )),
        "{said}"
    );
    let payload = out.join("debian-12-aarch64");
    let plan = json(&payload.join("plan.json"));
    assert_eq!(plan["target"]["arch"], "aarch64");
    assert_eq!(plan["target"]["profile"], "debian-12");
    assert_eq!(plan["kernel"]["kvm"], "auto");
    assert_eq!(plan["assets"]["bundle"]["name"], ARM_BUNDLE);
    assert_eq!(plan["cube"]["bundle"]["arch"], "arm64");
    assert_eq!(json(&payload.join("manifest.json"))["arch"], "aarch64");
    let doc: serde_json::Value =
        serde_yaml::from_slice(&std::fs::read(payload.join("user-data")).unwrap()).unwrap();
    let argv: Vec<&str> = doc["runcmd"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let arm = dir.path().join("cube-firstboot-aarch64");
    assert_eq!(
        argv[3..6],
        ["cube-bootstrap", "aarch64", sha256_hex(&arm).as_str()]
    );
    assert_eq!(
        argv[6],
        format!("https://github.com/TencentCloud/CubeSandbox/releases/download/{TAG}/cube-firstboot-aarch64")
    );

    // The same build again: byte-identical.
    let again = dir.path().join("again");
    build_debian_12_aarch64(&lock, &again, &[]);
    for f in ["user-data", "plan.json", "manifest.json", "SHA256SUMS"] {
        assert_eq!(
            std::fs::read(payload.join(f)).unwrap(),
            std::fs::read(again.join("debian-12-aarch64").join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn an_x86_64_build_leaves_the_arch_out_of_plan_and_manifest() {
    let rel = release();
    let dir = tempdir();
    let out = dir.path().join("out");
    ok(&[
        "build",
        "--lock",
        rel.lock.to_str().unwrap(),
        "--profile",
        "debian-12",
        "--output",
        out.to_str().unwrap(),
    ]);
    let plan = std::fs::read_to_string(out.join("debian-12/plan.json")).unwrap();
    assert!(!plan.contains("\"arch\": \"x86_64\""), "{plan}");
    let manifest = json(&out.join("debian-12/manifest.json"));
    assert!(manifest.get("arch").is_none(), "{manifest}");
    let doc: serde_json::Value =
        serde_yaml::from_slice(&std::fs::read(out.join("debian-12/user-data")).unwrap()).unwrap();
    assert_eq!(doc["runcmd"][0][4], "x86_64");
}

#[test]
fn aarch64_mismatches_are_refused_by_name_and_write_nothing() {
    let dir = tempdir();
    let arm_lock = lock(dir.path(), ARM_BUNDLE, true);
    let arm_lock = arm_lock.to_str().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let build = |lock: &str, extra: &[&str]| {
        let mut args = vec!["build", "--lock", lock, "--output", o];
        args.extend_from_slice(extra);
        fails(&args)
    };
    // PVM is x86_64 only.
    let err = build(arm_lock, &["--arch", "aarch64", "--kvm", "pvm"]);
    assert!(
        err.contains("--kvm pvm: PVM is x86_64 only, and --arch aarch64 payloads run Cube on the node's own KVM; drop --kvm pvm (aarch64 uses --kvm auto)"),
        "{err}"
    );
    // A profile that does not list aarch64.
    let err = build(arm_lock, &["--arch", "aarch64", "--profile", "rocky-9"]);
    assert!(
        err.contains("--arch aarch64: profile rocky-9 is built for x86_64 only (its `arch:` list, (built in) profiles/rocky-9.yaml)"),
        "{err}"
    );
    // The arm64 bundle on x86_64 nodes, as before.
    let err = build(arm_lock, &["--profile", "debian-12"]);
    assert!(
        err.contains(&format!("bundle {ARM_BUNDLE}: arch arm64, but profile debian-12 installs an x86_64 PVM host kernel; lock the -amd64 bundle of the same release")),
        "{err}"
    );
    // The amd64 bundle on aarch64 nodes.
    let rel = release();
    let err = build(
        rel.lock.to_str().unwrap(),
        &["--arch", "aarch64", "--profile", "debian-12"],
    );
    assert!(
        err.contains(&format!("bundle {BUNDLE}: arch amd64, but profile debian-12 is built for aarch64 nodes (--arch aarch64); lock the -arm64 bundle of the same release")),
        "{err}"
    );
    let err = fails(&[
        "check",
        "--lock",
        rel.lock.to_str().unwrap(),
        "--arch",
        "aarch64",
    ]);
    assert!(
        err.contains(&format!("bundle {BUNDLE}: arch amd64, but profile debian-12, ubuntu-22.04, ubuntu-24.04 is built for aarch64 nodes")),
        "{err}"
    );
    // No aarch64 helper pinned.
    let bare = tempdir();
    let bare_lock = lock(bare.path(), ARM_BUNDLE, false);
    let err = build(bare_lock.to_str().unwrap(), &["--arch", "aarch64"]);
    assert!(
        err.contains("no `helper-aarch64` asset pinned, but the user-data bootstrap needs one"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn an_offline_aarch64_overlay_carries_the_aarch64_helper_and_the_bundle_but_no_kernel() {
    let dir = tempdir();
    let lock = lock(dir.path(), ARM_BUNDLE, true);
    let out = dir.path().join("out");
    build_debian_12_aarch64(&lock, &out, &["--format", "overlay", "--offline"]);
    let overlay = out.join("debian-12-aarch64/overlay.tar.xz");
    let scratch = tempdir();
    sh(
        &format!(
            "tar -xJf {} -C {}",
            overlay.display(),
            scratch.path().display()
        ),
        dir.path(),
    );
    let root = scratch.path();
    assert_eq!(
        std::fs::read(root.join("usr/local/sbin/cube-firstboot")).unwrap(),
        std::fs::read(dir.path().join("cube-firstboot-aarch64")).unwrap()
    );
    let mut cached: Vec<String> = std::fs::read_dir(root.join("var/lib/cubeboot/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    cached.sort();
    assert_eq!(cached, [sha256_hex(&dir.path().join(ARM_BUNDLE))]);
}

/// The committed fixture bundle `name` (tests/fixtures/bundle/make.sh),
/// copied into `dir` as `as_name`.
fn fixture_bundle_as(dir: &Path, name: &str, as_name: &str) -> PathBuf {
    let to = dir.join(as_name);
    std::fs::copy(repo().join("tests/fixtures/bundle").join(name), &to).unwrap();
    to
}

#[test]
fn the_bundle_arch_is_read_from_its_programs_not_only_its_name() {
    let dir = tempdir();
    let arch_of = |path: &Path| {
        let out = ok(&["inspect", "--json", path.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (
            v["bundle"]["arch"].as_str().unwrap_or_default().to_string(),
            v["bundle"]["unknown"].clone(),
        )
    };
    // The arm64 fixture's programs are aarch64 ELF files.
    let arm = fixture_bundle_as(
        dir.path(),
        "cube-sandbox-one-click-v0.0.0-fixture-arm64.tar.gz",
        "cube-sandbox-one-click-v0.0.0-fixture-arm64.tar.gz",
    );
    assert_eq!(arch_of(&arm).0, "arm64");
    // Upstream's amd64 bundle has no suffix (cube-sandbox-one-click-v0.5.0.tar.gz):
    // the programs say amd64, and nothing is left unknown about the arch.
    let plain = fixture_bundle_as(
        dir.path(),
        "cube-sandbox-one-click-v0.0.0-fixture-amd64.tar.gz",
        "cube-sandbox-one-click-v0.0.0-fixture.tar.gz",
    );
    let (arch, unknown) = arch_of(&plain);
    assert_eq!(arch, "amd64");
    assert!(
        !unknown.to_string().contains("arch"),
        "arch should be known: {unknown}"
    );
    // A name its programs contradict is refused at lock time, naming a program.
    let wrong = fixture_bundle_as(
        dir.path(),
        "cube-sandbox-one-click-v0.0.0-fixture-arm64.tar.gz",
        "cube-sandbox-one-click-v0.0.0-fixture-amd64.tar.gz",
    );
    let err = fails(&[
        "lock",
        "--asset",
        wrong.to_str().unwrap(),
        "--asset",
        release().helper.to_str().unwrap(),
        "--asset",
        release().deb.to_str().unwrap(),
        "--tag",
        TAG,
        "--output",
        dir.path().join("cubeboot.lock").to_str().unwrap(),
    ]);
    assert!(
        err.contains("is named for amd64")
            && err.contains("sandbox-package.tar.gz:CubeAPI/bin/cube-api is built for aarch64"),
        "{err}"
    );
    assert!(
        !dir.path().join("cubeboot.lock").exists(),
        "no lock written"
    );
}
