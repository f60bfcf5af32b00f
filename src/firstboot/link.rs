//! Which download gets the network first. The step's downloads (the kernel
//! package, which the kernel stage is waiting for) are the foreground; the
//! download beside the steps (the bundle, needed only after the reboot) is
//! the background, and shares the link only when sharing does not slow the
//! foreground.
//!
//! Whether two connections share one bottleneck is a fact of the network,
//! not of the plan. A cloud server's bandwidth cap splits between its
//! connections, so a second one halves the first; a long lossy path (a
//! GitHub download from mainland China, docs/helper.md "Downloads") limits
//! each connection on its own, so a second one adds to the total. So it is
//! measured, once per run: the foreground runs alone for `probe`, then the
//! background joins; when the foreground's rate over the next `window`
//! falls below `yield_below` of its rate alone, the background closes its
//! connection and waits until the foreground is done (then resumes by
//! Range). Otherwise both run to the end. A foreground that stalls for
//! `stall` (retrying, backing off) does not hold the background up.
//!
//! Pure: the caller passes the time and the foreground's byte count, so the
//! rules are tested without a network or a clock.

use std::time::Duration;

/// The measurement's knobs (production: [`Rules::default`]; the critical
/// path bench scales them with its sizes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// How long the foreground runs alone before its rate counts.
    pub probe: Duration,
    /// How long both run before the foreground's rate is compared.
    pub window: Duration,
    /// Below this share of its rate alone, the foreground is being slowed.
    pub yield_below: f64,
    /// A foreground without new bytes this long no longer holds the
    /// background back.
    pub stall: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            // Seconds, not less: TCP's slow start and a CDN's first bytes
            // make a shorter probe read low.
            probe: Duration::from_secs(3),
            window: Duration::from_secs(3),
            // Two connections on one capped link each get about half;
            // separate limits keep well above this.
            yield_below: 0.75,
            stall: Duration::from_secs(10),
        }
    }
}

/// The foreground as the caller sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreground {
    /// Nothing to give way to: no step download under way, none expected.
    None,
    /// A step that will download has started, but no byte has arrived yet.
    Expected,
    /// Step downloads under way, with this many bytes so far, added up.
    Bytes(u64),
}

/// What the background does next, before it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Go,
    Wait,
}

/// The measurement's outcome, told once (bytes per second).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// The foreground kept its rate: both continue.
    Share { alone: f64, beside: f64 },
    /// The foreground slowed: the background stops until it is done.
    Yield { alone: f64, beside: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// No foreground byte seen yet.
    Idle,
    /// The foreground alone since `at` (its byte count then).
    Probing { at: Duration, bytes: u64 },
    /// The background joined at `at`; the foreground had `alone` B/s.
    Joined {
        alone: f64,
        at: Duration,
        bytes: u64,
    },
    /// Measured: the background waits while the foreground makes
    /// progress; `last` is when its count last changed.
    Yielded { last: Duration, bytes: u64 },
    /// Decided for the rest of the run: the background goes.
    Free,
}

/// One run's measurement.
#[derive(Debug, Clone)]
pub struct Arbiter {
    rules: Rules,
    state: State,
}

impl Arbiter {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            state: State::Idle,
        }
    }

    /// Before the background connects: whether it may now.
    pub fn turn(&mut self, now: Duration, fg: Foreground) -> Turn {
        let bytes = match fg {
            Foreground::None => {
                // Whatever was measured, the foreground is done.
                if !matches!(self.state, State::Idle) {
                    self.state = State::Free;
                }
                return Turn::Go;
            }
            Foreground::Expected => {
                return match self.state {
                    State::Free => Turn::Go,
                    _ => Turn::Wait,
                }
            }
            Foreground::Bytes(b) => b,
        };
        match self.state {
            State::Idle => {
                self.state = State::Probing { at: now, bytes };
                Turn::Wait
            }
            State::Probing { at, bytes: from } => {
                let took = now.saturating_sub(at);
                if took < self.rules.probe {
                    return Turn::Wait;
                }
                let alone = rate(bytes.saturating_sub(from), took);
                self.state = if alone > 0.0 {
                    State::Joined {
                        alone,
                        at: now,
                        bytes,
                    }
                } else {
                    // Nothing arrived alone: there is no rate to protect.
                    State::Free
                };
                Turn::Go
            }
            State::Joined { .. } | State::Free => Turn::Go,
            State::Yielded { last, bytes: seen } => {
                if bytes != seen {
                    self.state = State::Yielded { last: now, bytes };
                    Turn::Wait
                } else if now.saturating_sub(last) >= self.rules.stall {
                    self.state = State::Free;
                    Turn::Go
                } else {
                    Turn::Wait
                }
            }
        }
    }

    /// While the background transfers: the verdict, once, when the window
    /// has passed. `Yield` means: close the connection, then wait for
    /// [`Arbiter::turn`].
    pub fn check(&mut self, now: Duration, fg: Foreground) -> Option<Verdict> {
        let State::Joined { alone, at, bytes } = self.state else {
            return None;
        };
        let Foreground::Bytes(b) = fg else {
            // The foreground finished inside the window: nothing to protect.
            self.state = State::Free;
            return None;
        };
        let took = now.saturating_sub(at);
        if took < self.rules.window {
            return None;
        }
        let beside = rate(b.saturating_sub(bytes), took);
        if beside < self.rules.yield_below * alone {
            self.state = State::Yielded {
                last: now,
                bytes: b,
            };
            Some(Verdict::Yield { alone, beside })
        } else {
            self.state = State::Free;
            Some(Verdict::Share { alone, beside })
        }
    }
}

fn rate(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64().max(1e-6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Foreground::{Bytes, Expected};

    const MB: u64 = 1_000_000;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    fn arbiter() -> Arbiter {
        Arbiter::new(Rules::default())
    }

    /// Probe 2 MB/s alone from t=1 s, join at t=4 s; returns the arbiter.
    fn joined() -> Arbiter {
        let mut a = arbiter();
        assert_eq!(a.turn(s(0.0), Expected), Turn::Wait);
        assert_eq!(a.turn(s(1.0), Bytes(MB)), Turn::Wait);
        assert_eq!(a.turn(s(3.9), Bytes(6 * MB)), Turn::Wait);
        assert_eq!(a.turn(s(4.0), Bytes(7 * MB)), Turn::Go);
        a
    }

    #[test]
    fn a_shared_link_sends_the_background_away_until_the_foreground_is_done() {
        let mut a = joined();
        // Inside the window: no verdict yet.
        assert_eq!(a.check(s(5.0), Bytes(8 * MB)), None);
        // 1 MB/s beside the background, was 2 MB/s alone.
        let v = a.check(s(7.0), Bytes(10 * MB));
        assert_eq!(
            v,
            Some(Verdict::Yield {
                alone: 2e6,
                beside: 1e6
            })
        );
        assert_eq!(a.check(s(8.0), Bytes(12 * MB)), None, "told once");
        // Waits while the foreground makes progress, goes when it is done.
        assert_eq!(a.turn(s(9.0), Bytes(14 * MB)), Turn::Wait);
        assert_eq!(a.turn(s(15.0), Bytes(26 * MB)), Turn::Wait);
        assert_eq!(a.turn(s(16.0), Foreground::None), Turn::Go);
        assert_eq!(a.turn(s(17.0), Bytes(27 * MB)), Turn::Go, "decided");
    }

    #[test]
    fn separate_limits_let_both_run() {
        let mut a = joined();
        let v = a.check(s(7.0), Bytes(13 * MB));
        assert_eq!(
            v,
            Some(Verdict::Share {
                alone: 2e6,
                beside: 2e6
            })
        );
        assert_eq!(a.check(s(9.0), Bytes(13 * MB)), None);
        assert_eq!(a.turn(s(9.0), Bytes(13 * MB)), Turn::Go);
    }

    #[test]
    fn a_stalled_foreground_does_not_hold_the_background() {
        let mut a = joined();
        assert!(matches!(
            a.check(s(7.0), Bytes(8 * MB)),
            Some(Verdict::Yield { .. })
        ));
        // The foreground backs off: no new bytes for `stall`.
        assert_eq!(a.turn(s(12.0), Bytes(8 * MB)), Turn::Wait);
        assert_eq!(a.turn(s(16.9), Bytes(8 * MB)), Turn::Wait);
        assert_eq!(a.turn(s(17.0), Bytes(8 * MB)), Turn::Go);
    }

    #[test]
    fn a_foreground_that_ends_during_the_probe_or_window_frees_the_link() {
        let mut a = arbiter();
        assert_eq!(a.turn(s(0.0), Bytes(0)), Turn::Wait);
        assert_eq!(a.turn(s(1.0), Foreground::None), Turn::Go);
        assert_eq!(a.turn(s(2.0), Expected), Turn::Go);
        let mut a = joined();
        assert_eq!(a.check(s(5.0), Foreground::None), None);
        assert_eq!(a.check(s(9.0), Bytes(9 * MB)), None);
    }

    #[test]
    fn nothing_to_give_way_to_goes_at_once() {
        let mut a = arbiter();
        assert_eq!(a.turn(s(0.0), Foreground::None), Turn::Go);
        // A probe that saw no bytes has no rate to protect.
        let mut a = arbiter();
        assert_eq!(a.turn(s(0.0), Bytes(5)), Turn::Wait);
        assert_eq!(a.turn(s(3.0), Bytes(5)), Turn::Go);
        assert_eq!(a.check(s(9.0), Bytes(5)), None);
    }
}
