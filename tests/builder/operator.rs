//! What an operator meets between `lock` and `build` (issue 22 §4): a
//! strict check for a one-distro fleet, a lock without the helper, and an
//! image overlay asked to fit a cloud's user-data budget.

use std::path::PathBuf;

use crate::support::*;

/// A lock of the test release without the rpm kernel (a Debian-only fleet).
fn deb_only_lock(dir: &std::path::Path) -> PathBuf {
    let rel = release();
    lock_assets(dir, &[&rel.deb, &rel.bundle, &rel.helper])
}

#[test]
fn strict_check_of_a_one_distro_fleet_checks_only_its_profile() {
    let dir = tempdir();
    let lock = deb_only_lock(dir.path());
    let lock = lock.to_str().unwrap();
    // Every profile: the rpm ones cannot be built, which --strict refuses.
    let err = fails(&["check", "--strict", "--lock", lock]);
    assert!(
        err.contains("profile rocky-9 cannot be built from this lock"),
        "{err}"
    );
    // The fleet's one profile: nothing to warn about.
    assert_eq!(
        ok_stderr(&["check", "--strict", "--lock", lock, "--profile", "debian-12"]),
        format!("checked profile debian-12 of 9 valid profiles in the built-in profiles and {lock}: 0 errors, 0 warnings\n")
    );
    // An rpm profile of that lock still fails, and a typo is named.
    let err = fails(&["check", "--strict", "--lock", lock, "--profile", "rocky-9"]);
    assert!(err.contains("no `kernel-rpm` asset"), "{err}");
    let err = fails(&["check", "--lock", lock, "--profile", "debain-12"]);
    assert!(
        err.contains(
            "no profile named \"debain-12\" in the built-in profiles; available: all, almalinux-9,"
        ),
        "{err}"
    );
}

#[test]
fn lock_without_the_helper_warns_when_locking() {
    let rel = release();
    let dir = tempdir();
    let lock = dir.path().join("cubeboot.lock");
    let out = cubeboot(&[
        "lock",
        "--asset",
        rel.deb.to_str().unwrap(),
        "--asset",
        rel.bundle.to_str().unwrap(),
        "--tag",
        TAG,
        "--output",
        lock.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "warning: {} pins no helper (cube-firstboot): `cubeboot build` will refuse it; lock again with --asset PATH/cube-firstboot (scripts/build-helper.sh builds it)\n",
            lock.display()
        )),
        "{stderr}"
    );
    // With the helper: no such warning.
    let dir2 = tempdir();
    let out = cubeboot(&[
        "lock",
        "--asset",
        rel.helper.to_str().unwrap(),
        "--asset",
        rel.bundle.to_str().unwrap(),
        "--tag",
        TAG,
        "--output",
        dir2.path().join("l").to_str().unwrap(),
    ]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("pins no helper"));
}

#[test]
fn overlay_with_a_cloud_says_the_budget_does_not_apply() {
    let rel = release();
    let dir = tempdir();
    let build = |extra: &[&str]| {
        let out = dir.path().join(format!("o{}", extra.len()));
        let mut args = vec![
            "build",
            "--lock",
            rel.lock.to_str().unwrap(),
            "--profile",
            "debian-12",
            "--format",
            "overlay",
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = cubeboot(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let note = "note: --cloud aws: an image overlay is not user-data, so no user-data budget applies to it\n";
    assert!(build(&["--cloud", "aws"]).contains(note));
    // Not asked for, not mentioned.
    assert!(!build(&[]).contains("--cloud"));
}
