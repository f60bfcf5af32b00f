//! The README opens with two commands; the first must work as written on a
//! fresh clone. `cargo run --release --` is replaced by the binary cargo
//! built for this test run (a nested release build would take minutes); the
//! arguments are run exactly as the README gives them, from the repo root.

use crate::support::*;

fn first_sh_block(markdown: &str) -> Option<&str> {
    markdown
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
}

#[test]
fn readme_first_command_builds_every_profile() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let block = first_sh_block(&readme).expect("README has a ```sh block");
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        2,
        "the README opens with exactly two commands: {lines:?}"
    );
    assert_eq!(lines[1], "cargo test");
    let args = lines[0]
        .strip_prefix("cargo run --release -- ")
        .expect("the first command is `cargo run --release -- …`");
    let args: Vec<&str> = args.split_whitespace().collect();
    let stdout = ok(&args);
    let _ = stdout;
    for p in crate::build::PROFILES {
        let ud = repo().join("out").join(p).join("user-data");
        let text = std::fs::read_to_string(&ud).unwrap();
        assert!(text.starts_with("#cloud-config\n"), "{}", ud.display());
    }
    // And the example lock itself passes the strict checker.
    ok(&[
        "check",
        "--strict",
        "--lock",
        "examples/release/cubeboot.lock",
    ]);
}

/// The README's install step. Running `cargo install` itself here would
/// rebuild the crate over the binaries the other tests are running (its
/// build and the test build invalidate each other), so this checks what
/// makes it work: cargo accepts every flag, `--locked` holds (Cargo.lock is
/// current, checked offline), the package installs both binaries, and the
/// built `cubeboot` works outside the repository.
#[test]
fn readme_install_step_installs_a_working_cubeboot() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("\n## Installing cubeboot\n")
        .nth(1)
        .expect("README has a `## Installing cubeboot` section");
    let block = first_sh_block(section).expect("the install section has a ```sh block");
    let install = block
        .lines()
        .find(|l| l.starts_with("cargo install "))
        .expect("the install block runs `cargo install`");
    assert_eq!(install, "cargo install --locked --path .");
    let cargo = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO"))
            .args(args)
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let help = cargo(&["install", "--help"]);
    for flag in install.split_whitespace().filter(|w| w.starts_with("--")) {
        assert!(
            help.contains(&format!("{flag} ")),
            "cargo install has no {flag}"
        );
    }
    let meta: serde_json::Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--locked",
        "--offline",
        "--no-deps",
        "--format-version",
        "1",
    ]))
    .unwrap();
    let mut bins: Vec<&str> = meta["packages"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"][0] == "bin")
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    bins.sort();
    assert_eq!(bins, ["cube-firstboot", "cubeboot"]);
    let elsewhere = tempdir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cubeboot"))
        .arg("profiles")
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ubuntu-24.04"));
}
