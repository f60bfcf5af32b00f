//! `cube-firstboot run --dry-run`: a host that changes nothing and says what
//! it would have changed.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::Result;

use super::{lock, Action, CmdOutput, CommandSpec, Host};
use crate::firstboot::secrets::Secrets;

/// Wraps another host: reads and read-only queries ([`CommandSpec::read_only`])
/// pass through, so what they find is real; every change is recorded and
/// printed instead of made. This is `cube-firstboot run --dry-run`, and
/// the only place that knows about dry runs besides [`Host::is_dry_run`].
pub struct DryRunHost<H: Host> {
    inner: H,
    actions: Mutex<Vec<Action>>,
}

impl<H: Host> DryRunHost<H> {
    pub fn new(inner: H) -> Self {
        Self {
            inner,
            actions: Mutex::new(Vec::new()),
        }
    }

    /// The changes a real run would have made, in order.
    pub fn actions(&self) -> Vec<Action> {
        lock(&self.actions).clone()
    }

    pub fn inner(&self) -> &H {
        &self.inner
    }
}

impl<H: Host> Host for DryRunHost<H> {
    fn root(&self) -> &Path {
        self.inner.root()
    }

    fn secrets(&self) -> &Secrets {
        self.inner.secrets()
    }

    fn run(&self, cmd: &CommandSpec) -> Result<CmdOutput> {
        if cmd.read_only {
            return self.inner.run(cmd);
        }
        self.record(Action::Run(cmd.display()));
        Ok(CmdOutput::ok(""))
    }

    fn run_streaming(&self, cmd: &CommandSpec, on_line: &mut dyn FnMut(&str)) -> Result<CmdOutput> {
        if cmd.read_only {
            return self.inner.run_streaming(cmd, on_line);
        }
        self.record(Action::Run(cmd.display()));
        Ok(CmdOutput::ok(""))
    }

    fn request_reboot(&self) -> Result<()> {
        self.record(Action::Reboot);
        Ok(())
    }

    fn request_kexec(&self) -> Result<()> {
        self.record(Action::Kexec);
        Ok(())
    }

    fn env(&self, key: &str) -> Option<String> {
        self.inner.env(key)
    }

    fn now(&self) -> SystemTime {
        self.inner.now()
    }

    fn sleep(&self, _d: Duration) {}

    fn say(&self, line: &str) {
        self.inner.say(line);
    }

    fn record(&self, action: Action) {
        println!("{action}");
        lock(&self.actions).push(action.clone());
        self.inner.record(action);
    }

    fn is_dry_run(&self) -> bool {
        true
    }

    fn path(&self, target: &str) -> PathBuf {
        self.inner.path(target)
    }

    fn check_change(&self, what: &str, _check: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        self.say(&format!("dry run: would check {what}"));
        Ok(())
    }

    fn create_dir_all(&self, target: &str) -> Result<()> {
        self.record(Action::Mkdir(target.into()));
        Ok(())
    }

    fn write_atomic(&self, target: &str, bytes: &[u8], _mode: u32) -> Result<()> {
        self.record(Action::Write {
            path: target.into(),
            bytes: bytes.len(),
        });
        Ok(())
    }

    fn remove_file(&self, target: &str) -> Result<()> {
        self.record(Action::Remove(target.into()));
        Ok(())
    }

    fn remove_dir_all(&self, target: &str) -> Result<()> {
        self.record(Action::Remove(target.into()));
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.record(Action::Rename {
            from: from.into(),
            to: to.into(),
        });
        Ok(())
    }

    fn symlink(&self, link_target: &str, target: &str) -> Result<()> {
        self.record(Action::Symlink {
            path: target.into(),
            target: link_target.into(),
        });
        Ok(())
    }

    fn write_in_place(&self, target: &str, bytes: &[u8]) -> Result<()> {
        self.record(Action::Write {
            path: target.into(),
            bytes: bytes.len(),
        });
        Ok(())
    }

    fn create(&self, target: &str, _mode: u32) -> Result<Box<dyn Write + Send>> {
        self.record(Action::Stream(target.into()));
        Ok(Box::new(io::sink()))
    }

    fn append(&self, target: &str) -> Result<Box<dyn Write + Send>> {
        self.record(Action::Stream(target.into()));
        Ok(Box::new(io::sink()))
    }

    fn set_mode(&self, target: &str, mode: u32) -> Result<()> {
        self.record(Action::Chmod {
            path: target.into(),
            mode,
        });
        Ok(())
    }

    fn hard_link(&self, existing: &str, target: &str) -> Result<()> {
        self.record(Action::HardLink {
            path: target.into(),
            target: existing.into(),
        });
        Ok(())
    }

    fn free_bytes(&self, target: &str) -> Result<u64> {
        self.inner.free_bytes(target)
    }

    /// A query: opening the device and asking changes nothing.
    fn kvm_api_version(&self, target: &str) -> Result<i32> {
        self.inner.kvm_api_version(target)
    }

    fn boot_id(&self) -> Option<String> {
        self.inner.boot_id()
    }

    fn arch(&self) -> String {
        self.inner.arch()
    }

    fn euid(&self) -> u32 {
        self.inner.euid()
    }
}
