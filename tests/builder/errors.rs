//! Every bad-input class of issue 2, through the CLI, with the exact message:
//! file, key path and line:column; and nothing written on failure.

use std::path::{Path, PathBuf};

use crate::support::*;

/// A copy of the repo's profiles with debian-12.yaml edited by `edit`.
fn profiles_with(dir: &Path, edit: impl Fn(&str) -> String) -> PathBuf {
    let p = dir.join("profiles");
    std::fs::create_dir_all(&p).unwrap();
    let text = std::fs::read_to_string(repo().join("profiles/debian-12.yaml")).unwrap();
    std::fs::write(p.join("debian-12.yaml"), edit(&text)).unwrap();
    p
}

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

/// The release lock, edited, written next to copies of the release assets.
fn lock_with(dir: &Path, edit: impl Fn(&str) -> String) -> (PathBuf, String) {
    let rel = release();
    for entry in std::fs::read_dir(&rel.dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let text = edit(&std::fs::read_to_string(&rel.lock).unwrap());
    let path = dir.join("cubeboot.lock");
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

fn build_fails(args: &[&str], out: &Path) -> String {
    let mut all = vec!["build", "--output", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let err = fails(&all);
    assert!(!out.exists(), "a failed build wrote {}", out.display());
    err
}

#[test]
fn malformed_profile_yaml() {
    let dir = tempdir();
    let p = profiles_with(dir.path(), |t| {
        t.replace("os-ids: [debian]", "os-ids: [debian")
    });
    let file = p.join("debian-12.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let line = line_of(&text, "version-id:");
    let err = build_fails(
        &[
            "--profiles-dir",
            p.to_str().unwrap(),
            "--lock",
            release().lock.to_str().unwrap(),
        ],
        &dir.path().join("out"),
    );
    assert_eq!(
        err.lines().take(2).collect::<Vec<_>>().join("\n"),
        format!(
            "error[$]: did not find expected ',' or ']', while parsing a flow sequence at line {} column 9\n  --> {}:{line}:11",
            line - 1,
            file.display()
        )
    );
}

#[test]
fn unknown_profile_key() {
    let dir = tempdir();
    let p = profiles_with(dir.path(), |t| t.replace("  editenv:", "  edit-env:"));
    let file = p.join("debian-12.yaml");
    let line = line_of(&std::fs::read_to_string(&file).unwrap(), "edit-env:");
    let err = fails(&["check", "--profiles-dir", p.to_str().unwrap()]);
    assert_eq!(
        err.lines().take(5).collect::<Vec<_>>().join("\n"),
        format!(
            "error[$.bootloader]: unknown field `edit-env`, expected one of `kind`, `mkconfig`, `reboot-once`, `set-default`, `editenv`, `grub-cfg`, `grubenv`, `dropin-dir`\n  --> {}:{line}:3\n   |\n{line} |   edit-env: grub-editenv\n   |   ^",
            file.display()
        )
    );
}

#[test]
fn unknown_profile_version_lists_supported() {
    let dir = tempdir();
    // debian-12 is a version 2 profile since it lists aarch64 (docs/arm64.md).
    let p = profiles_with(dir.path(), |t| {
        t.replace("\nversion: 2\n", "\nversion: 3\n")
    });
    let file = p.join("debian-12.yaml");
    let line = line_of(&std::fs::read_to_string(&file).unwrap(), "version: 3");
    let err = fails(&["profiles", "--profiles-dir", p.to_str().unwrap()]);
    assert_eq!(
        err.lines().take(2).collect::<Vec<_>>().join("\n"),
        format!(
            "error[$.version]: unsupported profile version 3; supported profile versions: 1, 2\n  --> {}:{line}:1",
            file.display()
        )
    );
}

#[test]
fn wrong_length_digest_in_lock() {
    let dir = tempdir();
    let bundle_sha = sha256_hex(&release().bundle);
    let (lock, text) = lock_with(dir.path(), |t| t.replace(&bundle_sha, "abc123"));
    let line = line_of(&text, "sha256: abc123");
    let err = build_fails(&["--lock", lock.to_str().unwrap()], &dir.path().join("out"));
    assert_eq!(
        err.lines().take(2).collect::<Vec<_>>().join("\n"),
        format!(
            "error[$.assets.bundle.sha256]: expected 64 hex digits, got 6 characters: \"abc123\"\n  --> {}:{line}:13",
            lock.display()
        )
    );
}

#[test]
fn malformed_lock_yaml() {
    let dir = tempdir();
    let (lock, text) = lock_with(dir.path(), |t| {
        t.replacen("  bundle:\n", "  bundle:\n   bad\n", 1)
    });
    let err = fails(&["check", "--lock", lock.to_str().unwrap()]);
    // libyaml sees `bad` as the start of a scalar and trips on the next
    // line's `name:`; that is where it points.
    let line = line_of(&text, "   bad") + 1;
    assert_eq!(
        err.lines().take(2).collect::<Vec<_>>().join("\n"),
        format!(
            "error[$]: mapping values are not allowed in this context\n  --> {}:{line}:9",
            lock.display()
        )
    );
}

#[test]
fn non_https_url_without_pinned_hash_in_lock() {
    let dir = tempdir();
    let helper_sha = sha256_hex(&release().helper);
    let (lock, text) = lock_with(dir.path(), |t| {
        t.replace(&format!("    sha256: {helper_sha}\n"), "")
            .replace(
                "    url: https://github.com/TencentCloud/CubeSandbox/releases/download/v0.0.0-test/cube-firstboot",
                "    url: http://203.0.113.7/cube-firstboot",
            )
    });
    let line = line_of(&text, "url: http://203.0.113.7/");
    let err = build_fails(&["--lock", lock.to_str().unwrap()], &dir.path().join("out"));
    assert_eq!(
        err.lines().take(2).collect::<Vec<_>>().join("\n"),
        format!(
            "error[$.assets.helper.url]: non-https URL http://203.0.113.7/cube-firstboot without a pinned sha256: anyone on the path could swap the bytes; add `sha256:` (run `cubeboot lock`)\n  --> {}:{line}:5",
            lock.display()
        )
    );
}

#[test]
fn asset_whose_sha256_differs_from_the_lock() {
    let dir = tempdir();
    let (lock, text) = lock_with(dir.path(), |t| t.to_string());
    let helper = dir.path().join("cube-firstboot");
    let expected = sha256_hex(&helper);
    std::fs::write(&helper, b"tampered").unwrap();
    let computed = sha256_hex(&helper);
    let line = line_of(&text, &format!("sha256: {expected}"));
    let want = format!(
        "error[$.assets.helper.sha256]: {} has sha256 {computed}, but the lock pins {expected}\n  --> {}:{line}:5",
        helper.display(),
        lock.display()
    );
    // Embedding refuses it…
    let err = build_fails(
        &[
            "--lock",
            lock.to_str().unwrap(),
            "--embed-helper",
            "--cloud",
            "gcp",
        ],
        &dir.path().join("out"),
    );
    assert_eq!(err.lines().take(2).collect::<Vec<_>>().join("\n"), want);
    // …and check finds it.
    let err = fails(&["check", "--lock", lock.to_str().unwrap()]);
    assert_eq!(err.lines().take(2).collect::<Vec<_>>().join("\n"), want);
}

#[test]
fn compute_role_without_control_plane_ip() {
    let dir = tempdir();
    let err = build_fails(
        &[
            "--lock",
            release().lock.to_str().unwrap(),
            "--role",
            "compute",
        ],
        &dir.path().join("out"),
    );
    assert_eq!(
        err.trim_end(),
        "error: --role compute needs --control-plane-ip IP: a compute node joins an existing control plane (ONE_CLICK_CONTROL_PLANE_IP)"
    );
}

#[test]
fn unknown_profile_name_lists_the_available_ones() {
    let dir = tempdir();
    let err = build_fails(
        &[
            "--lock",
            release().lock.to_str().unwrap(),
            "--profile",
            "debian-11",
        ],
        &dir.path().join("out"),
    );
    assert_eq!(
        err.trim_end(),
        "error: no profile named \"debian-11\" in the built-in profiles; available: all, almalinux-9, centos-stream-9, debian-12, debian-13, opencloudos-9, rocky-9, tencentos-4, ubuntu-22.04, ubuntu-24.04"
    );
}

#[test]
fn repo_profiles_pass_strict_check() {
    assert_eq!(
        ok_stderr(&["check", "--strict"]),
        "checked 9 valid profiles in the built-in profiles: 0 errors, 0 warnings\n"
    );
    let listing = ok(&["profiles"]);
    assert_eq!(listing.lines().count(), 10);
    assert!(
        listing.contains("\nopencloudos-9    rpm  bls-grubby     OpenCloudOS 9\n"),
        "{listing}"
    );
}

fn profile_build_fails(p: &Path, dir: &Path) -> String {
    build_fails(
        &[
            "--profiles-dir",
            p.to_str().unwrap(),
            "--lock",
            release().lock.to_str().unwrap(),
        ],
        &dir.join("out"),
    )
}

/// Deep flow nesting made serde_yaml quadratic (100,000 `[` took 31 s); it
/// is refused before parsing, at the bracket that crosses the limit.
#[test]
fn deeply_nested_profile_yaml_is_refused_before_parsing() {
    let dir = tempdir();
    let n = 20_000;
    let p = profiles_with(dir.path(), |t| {
        format!("{t}nested: {}{}\n", "[".repeat(n), "]".repeat(n))
    });
    let file = p.join("debian-12.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let line = line_of(&text, "nested: [");
    let err = profile_build_fails(&p, dir.path());
    // `nested:` is one level; the 64th bracket is the 65th level.
    let col = "nested: ".len() + 64;
    assert!(
        err.starts_with(&format!(
            "error[$]: YAML nested deeper than 64 levels\n  --> {}:{line}:{col}\n",
            file.display()
        )),
        "{}",
        &err[..err.len().min(2000)]
    );
    // The 40,000-character source line is shown cut around the column.
    assert!(err.len() < 2000, "{} bytes of error", err.len());
}

/// Documents over 1 MiB are refused before parsing, at the line where the
/// limit is crossed, having read no further (so the size is not known).
#[test]
fn oversized_profile_yaml_is_refused_before_parsing() {
    let dir = tempdir();
    let p = profiles_with(dir.path(), |t| {
        format!(
            "{t}{}",
            "# padding padding padding padding\n".repeat(40_000)
        )
    });
    let file = p.join("debian-12.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut line = 0;
    let mut seen = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        seen += l.len();
        if seen > 1 << 20 {
            line = i + 1;
            break;
        }
    }
    let err = profile_build_fails(&p, dir.path());
    assert!(
        err.starts_with(&format!(
            "error[$]: YAML document is more than the 1 MiB limit (not read past it)\n  --> {}:{line}:1\n",
            file.display()
        )),
        "{err}"
    );
}

/// A long value (900 KB) a type refuses is quoted cut, not whole: the error
/// used to print it twice (message and source line).
#[test]
fn long_values_are_cut_in_error_messages() {
    let dir = tempdir();
    let long = "x".repeat(900_000);
    let p = profiles_with(dir.path(), |t| {
        t.replace("family: deb", &format!("family: {long}"))
    });
    let file = p.join("debian-12.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let line = line_of(&text, "family: xxx");
    let err = profile_build_fails(&p, dir.path());
    assert!(err.len() < 4096, "{} bytes of error", err.len());
    assert!(
        err.starts_with("error[$.family]: unknown variant `xxxx"),
        "{err}"
    );
    assert!(err.contains("bytes cut"), "{err}");
    assert!(
        err.contains(&format!("--> {}:{line}:9", file.display())),
        "{err}"
    );
}

/// Issue 21 item 3: a list that fits x86's 2,047 bytes alone but not with
/// what the build knows the kernel is handed too (the image path and the
/// trial boot's `panic=`) is refused, naming the length and the limit.
#[test]
fn boot_params_over_the_command_line_limit_with_the_image_path() {
    let rel = release();
    let out = tempdir();
    let list = format!("nopti x={}", "a".repeat(2030));
    assert_eq!(list.len(), 2038);
    let err = build_fails(
        &[
            "--lock",
            rel.lock.to_str().unwrap(),
            "--profile",
            "debian-12",
            "--boot-params",
            &list,
        ],
        &out.path().join("payload"),
    );
    let line = 2038 + format!("BOOT_IMAGE=/boot/vmlinuz-{KVER}  panic=30").len();
    assert!(
        err.contains(&format!(
            "the kernel command line would be {line} bytes, over x86's 2047-byte limit by {}",
            line - 2047
        )),
        "{err}"
    );
}

/// Issue 21 item 7: a key given twice (`version:` at the top of a lock, a
/// field of an asset, a key of a profile) used to be last-wins; it is
/// refused, naming both lines.
#[test]
fn duplicate_keys_are_refused_naming_both_lines() {
    let dir = tempdir();
    let (lock, text) = lock_with(dir.path(), |t| {
        t.replacen("version: 1\n", "version: 1\nversion: 2\n", 1)
    });
    let first = line_of(&text, "version: 1");
    let err = fails(&["check", "--lock", lock.to_str().unwrap()]);
    assert_eq!(
        err.lines().take(2).collect::<Vec<_>>().join("\n"),
        format!(
            "error[$]: duplicate key `version` at lines {first} and {}: YAML would keep only the second; remove one\n  --> {}:{}:1",
            first + 1,
            lock.display(),
            first + 1
        )
    );
    // Nested: an asset's size given twice.
    let (lock, text) = lock_with(dir.path(), |t| {
        t.replacen("    size: ", "    size: 1\n    size: ", 1)
    });
    let first = line_of(&text, "    size: 1");
    let err = fails(&["check", "--lock", lock.to_str().unwrap()]);
    assert!(
        err.contains(&format!(
            "duplicate key `size` at lines {first} and {}",
            first + 1
        )),
        "{err}"
    );
    // A profile.
    let p = profiles_with(dir.path(), |t| {
        t.replacen("family: deb\n", "family: deb\nfamily: rpm\n", 1)
    });
    let text = std::fs::read_to_string(p.join("debian-12.yaml")).unwrap();
    let first = line_of(&text, "family: deb");
    let err = profile_build_fails(&p, dir.path());
    assert!(
        err.contains(&format!(
            "duplicate key `family` at lines {first} and {}",
            first + 1
        )),
        "{err}"
    );
}
