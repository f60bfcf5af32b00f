//! The one way input is read whole (locks, profiles, plans, status files,
//! release listings, secrets, HTTP bodies that are not downloads): never
//! more than `limit + 1` bytes are read, from a file, a FIFO or a socket
//! alike, so an oversized input is refused before its memory is spent.
//! Nothing is stat'ed first: a FIFO or a growing file has no size to trust.

use std::io::{self, Read};
use std::path::Path;

/// A secrets file (the webhook secret, an S3 env file): a few lines.
pub const SECRET_FILE_LIMIT: u64 = 64 << 10;
/// A release listing (`--release-json`, GitHub's JSON for one release).
pub const RELEASE_LISTING_LIMIT: u64 = 16 << 20;
/// The plan the helper reads (`plan.json`, far smaller in practice).
pub const PLAN_LIMIT: u64 = 16 << 20;

/// All of `r`, or an error of kind [`io::ErrorKind::FileTooLarge`] once
/// more than `limit` bytes have come (having read `limit + 1`).
pub fn read_limited(r: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    match read_up_to(r, limit)? {
        (_, true) => Err(too_large(limit)),
        (out, false) => Ok(out),
    }
}

/// At most `limit + 1` bytes of `r`, and whether there were more than
/// `limit` (for a caller that shows where the limit was crossed).
pub fn read_up_to(r: impl Read, limit: u64) -> io::Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    r.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    let over = out.len() as u64 > limit;
    Ok((out, over))
}

/// [`read_limited`] as UTF-8 text.
pub fn read_text_limited(r: impl Read, limit: u64) -> io::Result<String> {
    String::from_utf8(read_limited(r, limit)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// The file at `path` (a regular file, a FIFO, a device), bounded.
pub fn read_file_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_limited(std::fs::File::open(path)?, limit)
}

/// The text file at `path`, bounded.
pub fn read_text_file_limited(path: &Path, limit: u64) -> io::Result<String> {
    read_text_limited(std::fs::File::open(path)?, limit)
}

pub fn too_large(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!(
            "larger than the limit of {}; not read further",
            human_limit(limit)
        ),
    )
}

fn human_limit(limit: u64) -> String {
    if limit >= 1 << 20 && limit % (1 << 20) == 0 {
        format!("{} MiB", limit >> 20)
    } else if limit >= 1 << 10 && limit % (1 << 10) == 0 {
        format!("{} KiB", limit >> 10)
    } else {
        format!("{limit} bytes")
    }
}

/// A FIFO at `path` whose writer offers `offer` bytes, for tests that show
/// a reader stopped early: once the reader has stopped and closed it, the
/// writer's next write fails (EPIPE).
#[cfg(any(test, feature = "testing"))]
pub fn feed_fifo(path: &Path, offer: u64) -> FedFifo {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("making a FIFO");
    let path = path.to_path_buf();
    FedFifo(std::thread::spawn(move || {
        use std::io::Write;
        let mut w = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let chunk = vec![b'y'; 64 << 10];
        let mut sent = 0u64;
        while sent < offer {
            match w.write(&chunk) {
                Ok(n) => sent += n as u64,
                Err(e) => return (sent, Some(e.kind())),
            }
        }
        (sent, None)
    }))
}

#[cfg(any(test, feature = "testing"))]
pub struct FedFifo(std::thread::JoinHandle<(u64, Option<io::ErrorKind>)>);

#[cfg(any(test, feature = "testing"))]
impl FedFifo {
    /// The reader closed the FIFO with the writer still offering, after
    /// taking fewer than `most` bytes (the limit, plus the pipe's buffer).
    pub fn assert_stopped_early(self, most: u64) {
        let (sent, how) = self.0.join().unwrap();
        assert_eq!(
            how,
            Some(io::ErrorKind::BrokenPipe),
            "the reader took all {sent} bytes offered"
        );
        assert!(sent < most, "the reader took {sent} bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that counts what was taken from it.
    struct Counting<R> {
        inner: R,
        taken: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.taken += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn an_endless_stream_is_refused_after_limit_plus_one_bytes() {
        let mut endless = Counting {
            inner: io::repeat(b'x'),
            taken: 0,
        };
        let err = read_limited(&mut endless, 1000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(
            err.to_string(),
            "larger than the limit of 1000 bytes; not read further"
        );
        assert_eq!(endless.taken, 1001);
        assert_eq!(read_limited(&b"12345"[..], 5).unwrap(), b"12345");
        assert_eq!(
            too_large(1 << 20).to_string(),
            "larger than the limit of 1 MiB; not read further"
        );
    }

    #[test]
    fn a_fifo_is_read_no_further_than_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let fed = feed_fifo(&fifo, 64 << 20);
        let err = read_file_limited(&fifo, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        fed.assert_stopped_early(2 << 20);
    }
}
