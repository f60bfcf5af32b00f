//! The one atomic file write, for both houses: the helper's journal, status
//! and configuration edits (through the host seam, in a directory it has
//! resolved beneath its root) and the builder's lock and overlay files.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};

/// Write `path` atomically: temp file in the same directory, fsync, rename,
/// fsync the directory. A crash leaves the old or the new content, never a
/// mix; the file gets exactly `mode` (not masked by the umask).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let dir = fs::File::open(dir)?;
    write_atomic_in(dir.as_fd(), name, bytes, mode)
}

/// [`write_atomic`] of `name` in the open directory `dir`. Neither the temp
/// name nor `name` is followed if it is a symbolic link: the rename
/// replaces a link at `name` and a link at the temp name is removed first.
pub fn write_atomic_in(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    bytes: &[u8],
    mode: u32,
) -> io::Result<()> {
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp-{}", std::process::id()));
    // A leftover from a crashed run, or something planted there.
    match rustix::fs::unlinkat(dir, &*tmp, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = rustix::fs::openat(
        dir,
        &*tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    let mut f = fs::File::from(fd);
    let written = (|| {
        f.write_all(bytes)?;
        // `mode` on open is masked by the umask; set it exactly.
        rustix::fs::fchmod(&f, Mode::from_raw_mode(mode))?;
        f.sync_all()?;
        rustix::fs::renameat(dir, &*tmp, dir, name).map_err(io::Error::from)
    })();
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(dir, &*tmp, AtFlags::empty());
        return Err(e);
    }
    let _ = rustix::fs::fsync(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_sets_the_mode_and_leaves_no_temp_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let mode = fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_link_planted_at_the_temp_name_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let tmp = format!(".state.json.tmp-{}", std::process::id());
        std::os::unix::fs::symlink(&victim, dir.path().join(tmp)).unwrap();
        write_atomic(&dir.path().join("state.json"), b"new", 0o600).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(dir.path().join("state.json")).unwrap(), b"new");
    }
}
