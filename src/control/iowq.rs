//! The kernel threads that run the cleanup unlinks: the control ring's io-wq
//! workers (`iou-wrk-<control tid>`), their priority (nice 19) and their
//! CPUs. io-wq creates workers on demand and lets idle ones exit, so both are
//! re-applied while cleanups run.
//!
//! CPUs and their number follow the pacing mode: while the workers serve (and with
//! `--cleanup-pace off`), the threads stay on `--cleanup-cpus`; when nobody
//! is served (idle, over the backlog cap, shutdown), they may use every CPU,
//! so deletion goes at least as fast as `rm -rf`. `IORING_REGISTER_IOWQ_AFF`
//! only places workers created afterwards, so the running ones are moved
//! with `sched_setaffinity` too.

use super::pace::Mode;
use super::Control;

/// Nice value of the io-wq threads that run cleanup `UNLINKAT`s.
const CLEANUP_NICE: i32 = 19;

impl Control {
    /// Thread ids of this control thread's io-wq workers.
    fn io_workers(&self) -> Vec<i32> {
        let want = format!("iou-wrk-{}", self.tid);
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter_map(|t| {
                let tid = t.file_name().to_str()?.parse::<i32>().ok()?;
                let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                (comm.trim_end() == want).then_some(tid)
            })
            .collect()
    }

    /// Puts new io-wq workers at the lowest CPU priority and on the CPUs the
    /// current mode allows, so a large cleanup yields to the data plane.
    pub(super) fn tend_io_workers(&mut self) {
        for tid in self.io_workers() {
            if self.reniced.contains(&tid) {
                continue;
            }
            let Some(pid) = rustix::process::Pid::from_raw(tid) else {
                continue;
            };
            match rustix::process::setpriority_process(Some(pid), CLEANUP_NICE) {
                Ok(()) => {
                    tracing::debug!(tid, nice = CLEANUP_NICE, "io-wq worker reniced");
                    self.reniced.push(tid);
                }
                Err(e) => tracing::warn!(tid, error = %e, "cannot renice io-wq worker"),
            }
            let cpus = self.cleanup_cpus_for(self.pacer.mode()).to_vec();
            set_affinity(tid, &cpus);
        }
        if self.reniced.len() > 64 {
            self.reniced.drain(..32);
        }
    }

    fn cleanup_cpus_for(&self, mode: Mode) -> &[usize] {
        match (&self.cfg.cleanup_cpus, mode) {
            (None, _) => &self.all_cpus,
            (Some(pinned), Mode::Paced | Mode::Off) => pinned,
            (Some(_), Mode::Idle | Mode::OverCap | Mode::Shutdown) => &self.all_cpus,
        }
    }

    /// Moves the cleanup threads (new and running) to the CPUs of `mode`,
    /// and sets how many there may be: `--cleanup-workers` while the workers
    /// serve, two per CPU (up to 16) when nobody is served.
    pub(super) fn place_cleanup_threads(&mut self, mode: Mode) {
        let n = match mode {
            Mode::Paced | Mode::Off => self.cfg.cleanup_workers,
            Mode::Idle | Mode::OverCap | Mode::Shutdown => {
                let per_cpu = u32::try_from(self.all_cpus.len() * 2).unwrap_or(16);
                per_cpu.clamp(self.cfg.cleanup_workers, 16)
            }
        };
        if let Err(e) = self.ring.set_iowq_max_workers(n, n) {
            tracing::debug!(error = %e, n, "cannot change the number of cleanup threads");
        }
        if self.cfg.cleanup_cpus.is_none() {
            return;
        }
        let cpus = self.cleanup_cpus_for(mode).to_vec();
        if cpus.is_empty() {
            return;
        }
        if let Err(e) = self.ring.set_iowq_affinity(&cpus) {
            tracing::debug!(error = %e, ?cpus, "cannot place new cleanup threads");
        }
        for tid in self.io_workers() {
            set_affinity(tid, &cpus);
        }
    }
}

fn set_affinity(tid: i32, cpus: &[usize]) {
    if let Err(e) = crate::config::set_affinity(Some(tid), cpus) {
        tracing::debug!(tid, error = %e, "cannot move a cleanup thread");
    }
}
