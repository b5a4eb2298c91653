//! Counters and gauges of one instance, and their Prometheus text rendering.
//!
//! Everything is a relaxed atomic written by the thread that owns the event
//! (workers for requests and loop lag, the control thread for children and
//! cleanups) and read by the admin listener ([`crate::admin`]). Per-worker
//! counters live in their own cache-line-aligned block so workers never share
//! a line.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the cleanup-duration histogram buckets.
const CLEANUP_BUCKETS: [f64; 8] = [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Upper bounds (seconds) of the close-teardown histogram (a child's exit
/// seen → its directory out of the way and its closers answered).
const TEARDOWN_BUCKETS: [f64; 8] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0];
/// Upper bounds (CPU seconds) of the per-rollout CPU histogram.
const ROLLOUT_CPU_BUCKETS: [f64; 8] = [0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0];
/// Upper bounds (bytes) of the per-rollout peak-memory histogram.
const ROLLOUT_MEM_BUCKETS: [f64; 6] = [
    16.0 * 1048576.0,
    64.0 * 1048576.0,
    256.0 * 1048576.0,
    1024.0 * 1048576.0,
    4096.0 * 1048576.0,
    16384.0 * 1048576.0,
];

/// A Prometheus histogram of non-negative values.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in millionths of the unit (µs for seconds).
    sum_micro: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, v: f64) {
        self.count.fetch_add(1, Relaxed);
        self.sum_micro
            .fetch_add((v.max(0.0) * 1e6).min(u64::MAX as f64) as u64, Relaxed);
        for (i, le) in self.bounds.iter().enumerate() {
            if v <= *le {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
    }

    fn render(&self, o: &mut String, name: &str, help: &str) {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, le) in self.bounds.iter().enumerate() {
            let _ = writeln!(
                o,
                "{name}_bucket{{le=\"{le}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(
            o,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {}\n{name}_count {count}",
            secs(self.sum_micro.load(Relaxed))
        );
    }
}

/// Why a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// Closed by its rollout.
    Closed,
    /// Died on its own (crash, exit, OOM kill, killed by someone else).
    Crashed,
    /// Killed because it missed the ready deadline.
    ReadyTimeout,
    /// Killed by ringmux's shutdown.
    Shutdown,
    /// A forked child whose per-rollout setup hook failed.
    SetupFailed,
    /// Killed by its cgroup's memory limit (`--child-memory-max`).
    Oom,
    /// Closed by ringmux after `--child-idle-timeout` without a request.
    Idle,
}

impl ExitCause {
    fn label(self) -> &'static str {
        match self {
            ExitCause::Closed => "closed",
            ExitCause::Crashed => "crashed",
            ExitCause::ReadyTimeout => "ready_timeout",
            ExitCause::Shutdown => "shutdown",
            ExitCause::SetupFailed => "setup_failed",
            ExitCause::Oom => "oom",
            ExitCause::Idle => "idle",
        }
    }

    const ALL: [ExitCause; 7] = [
        ExitCause::Closed,
        ExitCause::Crashed,
        ExitCause::ReadyTimeout,
        ExitCause::Shutdown,
        ExitCause::SetupFailed,
        ExitCause::Oom,
        ExitCause::Idle,
    ];
}

/// One worker's numbers.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerMetrics {
    /// Requests whose head was parsed.
    pub requests: AtomicU64,
    /// Of those, close requests (`--close-path`).
    pub closes: AtomicU64,
    /// Requests waiting for a child or being proxied (an SSE stream counts),
    /// as of the latest 100 ms deadline scan.
    pub in_progress: AtomicU64,
    /// Error responses ringmux generated itself (4xx/5xx).
    pub proxy_errors: AtomicU64,
    /// Requests refused by the Origin / Host check (403).
    pub refused: AtomicU64,
    /// Open client connections.
    pub connections: AtomicU64,
    /// Connections that ran out of the head timeout (408).
    pub head_timeouts: AtomicU64,
    /// Kept-alive connections closed by the idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Requests whose body stalled past the body timeout (408 or abort).
    pub body_timeouts: AtomicU64,
    /// Connections cut because the client stopped reading.
    pub send_timeouts: AtomicU64,
    /// Requests whose child did not answer within the response timeout (504).
    pub response_timeouts: AtomicU64,
    /// Requests refused with 413 (`--max-body`).
    pub too_large: AtomicU64,
    /// Longest heartbeat lateness since start, µs.
    pub lag_max_us: AtomicU64,
    /// Longest heartbeat lateness since the previous scrape, µs.
    pub lag_recent_us: AtomicU64,
    /// Lateness of the latest heartbeat, µs (read by the cleanup pacing).
    pub lag_last_us: AtomicU64,
    /// Heartbeats so far.
    pub beats: AtomicU64,
    /// Heap allocations made on the worker's thread so far, as of its
    /// latest heartbeat (0 where the counting allocator is not installed).
    pub allocations: AtomicU64,
    /// Times the worker waited for completions, as of its latest heartbeat.
    pub waits: AtomicU64,
    /// Completions it handled, as of its latest heartbeat.
    pub completions: AtomicU64,
}

impl WorkerMetrics {
    /// Records one heartbeat that came `late` after it was due.
    pub fn record_lag(&self, late: Duration) {
        let us = late.as_micros().min(u128::from(u64::MAX)) as u64;
        self.lag_max_us.fetch_max(us, Relaxed);
        self.lag_recent_us.fetch_max(us, Relaxed);
        self.lag_last_us.store(us, Relaxed);
        self.beats.fetch_add(1, Relaxed);
    }
}

/// All numbers of an instance.
#[derive(Debug)]
pub struct Metrics {
    /// Per worker.
    pub workers: Vec<WorkerMetrics>,
    /// Children started.
    pub spawns: AtomicU64,
    /// Children that could not be started.
    pub spawn_failures: AtomicU64,
    /// Live children.
    pub live_children: AtomicU64,
    /// The instance is draining (src/lifecycle.rs): new keys are refused and
    /// `/readyz` answers 503.
    pub draining: std::sync::atomic::AtomicBool,
    exits: [AtomicU64; ExitCause::ALL.len()],
    /// Directory cleanups running.
    pub cleanups_in_flight: AtomicU64,
    /// Cleanups that ended with errors (something was left behind).
    pub cleanup_errors: AtomicU64,
    /// Files and directories removed by cleanups.
    pub cleanup_entries: AtomicU64,
    cleanup_duration: Histogram,
    cleanup_max_us: AtomicU64,
    /// CPU seconds of closed rollouts (their cgroup's `cpu.stat`).
    pub rollout_cpu: Histogram,
    /// Peak memory of closed rollouts (their cgroup's `memory.peak`, where
    /// the memory controller is enabled).
    pub rollout_memory_peak: Histogram,
    /// Requests refused at `--max-children`.
    pub at_capacity: AtomicU64,
    /// Heartbeat lateness of the control loop, since start, µs.
    pub control_lag_max_us: AtomicU64,
    /// Directories of dead instances removed at start-up.
    pub stale_instances_removed: AtomicU64,
    /// Fork-server (zygote) processes started.
    pub fork_server_starts: AtomicU64,
    /// Fork-server processes that ended (crashed, wedged, killed).
    pub fork_server_exits: AtomicU64,
    /// 1 while the fork server is ready to fork.
    pub fork_server_ready: AtomicU64,
    /// Processes reparented to ringmux that it killed and reaped.
    pub orphans_reaped: AtomicU64,
    /// Per-child cgroups that exist (running or draining).
    pub live_cgroups: AtomicU64,
    /// Trees in the trash (moved there, not yet deleted).
    pub trash_trees: AtomicU64,
    /// Entries known in the trash and not yet deleted.
    pub trash_backlog: AtomicU64,
    /// Entries deleted from the trash.
    pub trash_removed: AtomicU64,
    /// Entries deleted from the trash in the latest second.
    pub trash_drain_rate: AtomicU64,
    /// The current paced rate, entries/s.
    pub trash_pace_rate: AtomicU64,
    /// The pacing mode (index into `pace::Mode::ALL`).
    pub trash_mode: AtomicU64,
    /// Times the trash backlog passed `--cleanup-backlog-max`.
    pub trash_over_cap: AtomicU64,
    /// A child's exit seen → its directory out of the way, closers answered.
    pub teardown: Histogram,
}

impl Metrics {
    /// Zeroed metrics for `workers` workers.
    pub fn new(workers: usize) -> Metrics {
        Metrics {
            workers: (0..workers).map(|_| WorkerMetrics::default()).collect(),
            spawns: AtomicU64::new(0),
            spawn_failures: AtomicU64::new(0),
            live_children: AtomicU64::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            exits: Default::default(),
            cleanups_in_flight: AtomicU64::new(0),
            cleanup_errors: AtomicU64::new(0),
            cleanup_entries: AtomicU64::new(0),
            cleanup_duration: Histogram::new(&CLEANUP_BUCKETS),
            cleanup_max_us: AtomicU64::new(0),
            rollout_cpu: Histogram::new(&ROLLOUT_CPU_BUCKETS),
            rollout_memory_peak: Histogram::new(&ROLLOUT_MEM_BUCKETS),
            at_capacity: AtomicU64::new(0),
            control_lag_max_us: AtomicU64::new(0),
            stale_instances_removed: AtomicU64::new(0),
            fork_server_starts: AtomicU64::new(0),
            fork_server_exits: AtomicU64::new(0),
            fork_server_ready: AtomicU64::new(0),
            orphans_reaped: AtomicU64::new(0),
            live_cgroups: AtomicU64::new(0),
            trash_trees: AtomicU64::new(0),
            trash_backlog: AtomicU64::new(0),
            trash_removed: AtomicU64::new(0),
            trash_drain_rate: AtomicU64::new(0),
            trash_pace_rate: AtomicU64::new(0),
            trash_mode: AtomicU64::new(0),
            trash_over_cap: AtomicU64::new(0),
            teardown: Histogram::new(&TEARDOWN_BUCKETS),
        }
    }

    /// Counts a child's end.
    pub fn child_exited(&self, cause: ExitCause) {
        self.exits[cause as usize].fetch_add(1, Relaxed);
    }

    /// Records a finished cleanup.
    pub fn cleanup_finished(&self, took: Duration, entries: u64, errors: bool) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        self.cleanup_duration.observe(took.as_secs_f64());
        self.cleanup_max_us.fetch_max(us, Relaxed);
        self.cleanup_entries.fetch_add(entries, Relaxed);
        if errors {
            self.cleanup_errors.fetch_add(1, Relaxed);
        }
    }

    /// Prometheus text exposition (format 0.0.4). Resets the "since the
    /// previous scrape" gauges.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut o,
            "ringmux_spawns_total",
            "Children started.",
            self.spawns.load(Relaxed),
        );
        counter(
            &mut o,
            "ringmux_spawn_failures_total",
            "Children that could not be started.",
            self.spawn_failures.load(Relaxed),
        );
        counter(
            &mut o,
            "ringmux_at_capacity_total",
            "New keys refused with 503 at --max-children.",
            self.at_capacity.load(Relaxed),
        );
        counter(
            &mut o,
            "ringmux_stale_instances_removed_total",
            "Directories of dead ringmux instances removed.",
            self.stale_instances_removed.load(Relaxed),
        );
        counter(
            &mut o,
            "ringmux_fork_server_starts_total",
            "Fork-server (zygote) processes started (--fork).",
            self.fork_server_starts.load(Relaxed),
        );
        counter(
            &mut o,
            "ringmux_fork_server_exits_total",
            "Fork-server processes that ended: crashed, wedged or stopped.",
            self.fork_server_exits.load(Relaxed),
        );
        counter(
            &mut o,
            "ringmux_orphans_reaped_total",
            "Untracked child processes of ringmux killed and reaped.",
            self.orphans_reaped.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP ringmux_live_cgroups Per-child cgroups that exist (running or draining).\n# TYPE ringmux_live_cgroups gauge\nringmux_live_cgroups {}",
            self.live_cgroups.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP ringmux_fork_server_ready 1 while the fork server can fork.\n# TYPE ringmux_fork_server_ready gauge\nringmux_fork_server_ready {}",
            self.fork_server_ready.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP ringmux_live_children Children currently running.\n# TYPE ringmux_live_children gauge\nringmux_live_children {}",
            self.live_children.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP ringmux_draining 1 while the instance drains (SIGUSR1 or POST /drain): new keys get 503.\n# TYPE ringmux_draining gauge\nringmux_draining {}",
            u8::from(self.draining.load(Relaxed))
        );
        let _ = writeln!(
            o,
            "# HELP ringmux_child_exits_total Children that ended, by cause.\n# TYPE ringmux_child_exits_total counter"
        );
        for c in ExitCause::ALL {
            let _ = writeln!(
                o,
                "ringmux_child_exits_total{{cause=\"{}\"}} {}",
                c.label(),
                self.exits[c as usize].load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP ringmux_cleanups_in_flight Child directories being removed.\n# TYPE ringmux_cleanups_in_flight gauge\nringmux_cleanups_in_flight {}",
            self.cleanups_in_flight.load(Relaxed)
        );
        counter(
            &mut o,
            "ringmux_cleanup_errors_total",
            "Cleanups that could not remove everything.",
            self.cleanup_errors.load(Relaxed),
        );
        counter(
            &mut o,
            "ringmux_cleanup_entries_total",
            "Files and directories removed by cleanups.",
            self.cleanup_entries.load(Relaxed),
        );
        self.cleanup_duration.render(
            &mut o,
            "ringmux_cleanup_duration_seconds",
            "Wall time of child directory cleanups.",
        );
        self.rollout_cpu.render(
            &mut o,
            "ringmux_rollout_cpu_seconds",
            "CPU time of closed rollouts, all their processes (cgroup cpu.stat).",
        );
        self.rollout_memory_peak.render(
            &mut o,
            "ringmux_rollout_memory_peak_bytes",
            "Peak memory of closed rollouts (cgroup memory.peak; needs the memory controller).",
        );
        let _ = writeln!(
            o,
            "# HELP ringmux_cleanup_duration_max_seconds Longest cleanup since start.\n# TYPE ringmux_cleanup_duration_max_seconds gauge\nringmux_cleanup_duration_max_seconds {}",
            secs(self.cleanup_max_us.load(Relaxed))
        );
        let _ = writeln!(
            o,
            "# HELP ringmux_control_loop_lag_max_seconds Longest lateness of the control loop's 10 ms heartbeat since start.\n# TYPE ringmux_control_loop_lag_max_seconds gauge\nringmux_control_loop_lag_max_seconds {}",
            secs(self.control_lag_max_us.load(Relaxed))
        );
        self.render_trash(&mut o);
        type Pick = fn(&WorkerMetrics) -> u64;
        let per_worker: [(&str, &str, &str, Pick); 17] = [
            (
                "ringmux_worker_ring_waits_total",
                "counter",
                "Times the worker waited for io_uring completions (each a possible wake-up), as of its latest 10 ms heartbeat.",
                |w| w.waits.load(Relaxed),
            ),
            (
                "ringmux_worker_completions_total",
                "counter",
                "io_uring completions the worker handled, as of its latest 10 ms heartbeat; divided by ringmux_worker_ring_waits_total it is completions per wake-up.",
                |w| w.completions.load(Relaxed),
            ),
            (
                "ringmux_worker_allocations_total",
                "counter",
                "Heap allocations (and reallocations) on the worker's thread, as of its latest 10 ms heartbeat.",
                |w| w.allocations.load(Relaxed),
            ),
            ("ringmux_requests_total", "counter", "Requests received, per worker.", |w| {
                w.requests.load(Relaxed)
            }),
            (
                "ringmux_requests_in_progress",
                "gauge",
                "Requests waiting for a child or being proxied (streams included), per worker, as of the latest 100 ms scan.",
                |w| w.in_progress.load(Relaxed),
            ),
            (
                "ringmux_close_requests_total",
                "counter",
                "Close requests (--close-path) received, per worker.",
                |w| w.closes.load(Relaxed),
            ),
            (
                "ringmux_proxy_errors_total",
                "counter",
                "Error responses generated by ringmux (400, 502, 503, 504, ...), per worker.",
                |w| w.proxy_errors.load(Relaxed),
            ),
            (
                "ringmux_refused_requests_total",
                "counter",
                "Requests refused with 403 by the Origin / Host check (DNS-rebinding protection), per worker.",
                |w| w.refused.load(Relaxed),
            ),
            ("ringmux_client_connections", "gauge", "Open client connections, per worker.", |w| {
                w.connections.load(Relaxed)
            }),
            (
                "ringmux_head_timeouts_total",
                "counter",
                "Connections that sent no complete request head within --head-timeout (408), per worker.",
                |w| w.head_timeouts.load(Relaxed),
            ),
            (
                "ringmux_idle_timeouts_total",
                "counter",
                "Kept-alive connections closed after --idle-timeout without a request, per worker.",
                |w| w.idle_timeouts.load(Relaxed),
            ),
            (
                "ringmux_body_timeouts_total",
                "counter",
                "Requests whose body stalled longer than --body-timeout, per worker.",
                |w| w.body_timeouts.load(Relaxed),
            ),
            (
                "ringmux_send_timeouts_total",
                "counter",
                "Client connections cut because a send stayed unfinished past --send-timeout (the client stopped reading), per worker.",
                |w| w.send_timeouts.load(Relaxed),
            ),
            (
                "ringmux_response_timeouts_total",
                "counter",
                "Requests whose child sent no response head within --response-timeout (504), per worker.",
                |w| w.response_timeouts.load(Relaxed),
            ),
            (
                "ringmux_bodies_too_large_total",
                "counter",
                "Requests refused with 413 for a body over --max-body, per worker.",
                |w| w.too_large.load(Relaxed),
            ),
            (
                "ringmux_worker_loop_lag_max_seconds",
                "gauge",
                "Longest lateness of the worker's 10 ms heartbeat (event-loop gap beyond the period) since start.",
                |w| w.lag_max_us.load(Relaxed),
            ),
            (
                "ringmux_worker_loop_lag_recent_max_seconds",
                "gauge",
                "Longest heartbeat lateness since the previous scrape.",
                |w| w.lag_recent_us.swap(0, Relaxed),
            ),
        ];
        for (name, ty, help, pick) in per_worker {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {ty}");
            for (i, w) in self.workers.iter().enumerate() {
                let v = pick(w);
                if name.ends_with("_seconds") {
                    let _ = writeln!(o, "{name}{{worker=\"{i}\"}} {}", secs(v));
                } else {
                    let _ = writeln!(o, "{name}{{worker=\"{i}\"}} {v}");
                }
            }
        }
        o
    }
}

impl Metrics {
    fn render_trash(&self, o: &mut String) {
        let gauge = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            o,
            "ringmux_trash_trees",
            "Closed rollouts' directories in the trash, not yet deleted.",
            self.trash_trees.load(Relaxed),
        );
        gauge(
            o,
            "ringmux_trash_backlog_entries",
            "Files and directories known in the trash and not yet deleted (a lower bound while trees are still being read).",
            self.trash_backlog.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP ringmux_trash_removed_entries_total Files and directories deleted from the trash.\n# TYPE ringmux_trash_removed_entries_total counter\nringmux_trash_removed_entries_total {}",
            self.trash_removed.load(Relaxed)
        );
        gauge(
            o,
            "ringmux_trash_drain_rate",
            "Entries deleted from the trash in the latest second.",
            self.trash_drain_rate.load(Relaxed),
        );
        gauge(
            o,
            "ringmux_trash_pace_rate",
            "Entries/s the trash may be deleted at while the workers serve (adapted to their loop lag).",
            self.trash_pace_rate.load(Relaxed),
        );
        let mode = self.trash_mode.load(Relaxed) as usize;
        let _ = writeln!(
            o,
            "# HELP ringmux_trash_mode How the trash is being deleted: idle (full speed, nobody served), paced, over_cap (full speed past --cleanup-backlog-max), shutdown, off (--cleanup-pace off).\n# TYPE ringmux_trash_mode gauge"
        );
        for (i, m) in crate::control::pace::Mode::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "ringmux_trash_mode{{mode=\"{}\"}} {}",
                m.label(),
                u64::from(i == mode)
            );
        }
        let _ = writeln!(
            o,
            "# HELP ringmux_trash_over_cap_total Times the trash backlog passed --cleanup-backlog-max (deleted at full speed then).\n# TYPE ringmux_trash_over_cap_total counter\nringmux_trash_over_cap_total {}",
            self.trash_over_cap.load(Relaxed)
        );
        self.teardown.render(
            o,
            "ringmux_close_teardown_seconds",
            "From a child's exit seen to its directory moved out of the way (into the trash) and its closers answered.",
        );
    }
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new(2);
        m.spawns.fetch_add(3, Relaxed);
        m.child_exited(ExitCause::Crashed);
        m.cleanup_finished(Duration::from_millis(300), 20_022, false);
        m.workers[1].record_lag(Duration::from_micros(1500));
        let t = m.render();
        assert!(t.contains("ringmux_spawns_total 3\n"));
        assert!(t.contains("ringmux_child_exits_total{cause=\"crashed\"} 1\n"));
        assert!(t.contains("ringmux_cleanup_duration_seconds_bucket{le=\"0.25\"} 0\n"));
        assert!(t.contains("ringmux_cleanup_duration_seconds_bucket{le=\"0.5\"} 1\n"));
        assert!(t.contains("ringmux_cleanup_duration_seconds_count 1\n"));
        assert!(t.contains("ringmux_worker_loop_lag_max_seconds{worker=\"1\"} 0.0015\n"));
        assert!(t.contains("ringmux_worker_loop_lag_recent_max_seconds{worker=\"1\"} 0.0015\n"));
        // The recent gauge resets on scrape; the since-start one does not.
        let t = m.render();
        assert!(t.contains("ringmux_worker_loop_lag_recent_max_seconds{worker=\"1\"} 0\n"));
        assert!(t.contains("ringmux_worker_loop_lag_max_seconds{worker=\"1\"} 0.0015\n"));
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.rsplitn(2, ' ');
            let v = parts.next().unwrap_or("");
            assert!(v.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }
}
