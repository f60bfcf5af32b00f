//! The README opens with two commands; the first must work as written on a
//! fresh clone. `cargo run --release --` is replaced by the binary cargo
//! built for this test run (a nested release build would take minutes); the
//! arguments are run exactly as the README gives them, from the repo root.

use crate::support::*;

#[test]
fn readme_first_command_builds_every_profile() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README has a ```sh block");
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
