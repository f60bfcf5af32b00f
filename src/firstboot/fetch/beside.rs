//! The bundle's download beside the steps that do not need it: started with
//! the fetch step (or at the first step of a later start, after a reboot or
//! a kill), waited for before the `bundle` step and, when it is nearly done,
//! before the reboot. The runner holds a [`BundleBeside`] and tells it which
//! step comes next ([`BundleBeside::at_step`]); what to do at that step is
//! decided here.

use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{bundle_beside, human_bytes};
use crate::firstboot::host::Host;
use crate::firstboot::journal::{Journal, StepState};
use crate::firstboot::{cache_path, live, StepId};
use crate::plan::Plan;
use crate::transport::FetchConfig;

/// The download's thread within the run's scope, and what it needs.
pub struct BundleBeside<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    host: &'env dyn Host,
    plan: &'env Plan,
    settings: Settings,
    worker: Option<ScopedJoinHandle<'scope, Result<String>>>,
    started: Option<(Instant, u64)>,
    /// The download reports and takes its turn on the link through it.
    relay: live::Relay,
}

/// How the run wants the download.
#[derive(Debug, Clone)]
pub struct Settings {
    pub fetch: FetchConfig,
    /// The run takes the `bundle` step at all (`Scope::includes`).
    pub wanted: bool,
    /// About how long a reboot takes: a download with less time than this
    /// left is waited for before the reboot, a longer one is cut by it and
    /// resumed after.
    pub reboot_takes: Duration,
}

impl<'scope, 'env> BundleBeside<'scope, 'env> {
    pub fn new(
        scope: &'scope Scope<'scope, 'env>,
        host: &'env dyn Host,
        plan: &'env Plan,
        settings: Settings,
        relay: live::Relay,
    ) -> Self {
        Self {
            scope,
            host,
            plan,
            settings,
            worker: None,
            started: None,
            relay,
        }
    }

    /// The runner is about to take `step` (or pass it, done before): start
    /// the download when it is due, wait for it before the `bundle` step,
    /// and before the reboot either wait or say why not (the note the
    /// reboot's status carries).
    pub fn at_step(&mut self, journal: &mut Journal, step: StepId) -> Result<Option<String>> {
        self.start_if_due(journal, step);
        if step == StepId::Bundle {
            self.wait(journal)?;
        }
        if step == StepId::Reboot
            && !journal.is_complete(step)
            && journal.state(StepId::KernelBoot) == Some(StepState::RebootRequested)
        {
            return self.before_reboot(journal);
        }
        Ok(None)
    }

    fn start_if_due(&mut self, journal: &Journal, step: StepId) {
        let (host, plan) = (self.host, self.plan);
        let due = self.worker.is_none()
            && self.settings.wanted
            && !journal.is_complete(StepId::Bundle)
            && journal.is_complete(StepId::Preflight)
            && (step == StepId::Fetch || journal.is_complete(StepId::Fetch))
            && step != StepId::Bundle
            // Already whole: the bundle step verifies it, once.
            && !host.exists(&cache_path(&plan.assets.bundle))
            // One file for both: the fetch step downloads it.
            && plan.assets.bundle.sha256 != plan.assets.kernel.sha256;
        if !due {
            return;
        }
        self.started = Some((Instant::now(), bundle_bytes(host, plan)));
        let cfg = self.settings.fetch.clone();
        if step == StepId::Fetch && !journal.is_complete(StepId::Fetch) {
            // The kernel package comes first: the bundle waits for its rate
            // and gives way on a shared link (`link.rs`).
            self.relay.expect_foreground();
        }
        let progress = self.relay.handle();
        self.worker = Some(self.scope.spawn(move || {
            let fetched = bundle_beside(host, &progress, plan, &cfg)?;
            let bundle = &plan.assets.bundle;
            // Unpacked here too, while the kernel stage still runs: a
            // failure only leaves it to cube-install, as before.
            let ahead = match crate::firstboot::cube::bundle::extract_ahead(
                host,
                &cache_path(bundle),
                &bundle.sha256,
            ) {
                Ok(()) => ", unpacked ahead".to_string(),
                Err(e) => {
                    host.say(&format!(
                        "unpacking the bundle ahead: {e:#}; cube-install unpacks it"
                    ));
                    String::new()
                }
            };
            Ok(format!(
                "bundle {}{ahead}, beside the kernel stage",
                fetched.describe(bundle)
            ))
        }));
    }

    /// Wait for the download to end and record a verified bundle in the
    /// journal (the runner's thread is the journal's only writer). A failure
    /// is the `bundle` step's to report: it runs the same download again,
    /// with its retries and its hint. The runner calls this at the end of a
    /// run that does not reboot too: what the download brought is recorded.
    pub fn wait(&mut self, journal: &mut Journal) -> Result<()> {
        let Some(w) = self.worker.take() else {
            return Ok(());
        };
        let host = self.host;
        let joined = w.join();
        self.relay.finished("bundle");
        match joined {
            Ok(Ok(detail)) => {
                journal.start(host, StepId::Bundle);
                journal.mark(host, StepId::Bundle, StepState::Done, &detail);
                journal.save(host)?;
            }
            Ok(Err(e)) => host.say(&format!("fetch bundle: {e:#}; the bundle step tries again")),
            Err(_) => {
                host.say("fetch bundle: the download thread panicked; the bundle step tries again")
            }
        }
        Ok(())
    }

    /// Before the reboot: wait for the bundle when less of it is left than
    /// a reboot takes; otherwise reboot and resume it after. Says which.
    fn before_reboot(&mut self, journal: &mut Journal) -> Result<Option<String>> {
        let Some(worker) = self.worker.as_ref() else {
            return Ok(None);
        };
        if worker.is_finished() {
            self.wait(journal)?;
            return Ok(None);
        }
        let (host, plan) = (self.host, self.plan);
        let size = plan.assets.bundle.size;
        let have = bundle_bytes(host, plan);
        let left = size.saturating_sub(have);
        let eta = self.started.and_then(|(at, from)| {
            let rate = have.saturating_sub(from) as f64 / at.elapsed().as_secs_f64().max(1e-3);
            (rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / rate))
        });
        match eta {
            Some(eta) if eta > self.settings.reboot_takes => Ok(Some(format!(
                "rebooting with {} of the bundle left (about {}s at the current rate, longer than a reboot); its download resumes after the reboot",
                human_bytes(left),
                eta.as_secs()
            ))),
            // Unknown (no bytes yet, or a dry run): wait, the download has
            // its own timeouts.
            _ => {
                host.say(&format!(
                    "waiting for the last {} of the bundle before rebooting (less than a reboot takes)",
                    human_bytes(left)
                ));
                self.wait(journal)?;
                Ok(None)
            }
        }
    }
}

/// Bytes of the bundle on disk: all of it once verified, else the partial.
fn bundle_bytes(host: &dyn Host, plan: &Plan) -> u64 {
    let path = cache_path(&plan.assets.bundle);
    if host.exists(&path) {
        return plan.assets.bundle.size;
    }
    host.metadata(&format!("{path}.partial"))
        .ok()
        .flatten()
        .map_or(0, |m| m.len)
}
