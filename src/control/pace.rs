//! How fast the trash may be deleted: the pacing of cleanup unlinks by what
//! the data plane is doing.
//!
//! A closed rollout's directory is moved into the instance's trash at once
//! ([`super::trash`]); its deletion then spends only spare capacity. The
//! [`Pacer`] decides, each time the control loop turns, how many unlinks may
//! be queued:
//!
//! * **idle** (no request but closes reached a worker for
//!   [`PaceConfig::idle_after`], and none is in progress: a long tool call or
//!   an open stream keeps the workers serving):
//!   full speed, as many in flight as [`FULL_IN_FLIGHT`];
//! * **paced** (the workers serve): a token bucket at the current rate, with
//!   bursts of at most [`BURST`] worth of tokens and few unlinks in flight, so
//!   each burst of kernel work is short. The rate starts at the ceiling
//!   (`--cleanup-rate`) and adapts to the workers' event-loop lag: halved
//!   whenever a heartbeat came later than [`LAG_HIGH_US`], raised again by a
//!   twentieth of the ceiling per quiet heartbeat, never below the floor
//!   (`--cleanup-floor`), so the trash keeps draining under steady load;
//! * **over the cap** (more entries known in the trash than
//!   `--cleanup-backlog-max`): full speed until it is back under half the cap
//!   (as RocksDB's delete scheduler deletes at once past its trash ratio);
//! * **shutdown**: full speed (nobody is being served).
//!
//! The pacer is pure: time and the data plane's counters come in as
//! arguments, so its decisions are unit-tested without a clock.

use std::time::{Duration, Instant};

/// Unlinks in flight at full speed (enough to keep the io-wq threads busy).
pub const FULL_IN_FLIGHT: usize = 64;
/// Unlinks in flight while pacing (each burst of kernel work stays short).
pub const PACED_IN_FLIGHT: usize = 8;
/// Longest burst the token bucket holds, in time at the current rate.
pub const BURST: Duration = Duration::from_millis(2);
/// Pacing step: how often the control loop wakes while paced work waits.
pub const STEP: Duration = Duration::from_millis(1);
/// A worker heartbeat later than this (µs) halves the paced rate.
pub const LAG_HIGH_US: u64 = 1000;

/// Pacing settings (flags).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaceConfig {
    /// Pace at all (`--cleanup-pace adaptive`); `false`: always full speed.
    pub adaptive: bool,
    /// Highest rate while the workers serve, entries/s (`--cleanup-rate`).
    pub rate: u32,
    /// Lowest rate while the workers serve, entries/s (`--cleanup-floor`).
    pub floor: u32,
    /// Known trash entries past which deletion goes at full speed
    /// (`--cleanup-backlog-max`).
    pub backlog_max: u64,
    /// No request for this long: the workers are idle.
    pub idle_after: Duration,
}

impl Default for PaceConfig {
    fn default() -> PaceConfig {
        PaceConfig {
            adaptive: true,
            rate: 10_000,
            floor: 7_000,
            backlog_max: 200_000,
            idle_after: Duration::from_millis(100),
        }
    }
}

/// Why the trash is deleted at the speed it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No request for a while: full speed.
    Idle,
    /// The workers serve: paced.
    Paced,
    /// The backlog passed its cap: full speed.
    OverCap,
    /// Shutting down: full speed.
    Shutdown,
    /// `--cleanup-pace off`: full speed.
    Off,
}

impl Mode {
    /// Every mode, in metric order.
    pub const ALL: [Mode; 5] = [
        Mode::Idle,
        Mode::Paced,
        Mode::OverCap,
        Mode::Shutdown,
        Mode::Off,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::Paced => "paced",
            Mode::OverCap => "over_cap",
            Mode::Shutdown => "shutdown",
            Mode::Off => "off",
        }
    }
}

/// What may be queued now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Unlinks that may still be queued (`u64::MAX`: no limit).
    pub tokens: u64,
    /// Most unlinks in flight at once.
    pub max_in_flight: usize,
}

impl Allowance {
    /// No limit but the in-flight cap.
    pub fn full() -> Allowance {
        Allowance {
            tokens: u64::MAX,
            max_in_flight: FULL_IN_FLIGHT,
        }
    }

    /// Whether one more unlink may be queued with `in_flight` in flight.
    pub fn allows(&self, in_flight: usize) -> bool {
        self.tokens > 0 && in_flight < self.max_in_flight
    }

    /// Spends one token.
    pub fn spend(&mut self) {
        if self.tokens != u64::MAX {
            self.tokens = self.tokens.saturating_sub(1);
        }
    }

    /// Whether it is limited by tokens (so the loop must wake to refill).
    pub fn limited(&self) -> bool {
        self.tokens != u64::MAX
    }
}

/// What the data plane looks like right now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Requests the workers have received since start (all workers), close
    /// requests not counted.
    pub requests: u64,
    /// Lateness of the workers' latest heartbeats (the largest), µs.
    pub lag_us: u64,
    /// How many heartbeats the workers have had (all workers), to tell a new
    /// lag reading from one seen before.
    pub beats: u64,
    /// Requests in progress (waiting for a child or being proxied, streams
    /// included) at the workers' latest scan.
    pub in_progress: u64,
}

/// The pacing state.
#[derive(Debug)]
pub struct Pacer {
    cfg: PaceConfig,
    mode: Mode,
    /// Current paced rate, entries/s.
    rate: f64,
    tokens: f64,
    last: Option<Instant>,
    last_requests: u64,
    last_beats: u64,
    last_activity: Option<Instant>,
    shutdown: bool,
    /// Times the backlog passed its cap.
    pub over_cap_episodes: u64,
}

impl Pacer {
    /// A pacer that starts idle at the ceiling rate.
    pub fn new(cfg: PaceConfig) -> Pacer {
        Pacer {
            cfg,
            mode: if cfg.adaptive { Mode::Idle } else { Mode::Off },
            rate: f64::from(cfg.rate.max(cfg.floor)),
            tokens: 0.0,
            last: None,
            last_requests: 0,
            last_beats: 0,
            last_activity: None,
            shutdown: false,
            over_cap_episodes: 0,
        }
    }

    /// From now on, full speed.
    pub fn shutdown(&mut self) {
        self.shutdown = true;
    }

    /// The mode of the latest [`Pacer::update`].
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The current paced rate, entries/s.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Notes the data plane's request count at `now` without deciding
    /// anything (called on every heartbeat, so that activity before a
    /// cleanup starts is dated right).
    pub fn observe(&mut self, now: Instant, requests: u64) {
        if requests != self.last_requests {
            self.last_requests = requests;
            self.last_activity = Some(now);
        }
    }

    /// Decides what may be queued at `now`, given the data plane's `load` and
    /// the `backlog` of known trash entries. Returns the allowance and, when
    /// the mode changed, the mode it changed from.
    pub fn update(&mut self, now: Instant, load: Load, backlog: u64) -> (Allowance, Option<Mode>) {
        let dt = self
            .last
            .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        self.last = Some(now);
        self.observe(now, load.requests);
        let serving = load.in_progress > 0
            || self
                .last_activity
                .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.idle_after);
        let over = match self.mode {
            Mode::OverCap => backlog > self.cfg.backlog_max / 2,
            _ => backlog > self.cfg.backlog_max,
        };
        let mode = if !self.cfg.adaptive {
            Mode::Off
        } else if self.shutdown {
            Mode::Shutdown
        } else if over {
            Mode::OverCap
        } else if serving {
            Mode::Paced
        } else {
            Mode::Idle
        };
        let changed = (mode != self.mode).then_some(self.mode);
        if mode == Mode::OverCap && changed.is_some() {
            self.over_cap_episodes += 1;
        }
        self.mode = mode;
        if mode != Mode::Paced {
            self.tokens = 0.0;
            self.last_beats = load.beats;
            return (Allowance::full(), changed);
        }
        // Adapt to the workers' lag: once per new heartbeat reading.
        let ceiling = f64::from(self.cfg.rate.max(self.cfg.floor));
        let floor = f64::from(self.cfg.floor.min(self.cfg.rate));
        if load.beats != self.last_beats {
            self.last_beats = load.beats;
            if load.lag_us > LAG_HIGH_US {
                self.rate = (self.rate / 2.0).max(floor);
            } else {
                self.rate = (self.rate + ceiling / 20.0).min(ceiling);
            }
        }
        let burst = (self.rate * BURST.as_secs_f64()).max(1.0);
        self.tokens = (self.tokens + self.rate * dt.as_secs_f64()).min(burst);
        let whole = self.tokens.floor();
        self.tokens -= whole;
        (
            Allowance {
                tokens: whole as u64,
                max_in_flight: PACED_IN_FLIGHT,
            },
            changed,
        )
    }

    /// Gives back tokens an allowance did not use (so a quiet moment does
    /// not lose them, up to the burst).
    pub fn refund(&mut self, unused: u64) {
        if self.mode == Mode::Paced && unused != u64::MAX {
            let burst = (self.rate * BURST.as_secs_f64()).max(1.0);
            self.tokens = (self.tokens + unused as f64).min(burst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn idle_is_full_speed_and_serving_is_paced() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PaceConfig {
            rate: 20_000,
            ..PaceConfig::default()
        });
        let (a, _) = p.update(t0, Load::default(), 10);
        assert_eq!(a, Allowance::full());
        assert_eq!(p.mode(), Mode::Idle);
        // A request arrives: paced from the next step on.
        let load = Load {
            requests: 1,
            ..Load::default()
        };
        let (a, was) = p.update(at(t0, 1), load, 10);
        assert_eq!(was, Some(Mode::Idle));
        assert_eq!(p.mode(), Mode::Paced);
        assert_eq!(a.max_in_flight, PACED_IN_FLIGHT);
        // 1 ms at 20,000/s: 20 tokens.
        let (a, _) = p.update(at(t0, 2), load, 10);
        assert_eq!(a.tokens, 20);
        // No request for 100 ms: idle again.
        let (a, was) = p.update(at(t0, 102), load, 10);
        assert_eq!(was, Some(Mode::Paced));
        assert_eq!(a, Allowance::full());
    }

    #[test]
    fn activity_seen_on_heartbeats_is_dated_when_it_happened() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PaceConfig::default());
        p.observe(t0, 5);
        // A cleanup starts 500 ms after the last request: idle at once.
        let load = Load {
            requests: 5,
            ..Load::default()
        };
        let (a, _) = p.update(at(t0, 500), load, 10);
        assert_eq!((a, p.mode()), (Allowance::full(), Mode::Idle));
    }

    #[test]
    fn a_request_in_progress_keeps_the_workers_serving() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PaceConfig::default());
        p.observe(t0, 5);
        let load = Load {
            requests: 5,
            in_progress: 1,
            ..Load::default()
        };
        // No new request for 10 s, but a tool call still runs: paced.
        p.update(at(t0, 10_000), load, 10);
        assert_eq!(p.mode(), Mode::Paced);
        let done = Load {
            in_progress: 0,
            ..load
        };
        p.update(at(t0, 10_001), done, 10);
        assert_eq!(p.mode(), Mode::Idle);
    }

    #[test]
    fn bursts_are_capped_and_unused_tokens_come_back() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PaceConfig {
            rate: 20_000,
            ..PaceConfig::default()
        });
        let load = Load {
            requests: 1,
            ..Load::default()
        };
        p.update(t0, load, 0);
        // 50 ms pass without a step: the bucket holds only 2 ms (40).
        let load = Load {
            requests: 2,
            ..Load::default()
        };
        let (a, _) = p.update(at(t0, 50), load, 0);
        assert_eq!(a.tokens, 40);
        p.refund(15);
        let (a, _) = p.update(at(t0, 50), load, 0);
        assert_eq!(a.tokens, 15);
    }

    #[test]
    fn lag_halves_the_rate_down_to_the_floor_and_quiet_beats_raise_it() {
        let t0 = Instant::now();
        let cfg = PaceConfig {
            rate: 20_000,
            floor: 4_000,
            ..PaceConfig::default()
        };
        let mut p = Pacer::new(cfg);
        let mut load = Load {
            requests: 1,
            lag_us: 5000,
            ..Load::default()
        };
        p.update(t0, load, 0);
        for i in 1..=5 {
            load.beats = i;
            load.requests += 1;
            p.update(at(t0, i), load, 0);
        }
        assert_eq!(p.rate(), 4_000, "halved to the floor, not below");
        load.lag_us = 10;
        for i in 6..=9 {
            load.beats = i;
            load.requests += 1;
            p.update(at(t0, i), load, 0);
        }
        assert_eq!(p.rate(), 8_000, "+1,000/s per quiet beat");
        // The same reading seen again changes nothing.
        load.requests += 1;
        p.update(at(t0, 10), load, 0);
        assert_eq!(p.rate(), 8_000);
    }

    #[test]
    fn over_the_cap_is_full_speed_until_half_the_cap() {
        let t0 = Instant::now();
        let cfg = PaceConfig {
            backlog_max: 1000,
            ..PaceConfig::default()
        };
        let mut p = Pacer::new(cfg);
        let mut load = Load {
            requests: 1,
            ..Load::default()
        };
        p.update(t0, load, 0);
        assert_eq!(p.mode(), Mode::Paced);
        load.requests += 1;
        let (a, was) = p.update(at(t0, 1), load, 1001);
        assert_eq!((p.mode(), was), (Mode::OverCap, Some(Mode::Paced)));
        assert_eq!(a, Allowance::full());
        assert_eq!(p.over_cap_episodes, 1);
        load.requests += 1;
        p.update(at(t0, 2), load, 600);
        assert_eq!(p.mode(), Mode::OverCap, "hysteresis: still over half");
        load.requests += 1;
        p.update(at(t0, 3), load, 400);
        assert_eq!(p.mode(), Mode::Paced);
        assert_eq!(p.over_cap_episodes, 1);
    }

    #[test]
    fn shutdown_and_off_are_full_speed() {
        let t0 = Instant::now();
        let load = Load {
            requests: 1,
            ..Load::default()
        };
        let mut p = Pacer::new(PaceConfig::default());
        p.shutdown();
        let (a, _) = p.update(t0, load, 0);
        assert_eq!((a, p.mode()), (Allowance::full(), Mode::Shutdown));
        let mut p = Pacer::new(PaceConfig {
            adaptive: false,
            ..PaceConfig::default()
        });
        let (a, _) = p.update(t0, load, 0);
        assert_eq!((a, p.mode()), (Allowance::full(), Mode::Off));
    }
}
