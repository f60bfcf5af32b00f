//! Root-confined file operations: the one way the hosts that touch files
//! ([`super::RealHost`], [`super::ScriptedHost`]) reach them.
//!
//! A target path is resolved beneath the host's root as `chroot ROOT` would
//! resolve it: `..` stops at the root and an absolute link starts again from
//! the root (openat2's `RESOLVE_IN_ROOT`), so an image's own links
//! (`/var/run -> /run`) work and no link planted in it carries a path out.
//! The last component of a write is never followed: a link there is
//! replaced (create, atomic write, rename, symlink) or refused (append,
//! chmod, write in place). Kernels without openat2 (before 5.6) get the same
//! resolution one component at a time, each opened with `O_NOFOLLOW`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// The write half of [`Host`] for a host whose files are real: each write
/// is recorded, then made beneath the root. Expanded in the `impl Host` of
/// [`super::RealHost`] and [`super::ScriptedHost`]; [`super::DryRunHost`]
/// records instead.
macro_rules! confined_writes {
    () => {
        fn create(
            &self,
            target: &str,
            mode: u32,
        ) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
            let action = $crate::firstboot::host::Action::Stream(target.into());
            let f =
                $crate::firstboot::host::beneath::write(self, action, "creating", target, |b| {
                    b.create(target, mode)
                })?;
            Ok(Box::new(f))
        }

        fn append(&self, target: &str) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
            let action = $crate::firstboot::host::Action::Stream(target.into());
            let f =
                $crate::firstboot::host::beneath::write(self, action, "opening", target, |b| {
                    b.append(target)
                })?;
            Ok(Box::new(f))
        }

        fn set_mode(&self, target: &str, mode: u32) -> anyhow::Result<()> {
            let path = target.into();
            let action = $crate::firstboot::host::Action::Chmod { path, mode };
            $crate::firstboot::host::beneath::write(
                self,
                action,
                "setting the mode of",
                target,
                |b| b.set_mode(target, mode),
            )
        }

        fn hard_link(&self, existing: &str, target: &str) -> anyhow::Result<()> {
            let action = $crate::firstboot::host::Action::HardLink {
                path: target.into(),
                target: existing.into(),
            };
            let what = format!("{target} to {existing}");
            $crate::firstboot::host::beneath::write(self, action, "linking", &what, |b| {
                b.hard_link(existing, target)
            })
        }

        fn create_dir_all(&self, target: &str) -> anyhow::Result<()> {
            let action = $crate::firstboot::host::Action::Mkdir(target.into());
            $crate::firstboot::host::beneath::write(self, action, "creating", target, |b| {
                b.create_dir_all(target)
            })
        }

        fn write_atomic(&self, target: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
            let path = target.into();
            let action = $crate::firstboot::host::Action::Write {
                path,
                bytes: bytes.len(),
            };
            $crate::firstboot::host::beneath::write(self, action, "writing", target, |b| {
                b.write_atomic(target, bytes, mode)
            })
        }

        fn remove_file(&self, target: &str) -> anyhow::Result<()> {
            let action = $crate::firstboot::host::Action::Remove(target.into());
            $crate::firstboot::host::beneath::write(self, action, "removing", target, |b| {
                b.remove_file(target)
            })
        }

        fn remove_dir_all(&self, target: &str) -> anyhow::Result<()> {
            let action = $crate::firstboot::host::Action::Remove(target.into());
            $crate::firstboot::host::beneath::write(self, action, "removing", target, |b| {
                b.remove_dir_all(target)
            })
        }

        fn rename(&self, from: &str, to: &str) -> anyhow::Result<()> {
            let action = $crate::firstboot::host::Action::Rename {
                from: from.into(),
                to: to.into(),
            };
            let what = format!("{from} to {to}");
            $crate::firstboot::host::beneath::write(self, action, "renaming", &what, |b| {
                b.rename(from, to)
            })
        }

        fn symlink(&self, link_target: &str, target: &str) -> anyhow::Result<()> {
            let action = $crate::firstboot::host::Action::Symlink {
                path: target.into(),
                target: link_target.into(),
            };
            let what = format!("{target} -> {link_target}");
            $crate::firstboot::host::beneath::write(self, action, "linking", &what, |b| {
                b.symlink(link_target, target)
            })
        }

        fn write_in_place(&self, target: &str, bytes: &[u8]) -> anyhow::Result<()> {
            let path = target.into();
            let action = $crate::firstboot::host::Action::Write {
                path,
                bytes: bytes.len(),
            };
            // Like `echo +cpu > file`: O_TRUNC, no create (sysfs ignores the truncation).
            $crate::firstboot::host::beneath::write(self, action, "writing", target, |b| {
                b.write_in_place(target, bytes)
            })
        }
    };
}

/// One write of `confined_writes!`: record `action` on `host`, then run
/// `op` beneath its root; a failure says "`doing` `what`".
pub(super) fn write<T>(
    host: &(impl super::Host + ?Sized),
    action: super::Action,
    doing: &str,
    what: &str,
    op: impl FnOnce(&Beneath<'_>) -> io::Result<T>,
) -> anyhow::Result<T> {
    host.record(action);
    op(&Beneath::new(host.root()))
        .map_err(|e| anyhow::Error::new(e).context(format!("{doing} {what}")))
}

/// Linux's own limit on links followed in one lookup (`MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// How intermediate directories are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, the kernel's
    /// own confinement, falling back to [`Resolution::Walk`] where the
    /// kernel lacks it.
    Openat2,
    /// One component at a time with `O_NOFOLLOW`, links read and resolved
    /// here.
    Walk,
}

/// Files beneath one root.
pub struct Beneath<'a> {
    root: &'a Path,
    how: Resolution,
}

impl<'a> Beneath<'a> {
    pub fn new(root: &'a Path) -> Self {
        Self::with(root, Resolution::Openat2)
    }

    pub fn with(root: &'a Path, how: Resolution) -> Self {
        Self { root, how }
    }

    /// Open `target` for reading, following links inside the root.
    pub fn open(&self, target: &str) -> io::Result<File> {
        let comps = components(target);
        let root = self.open_root()?;
        if self.how == Resolution::Openat2 && !comps.is_empty() {
            match rustix::fs::openat2(
                &root,
                joined(&comps).as_os_str(),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => return Ok(File::from(fd)),
                Err(e) if !unsupported(e) => return Err(e.into()),
                Err(_) => {}
            }
        }
        let (dir, name) = walk(&root, comps, Walking::FollowLast)?;
        let fd = match name {
            Some(name) => rustix::fs::openat(
                &dir,
                &name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?,
            None => rustix::fs::openat(&dir, ".", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?,
        };
        Ok(File::from(fd))
    }

    /// Create (or truncate) `target` with exactly `mode`; a link there is
    /// replaced by the new file.
    pub fn create(&self, target: &str, mode: u32) -> io::Result<File> {
        let (dir, name) = self.parent(target, false)?;
        let flags = OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::TRUNC
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&dir, &name, flags, Mode::from_raw_mode(mode)) {
            Err(Errno::LOOP) => {
                rustix::fs::unlinkat(&dir, &name, AtFlags::empty())?;
                rustix::fs::openat(&dir, &name, flags | OFlags::EXCL, Mode::from_raw_mode(mode))?
            }
            other => other?,
        };
        regular_file(&fd)?;
        // `mode` on open is masked by the umask; set it exactly.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        Ok(File::from(fd))
    }

    /// Open `target` to add to its end, creating it (0644) when absent.
    pub fn append(&self, target: &str) -> io::Result<File> {
        let (dir, name) = self.parent(target, false)?;
        let flags = OFlags::WRONLY
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, &name, flags, Mode::from_raw_mode(0o644))
            .map_err(no_follow)?;
        regular_file(&fd)?;
        Ok(File::from(fd))
    }

    /// Write into an existing file (sysfs, procfs) without replacing it.
    pub fn write_in_place(&self, target: &str, bytes: &[u8]) -> io::Result<()> {
        let (dir, name) = self.parent(target, false)?;
        let fd = rustix::fs::openat(
            &dir,
            &name,
            OFlags::WRONLY | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(no_follow)?;
        io::Write::write_all(&mut File::from(fd), bytes)
    }

    /// Set the permission bits of the file or directory at `target`.
    pub fn set_mode(&self, target: &str, mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(target, false)?;
        let st = rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile | FileType::Directory => {}
            FileType::Symlink => return Err(no_follow(Errno::LOOP)),
            _ => return Err(io::Error::other("not a regular file or directory")),
        }
        // No-follow again: a link swapped in since the stat is refused.
        let fd = rustix::fs::openat(
            &dir,
            &name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(no_follow)?;
        Ok(rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?)
    }

    pub fn create_dir_all(&self, target: &str) -> io::Result<()> {
        let root = self.open_root()?;
        walk(&root, components(target), Walking::CreateAll).map(drop)
    }

    /// [`crate::atomic_write::write_atomic_in`] beneath the root, making
    /// the parent directories it needs.
    pub fn write_atomic(&self, target: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(target, true)?;
        crate::atomic_write::write_atomic_in(dir.as_fd(), &name, bytes, mode)
    }

    /// Remove the file (or link) at `target`; absent is done.
    pub fn remove_file(&self, target: &str) -> io::Result<()> {
        let (dir, name) = match self.parent(target, false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        };
        match rustix::fs::unlinkat(&dir, &name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove `target` and everything under it, following no link;
    /// absent is done.
    pub fn remove_dir_all(&self, target: &str) -> io::Result<()> {
        let (dir, name) = match self.parent(target, false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        };
        match remove_tree(dir.as_fd(), &name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from_dir, from_name) = self.parent(from, false)?;
        let (to_dir, to_name) = self.parent(to, false)?;
        Ok(rustix::fs::renameat(
            &from_dir, &from_name, &to_dir, &to_name,
        )?)
    }

    /// A link at `target` pointing to `link_target`, replacing what is there.
    pub fn symlink(&self, link_target: &str, target: &str) -> io::Result<()> {
        let (dir, name) = self.parent(target, false)?;
        let _ = rustix::fs::unlinkat(&dir, &name, AtFlags::empty());
        Ok(rustix::fs::symlinkat(link_target, &dir, &name)?)
    }

    /// A second name `target` for the file at `existing` (itself not followed).
    pub fn hard_link(&self, existing: &str, target: &str) -> io::Result<()> {
        let (from_dir, from_name) = self.parent(existing, false)?;
        let (to_dir, to_name) = self.parent(target, false)?;
        Ok(rustix::fs::linkat(
            &from_dir,
            &from_name,
            &to_dir,
            &to_name,
            AtFlags::empty(),
        )?)
    }

    fn open_root(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::open(
            self.root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// The directory holding `target`, resolved beneath the root (made when
    /// `make` and missing), and the last component's name.
    fn parent(&self, target: &str, make: bool) -> io::Result<(OwnedFd, OsString)> {
        let mut comps = components(target);
        let name = comps.pop().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the root itself is not a file")
        })?;
        let root = self.open_root()?;
        if self.how == Resolution::Openat2 && !make {
            if comps.is_empty() {
                return Ok((root, name));
            }
            match rustix::fs::openat2(
                &root,
                joined(&comps).as_os_str(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => return Ok((fd, name)),
                Err(e) if !unsupported(e) => return Err(e.into()),
                Err(_) => {}
            }
        }
        let how = if make {
            Walking::CreateAll
        } else {
            Walking::Existing
        };
        let (dir, _) = walk(&root, comps, how)?;
        Ok((dir, name))
    }
}

/// The normal components of a target path; `..` is dropped, as
/// [`super::under_root`] drops it.
fn components(target: &str) -> Vec<OsString> {
    Path::new(target)
        .components()
        .filter_map(|c| match c {
            Component::Normal(c) => Some(c.to_os_string()),
            _ => None,
        })
        .collect()
}

fn joined(comps: &[OsString]) -> std::path::PathBuf {
    comps.iter().collect()
}

/// openat2 missing (ENOSYS, kernels before 5.6), refused by a seccomp
/// filter (EPERM) or racing a rename (EAGAIN): the walk does the same.
fn unsupported(e: Errno) -> bool {
    matches!(e, Errno::NOSYS | Errno::PERM | Errno::AGAIN)
}

fn no_follow(e: Errno) -> io::Error {
    if e == Errno::LOOP {
        io::Error::other("it is a symbolic link, which a write beneath the root does not follow")
    } else {
        e.into()
    }
}

fn regular_file(fd: &OwnedFd) -> io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Walking {
    /// Every component is a directory that exists.
    Existing,
    /// Every component is a directory, made (0755) when missing.
    CreateAll,
    /// The last component may be anything; a link there is followed and
    /// the directory holding what it finally names is returned with the name.
    FollowLast,
}

/// Resolve `comps` beneath `root` one component at a time. Returns the
/// last directory reached and, for [`Walking::FollowLast`], the final name
/// in it (`None`: the path names a directory, the one returned).
fn walk(
    root: &OwnedFd,
    comps: Vec<OsString>,
    how: Walking,
) -> io::Result<(OwnedFd, Option<OsString>)> {
    // Directories from the root down; `..` pops, never past the root.
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut todo: std::collections::VecDeque<OsString> = comps.into();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        let at: BorrowedFd<'_> = stack.last().unwrap_or(root).as_fd();
        if name.as_bytes() == b".." {
            stack.pop();
            continue;
        }
        if name.is_empty() || name.as_bytes() == b"." {
            continue;
        }
        let last = todo.is_empty();
        if last && how == Walking::FollowLast {
            match rustix::fs::readlinkat(at, &name, Vec::new()) {
                Ok(target) => {
                    links += 1;
                    follow(&mut stack, &mut todo, target.as_bytes(), links)?;
                    continue;
                }
                // Not a link: the caller opens it, no-follow.
                Err(Errno::INVAL) => return Ok((dup(stack.last().unwrap_or(root))?, Some(name))),
                Err(e) => return Err(e.into()),
            }
        }
        match rustix::fs::openat(
            at,
            &name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => stack.push(fd),
            Err(Errno::NOENT) if how == Walking::CreateAll => {
                match rustix::fs::mkdirat(at, &name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => todo.push_front(name),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e @ (Errno::NOTDIR | Errno::LOOP)) => {
                match rustix::fs::readlinkat(at, &name, Vec::new()) {
                    Ok(target) => {
                        links += 1;
                        follow(&mut stack, &mut todo, target.as_bytes(), links)?;
                    }
                    Err(_) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((dup(stack.last().unwrap_or(root))?, None))
}

/// Put a link's target in front of what is left to resolve; an absolute
/// target starts again from the root.
fn follow(
    stack: &mut Vec<OwnedFd>,
    todo: &mut std::collections::VecDeque<OsString>,
    target: &[u8],
    links: usize,
) -> io::Result<()> {
    if links > MAX_LINKS {
        return Err(Errno::LOOP.into());
    }
    if target.first() == Some(&b'/') {
        stack.clear();
    }
    for part in target.split(|b| *b == b'/').rev() {
        todo.push_front(OsStr::from_bytes(part).to_os_string());
    }
    Ok(())
}

fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

/// Remove `name` in `dir` and, if it is a directory, everything in it,
/// opening each directory no-follow.
fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    for n in names {
        remove_tree(sub.as_fd(), &n)?;
    }
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// The walk alone (what kernels without openat2 get) keeps the same
    /// promises as openat2.
    #[test]
    fn the_walk_resolves_as_openat2_does() {
        for how in [Resolution::Openat2, Resolution::Walk] {
            let root = tempfile::tempdir().unwrap();
            let outside = tempfile::tempdir().unwrap();
            fs::write(outside.path().join("x"), b"outside").unwrap();
            symlink(outside.path(), root.path().join("d")).unwrap();
            fs::create_dir_all(root.path().join("in/run")).unwrap();
            symlink("/in/run", root.path().join("run")).unwrap();
            symlink("../../../../../in", root.path().join("up")).unwrap();
            let b = Beneath::with(root.path(), how);
            // Links inside the root resolve as under chroot.
            b.write_atomic("/run/a", b"1", 0o644).unwrap();
            b.create_dir_all("/up/made/deeper").unwrap();
            assert_eq!(fs::read(root.path().join("in/run/a")).unwrap(), b"1");
            assert!(root.path().join("in/made/deeper").is_dir());
            let mut read = String::new();
            io::Read::read_to_string(&mut b.open("/up/run/a").unwrap(), &mut read).unwrap();
            assert_eq!(read, "1", "{how:?}");
            // A link out of the root names the root's own directory of
            // that name, made there as chroot would.
            b.write_atomic("/d/x", b"in", 0o644).unwrap();
            let mirrored = root.path().join(outside.path().strip_prefix("/").unwrap());
            assert_eq!(fs::read(mirrored.join("x")).unwrap(), b"in", "{how:?}");
            assert_eq!(
                fs::read(outside.path().join("x")).unwrap(),
                b"outside",
                "{how:?}"
            );
            // A chain of links longer than the kernel's limit ends.
            for i in 0..45 {
                symlink(format!("/l{}", i + 1), root.path().join(format!("l{i}"))).unwrap();
            }
            assert!(b.open("/l0").is_err(), "{how:?}");
        }
    }
}
