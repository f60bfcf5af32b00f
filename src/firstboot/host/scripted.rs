//! [`ScriptedHost`], the host the tests use. Built only for the crate's own
//! unit tests and with the `testing` feature (which the integration tests
//! turn on through the crate's dev-dependency on itself), so the shipped
//! helper carries none of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use super::{checked, lock, Action, CmdOutput, CommandSpec, DryRunHost, Host};
use crate::firstboot::secrets::Secrets;

type Responder = Box<dyn Fn(&CommandSpec) -> Option<Result<CmdOutput>> + Send + Sync>;

/// A host for tests: files live under a temporary root; commands are answered
/// by scripted responders (first match wins) and recorded with their full
/// command line; reboots are recorded, not performed; the clock is virtual.
pub struct ScriptedHost {
    root: PathBuf,
    responders: Mutex<Vec<Responder>>,
    log: Arc<Mutex<Vec<Action>>>,
    env: Mutex<BTreeMap<String, String>>,
    clock: Mutex<SystemTime>,
    reboots: Mutex<u32>,
    kexecs: Mutex<u32>,
    said: Mutex<Vec<String>>,
    free_bytes: Mutex<Option<u64>>,
    secrets: Secrets,
    kvm_api: Mutex<Option<std::result::Result<i32, String>>>,
    arch: Mutex<String>,
}

impl ScriptedHost {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            responders: Mutex::new(Vec::new()),
            log: Arc::new(Mutex::new(Vec::new())),
            env: Mutex::new(BTreeMap::new()),
            clock: Mutex::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            reboots: Mutex::new(0),
            kexecs: Mutex::new(0),
            said: Mutex::new(Vec::new()),
            free_bytes: Mutex::new(None),
            secrets: Secrets::new(),
            kvm_api: Mutex::new(None),
            arch: Mutex::new("x86_64".into()),
        }
    }

    /// The same host behind the dry-run wrapper `run --dry-run` uses:
    /// read-only commands still reach the responders, changes are recorded
    /// (here too, so [`ScriptedHost::commands`] lists them) and not made.
    pub fn dry_run(self) -> DryRunHost<Self> {
        DryRunHost::new(self)
    }

    /// Answer commands for which `f` returns `Some`. Later responders are
    /// consulted first, so a test can override a default.
    pub fn on<F>(&self, f: F)
    where
        F: Fn(&CommandSpec) -> Option<Result<CmdOutput>> + Send + Sync + 'static,
    {
        lock(&self.responders).insert(0, Box::new(f));
    }

    /// Answer every call of `program` with `out`.
    pub fn on_program(&self, program: &str, out: CmdOutput) {
        let p = program.to_string();
        self.on(move |c| (c.program == p).then(|| Ok(out.clone())));
    }

    /// Pretend every filesystem has exactly this much free space (`None`:
    /// ask the real filesystem under the root).
    pub fn set_free_bytes(&self, n: Option<u64>) {
        *lock(&self.free_bytes) = n;
    }

    /// What `KVM_GET_API_VERSION` answers from now on. Unset: 12 when the
    /// device file exists under the root (a working KVM), else an error.
    pub fn set_kvm_api_version(&self, answer: std::result::Result<i32, String>) {
        *lock(&self.kvm_api) = Some(answer);
    }

    /// What `uname -m` says from now on (`x86_64` until set).
    pub fn set_arch(&self, arch: &str) {
        *lock(&self.arch) = arch.into();
    }

    pub fn set_env(&self, k: &str, v: &str) {
        lock(&self.env).insert(k.into(), v.into());
    }

    /// Every command run so far, as command lines.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.log)
            .iter()
            .filter_map(|a| match a {
                Action::Run(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn actions(&self) -> Vec<Action> {
        lock(&self.log).clone()
    }

    pub fn reboots(&self) -> u32 {
        *lock(&self.reboots)
    }

    /// Reboots asked for by kexec (not counted in [`ScriptedHost::reboots`]).
    pub fn kexecs(&self) -> u32 {
        *lock(&self.kexecs)
    }

    pub fn said(&self) -> Vec<String> {
        lock(&self.said).clone()
    }

    /// Write a file under the root directly (test setup, not recorded).
    pub fn put(&self, target: &str, content: impl AsRef<[u8]>) {
        let p = self.path(target);
        if let Some(parent) = p.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(p, content);
    }
}

impl Host for ScriptedHost {
    fn root(&self) -> &Path {
        &self.root
    }

    fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    confined_writes!();

    fn run(&self, cmd: &CommandSpec) -> Result<CmdOutput> {
        self.record(Action::Run(cmd.display()));
        let answer = {
            let responders = lock(&self.responders);
            responders.iter().find_map(|r| r(cmd))
        };
        let out = match answer {
            Some(r) => r?,
            None => bail!("scripted host: no response for {}", cmd.display()),
        };
        checked(cmd, out)
    }

    fn request_reboot(&self) -> Result<()> {
        self.record(Action::Reboot);
        *lock(&self.reboots) += 1;
        Ok(())
    }

    fn request_kexec(&self) -> Result<()> {
        self.record(Action::Kexec);
        *lock(&self.kexecs) += 1;
        Ok(())
    }

    fn env(&self, key: &str) -> Option<String> {
        lock(&self.env).get(key).cloned()
    }

    fn now(&self) -> SystemTime {
        *lock(&self.clock)
    }

    fn sleep(&self, d: Duration) {
        *lock(&self.clock) += d;
    }

    fn say(&self, line: &str) {
        lock(&self.said).push(self.secrets.scrub(line));
    }

    fn record(&self, action: Action) {
        lock(&self.log).push(action);
    }

    fn free_bytes(&self, target: &str) -> Result<u64> {
        match *lock(&self.free_bytes) {
            Some(n) => Ok(n),
            None => super::statvfs_free(&self.path(target))
                .with_context(|| format!("reading free space of {target}")),
        }
    }

    fn kvm_api_version(&self, target: &str) -> Result<i32> {
        match lock(&self.kvm_api).clone() {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => bail!("KVM_GET_API_VERSION on {target} failed: {e}"),
            None if self.exists(target) => Ok(12),
            None => bail!(
                "KVM_GET_API_VERSION on {target} failed: cannot open it: No such file or directory"
            ),
        }
    }

    fn arch(&self) -> String {
        lock(&self.arch).clone()
    }

    fn euid(&self) -> u32 {
        0
    }
}

impl<H: Host> std::ops::Deref for DryRunHost<H> {
    type Target = H;

    /// Tests reach the wrapped host's own helpers (`put`, `commands`).
    fn deref(&self) -> &H {
        self.inner()
    }
}
