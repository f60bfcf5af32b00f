//! The real machine behind the seam: files under the root, commands run
//! with timeouts and streamed output, and the refusal to run a command that
//! would act on this machine while the helper works on another root.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use super::{checked, CmdOutput, CommandSpec, Host};
use crate::firstboot::secrets::Secrets;

/// The real machine. `root` is `/` in production and an image mount with
/// `--root`. Commands run on this machine; with a root other than `/` only
/// those that cannot change it run: `chroot ROOT …`, commands confined to
/// the root by their own options ([`CommandSpec::within_root`]) and
/// read-only queries. Anything else (`apt-get install`, `systemctl`,
/// `modprobe`) is refused, so a test or a mistyped `--root` never changes
/// the machine the helper runs on.
pub struct RealHost {
    root: PathBuf,
    secrets: Secrets,
    confined: bool,
}

impl RealHost {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            secrets: Secrets::new(),
            confined: true,
        }
    }

    /// A host that runs every command even with a temporary root: for the
    /// tests whose commands are fixtures that honour the root themselves
    /// (the stand-in installer). Not available to the shipped helper.
    #[cfg(any(test, feature = "testing"))]
    pub fn unconfined(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            secrets: Secrets::new(),
            confined: false,
        }
    }

    /// Refuse a command that could act on this machine while the helper
    /// works on another root.
    fn check_confined(&self, cmd: &CommandSpec) -> Result<()> {
        if cmd.about_running_system && self.root != Path::new("/") {
            bail!(
                "not asking this machine `{}`: the helper works on {}, whose processes are not this machine's",
                cmd.display(),
                self.root.display()
            );
        }
        if !self.confined || self.root == Path::new("/") || cmd.read_only || cmd.within_root {
            return Ok(());
        }
        let root = self.root.to_string_lossy();
        if cmd.program == "chroot" && cmd.args.first().map(String::as_str) == Some(&*root) {
            return Ok(());
        }
        bail!(
            "refusing to run `{}` on this machine: the helper works on {root}, not /, \
             and this command would act on the running system",
            cmd.display()
        )
    }
}

impl Host for RealHost {
    fn root(&self) -> &Path {
        &self.root
    }

    fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    confined_writes!();

    fn run(&self, cmd: &CommandSpec) -> Result<CmdOutput> {
        self.check_confined(cmd)?;
        self.say(&format!("$ {}", cmd.display()));
        let mut c = Command::new(&cmd.program);
        c.args(&cmd.args)
            .envs(&cmd.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &cmd.cwd {
            c.current_dir(self.path(cwd));
        }
        let out = run_with_timeout(c, cmd.timeout)
            .with_context(|| format!("running {}", cmd.display()))?;
        checked(cmd, out)
    }

    fn run_streaming(&self, cmd: &CommandSpec, on_line: &mut dyn FnMut(&str)) -> Result<CmdOutput> {
        self.check_confined(cmd)?;
        self.say(&format!("$ {}", cmd.display()));
        let mut c = Command::new(&cmd.program);
        c.args(&cmd.args).envs(&cmd.env).stdin(Stdio::null());
        if let Some(cwd) = &cmd.cwd {
            c.current_dir(self.path(cwd));
        }
        let out = stream_with_timeout(c, cmd.timeout, on_line)
            .with_context(|| format!("running {}", cmd.display()))?;
        checked(cmd, out)
    }

    fn request_reboot(&self) -> Result<()> {
        self.say("rebooting now");
        let out = self.run(&CommandSpec::new("systemctl").arg("reboot").allow_failure())?;
        if !out.success() {
            bail!("systemctl reboot failed: {}", out.stderr.trim());
        }
        Ok(())
    }

    fn request_kexec(&self) -> Result<()> {
        self.say("rebooting now by kexec");
        let out = self.run(&CommandSpec::new("systemctl").arg("kexec").allow_failure())?;
        if out.success() {
            return Ok(());
        }
        // The trial entry's one-shot stays armed in grubenv, so the firmware
        // reboot still ends on the trial boot (docs/bootloader.md).
        self.say(&format!(
            "systemctl kexec failed ({}); rebooting through the firmware instead",
            out.stderr.trim()
        ));
        self.request_reboot()
    }

    fn env(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }

    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Run `c`, passing output lines to `on_line` as they come. Lines travel over
/// a channel from one reader thread per pipe, so neither pipe can fill up.
fn stream_with_timeout(
    mut c: Command,
    timeout: Option<Duration>,
    on_line: &mut dyn FnMut(&str),
) -> io::Result<CmdOutput> {
    use std::io::BufRead;
    use std::sync::mpsc;
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn()?;
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let mut readers = Vec::new();
    for (is_err, pipe) in [
        (
            false,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn io::Read + Send>),
        ),
        (
            true,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn io::Read + Send>),
        ),
    ] {
        let Some(pipe) = pipe else { continue };
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send((is_err, line)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let started = std::time::Instant::now();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let mut timed_out = false;
    let mut status = None;
    let mut exited_at: Option<std::time::Instant> = None;
    let mut disconnected = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((is_err, line)) => {
                on_line(&line);
                let buf = if is_err { &mut stderr } else { &mut stdout };
                buf.push_str(&line);
                buf.push('\n');
                continue;
            }
            // Both pipes closed: only the exit status is left to collect.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                disconnected = true;
                if status.is_none() {
                    status = Some(child.wait()?);
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if status.is_none() {
            status = child.try_wait()?;
            if status.is_some() {
                exited_at = Some(std::time::Instant::now());
            }
        }
        // A detached grandchild may keep the pipes open after the command
        // exited: collect what comes quickly, then stop listening.
        if exited_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(2)) {
            break;
        }
        if let (None, Some(t)) = (status, timeout) {
            if started.elapsed() >= t {
                timed_out = true;
                let _ = child.kill();
                status = Some(child.wait()?);
                // Grandchildren may still hold the pipes; do not wait for them.
                break;
            }
        }
    }
    if disconnected {
        for r in readers {
            let _ = r.join();
        }
    }
    Ok(CmdOutput {
        code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        stdout,
        stderr,
        timed_out,
    })
}

fn run_with_timeout(mut c: Command, timeout: Option<Duration>) -> io::Result<CmdOutput> {
    let mut child = c.spawn()?;
    // Drain pipes on threads so a chatty child never blocks on a full pipe.
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(p) = so.as_mut() {
            let _ = io::Read::read_to_end(p, &mut s);
        }
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(p) = se.as_mut() {
            let _ = io::Read::read_to_end(p, &mut s);
        }
        s
    });
    let started = std::time::Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if let Some(t) = timeout {
            if started.elapsed() >= t {
                timed_out = true;
                let _ = child.kill();
                break child.wait()?;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Ok(CmdOutput {
        code: if timed_out { None } else { status.code() },
        stdout,
        stderr,
        timed_out,
    })
}
