//! What a kernel package's payload may hold, judged entry by entry at lock
//! time (issue 21 item 4): the files of a kernel (under /boot, the module
//! tree, documentation) as plain files, directories and links that stay
//! inside the package. Paths that climb out (`..`) or start at `/`,
//! setuid/setgid bits, device nodes and FIFOs, hard links to files the
//! package does not carry, and symlinks leading out of the tree it
//! installs (`./lib/modules -> /`) are refused, naming the entry, so the
//! failure happens on the operator's machine and not at first boot.

use std::collections::BTreeSet;

use anyhow::{bail, Result};

/// The kind of one payload entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    Device,
    Fifo,
    Socket,
}

impl Kind {
    /// From the file-type bits of a Unix mode (`S_IFMT`), as cpio stores it.
    pub(super) fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & 0o170000 {
            0o100000 => Self::File,
            0o040000 => Self::Dir,
            0o120000 => Self::Symlink,
            0o020000 | 0o060000 => Self::Device,
            0o010000 => Self::Fifo,
            0o140000 => Self::Socket,
            _ => return None,
        })
    }
}

/// Absolute link targets a kernel package may carry: into its own trees
/// (`/lib/modules/KVER/build -> /usr/src/linux-headers-KVER`).
const LINK_PREFIXES: &[&str] = &["/boot/", "/lib/modules/", "/usr/lib/modules/", "/usr/src/"];

/// The payload entries seen so far, to judge hard links and paths that
/// pass through a link.
#[derive(Default)]
pub(super) struct Entries {
    files: BTreeSet<String>,
    links: BTreeSet<String>,
}

impl Entries {
    /// Judge one entry of `member` (`data.tar.xz`, `the rpm payload`).
    pub(super) fn check(
        &mut self,
        member: &str,
        raw: &str,
        kind: Kind,
        mode: u32,
        link: Option<&str>,
    ) -> Result<()> {
        let refuse = |why: String| -> Result<()> {
            bail!("{member} holds {raw:?}, {why}: a kernel package never does; refusing to pin it")
        };
        if raw.starts_with('/') {
            return refuse("an absolute path".into());
        }
        let path = normal(raw);
        if path.split('/').any(|c| c == "..") {
            return refuse("a path that climbs out of the root (`..`)".into());
        }
        match kind {
            Kind::Device => return refuse("a device node".into()),
            Kind::Fifo => return refuse("a FIFO".into()),
            Kind::Socket => return refuse("a socket".into()),
            _ => {}
        }
        if mode & 0o6000 != 0 && kind != Kind::Symlink {
            return refuse(format!("a setuid/setgid {:04o} file", mode & 0o7777));
        }
        if let Some(through) = self
            .links
            .iter()
            .find(|l| path.starts_with(&format!("{l}/")))
        {
            return refuse(format!("a path through the package's own link {through:?}"));
        }
        match (kind, link) {
            (Kind::HardLink, Some(target)) => {
                let target_path = normal(target);
                if target.starts_with('/')
                    || target_path.split('/').any(|c| c == "..")
                    || !self.files.contains(&target_path)
                {
                    return refuse(format!(
                        "a hard link to {target:?}, which is not a file earlier in the package"
                    ));
                }
            }
            (Kind::Symlink, Some(target)) => {
                if !link_stays_inside(&path, target) {
                    return refuse(format!(
                        "a symlink to {target:?}, out of the kernel's trees"
                    ));
                }
                self.links.insert(path.clone());
            }
            _ => {}
        }
        if kind == Kind::File {
            self.files.insert(path);
        }
        Ok(())
    }
}

/// `./a/b/` and `a/b` alike.
fn normal(raw: &str) -> String {
    raw.trim_start_matches("./")
        .trim_end_matches('/')
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// A symlink at `path` pointing to `target` stays inside: an absolute
/// target lies under [`LINK_PREFIXES`]; a relative one, resolved from the
/// link's directory, never climbs above the root.
fn link_stays_inside(path: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return LINK_PREFIXES.iter().any(|p| target.starts_with(p));
    }
    let mut depth = path.split('/').count() as i64 - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_links_may_not_climb_above_the_root() {
        assert!(link_stays_inside(
            "lib/modules/k/build",
            "../../../usr/src/k"
        ));
        assert!(!link_stays_inside("boot/up", "../../.."));
        assert!(!link_stays_inside("lib/modules", "/"));
        assert!(link_stays_inside(
            "lib/modules/k/source",
            "/usr/src/linux-k"
        ));
    }
}
