//! Progress inside a step: the bytes the downloads have so far and the
//! phase a long install is in. They reach the status file and the webhook
//! while the step runs, rate-limited: a phase change is published at once,
//! download counts at most once every [`PUBLISH_EVERY`], and when the step
//! ends, counts not yet published are, if any were published during it (a
//! receiver never keeps a stale count; a quick step adds no post).
//!
//! A leaf: the runner opens [`during`] around each step with a publisher
//! (`report::Reporter::during`: status file and webhook) and hands the step
//! the channel, a [`Handle`], in its `Ctx`; the step's code reports through
//! [`Handle::download`] and [`Handle::phase`], and passes the handle to the
//! threads it spawns. Nothing is found through the thread: whatever
//! reports progress takes a `Handle` in its signature. Publishing runs on a
//! thread of its own, so a slow webhook receiver never slows a download,
//! and each publication is in order.
//!
//! Work beside the steps (the bundle's download during the kernel stage)
//! reports through the run's [`Relay`] instead ([`Relay::handle`]): its
//! counts join whichever step runs, and its download gives way to the
//! step's downloads as `link.rs` decides ([`Handle::wait_turn`],
//! [`Handle::check_turn`]).
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::link::{Arbiter, Foreground, Turn};
pub use super::link::{Rules, Verdict};

/// At most one publication of download counts per this interval.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);

/// How often the publisher looks at the clock when nothing wakes it (the
/// clock is the host's, which tests drive).
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// What a step adds to the status while it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    /// The phase a long install announced (empty: none).
    pub phase: String,
    /// The downloads under way, added up: one bar for the step.
    pub download: Option<Download>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Download {
    /// The labels of the assets downloading, joined with `+` (`bundle+kernel`).
    pub asset: String,
    pub bytes: u64,
    pub total: u64,
}

#[derive(Default)]
struct State {
    /// Bytes so far and size, by asset label.
    downloads: BTreeMap<String, (u64, u64)>,
    phase: String,
    /// Phase changes not yet published, each one, in order.
    changes: Vec<Overlay>,
    /// Counts changed since the last publication.
    counts_changed: bool,
    /// The step ended.
    ended: bool,
}

impl State {
    fn overlay(&self) -> Overlay {
        let download = (!self.downloads.is_empty()).then(|| Download {
            asset: self.downloads.keys().cloned().collect::<Vec<_>>().join("+"),
            bytes: self.downloads.values().map(|(b, _)| b).sum(),
            total: self.downloads.values().map(|(_, t)| t).sum(),
        });
        Overlay {
            phase: self.phase.clone(),
            download,
        }
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The run's relay: progress of work beside the steps, and the link
/// measurement between its download and theirs. One per run; clones share.
#[derive(Clone)]
pub struct Relay(Arc<RelayShared>);

struct RelayShared {
    state: Mutex<RelayState>,
    started: Instant,
}

struct RelayState {
    /// The step running now, if any.
    step: Option<Arc<Shared>>,
    /// Counts of the downloads beside the steps, by asset label.
    downloads: BTreeMap<String, (u64, u64)>,
    /// The runner started a background download with a step that is about
    /// to download: wait for that step's first bytes.
    expecting: bool,
    arbiter: Arbiter,
}

impl Default for Relay {
    fn default() -> Self {
        Self::new(Rules::default())
    }
}

impl Relay {
    pub fn new(rules: Rules) -> Self {
        Self(Arc::new(RelayShared {
            state: Mutex::new(RelayState {
                step: None,
                downloads: BTreeMap::new(),
                expecting: false,
                arbiter: Arbiter::new(rules),
            }),
            started: Instant::now(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, RelayState> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The channel for a thread working beside the steps.
    pub fn handle(&self) -> Handle {
        Handle(Some(Channel::Beside(self.clone())))
    }

    /// A background download starts with the step about to run (the fetch
    /// step): it waits for that step's downloads to show a rate first.
    pub fn expect_foreground(&self) {
        self.lock().expecting = true;
    }

    /// A download beside the steps ended: its counts leave the status.
    pub fn finished(&self, label: &str) {
        let mut st = self.lock();
        st.downloads.remove(label);
        if let Some(step) = &st.step {
            let mut s = step.lock();
            if s.downloads.remove(label).is_some() {
                s.counts_changed = true;
            }
        }
    }

    fn enter_step(&self, shared: &Arc<Shared>) {
        let mut st = self.lock();
        let mut s = shared.lock();
        for (label, counts) in &st.downloads {
            s.downloads.insert(label.clone(), *counts);
            s.counts_changed = true;
        }
        drop(s);
        st.step = Some(shared.clone());
    }

    fn leave_step(&self) {
        let mut st = self.lock();
        st.step = None;
        st.expecting = false;
    }

    /// The step's own downloads, as `link.rs` needs them.
    fn foreground(st: &RelayState) -> Foreground {
        let Some(step) = &st.step else {
            return if st.expecting {
                Foreground::Expected
            } else {
                Foreground::None
            };
        };
        let s = step.lock();
        let own: Vec<&(u64, u64)> = s
            .downloads
            .iter()
            .filter(|(label, _)| !st.downloads.contains_key(*label))
            .map(|(_, counts)| counts)
            .collect();
        if own.iter().any(|(bytes, total)| bytes < total) {
            Foreground::Bytes(own.iter().map(|(bytes, _)| bytes).sum())
        } else if own.is_empty() && st.expecting {
            Foreground::Expected
        } else {
            Foreground::None
        }
    }

    fn turn(&self) -> Turn {
        let now = self.0.started.elapsed();
        let mut st = self.lock();
        let fg = Self::foreground(&st);
        st.arbiter.turn(now, fg)
    }

    fn check(&self) -> Option<(Verdict, String)> {
        let now = self.0.started.elapsed();
        let mut st = self.lock();
        let fg = Self::foreground(&st);
        let verdict = st.arbiter.check(now, fg)?;
        let labels = st.step.as_ref().map_or_else(String::new, |step| {
            let s = step.lock();
            let own: Vec<&str> = s
                .downloads
                .keys()
                .filter(|label| !st.downloads.contains_key(*label))
                .map(String::as_str)
                .collect();
            own.join("+")
        });
        Some((verdict, labels))
    }
}

/// The channel a thread reports through.
#[derive(Clone)]
enum Channel {
    /// A step's, while it runs.
    Step(Arc<Shared>),
    /// The run's, for work beside the steps.
    Beside(Relay),
}

/// The progress channel a step (or the work beside the steps) reports
/// through; the default one goes nowhere (outside a step and the relay).
/// Clones share the channel.
#[derive(Clone, Default)]
pub struct Handle(Option<Channel>);

impl Handle {
    /// A channel that goes nowhere: for work outside a step (an image
    /// build's fetch, `dev fetch`, a direct call in a test).
    pub fn none() -> Self {
        Self(None)
    }

    /// An asset's download has `bytes` of `total`.
    pub fn download(&self, label: &str, bytes: u64, total: u64) {
        match &self.0 {
            Some(Channel::Step(shared)) => {
                let mut st = shared.lock();
                st.downloads.insert(label.to_string(), (bytes, total));
                st.counts_changed = true;
            }
            Some(Channel::Beside(relay)) => {
                let mut st = relay.lock();
                // A whole download shows to the end of this step, not in the next.
                if bytes >= total {
                    st.downloads.remove(label);
                } else {
                    st.downloads.insert(label.to_string(), (bytes, total));
                }
                if let Some(step) = &st.step {
                    let mut s = step.lock();
                    s.downloads.insert(label.to_string(), (bytes, total));
                    s.counts_changed = true;
                }
            }
            None => {}
        }
    }

    /// Before a download connects: beside the steps, wait until the step's
    /// downloads leave it the link (at once on any other channel).
    pub fn wait_turn(&self) {
        let Some(Channel::Beside(relay)) = &self.0 else {
            return;
        };
        while relay.turn() == Turn::Wait {
            std::thread::sleep(TURN_POLL);
        }
    }

    /// While a download transfers: beside the steps, the link measurement's
    /// verdict when it is reached, with the labels of the step's downloads
    /// it concerns (once per run; `None` on any other channel). On `Yield`
    /// the download closes its connection and calls [`Handle::wait_turn`]
    /// before resuming.
    pub fn check_turn(&self) -> Option<(Verdict, String)> {
        match &self.0 {
            Some(Channel::Beside(relay)) => relay.check(),
            _ => None,
        }
    }

    /// A long install entered `phase`. False when no step is listening (the
    /// caller then writes the status itself).
    pub fn phase(&self, phase: &str) -> bool {
        let Some(Channel::Step(shared)) = &self.0 else {
            return false;
        };
        let mut st = shared.lock();
        if st.ended {
            return false;
        }
        st.phase = phase.to_string();
        let now = st.overlay();
        st.changes.push(now);
        drop(st);
        shared.wake.notify_all();
        true
    }
}

/// How often a background download waiting for its turn looks again.
const TURN_POLL: Duration = Duration::from_millis(20);

/// Run the step `f` with a progress channel, which it gets; `publish` gets
/// what to add to the status, on a thread of its own, as the rules above
/// say. `clock` is the host's. What reports through `relay` meanwhile
/// joins the step's.
pub fn during<R>(
    clock: &(dyn Fn() -> SystemTime + Sync),
    publish: &mut (dyn FnMut(Overlay) + Send),
    relay: &Relay,
    f: impl FnOnce(&Handle) -> R,
) -> R {
    /// Tells the publisher and the relay the step ended, also when it
    /// panicked (the scope waits for the publisher before passing the
    /// panic on).
    struct End<'a>(&'a Shared, &'a Relay);
    impl Drop for End<'_> {
        fn drop(&mut self) {
            self.1.leave_step();
            self.0.lock().ended = true;
            self.0.wake.notify_all();
        }
    }
    let shared = Arc::new(Shared::default());
    relay.enter_step(&shared);
    std::thread::scope(|s| {
        let publisher = s.spawn(|| publisher(clock, publish, &shared));
        let end = End(&shared, relay);
        let result = f(&Handle(Some(Channel::Step(shared.clone()))));
        drop(end);
        // A publisher that panicked lost only progress lines.
        let _ = publisher.join();
        result
    })
}

/// What the publisher does next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Publish(Overlay),
    /// The step ended: publish this last, if anything, and stop.
    Finish(Option<Overlay>),
    Wait,
}

/// The rules, apart from threads and clocks: `due` is whether
/// [`PUBLISH_EVERY`] passed since the last publication, `published`
/// whether this step published counts or a phase already.
fn next(st: &mut State, due: bool, published: bool) -> Next {
    if !st.changes.is_empty() {
        return Next::Publish(st.changes.remove(0));
    }
    if st.ended {
        let last = (st.counts_changed && published).then(|| st.overlay());
        st.counts_changed = false;
        return Next::Finish(last);
    }
    if st.counts_changed && due {
        st.counts_changed = false;
        return Next::Publish(st.overlay());
    }
    Next::Wait
}

fn publisher(
    clock: &(dyn Fn() -> SystemTime + Sync),
    publish: &mut (dyn FnMut(Overlay) + Send),
    shared: &Shared,
) {
    // The runner published the step's start just before.
    let mut last = clock();
    let mut published = false;
    loop {
        let step = {
            let mut st = shared.lock();
            loop {
                // A clock set back counts as due: better one early post
                // than none until it catches up.
                let due = clock()
                    .duration_since(last)
                    .map_or(true, |d| d >= PUBLISH_EVERY);
                match next(&mut st, due, published) {
                    Next::Wait => {
                        st = shared
                            .wake
                            .wait_timeout(st, LOOK_EVERY)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    other => break other,
                }
            }
        };
        match step {
            Next::Publish(overlay) => {
                publish(overlay);
                last = clock();
                published = true;
            }
            Next::Finish(last_one) => {
                if let Some(overlay) = last_one {
                    publish(overlay);
                }
                return;
            }
            Next::Wait => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(st: &mut State, label: &str, bytes: u64, total: u64) {
        st.downloads.insert(label.into(), (bytes, total));
        st.counts_changed = true;
    }

    #[test]
    fn counts_wait_for_their_turn_phases_do_not() {
        let mut st = State::default();
        assert_eq!(next(&mut st, true, false), Next::Wait);
        counts(&mut st, "kernel", 10, 100);
        assert_eq!(next(&mut st, false, false), Next::Wait);
        counts(&mut st, "bundle", 5, 50);
        let Next::Publish(o) = next(&mut st, true, false) else {
            panic!()
        };
        assert_eq!(
            o.download,
            Some(Download {
                asset: "bundle+kernel".into(),
                bytes: 15,
                total: 150
            })
        );
        // Nothing new: nothing to publish, due or not.
        assert_eq!(next(&mut st, true, true), Next::Wait);
        // Two phase changes in a row are each published, not due or not.
        for p in ["unpacking", "configuring"] {
            st.phase = p.into();
            let o = st.overlay();
            st.changes.push(o);
        }
        let phases: Vec<String> = (0..2)
            .map(|_| match next(&mut st, false, true) {
                Next::Publish(o) => o.phase,
                n => panic!("{n:?}"),
            })
            .collect();
        assert_eq!(phases, ["unpacking", "configuring"]);
    }

    #[test]
    fn the_last_counts_are_published_at_the_end_when_counts_were_before() {
        let mut st = State::default();
        counts(&mut st, "bundle", 100, 100);
        st.ended = true;
        // Nothing published during the step: the runner's next post says it.
        assert_eq!(next(&mut st, false, false), Next::Finish(None));
        let mut st = State::default();
        counts(&mut st, "bundle", 100, 100);
        st.ended = true;
        let Next::Finish(Some(o)) = next(&mut st, false, true) else {
            panic!()
        };
        assert_eq!(o.download.unwrap().bytes, 100);
    }

    #[test]
    fn a_step_that_panics_ends_the_publisher_too() {
        let clock = SystemTime::now;
        let mut publish = |_: Overlay| {};
        let kept = Mutex::new(Handle::none());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            during(&clock, &mut publish, &Relay::default(), |progress| {
                *kept.lock().unwrap() = progress.clone();
                panic!("power cut")
            })
        }));
        assert!(r.is_err());
        assert!(!kept.into_inner().unwrap().phase("after the step"));
    }

    #[test]
    fn reports_reach_the_publisher_from_threads_the_step_spawns() {
        let got = Mutex::new(Vec::new());
        let clock = SystemTime::now;
        let mut publish = |o: Overlay| got.lock().unwrap().push(o);
        let step = during(&clock, &mut publish, &Relay::default(), |progress| {
            assert!(progress.phase("unpacking"));
            std::thread::scope(|s| {
                s.spawn(|| progress.download("bundle", 7, 9));
            });
            progress.clone()
        });
        assert!(!step.phase("outside a step"));
        let got = got.into_inner().unwrap();
        // The phase at once; the counts were never due, but as the step
        // published something, its last counts follow at the end.
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].phase, "unpacking");
        assert_eq!(got[1].download.as_ref().unwrap().bytes, 7);
    }

    #[test]
    fn counts_from_beside_the_steps_join_each_step_until_their_download_ends() {
        let relay = Relay::default();
        let got = Mutex::new(Vec::new());
        let clock = SystemTime::now;
        let mut publish = |o: Overlay| got.lock().unwrap().push(o);
        let beside = relay.handle();
        beside.download("bundle", 5, 50);
        assert!(!beside.phase("a phase has no step here"));
        // The next step shows them from its start, with its own.
        during(&clock, &mut publish, &relay, |progress| {
            assert!(progress.phase("unpacking"));
            beside.download("bundle", 20, 50);
        });
        // And the step after it, until the download ends.
        let step = during(&clock, &mut publish, &relay, |progress| {
            assert!(progress.phase("configuring"));
            relay.finished("bundle");
            progress.clone()
        });
        let got = got.into_inner().unwrap();
        let shown: Vec<(String, Option<u64>)> = got
            .iter()
            .map(|o| (o.phase.clone(), o.download.as_ref().map(|d| d.bytes)))
            .collect();
        assert_eq!(
            shown,
            [
                ("unpacking".to_string(), Some(5)),
                ("unpacking".to_string(), Some(20)),
                ("configuring".to_string(), Some(20)),
                ("configuring".to_string(), None),
            ],
            "{got:?}"
        );
        // Outside a step, a relay thread's counts wait for the next one.
        beside.download("bundle", 1, 2);
        assert!(!step.phase("outside"));
    }

    #[test]
    fn a_whole_download_beside_the_steps_leaves_with_the_step_it_ended_in() {
        let relay = Relay::default();
        let got = Mutex::new(Vec::new());
        let clock = SystemTime::now;
        let mut publish = |o: Overlay| got.lock().unwrap().push(o);
        let beside = relay.handle();
        during(&clock, &mut publish, &relay, |progress| {
            assert!(progress.phase("unpacking"));
            beside.download("bundle", 50, 50);
        });
        during(&clock, &mut publish, &relay, |progress| {
            assert!(progress.phase("configuring"));
        });
        let got = got.into_inner().unwrap();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[1].download.as_ref().unwrap().bytes, 50);
        assert_eq!(got[2].phase, "configuring");
        assert_eq!(got[2].download, None);
    }

    #[test]
    fn a_download_beside_the_steps_waits_for_the_step_it_started_with() {
        let relay = Relay::new(Rules {
            probe: Duration::from_millis(200),
            window: Duration::from_millis(200),
            ..Rules::default()
        });
        relay.expect_foreground();
        let order = Mutex::new(Vec::new());
        let clock = SystemTime::now;
        let mut publish = |_: Overlay| {};
        let step = std::thread::scope(|s| {
            let beside = relay.handle();
            let order = &order;
            s.spawn(move || {
                beside.wait_turn();
                order.lock().unwrap().push("background connects");
            });
            // Not before the step's first bytes plus the probe.
            std::thread::sleep(Duration::from_millis(100));
            during(&clock, &mut publish, &relay, |progress| {
                std::thread::sleep(Duration::from_millis(100));
                order.lock().unwrap().push("step's first bytes");
                for i in 1..=10 {
                    progress.download("kernel", i * 1000, 100_000);
                    std::thread::sleep(Duration::from_millis(30));
                }
                order.lock().unwrap().push("probe over");
                progress.clone()
            })
        });
        assert_eq!(
            order.into_inner().unwrap(),
            ["step's first bytes", "background connects", "probe over"]
        );
        // Anywhere but beside the steps, nothing waits or measures.
        for elsewhere in [step, Handle::none()] {
            elsewhere.wait_turn();
            assert_eq!(elsewhere.check_turn(), None);
        }
    }
}
