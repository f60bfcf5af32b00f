//! Completions and man pages (issue 22 §5): values complete for --cloud and
//! --profile; every page has EXAMPLES, EXIT STATUS and FILES; the README's
//! one install command writes every per-verb page.

use crate::support::*;

#[test]
fn bash_completes_cloud_and_profile_values() {
    let script = ok(&["completions", "bash"]);
    // bash completion lists each option's values after the option's name.
    let values_of = |opt: &str| -> String {
        let case = format!("{opt})\n");
        let at = script
            .match_indices(&case)
            .map(|(i, _)| i)
            .find(|&i| script[i..].contains("compgen -W"))
            .unwrap_or_else(|| panic!("no completion case for {opt}"));
        let rest = &script[at..];
        let line = rest.lines().find(|l| l.contains("compgen -W")).unwrap();
        line.to_string()
    };
    let cloud = values_of("--cloud");
    for c in ["aws", "gcp", "tencent", "none"] {
        assert!(cloud.contains(c), "--cloud: {cloud}");
    }
    let profile = values_of("--profile");
    for p in ["all", "debian-12", "opencloudos-9", "ubuntu-24.04"] {
        assert!(profile.contains(p), "--profile: {profile}");
    }
    // The list only helps: a profile from --profiles-dir is still accepted.
    let err = fails(&[
        "build",
        "--profile",
        "my-own-distro",
        "--lock",
        "/nonexistent",
    ]);
    assert!(!err.contains("invalid value"), "{err}");
}

#[test]
fn readme_man_install_writes_every_page_with_examples_exit_status_files() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.trim_start().starts_with("cubeboot man --to "))
        .expect("README says how to install the man pages");
    let dir = tempdir();
    let mut args: Vec<&str> = line.split_whitespace().skip(1).collect();
    assert_eq!(args, ["man", "--to", "/usr/local/share/man/man1"]);
    let to = dir.path().join("man1");
    args[2] = to.to_str().unwrap();
    ok(&args);
    let mut pages: Vec<String> = std::fs::read_dir(&to)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    assert_eq!(
        pages,
        [
            "cubeboot-build.1",
            "cubeboot-check.1",
            "cubeboot-completions.1",
            "cubeboot-inspect.1",
            "cubeboot-lock.1",
            "cubeboot-man.1",
            "cubeboot-mirror.1",
            "cubeboot-profiles.1",
            "cubeboot-watch.1",
            "cubeboot.1",
        ]
    );
    for page in &pages {
        let roff = std::fs::read_to_string(to.join(page)).unwrap();
        // watch's exit codes are documented by its own owner (issue 22 §2).
        let sections: &[&str] = if page == "cubeboot-watch.1" {
            &[".SH EXAMPLES", ".SH FILES"]
        } else {
            &[".SH EXAMPLES", ".SH \"EXIT STATUS\"", ".SH FILES"]
        };
        for s in sections {
            assert!(roff.contains(s), "{page} has no {s}");
        }
        // Sections come before VERSION, in the usual order.
        let version = roff.find(".SH VERSION").unwrap_or(roff.len());
        assert!(roff.find(".SH EXAMPLES").unwrap() < version, "{page}");
    }
    let build = std::fs::read_to_string(to.join("cubeboot-build.1")).unwrap();
    assert!(
        build.contains(
            "cubeboot build \\-\\-lock cubeboot.lock \\-\\-profile ubuntu\\-24.04 \\-\\-cloud aws"
        ),
        "{build}"
    );
    // The stdout page is the top one with the same sections.
    let top = ok(&["man"]);
    assert_eq!(top, std::fs::read_to_string(to.join("cubeboot.1")).unwrap());
}
