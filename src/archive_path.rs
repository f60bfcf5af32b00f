//! Archive member names and link targets, checked one way for both houses:
//! the builder's overlay reader and the helper's bundle extraction. Nothing
//! an archive names may land or point outside the directory it is unpacked
//! in (after `coreos/coreos-installer: src/live/mod.rs`, "path contains path
//! traversal").

use std::collections::BTreeMap;
use std::path::{Component, Path};

/// Why a member name is refused. The text follows the member name in
/// messages: `entry "../x" contains path traversal (..); refusing it`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArchivePathError {
    #[error("has an absolute path; refusing it")]
    Absolute,
    #[error("contains path traversal (..); refusing it")]
    Traversal,
}

/// The normal components of a member name: `./a//b/` is `[a, b]`, `./` is
/// `[]`; absolute names and `..` are refused.
pub fn normal_parts(raw: &Path) -> Result<Vec<String>, ArchivePathError> {
    let mut out = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err(ArchivePathError::Traversal),
            Component::RootDir | Component::Prefix(_) => return Err(ArchivePathError::Absolute),
        }
    }
    Ok(out)
}

/// The symlinks an extraction has made so far. Link targets are resolved
/// the way the kernel will: each component that is itself a link is
/// replaced by where that link leads before `..` applies, so `b/c -> ..`
/// followed by `b/e -> c/../..` is seen to climb above the root.
#[derive(Debug, Default)]
pub struct Links {
    /// Link path (components) -> target as written in the archive.
    links: BTreeMap<Vec<String>, String>,
}

/// Symlinks inside symlinks beyond this are a loop (Linux stops at 40).
const MAX_HOPS: usize = 40;

impl Links {
    /// Record the symlink at `at` with target `target`, unless the target,
    /// followed through every link recorded so far, leaves the root; then
    /// check every earlier link again, since the new one may lie on their
    /// way. Returns the offending link (path, target) on refusal.
    pub fn add(&mut self, at: &[String], target: &str) -> Result<(), (Vec<String>, String)> {
        self.links.insert(at.to_vec(), target.to_string());
        if self.resolve_link(at, target, 0).is_none() {
            self.links.remove(at);
            return Err((at.to_vec(), target.to_string()));
        }
        for (p, t) in &self.links {
            if self.resolve_link(p, t, 0).is_none() {
                let found = (p.clone(), t.clone());
                self.links.remove(at);
                return Err(found);
            }
        }
        Ok(())
    }

    /// Whether `parts` is a recorded link.
    pub fn is_link(&self, parts: &[String]) -> bool {
        self.links.contains_key(parts)
    }

    /// The first recorded link among the parent directories of `parts`:
    /// an entry beneath it would be written through the link.
    pub fn link_on_the_way(&self, parts: &[String]) -> Option<Vec<String>> {
        (1..parts.len())
            .map(|n| &parts[..n])
            .find(|p| self.links.contains_key(*p))
            .map(<[String]>::to_vec)
    }

    /// Where the link at `at` with `target` leads, as components under the
    /// root; `None` when it leaves the root (or loops).
    fn resolve_link(&self, at: &[String], target: &str, hops: usize) -> Option<Vec<String>> {
        if hops > MAX_HOPS || target.starts_with('/') {
            return None;
        }
        let mut cur: Vec<String> = at[..at.len().saturating_sub(1)].to_vec();
        for c in Path::new(target).components() {
            match c {
                Component::Normal(p) => {
                    cur.push(p.to_string_lossy().into_owned());
                    if let Some(t) = self.links.get(&cur) {
                        cur = self.resolve_link(&cur, t, hops + 1)?;
                    }
                }
                Component::CurDir => {}
                Component::ParentDir => {
                    cur.pop()?;
                }
                Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        Some(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> Vec<String> {
        normal_parts(Path::new(s)).unwrap()
    }

    #[test]
    fn member_names_are_normalised_or_refused() {
        assert_eq!(parts("./a//b/"), ["a", "b"]);
        assert!(parts("./").is_empty());
        assert_eq!(
            normal_parts(Path::new("/etc/passwd")),
            Err(ArchivePathError::Absolute)
        );
        assert_eq!(
            normal_parts(Path::new("a/../../x")),
            Err(ArchivePathError::Traversal)
        );
    }

    #[test]
    fn links_resolve_through_earlier_links() {
        let mut l = Links::default();
        l.add(&parts("b/k/vmlinux"), "vmlinux-pvm").unwrap();
        l.add(&parts("b/k/up"), "../k/vmlinux-pvm").unwrap();
        l.add(&parts("b/c"), "..").unwrap();
        assert_eq!(
            l.add(&parts("b/e"), "c/../.."),
            Err((parts("b/e"), "c/../..".into()))
        );
        assert_eq!(
            l.add(&parts("b/abs"), "/etc"),
            Err((parts("b/abs"), "/etc".into()))
        );
        // A loop is refused, not followed forever.
        l.add(&parts("b/p"), "q").unwrap();
        assert_eq!(l.add(&parts("b/q"), "p"), Err((parts("b/q"), "p".into())));
        assert_eq!(l.link_on_the_way(&parts("b/c/x/y")), Some(parts("b/c")));
        assert_eq!(l.link_on_the_way(&parts("b/c")), None);
    }
}
