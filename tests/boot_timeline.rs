//! docs/boot-timeline.svg is what scripts/boot-timeline.py draws from the
//! checked-in marks (docs/boot-timeline.txt), and docs/boot-timeline.md
//! quotes the helper's console lines as the code prints them.

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_checked_in_picture_is_what_the_script_draws() {
    let out = Command::new("python3")
        .arg(repo().join("scripts/boot-timeline.py"))
        .arg(repo().join("docs/boot-timeline.txt"))
        .output()
        .expect("python3 runs scripts/boot-timeline.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read(repo().join("docs/boot-timeline.svg")).unwrap();
    assert!(
        out.stdout == svg,
        "docs/boot-timeline.svg is stale: regenerate it with scripts/boot-timeline.py docs/boot-timeline.txt"
    );
}

#[test]
fn the_timeline_quotes_what_the_helper_prints() {
    let doc = std::fs::read_to_string(repo().join("docs/boot-timeline.md")).unwrap();
    let mut sources = String::new();
    for dir in ["src/firstboot", "src/builder", "src/bin"] {
        collect(&repo().join(dir), &mut sources);
    }
    // (as the doc shows it, as the source writes it)
    for (shown, printed) in [
        (
            "cloud-init finished this boot; Cube Sandbox setup state: cube-firstboot status",
            "cloud-init finished this boot; Cube Sandbox setup state: cube-firstboot status",
        ),
        (
            "trial boot of the PVM kernel",
            "trial boot of the PVM kernel",
        ),
        ("rebooting now", "rebooting now"),
        (
            "kvm_pvm loaded; /dev/kvm answers API version 12",
            "{MODULE} loaded; {DEV_KVM} answers API version {KVM_API_VERSION}",
        ),
    ] {
        assert!(doc.contains(shown), "the doc no longer quotes {shown:?}");
        assert!(
            sources.contains(printed),
            "{shown:?} is quoted in docs/boot-timeline.md but printed nowhere in src/"
        );
    }
}

fn collect(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&p).unwrap());
        }
    }
}
