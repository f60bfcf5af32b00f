//! The host seam: every side effect the helper has on the target goes through
//! a [`Host`]. Paths given to it are target paths (`/boot/grub/grub.cfg`);
//! the host maps them under its root, so the whole helper runs against a
//! temporary directory in tests and against an image with `--root /mnt/image`.
//!
//! Rule: no `std::process::Command`, `std::env` or absolute target path is used
//! outside this module.
//!
//! Layout: this file holds the [`Host`] trait, commands and their output;
//! `host/real.rs` the real machine ([`RealHost`]), `host/dry_run.rs` the dry
//! run ([`DryRunHost`]), `host/scripted.rs` the scripted host tests use.
//! Every file operation resolves its path beneath the root and follows no
//! link out of it (`host/beneath.rs`).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use super::secrets::{is_secret_key, Secrets};
use crate::bounded_read;
#[macro_use]
mod beneath;
mod devices;
use devices::{kvm_api_version_at, statvfs_free};
mod dry_run;
mod real;
pub use beneath::{Beneath, Resolution};
#[cfg(test)]
mod confinement_tests;
#[cfg(any(test, feature = "testing"))]
mod scripted;
pub use dry_run::DryRunHost;
pub use real::RealHost;
#[cfg(any(test, feature = "testing"))]
pub use scripted::ScriptedHost;

/// A command to run on the target, with everything that affects it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Target path to run in.
    pub cwd: Option<String>,
    pub timeout: Option<Duration>,
    /// Whether a non-zero exit is an error (the default) or a result to inspect.
    pub allow_failure: bool,
    /// A query that changes nothing: a dry run still runs it, so what it
    /// prints shows real values.
    pub read_only: bool,
    /// The command acts only on files under the host's root (through the
    /// tool's own `--root`, or a path under the root as its argument), so
    /// the real host may run it when the root is not `/`.
    pub within_root: bool,
    /// A query about the running system itself (its processes), which no
    /// root can redirect: with a root other than `/` its answer is not the
    /// target's, so the real host does not ask.
    pub about_running_system: bool,
}

impl CommandSpec {
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            ..Self::default()
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }

    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    pub fn allow_failure(mut self) -> Self {
        self.allow_failure = true;
        self
    }

    /// Mark a query that changes nothing (see [`CommandSpec::read_only`]).
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Mark a query about the running system (see
    /// [`CommandSpec::about_running_system`]).
    pub fn about_running_system(mut self) -> Self {
        self.about_running_system = true;
        self
    }

    /// Mark a command confined to the root (see [`CommandSpec::within_root`]).
    pub fn within_root(mut self) -> Self {
        self.within_root = true;
        self
    }

    /// The command line as a person would type it (for logs, dry runs and
    /// errors), with the values of secret environment keys masked: this text
    /// reaches the console, the journal and the status file.
    pub fn display(&self) -> String {
        let mut parts: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| {
                if is_secret_key(k) {
                    format!("{k}=***")
                } else {
                    format!("{k}={}", shell_quote(v))
                }
            })
            .collect();
        parts.push(shell_quote(&self.program));
        parts.extend(self.args.iter().map(|a| shell_quote(a)));
        parts.join(" ")
    }
}

/// One shell word (shared with the builder's upgrade payload).
pub use crate::shell_word::quote as shell_quote;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdOutput {
    /// Exit code; `None` when killed by a signal or the timeout.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl CmdOutput {
    pub fn ok(stdout: impl Into<String>) -> Self {
        Self {
            code: Some(0),
            stdout: stdout.into(),
            ..Self::default()
        }
    }

    pub fn failed(code: i32, stderr: impl Into<String>) -> Self {
        Self {
            code: Some(code),
            stderr: stderr.into(),
            ..Self::default()
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// A change the helper made or would make, in order; `--dry-run` prints these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run(String),
    Write {
        path: String,
        bytes: usize,
    },
    Remove(String),
    Symlink {
        path: String,
        target: String,
    },
    Mkdir(String),
    Rename {
        from: String,
        to: String,
    },
    /// A file written as a stream (unpacked or downloaded), size unknown ahead.
    Stream(String),
    Chmod {
        path: String,
        mode: u32,
    },
    HardLink {
        path: String,
        target: String,
    },
    Reboot,
    /// A reboot into the kernel staged with `kexec --load`.
    Kexec,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Run(cmd) => write!(f, "run     {cmd}"),
            Self::Write { path, bytes } => write!(f, "write   {path} ({bytes} bytes)"),
            Self::Remove(p) => write!(f, "remove  {p}"),
            Self::Symlink { path, target } => write!(f, "symlink {path} -> {target}"),
            Self::Mkdir(p) => write!(f, "mkdir   {p}"),
            Self::Rename { from, to } => write!(f, "rename  {from} -> {to}"),
            Self::Stream(p) => write!(f, "write   {p} (streamed)"),
            Self::Chmod { path, mode } => write!(f, "chmod   {mode:04o} {path}"),
            Self::HardLink { path, target } => write!(f, "link    {path} => {target}"),
            Self::Reboot => write!(f, "reboot"),
            Self::Kexec => write!(f, "reboot  by kexec"),
        }
    }
}

/// What [`Host::metadata`] tells about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub kind: FileKind,
    pub len: u64,
    /// Permission bits, including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

impl From<&fs::Metadata> for FileInfo {
    fn from(m: &fs::Metadata) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let t = m.file_type();
        let kind = if t.is_symlink() {
            FileKind::Symlink
        } else if t.is_dir() {
            FileKind::Dir
        } else if t.is_file() {
            FileKind::File
        } else {
            FileKind::Other
        };
        Self {
            kind,
            len: m.len(),
            mode: m.permissions().mode() & 0o7777,
        }
    }
}

/// The most [`Host::read`] reads: the largest file read whole is a kernel
/// image (`vmlinux`, compared in `cube/verify.rs`), tens of MiB.
pub const READ_LIMIT: u64 = 512 << 20;
/// The most [`Host::read_string`] reads: configuration files, the journal
/// and the status file are KiBs.
pub const TEXT_LIMIT: u64 = 16 << 20;

/// The target machine as the helper sees it.
///
/// Reads have default implementations beneath [`Host::root`]; writes have
/// none (see `confined_writes!`).
pub trait Host: Send + Sync {
    /// The directory that stands for `/` on the target.
    fn root(&self) -> &Path;

    /// Run a command on the target. A non-zero exit is an error unless
    /// `allow_failure` is set; the error names the full command line.
    fn run(&self, cmd: &CommandSpec) -> Result<CmdOutput>;

    /// Like [`Host::run`], but hands each line of output (stdout, then
    /// stderr) to `on_line` as it arrives, for long commands whose progress a
    /// person watches (the Cube installer). The default replays the lines
    /// after the command ends; the real host streams them.
    fn run_streaming(&self, cmd: &CommandSpec, on_line: &mut dyn FnMut(&str)) -> Result<CmdOutput> {
        let out = self.run(cmd)?;
        for line in out.stdout.lines().chain(out.stderr.lines()) {
            on_line(line);
        }
        Ok(out)
    }

    /// Ask for a reboot. The helper's main loop is the only caller.
    fn request_reboot(&self) -> Result<()>;

    /// Ask for a reboot into the kernel `kexec --load` staged: services stop
    /// as for a reboot, then that kernel starts without the firmware
    /// (`systemctl kexec`). The helper's main loop is the only caller.
    fn request_kexec(&self) -> Result<()>;

    fn env(&self, key: &str) -> Option<String>;

    fn now(&self) -> SystemTime;

    fn sleep(&self, d: Duration);

    /// The secret values known so far; every text the host sends out
    /// (console lines, echoed commands) is scrubbed of them.
    fn secrets(&self) -> &Secrets;

    /// A human progress line (console and journal), without secrets.
    fn say(&self, line: &str) {
        eprintln!("cube-firstboot: {}", self.secrets().scrub(line));
    }

    /// Record an action (for dry runs and tests); a no-op on the real host.
    fn record(&self, _action: Action) {}

    /// Whether this is a dry run. Only for the few places that must say
    /// "would" instead of acting (a download): everything else leaves dry
    /// runs to the host, which records changes and runs read-only queries.
    fn is_dry_run(&self) -> bool {
        false
    }

    /// Map a target path (absolute) to a path on this machine.
    fn path(&self, target: &str) -> PathBuf {
        under_root(self.root(), target)
    }

    /// Check the outcome of a change just made (a filesystem's UUID, a
    /// mount, a loaded module). A dry run made no change, so the dry-run
    /// host skips `check` and says what it would have checked.
    fn check_change(&self, _what: &str, check: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        check()
    }

    fn exists(&self, target: &str) -> bool {
        fs::symlink_metadata(self.path(target)).is_ok()
    }

    /// A whole file, up to [`READ_LIMIT`] bytes (read no further).
    fn read(&self, target: &str) -> Result<Vec<u8>> {
        self.open(target)
            .and_then(|f| bounded_read::read_limited(f, READ_LIMIT))
            .with_context(|| format!("reading {target}"))
    }

    /// A whole text file (a configuration, the journal, the status), up
    /// to [`TEXT_LIMIT`] bytes (read no further).
    fn read_string(&self, target: &str) -> Result<String> {
        self.open(target)
            .and_then(|f| bounded_read::read_text_limited(f, TEXT_LIMIT))
            .with_context(|| format!("reading {target}"))
    }

    /// Read a file that may be absent.
    fn read_optional(&self, target: &str) -> Result<Option<String>> {
        match self.open(target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            _ => self.read_string(target).map(Some),
        }
    }

    fn list_dir(&self, target: &str) -> Result<Vec<String>> {
        let mut names = Vec::new();
        match fs::read_dir(self.path(target)) {
            Ok(rd) => {
                for entry in rd {
                    let entry = entry.with_context(|| format!("listing {target}"))?;
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("listing {target}")),
        }
        names.sort();
        Ok(names)
    }

    /// What is at `target`, without following a final symlink; `None` when
    /// nothing is.
    fn metadata(&self, target: &str) -> Result<Option<FileInfo>> {
        match fs::symlink_metadata(self.path(target)) {
            Ok(m) => Ok(Some(FileInfo::from(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading metadata of {target}")),
        }
    }

    /// Open a file for a streaming read (hashing, unpacking), resolved
    /// beneath the root. The error keeps its kind, so callers can tell a
    /// missing file apart.
    fn open(&self, target: &str) -> io::Result<fs::File> {
        Beneath::new(self.root()).open(target)
    }

    // The writes have no default body: a host that writes says how (the
    // real and scripted hosts through `confined_writes!`, the dry run by
    // recording), so a new write cannot slip past the dry run.

    /// Create (or truncate) a file for a streaming write, with exactly
    /// `mode`; a link at `target` is replaced, not followed.
    fn create(&self, target: &str, mode: u32) -> Result<Box<dyn Write + Send>>;

    /// Open a file to add to its end (a resumed download), creating it
    /// (mode 0644) when absent; a link at `target` is refused.
    fn append(&self, target: &str) -> Result<Box<dyn Write + Send>>;

    /// Set the permission bits of the file or directory at `target` (a
    /// link there is refused).
    fn set_mode(&self, target: &str, mode: u32) -> Result<()>;

    /// A second name `target` for the existing file `existing`.
    fn hard_link(&self, existing: &str, target: &str) -> Result<()>;

    fn create_dir_all(&self, target: &str) -> Result<()>;

    /// Write a file atomically: temp file, fsync, rename, fsync the directory.
    /// A crash leaves either the old or the new content, never a mix.
    fn write_atomic(&self, target: &str, bytes: &[u8], mode: u32) -> Result<()>;

    fn remove_file(&self, target: &str) -> Result<()>;

    fn remove_dir_all(&self, target: &str) -> Result<()>;

    fn rename(&self, from: &str, to: &str) -> Result<()>;

    fn symlink(&self, link_target: &str, target: &str) -> Result<()>;

    /// Write into an existing kernel file (sysfs, procfs) in place: these
    /// cannot be replaced by rename, so `write_atomic` does not apply.
    fn write_in_place(&self, target: &str, bytes: &[u8]) -> Result<()>;

    fn read_link(&self, target: &str) -> Result<Option<String>> {
        match fs::read_link(self.path(target)) {
            Ok(p) => Ok(Some(p.to_string_lossy().into_owned())),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| format!("reading link {target}")),
        }
    }

    /// Random bytes from the kernel (for generated credentials). Always the
    /// machine's own /dev/urandom, never a file under the root.
    fn random_bytes(&self, n: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        let mut f = fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
        io::Read::read_exact(&mut f, &mut buf).context("reading /dev/urandom")?;
        Ok(buf)
    }

    /// Bytes available to root on the filesystem holding `target`.
    fn free_bytes(&self, target: &str) -> Result<u64> {
        statvfs_free(&self.path(target)).with_context(|| format!("reading free space of {target}"))
    }

    /// Ask the KVM device at `target` for its API version
    /// (`KVM_GET_API_VERSION`); every working KVM answers 12 (linux/kvm.h
    /// `KVM_API_VERSION`). Read-only: it opens the device, which is how QEMU
    /// and the Cube installer's checks find out whether /dev/kvm works.
    fn kvm_api_version(&self, target: &str) -> Result<i32> {
        kvm_api_version_at(&self.path(target))
            .with_context(|| format!("KVM_GET_API_VERSION on {target} failed"))
    }

    /// This boot's id (`/proc/sys/kernel/random/boot_id`): tells the runner
    /// whether a requested reboot really happened. `None` when unreadable.
    fn boot_id(&self) -> Option<String> {
        self.read_optional("/proc/sys/kernel/random/boot_id")
            .ok()
            .flatten()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Machine architecture (`uname -m`).
    fn arch(&self) -> String {
        std::env::consts::ARCH.to_string()
    }

    /// Effective user id (root is 0).
    fn euid(&self) -> u32 {
        rustix::process::geteuid().as_raw()
    }
}

/// Join a target path under a root, refusing `..` so nothing escapes it.
pub fn under_root(root: &Path, target: &str) -> PathBuf {
    let mut out = root.to_path_buf();
    for comp in Path::new(target).components() {
        match comp {
            Component::Normal(c) => out.push(c),
            // Absolute prefixes and `.` carry no meaning under a root; `..` is dropped
            // rather than followed, so a hostile path cannot climb out.
            Component::RootDir
            | Component::CurDir
            | Component::Prefix(_)
            | Component::ParentDir => {}
        }
    }
    out
}

/// A command that must act on the target system: run directly when the root
/// is `/`, through `chroot ROOT` when the helper works on an image (so the
/// image's own grubby or update-grub runs, not the build machine's).
pub fn on_target(host: &dyn Host, program: &str) -> CommandSpec {
    if is_live_root(host) {
        CommandSpec::new(program)
    } else {
        CommandSpec::new("chroot")
            .arg(host.root().to_string_lossy())
            .arg(program)
    }
}

pub fn is_live_root(host: &dyn Host) -> bool {
    host.root() == Path::new("/")
}

/// A non-zero exit is an error naming the full command line, unless the
/// command allows failure.
fn checked(cmd: &CommandSpec, out: CmdOutput) -> Result<CmdOutput> {
    if !out.success() && !cmd.allow_failure {
        bail!(
            "command failed ({}): {}\n{}",
            describe_exit(&out),
            cmd.display(),
            tail(&out.stderr, 20)
        );
    }
    Ok(out)
}

pub fn describe_exit(out: &CmdOutput) -> String {
    match (out.timed_out, out.code) {
        (true, _) => "timed out".into(),
        (false, Some(c)) => format!("exit {c}"),
        (false, None) => "killed by a signal".into(),
    }
}

/// The last `n` lines of `s`, for error messages.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in another test thread must not hide this test's result.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Seconds since the epoch, for journal and status timestamps.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_paths_stay_under_root() {
        let root = Path::new("/tmp/r");
        assert_eq!(under_root(root, "/etc/x"), PathBuf::from("/tmp/r/etc/x"));
        assert_eq!(
            under_root(root, "/../../etc/x"),
            PathBuf::from("/tmp/r/etc/x")
        );
        assert_eq!(under_root(root, "a/./b"), PathBuf::from("/tmp/r/a/b"));
    }

    #[test]
    fn command_lines_are_shell_quoted() {
        let c = CommandSpec::new("grubby")
            .arg("--args=nopti pti=off")
            .env("LANG", "C");
        assert_eq!(c.display(), "LANG=C grubby '--args=nopti pti=off'");
    }

    #[test]
    fn the_command_line_masks_every_key_the_secrets_list_names() {
        // One list (`secrets::is_secret_key`) serves the command line and
        // the scrubber alike.
        let c = CommandSpec::new("x")
            .env("SENTRY_DSN", "https://k@h/1")
            .env("cube_tls_private_pem", "pem");
        assert_eq!(c.display(), "SENTRY_DSN=*** cube_tls_private_pem=*** x");
    }

    #[test]
    fn secret_environment_values_are_masked_wherever_the_command_line_is_shown() {
        let c = CommandSpec::new("sh")
            .args(["-c", "exit 3"])
            .env("CUBE_SANDBOX_MYSQL_PASSWORD", "hunter22")
            .env("E2B_API_KEY", "e2b_x")
            .env("CUBE_DB_PASS", "pw1")
            .env("LANG", "C");
        let shown =
            "CUBE_DB_PASS=*** CUBE_SANDBOX_MYSQL_PASSWORD=*** E2B_API_KEY=*** LANG=C sh -c 'exit 3'";
        assert_eq!(c.display(), shown);
        // The error a failed command becomes (journal, status) shows the same.
        let dir = tempfile::tempdir().unwrap();
        let err = RealHost::new(dir.path()).run(&c.read_only()).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!("command failed (exit 3): {shown}\n")
        );
    }

    #[test]
    fn with_another_root_only_confined_commands_run() {
        let dir = tempfile::tempdir().unwrap();
        let host = RealHost::new(dir.path());
        let root = dir.path().to_string_lossy().into_owned();
        for allowed in [
            CommandSpec::new("true").read_only(),
            CommandSpec::new("true").within_root(),
            on_target(&host, "true").allow_failure(),
        ] {
            host.run(&allowed).unwrap();
        }
        let err = host
            .run(&CommandSpec::new("systemctl").args(["disable", "--now", "multipathd"]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to run `systemctl disable --now multipathd` on this machine: \
                 the helper works on {root}, not /, and this command would act on the running system"
            )
        );
        // chroot into anything but the root is no confinement.
        let err = host
            .run(&CommandSpec::new("chroot").args(["/", "reboot"]))
            .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("refusing to run `chroot / reboot`"));
        // This machine's processes are not the target's, read-only or not,
        // confined or not.
        let pgrep = CommandSpec::new("pgrep")
            .args(["-x", "dpkg"])
            .read_only()
            .about_running_system();
        for host in [RealHost::new(dir.path()), RealHost::unconfined(dir.path())] {
            let err = host.run(&pgrep).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("not asking this machine `pgrep -x dpkg`"),
                "{err}"
            );
        }
    }

    #[test]
    fn scripted_host_records_and_refuses_unscripted_commands() {
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        host.on_program("true", CmdOutput::ok("yes"));
        assert_eq!(host.run(&CommandSpec::new("true")).unwrap().stdout, "yes");
        let err = host.run(&CommandSpec::new("reboot")).unwrap_err();
        assert_eq!(err.to_string(), "scripted host: no response for reboot");
        assert_eq!(host.commands(), vec!["true", "reboot"]);
    }

    #[test]
    fn kvm_api_version_asks_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let host = RealHost::new(dir.path());
        let missing = host.kvm_api_version("/dev/kvm").unwrap_err();
        assert!(format!("{missing:#}").starts_with("KVM_GET_API_VERSION on /dev/kvm failed: "));
        // A regular file is not a KVM device: the kernel refuses the request.
        host.write_atomic("/dev/kvm", b"", 0o600).unwrap();
        let err = host.kvm_api_version("/dev/kvm").unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "KVM_GET_API_VERSION on /dev/kvm failed: Inappropriate ioctl for device (os error 25)"
        );
    }

    #[test]
    fn real_host_reports_failures_and_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let host = RealHost::unconfined(dir.path());
        let err = host
            .run(&CommandSpec::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "command failed (exit 3): sh -c 'echo boom >&2; exit 3'\nboom"
        );
        let out = host
            .run(
                &CommandSpec::new("sleep")
                    .arg("5")
                    .timeout(Duration::from_millis(100))
                    .allow_failure(),
            )
            .unwrap();
        assert!(out.timed_out);
    }

    #[test]
    fn real_host_streams_lines_and_stops_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let host = RealHost::unconfined(dir.path());
        let mut seen = Vec::new();
        let out = host
            .run_streaming(
                &CommandSpec::new("sh")
                    .args(["-c", "echo one; echo two >&2; exit 4"])
                    .allow_failure(),
                &mut |l| seen.push(l.to_string()),
            )
            .unwrap();
        seen.sort();
        assert_eq!(seen, vec!["one", "two"]);
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (Some(4), "one\n", "two\n")
        );
        // A detached grandchild holding the pipe does not hold us past the timeout.
        let started = std::time::Instant::now();
        let out = host
            .run_streaming(
                &CommandSpec::new("sh")
                    .args(["-c", "echo started; sleep 5 & sleep 5"])
                    .timeout(Duration::from_millis(300))
                    .allow_failure(),
                &mut |_| {},
            )
            .unwrap();
        assert!(out.timed_out);
        assert_eq!(out.stdout, "started\n");
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn atomic_write_replaces_content_and_sets_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let host = RealHost::new(dir.path());
        host.write_atomic("/var/lib/x/state.json", b"one", 0o600)
            .unwrap();
        host.write_atomic("/var/lib/x/state.json", b"two", 0o600)
            .unwrap();
        assert_eq!(host.read_string("/var/lib/x/state.json").unwrap(), "two");
        let mode = fs::metadata(host.path("/var/lib/x/state.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(host.list_dir("/var/lib/x").unwrap(), vec!["state.json"]);
    }
}
