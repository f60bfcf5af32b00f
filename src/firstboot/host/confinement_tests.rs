//! Issue 21 item 1: no write the seam makes follows a path out of the
//! root. Each kind of write meets a link planted by whoever prepared the
//! image (absolute and relative), and the directory outside must come out
//! byte for byte and mode for mode as it went in.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::{Host, RealHost, ScriptedHost};

/// Every entry under `dir`: kind, mode and content (or link target).
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", m.permissions().mode() & 0o7777)
            } else {
                format!(
                    "file {:o} {:?}",
                    m.permissions().mode() & 0o7777,
                    fs::read(&p).unwrap()
                )
            };
            out.insert(p.strip_prefix(dir).unwrap().display().to_string(), what);
        }
    }
    out
}

struct Planted {
    root: tempfile::TempDir,
    outside: tempfile::TempDir,
}

impl Planted {
    /// A root whose `/d` is a link to a directory outside it (absolute when
    /// `absolute`, else `../../…` climbing out), whose `/f` links to a file
    /// outside, and an outside directory holding `x` (0644) and `sub/`.
    fn new(absolute: bool) -> Self {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("x"), b"outside").unwrap();
        fs::set_permissions(outside.path().join("x"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir(outside.path().join("sub")).unwrap();
        let to = |name: &str| {
            if absolute {
                outside.path().join(name)
            } else {
                let depth = root.path().components().count();
                let mut p = std::path::PathBuf::new();
                for _ in 0..depth {
                    p.push("..");
                }
                p.join(outside.path().strip_prefix("/").unwrap()).join(name)
            }
        };
        symlink(to(""), root.path().join("d")).unwrap();
        symlink(to("x"), root.path().join("f")).unwrap();
        fs::write(root.path().join("inside"), b"in").unwrap();
        Self { root, outside }
    }
}

fn hosts(root: &Path) -> Vec<Box<dyn Host>> {
    vec![
        Box::new(RealHost::new(root)),
        Box::new(ScriptedHost::new(root)),
    ]
}

/// Run `write` on every host against both kinds of planted link; the
/// outside directory must not change, whatever `write` returned.
fn holds(what: &str, write: impl Fn(&dyn Host)) {
    for absolute in [true, false] {
        for i in 0..2 {
            let p = Planted::new(absolute);
            let before = snapshot(p.outside.path());
            let hosts = hosts(p.root.path());
            write(hosts[i].as_ref());
            assert_eq!(
                snapshot(p.outside.path()),
                before,
                "{what} (absolute link: {absolute}, host {i}) changed a file outside the root"
            );
        }
    }
}

#[test]
fn create_does_not_write_through_a_planted_link() {
    holds("create", |h| {
        if let Ok(mut w) = h.create("/f", 0o600) {
            let _ = w.write_all(b"hostile");
        }
        if let Ok(mut w) = h.create("/d/new", 0o600) {
            let _ = w.write_all(b"hostile");
        }
    });
}

#[test]
fn append_does_not_write_through_a_planted_link() {
    holds("append", |h| {
        if let Ok(mut w) = h.append("/f") {
            let _ = w.write_all(b"hostile");
        }
        if let Ok(mut w) = h.append("/d/x") {
            let _ = w.write_all(b"hostile");
        }
    });
}

#[test]
fn write_atomic_and_write_in_place_do_not_follow_a_planted_link() {
    holds("write_atomic", |h| {
        let _ = h.write_atomic("/d/x", b"hostile", 0o600);
        let _ = h.write_atomic("/d/sub/y", b"hostile", 0o600);
        let _ = h.write_in_place("/f", b"hostile");
        let _ = h.write_in_place("/d/x", b"hostile");
    });
}

#[test]
fn mkdir_chmod_and_links_do_not_follow_a_planted_link() {
    holds("create_dir_all", |h| {
        let _ = h.create_dir_all("/d/made/deeper");
    });
    holds("set_mode", |h| {
        let _ = h.set_mode("/f", 0o4777);
        let _ = h.set_mode("/d/x", 0o4777);
        let _ = h.set_mode("/d", 0o700);
    });
    holds("symlink", |h| {
        let _ = h.symlink("/etc/passwd", "/d/l");
    });
    holds("hard_link", |h| {
        let _ = h.hard_link("/inside", "/d/linked");
    });
}

#[test]
fn rename_and_remove_do_not_follow_a_planted_link() {
    holds("rename", |h| {
        let _ = h.rename("/inside", "/d/moved");
        let _ = h.rename("/d/x", "/stolen");
    });
    holds("remove", |h| {
        let _ = h.remove_file("/d/x");
        let _ = h.remove_dir_all("/d/sub");
    });
}

#[test]
fn a_write_to_a_planted_final_link_replaces_the_link_or_is_refused() {
    // `create` and `write_atomic` put a file where the link was (as a
    // rename over it would); the link's old target is untouched.
    let p = Planted::new(true);
    let host = RealHost::new(p.root.path());
    host.create("/f", 0o600).unwrap().write_all(b"new").unwrap();
    let m = fs::symlink_metadata(p.root.path().join("f")).unwrap();
    assert!(m.is_file(), "the link is still there");
    assert_eq!(fs::read(p.root.path().join("f")).unwrap(), b"new");
    // `append` to a link is refused, naming the path.
    symlink(p.outside.path().join("x"), p.root.path().join("g")).unwrap();
    let err = host.append("/g").err().expect("appending through a link");
    assert!(
        format!("{err:#}").contains("/g") && format!("{err:#}").contains("symbolic link"),
        "{err:#}"
    );
}

#[test]
fn links_inside_the_root_resolve_as_under_chroot() {
    // Images carry absolute links (`/var/run -> /run`): inside the root they
    // mean the root's own directory, as they will after the first boot.
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("cubeboot-target/run")).unwrap();
    fs::create_dir_all(root.path().join("var")).unwrap();
    symlink("/cubeboot-target/run", root.path().join("var/run")).unwrap();
    let host = RealHost::new(root.path());
    host.write_atomic("/var/run/x", b"one", 0o644).unwrap();
    assert_eq!(
        fs::read(root.path().join("cubeboot-target/run/x")).unwrap(),
        b"one"
    );
    assert_eq!(host.read("/var/run/x").unwrap(), b"one");
    // A link climbing above the root stops at the root, as `..` does at `/`.
    symlink("../../../../../../cubeboot-target", root.path().join("up")).unwrap();
    host.create_dir_all("/up/made").unwrap();
    assert!(root.path().join("cubeboot-target/made").is_dir());
}

/// Issue 21 item 2: a status file (or any text the helper reads whole)
/// that is a FIFO is read no further than the limit.
#[test]
fn a_text_file_that_is_a_fifo_is_read_no_further_than_the_limit() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("var/lib/cubeboot")).unwrap();
    let fed =
        crate::bounded_read::feed_fifo(&root.path().join("var/lib/cubeboot/status.json"), 64 << 20);
    let host = RealHost::new(root.path());
    let err = host
        .read_optional("/var/lib/cubeboot/status.json")
        .unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "reading /var/lib/cubeboot/status.json: larger than the limit of 16 MiB; not read further"
    );
    fed.assert_stopped_early(super::TEXT_LIMIT + (2 << 20));
}
