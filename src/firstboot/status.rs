//! The machine-readable status at /run/cubeboot/status.json: what the helper
//! is doing, how far it got, the last error and a hint. `cube-firstboot
//! status` prints it; the webhook posts it. It is rebuilt from the journal
//! whenever the helper starts, because /run does not survive the reboot.

use std::time::Duration;

use anyhow::{Context, Result};

use super::host::{unix_secs, Host};
use super::journal::{Journal, StepState};
use super::run_state::RunState;
use super::secrets::Secrets;
use super::{StepId, JOURNAL_PATH, STATUS_PATH};
use crate::plan::Plan;
// The status's types are the schema the receiver reads too.
pub use crate::status_schema::{
    CheckResult, DownloadProgress, Progress, Status, StepView, STATUS_VERSION,
};

/// Exit codes shared by `run` and `status` (docs/helper.md).
pub mod exit {
    pub const DONE: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const RUNNING: i32 = 3;
    pub const REBOOTING: i32 = 10;
}

impl Status {
    /// The status a journal implies, with `state` and `step` given by the caller.
    pub fn from_journal(
        host: &dyn Host,
        plan: Option<&Plan>,
        journal: &Journal,
        state: RunState,
        step: Option<StepId>,
    ) -> Self {
        let steps: Vec<StepView> = StepId::ALL
            .iter()
            .map(|s| {
                let record = journal.steps.get(s);
                // The journal keeps kernel-boot's reboot-requested (the
                // trial-boot logic reads it); once the reboot step is done,
                // the reboot it asked for came: show it done.
                let state = record.map(|r| match r.state {
                    StepState::RebootRequested
                        if journal.state(StepId::Reboot) == Some(StepState::Done) =>
                    {
                        StepState::Done
                    }
                    other => other,
                });
                StepView {
                    name: *s,
                    state,
                    detail: record.map(|r| r.detail.clone()).unwrap_or_default(),
                }
            })
            .collect();
        Self {
            version: STATUS_VERSION,
            state,
            step,
            progress: Progress {
                done: StepId::ALL
                    .iter()
                    .filter(|s| journal.is_complete(**s))
                    .count(),
                total: StepId::ALL.len(),
            },
            last_error: journal.last_error.clone(),
            hints: journal.hints.clone(),
            checks: journal.checks.clone(),
            warnings: journal.warnings.clone(),
            generator: plan.map(|p| p.generator.clone()).unwrap_or_default(),
            profile: plan.map(|p| p.target.profile.clone()).unwrap_or_default(),
            updated_at: unix_secs(host.now()),
            message: String::new(),
            steps,
            hostname: host
                .read_optional("/etc/hostname")
                .ok()
                .flatten()
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
            role: plan.map(|p| p.cube.role),
            download: None,
            phase: String::new(),
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }

    /// The exit code `status` and `run` use for this state.
    pub fn exit_code(&self) -> i32 {
        match self.state {
            RunState::Done => exit::DONE,
            RunState::Failed(_) => exit::FAILED,
            RunState::Rebooting => exit::REBOOTING,
            RunState::Pending | RunState::Running | RunState::Stopped => exit::RUNNING,
        }
    }

    /// Replace every known secret value with `***` in the free-text
    /// fields. The status file is world-readable and the webhook leaves the
    /// machine, while error text can quote an installer's output.
    pub fn redact(&mut self, secrets: &Secrets) {
        let scrub = |s: &mut String| secrets.scrub_in_place(s);
        if let Some(e) = self.last_error.as_mut() {
            scrub(e);
        }
        self.hints.iter_mut().for_each(scrub);
        self.warnings.iter_mut().for_each(scrub);
        self.checks.values_mut().for_each(|c| scrub(&mut c.detail));
        self.steps.iter_mut().for_each(|s| scrub(&mut s.detail));
        scrub(&mut self.message);
        scrub(&mut self.hostname);
    }

    pub fn to_json(&self) -> String {
        // Plain structs and BTreeMaps always serialize.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Write the status file, scrubbed of every secret the host knows
    /// (whoever builds the status, nothing secret reaches the file).
    pub fn write(&mut self, host: &dyn Host) -> Result<()> {
        self.redact(host.secrets());
        self.version = STATUS_VERSION;
        self.updated_at = unix_secs(host.now());
        host.write_atomic(STATUS_PATH, self.to_json().as_bytes(), 0o644)
    }

    pub fn read(host: &dyn Host) -> Result<Option<Self>> {
        match host.read_optional(STATUS_PATH)? {
            None => Ok(None),
            Some(t) => Ok(Some(
                serde_json::from_str(&t).with_context(|| format!("parsing {STATUS_PATH}"))?,
            )),
        }
    }

    /// The status as `cube-firstboot status` sees it: the status file, or,
    /// when /run was emptied by a reboot, what the journal says.
    pub fn current(host: &dyn Host) -> Result<Option<Self>> {
        if let Some(s) = Self::read(host)? {
            return Ok(Some(s));
        }
        let Some(journal) = Journal::read(host)? else {
            return Ok(None);
        };
        let (state, step) = match &journal.finished {
            Some(f) => (f.clone(), None),
            None => {
                let next = StepId::ALL.into_iter().find(|s| !journal.is_complete(*s));
                // No helper is writing the status file, so none is running.
                (RunState::Stopped, next)
            }
        };
        let mut s = Self::from_journal(host, None, &journal, state, step);
        s.message = match &journal.finished {
            Some(f) => finished_message(&journal, f),
            None => format!("not running; the journal {JOURNAL_PATH} shows an unfinished run"),
        };
        Ok(Some(s))
    }

    /// Lines for people (`cube-firstboot status` without `--json`).
    pub fn human(&self) -> String {
        let mut out = Vec::new();
        out.push(format!("state:    {}", self.state));
        if let Some(step) = self.step {
            out.push(format!("step:     {step}"));
        }
        out.push(format!(
            "progress: {} of {} steps",
            self.progress.done, self.progress.total
        ));
        if !self.phase.is_empty() {
            out.push(format!("phase:    {}", self.phase));
        }
        if let Some(d) = &self.download {
            const MIB: f64 = 1024.0 * 1024.0;
            out.push(format!(
                "download: {} {:.1} of {:.1} MiB ({}%)",
                d.asset,
                d.bytes as f64 / MIB,
                d.total as f64 / MIB,
                (d.bytes.min(d.total) * 100)
                    .checked_div(d.total)
                    .unwrap_or(0)
            ));
        }
        if !self.message.is_empty() {
            out.push(format!("message:  {}", self.message));
        }
        if let Some(e) = &self.last_error {
            let mut lines = e.lines();
            out.push(format!("error:    {}", lines.next().unwrap_or("")));
            out.extend(lines.map(|l| format!("          {l}")));
            if let Some(row) = super::troubleshooting::row_for(e) {
                out.push(format!(
                    "help:     docs/troubleshooting.md, \"{}\"",
                    row.symptom
                ));
            }
        }
        out.extend(self.hints.iter().map(|h| format!("hint:     {h}")));
        out.extend(self.warnings.iter().map(|w| format!("warning:  {w}")));
        for (name, c) in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            out.push(format!("check:    {mark} {name}: {}", c.detail));
        }
        for s in &self.steps {
            let detail = if s.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.detail.lines().next().unwrap_or(""))
            };
            let state = s.state.map_or("pending", |st| st.name());
            out.push(format!("  {:<16} {state}{detail}", s.name.name()));
        }
        let mut text = out.join("\n");
        text.push('\n');
        text
    }
}

/// Block until the run is done or failed, or `timeout` passes. Returns the
/// last status seen (`None`: nothing ever written).
pub fn wait(host: &dyn Host, timeout: Duration, poll: Duration) -> Result<Option<Status>> {
    let started = host.now();
    let max_polls = timeout.as_millis() / poll.as_millis().max(1) + 1;
    let mut last = None;
    for _ in 0..=max_polls {
        last = Status::read(host)?;
        if last.as_ref().is_some_and(Status::is_terminal) {
            return Ok(last);
        }
        if host.now().duration_since(started).unwrap_or_default() >= timeout {
            break;
        }
        host.sleep(poll);
    }
    // Nothing terminal in /run: the journal may know (e.g. after a reboot
    // into a run that already finished).
    match Status::current(host)? {
        Some(s) if s.is_terminal() => Ok(Some(s)),
        _ => Ok(last),
    }
}

/// The one-line message of a run that ended, as it was first written.
pub fn finished_message(journal: &Journal, terminal: &RunState) -> String {
    if let Some(m) = &journal.facts.final_message {
        return m.clone();
    }
    let first = journal
        .last_error
        .as_deref()
        .and_then(|e| e.lines().next())
        .unwrap_or("");
    if first.is_empty() {
        terminal.to_string()
    } else {
        format!("{terminal}: {first}")
    }
}

/// Put `phase` in the status file the runner wrote for the step under way,
/// and post it: through the step's progress channel when the runner opened
/// one (src/firstboot/live.rs), else into the file directly (no file, e.g.
/// a direct call in a test: nothing to update). The runner's next write, at
/// the step's end, clears it.
pub fn set_phase(host: &dyn Host, progress: &super::live::Handle, phase: &str) -> Result<()> {
    // Stays: in a dry run each phase would be one more status write in the listing.
    if host.is_dry_run() || progress.phase(phase) {
        return Ok(());
    }
    if let Some(mut s) = Status::read(host)? {
        s.phase = phase.to_string();
        s.write(host)?;
    }
    Ok(())
}

/// At most one streamed line per this interval reaches the console.
const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// Run a long command (a package install, the Cube installer) with its
/// output on the console as it runs, rate-limited: at most one line a
/// second, every line that looks like an error, and always the last line.
/// `phase` goes into the status while it runs. The whole output stays in
/// the returned [`CmdOutput`] for the caller's log and error.
pub fn run_with_progress(
    host: &dyn Host,
    progress: &super::live::Handle,
    cmd: &super::host::CommandSpec,
    phase: &str,
    prefix: &str,
) -> Result<super::host::CmdOutput> {
    set_phase(host, progress, phase)?;
    let mut last_said: Option<std::time::SystemTime> = None;
    let mut last_line = String::new();
    let mut last_was_said = true;
    let out = host.run_streaming(cmd, &mut |line| {
        let now = host.now();
        let due =
            last_said.is_none_or(|t| now.duration_since(t).unwrap_or_default() >= LINE_INTERVAL);
        last_line = line.to_string();
        if due || looks_like_error(line) {
            host.say(&format!("{prefix} | {line}"));
            last_said = Some(now);
            last_was_said = true;
        } else {
            last_was_said = false;
        }
    })?;
    if !last_was_said {
        host.say(&format!("{prefix} | {last_line}"));
    }
    Ok(out)
}

fn looks_like_error(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("error") || l.contains("fatal") || l.starts_with("e: ") || l.contains("failed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firstboot::host::ScriptedHost;
    use crate::firstboot::journal::StepState;
    use crate::firstboot::run_state::Failure;

    #[test]
    fn a_long_install_streams_rate_limited_and_shows_its_phase() {
        use crate::firstboot::host::{CmdOutput, CommandSpec};
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        let mut st = Status::from_journal(&host, None, &Journal::new("x"), RunState::Running, None);
        st.write(&host).unwrap();
        // dpkg unpacking a kernel: 200 lines in well under a second, one error.
        let mut text: String = (0..200).map(|i| format!("Unpacking part {i}\n")).collect();
        text.push_str("dpkg: error processing package foo (--install):\n");
        text.push_str("Setting up linux-image (6.6.69) ...\n");
        let status_file = host.path(STATUS_PATH);
        let seen_phase = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let seen = seen_phase.clone();
        host.on(move |c: &CommandSpec| {
            (c.program == "dpkg").then(|| {
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&status_file).unwrap()).unwrap();
                *seen.lock().unwrap() = v["phase"].as_str().unwrap_or_default().to_string();
                Ok(CmdOutput::ok(text.clone()))
            })
        });
        let cmd = CommandSpec::new("dpkg").args(["-i", "k.deb"]);
        let progress = crate::firstboot::live::Handle::none();
        run_with_progress(
            &host,
            &progress,
            &cmd,
            "installing the kernel package",
            "dpkg",
        )
        .unwrap();
        assert_eq!(*seen_phase.lock().unwrap(), "installing the kernel package");
        let said: Vec<String> = host
            .said()
            .into_iter()
            .filter(|l| l.starts_with("dpkg | "))
            .collect();
        assert_eq!(
            said,
            vec![
                "dpkg | Unpacking part 0",
                "dpkg | dpkg: error processing package foo (--install):",
                "dpkg | Setting up linux-image (6.6.69) ...",
            ]
        );
    }

    #[test]
    fn a_person_sees_the_download_and_the_phase() {
        let s = Status {
            phase: "installing services".into(),
            download: Some(DownloadProgress {
                asset: "bundle+kernel".into(),
                bytes: 3 << 20,
                total: 12 << 20,
            }),
            ..Status::default()
        };
        let text = s.human();
        assert!(text.contains("phase:    installing services\n"), "{text}");
        assert!(
            text.contains("download: bundle+kernel 3.0 of 12.0 MiB (25%)\n"),
            "{text}"
        );
    }

    #[test]
    fn a_failure_points_at_its_troubleshooting_row() {
        let s = Status {
            last_error: Some(
                "cube installer timed out after 3600 s; log: /var/log/cubeboot/install.log".into(),
            ),
            ..Status::default()
        };
        assert!(
            s.human()
                .contains("\nhelp:     docs/troubleshooting.md, \"the Cube installer hangs\"\n"),
            "{}",
            s.human()
        );
        let s = Status {
            last_error: Some("something no row knows".into()),
            ..Status::default()
        };
        assert!(!s.human().contains("help:"));
    }

    #[test]
    fn exit_codes_follow_the_state() {
        let code = |state: &str| {
            Status {
                state: state.parse().unwrap(),
                ..Status::default()
            }
            .exit_code()
        };
        assert_eq!(code("done"), 0);
        assert_eq!(code("failed: fetch"), 1);
        assert_eq!(code("failed: rolled back to 6.1.0-26-amd64"), 1);
        assert_eq!(code("rebooting"), 10);
        assert_eq!(code("running"), 3);
        assert_eq!(code("stopped"), 3);
    }

    #[test]
    fn secrets_are_redacted_everywhere() {
        let mut s = Status {
            last_error: Some(
                "command failed: CUBE_SANDBOX_MYSQL_PASSWORD=hunter22 bash install.sh".into(),
            ),
            hints: vec!["hunter22".into()],
            message: "x hunter22 y".into(),
            ..Status::default()
        };
        let secrets = Secrets::new();
        secrets.add("hunter22");
        s.redact(&secrets);
        let text = s.to_json();
        assert!(!text.contains("hunter22"), "{text}");
        assert_eq!(
            s.last_error.as_deref(),
            Some("command failed: CUBE_SANDBOX_MYSQL_PASSWORD=*** bash install.sh")
        );
    }

    #[test]
    fn status_falls_back_to_the_journal_after_a_reboot() {
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        assert_eq!(Status::current(&host).unwrap(), None);
        let mut j = Journal::new("abc");
        j.mark(&host, StepId::Preflight, StepState::Done, "ok");
        j.save(&host).unwrap();
        let s = Status::current(&host).unwrap().unwrap();
        assert_eq!(s.state, RunState::Stopped);
        assert_eq!(s.step, Some(StepId::Fetch));
        assert_eq!(s.progress.done, 1);
        assert_eq!(s.exit_code(), exit::RUNNING);
        j.finished = Some(RunState::Done);
        j.save(&host).unwrap();
        assert_eq!(Status::current(&host).unwrap().unwrap().exit_code(), 0);
    }

    #[test]
    fn wait_returns_on_a_terminal_state_or_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        let mut s = Status {
            state: RunState::Running,
            ..Status::default()
        };
        s.write(&host).unwrap();
        let t0 = host.now();
        let got = wait(&host, Duration::from_secs(30), Duration::from_secs(1)).unwrap();
        assert_eq!(got.unwrap().state, RunState::Running);
        let waited = host.now().duration_since(t0).unwrap();
        assert_eq!(waited, Duration::from_secs(30));

        s.state = RunState::Failed(Failure::Step(StepId::Fetch));
        s.write(&host).unwrap();
        let got = wait(&host, Duration::from_secs(30), Duration::from_secs(1)).unwrap();
        assert_eq!(got.unwrap().exit_code(), exit::FAILED);
    }
}
