//! Validated settings of one ringmux instance (no I/O here: paths are only
//! computed, never created).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::ServeArgs;
use crate::origin::{BadOrigin, OriginPolicy};

/// What a child is made from.
#[derive(Debug, Clone)]
pub enum ChildCommand {
    /// `argv` of the command given after `--`.
    Exec(Vec<OsString>),
    /// The built-in demo MCP server (this binary's `demo-child`).
    Demo,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address (port 0: pick one).
    pub listen: SocketAddr,
    /// Data-plane threads.
    pub workers: usize,
    /// Parent of the instance directory.
    pub base_dir: PathBuf,
    /// Query parameter carrying the rollout key.
    pub key_param: String,
    /// Path that closes a rollout.
    pub close_path: String,
    /// Deadline for a new child's first response.
    pub ready_timeout: Duration,
    /// Longest drain before it stops as on SIGTERM.
    pub drain_timeout: Duration,
    /// Close a keyed child idle this long (`None`: never).
    pub child_idle_timeout: Option<Duration>,
    /// Most live children.
    pub max_children: usize,
    /// The child.
    pub child: ChildCommand,
    /// Fork mode: the command is a fork server (start and answer timeouts).
    pub fork: Option<(Duration, Duration)>,
    /// Metrics listener.
    pub admin: Option<SocketAddr>,
    /// Keep failed children's directories.
    pub keep_failed_dirs: bool,
    /// io-wq threads for cleanup unlinks.
    pub cleanup_workers: u32,
    /// CPUs for those threads (`None`: any).
    pub cleanup_cpus: Option<Vec<usize>>,
    /// CPUs for the data-plane workers (`None`: any).
    pub worker_cpus: Option<Vec<usize>>,
    /// How the trash is deleted.
    pub pace: crate::control::pace::PaceConfig,
    /// What children listen on.
    pub child_socket: crate::child::socket::ChildSocket,
    /// Which Origin / Host headers the listener accepts.
    pub origin: OriginPolicy,
    /// Per-child cgroups.
    pub cgroup: crate::cgroup::CgroupMode,
    /// Per-child limits (need cgroups).
    pub limits: crate::cgroup::Limits,
    /// Client timeouts and the body limit.
    pub client: crate::dataplane::ClientLimits,
}

/// Invalid flags.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Neither `--demo` nor a command after `--`.
    #[error(
        "no child command: give one after `--` (e.g. `-- uvicorn --fd 3 app:app`) or use --demo"
    )]
    NoCommand,
    /// `--workers 0` or absurdly many.
    #[error("--workers must be between 1 and 256")]
    Workers,
    /// `--max-children 0`.
    #[error("--max-children must be at least 1")]
    MaxChildren,
    /// Bad `--close-path`.
    #[error("--close-path must start with '/' and contain no '?' or '#'")]
    ClosePath,
    /// `--cleanup-workers` out of range.
    #[error("--cleanup-workers must be between 1 and 16")]
    CleanupWorkers,
    /// Bad `--cleanup-cpus`.
    #[error("--cleanup-cpus must be `auto`, `all` or a comma-separated list of CPU numbers")]
    CleanupCpus,
    /// Bad `--worker-cpus`.
    #[error("--worker-cpus must be `auto`, `all` or a comma-separated list of CPU numbers")]
    WorkerCpus,
    /// `--cleanup-floor` / `--cleanup-rate` out of range.
    #[error(
        "--cleanup-rate and --cleanup-floor must be at least 1 and the floor at most the rate"
    )]
    CleanupRate,
    /// Bad `--allow-origin`.
    #[error(transparent)]
    AllowOrigin(#[from] BadOrigin),
    /// A limit with `--cgroup off`.
    #[error("--child-memory-max, --child-pids-max and --child-cpu-max need cgroups: not with --cgroup off")]
    LimitsWithoutCgroups,
    /// Bad `--key-param`.
    #[error("--key-param must be a non-empty name without '=', '&', '?' or '#'")]
    KeyParam,
    /// `--child-idle-timeout` under the once-a-second sweep.
    #[error(
        "--child-idle-timeout must be at least 1s (idle children are looked for once a second)"
    )]
    IdleTimeout,
}

impl Config {
    /// Validates `args`.
    pub fn new(args: ServeArgs) -> Result<Config, ConfigError> {
        let child = if args.demo {
            ChildCommand::Demo
        } else if args.command.is_empty() {
            return Err(ConfigError::NoCommand);
        } else {
            ChildCommand::Exec(args.command)
        };
        let cleanup_cpus = cleanup_cpus(&args.cleanup_cpus)?;
        let worker_cpus = worker_cpus(&args.worker_cpus, cleanup_cpus.as_deref(), &allowed_cpus())?;
        let workers = args.workers.unwrap_or_else(|| match &worker_cpus {
            Some(c) => c.len(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        });
        if args.cleanup_rate == 0
            || args.cleanup_floor == 0
            || args.cleanup_floor > args.cleanup_rate
        {
            return Err(ConfigError::CleanupRate);
        }
        if workers == 0 || workers > 256 {
            return Err(ConfigError::Workers);
        }
        if args.cleanup_workers == 0 || args.cleanup_workers > 16 {
            return Err(ConfigError::CleanupWorkers);
        }
        if args.max_children == 0 {
            return Err(ConfigError::MaxChildren);
        }
        if args
            .child_idle_timeout
            .is_some_and(|d| d < std::time::Duration::from_secs(1))
        {
            return Err(ConfigError::IdleTimeout);
        }
        if !args.close_path.starts_with('/') || args.close_path.contains(['?', '#']) {
            return Err(ConfigError::ClosePath);
        }
        if args.key_param.is_empty() || args.key_param.contains(['=', '&', '?', '#']) {
            return Err(ConfigError::KeyParam);
        }
        let limited = args.child_memory_max.is_some()
            || args.child_pids_max.is_some()
            || args.child_cpu_max.is_some();
        if limited && args.cgroup == crate::cgroup::CgroupMode::Off {
            return Err(ConfigError::LimitsWithoutCgroups);
        }
        Ok(Config {
            listen: args.listen,
            workers,
            base_dir: args
                .base_dir
                .unwrap_or_else(|| std::env::temp_dir().join("ringmux")),
            key_param: args.key_param,
            close_path: args.close_path,
            ready_timeout: args.ready_timeout,
            drain_timeout: args.drain_timeout,
            child_idle_timeout: args.child_idle_timeout,
            max_children: args.max_children,
            child,
            fork: args
                .fork
                .then_some((args.fork_server_timeout, args.fork_timeout)),
            admin: args.admin,
            keep_failed_dirs: args.keep_failed_dirs,
            child_socket: args.child_socket,
            cleanup_workers: args.cleanup_workers,
            cleanup_cpus,
            worker_cpus,
            pace: crate::control::pace::PaceConfig {
                adaptive: args.cleanup_pace != "off",
                rate: args.cleanup_rate,
                floor: args.cleanup_floor,
                backlog_max: args.cleanup_backlog_max,
                ..crate::control::pace::PaceConfig::default()
            },
            origin: OriginPolicy::new(&args.allow_origins, args.listen.ip().is_loopback())?,
            cgroup: args.cgroup,
            limits: crate::cgroup::Limits {
                memory_max: args.child_memory_max,
                pids_max: args.child_pids_max,
                cpu_max: args.child_cpu_max,
            },
            client: crate::dataplane::ClientLimits {
                head: args.head_timeout,
                idle: args.idle_timeout,
                body: args.body_timeout,
                send: args.send_timeout,
                response: args.response_timeout,
                max_body: args.max_body,
            },
        })
    }
}

/// Resolves `--cleanup-cpus`: `all` → no pinning; `auto` → the last CPU this
/// process may run on, when it may run on at least two (cleanup then never
/// shares a core with more than one data-plane thread's worth of work, and a
/// data-plane wake-up finds the other core free instead of queueing behind a
/// kernel thread in the middle of an unlink); a list → those CPUs.
/// The CPUs this process may run on.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Confines thread `tid` (`None`: the calling thread) to `cpus`.
pub(crate) fn set_affinity(tid: Option<i32>, cpus: &[usize]) -> rustix::io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    for &c in cpus {
        if c < rustix::thread::CpuSet::MAX_CPU {
            set.set(c);
        }
    }
    rustix::thread::sched_setaffinity(tid.and_then(rustix::process::Pid::from_raw), &set)
}

/// Resolves `--worker-cpus`: `all` → no pinning; `auto` → with 3 or more
/// allowed CPUs, those that are not cleanup CPUs (none left: no pinning);
/// with fewer, no pinning (a 2-CPU machine keeps both for the data plane,
/// and the cleanup's pacing protects it instead); a list → those CPUs.
fn worker_cpus(
    spec: &str,
    cleanup: Option<&[usize]>,
    allowed: &[usize],
) -> Result<Option<Vec<usize>>, ConfigError> {
    match spec.trim() {
        "all" => Ok(None),
        "auto" => {
            let Some(cleanup) = cleanup else {
                return Ok(None);
            };
            if allowed.len() < 3 {
                return Ok(None);
            }
            let rest: Vec<usize> = allowed
                .iter()
                .copied()
                .filter(|c| !cleanup.contains(c))
                .collect();
            Ok((!rest.is_empty()).then_some(rest))
        }
        _ => cpu_list(spec).ok_or(ConfigError::WorkerCpus).map(Some),
    }
}

fn cpu_list(list: &str) -> Option<Vec<usize>> {
    let cpus: Result<Vec<usize>, _> = list.split(',').map(|c| c.trim().parse::<usize>()).collect();
    match cpus {
        Ok(c) if !c.is_empty() && c.iter().all(|&x| x < 1024) => Some(c),
        _ => None,
    }
}

fn cleanup_cpus(spec: &str) -> Result<Option<Vec<usize>>, ConfigError> {
    match spec.trim() {
        "all" => Ok(None),
        "auto" => {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            Ok((n >= 2).then(|| vec![n - 1]))
        }
        list => cpu_list(list).ok_or(ConfigError::CleanupCpus).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_cpus_avoid_the_cleanup_cpus_from_three_cpus_on() {
        let four = [0, 1, 2, 3];
        assert_eq!(
            worker_cpus("auto", Some(&[3]), &four),
            Ok(Some(vec![0, 1, 2]))
        );
        assert_eq!(
            worker_cpus("auto", Some(&[2, 3]), &four),
            Ok(Some(vec![0, 1]))
        );
        assert_eq!(
            worker_cpus("auto", Some(&[1]), &[0, 1]),
            Ok(None),
            "two CPUs: both"
        );
        assert_eq!(
            worker_cpus("auto", None, &four),
            Ok(None),
            "cleanup unpinned"
        );
        assert_eq!(worker_cpus("auto", Some(&[0, 1, 2]), &[0, 1, 2]), Ok(None));
        assert_eq!(worker_cpus("all", Some(&[3]), &four), Ok(None));
        assert_eq!(worker_cpus("0,2", Some(&[3]), &four), Ok(Some(vec![0, 2])));
        assert_eq!(worker_cpus("x", None, &four), Err(ConfigError::WorkerCpus));
        assert!(!allowed_cpus().is_empty());
    }

    #[test]
    fn cleanup_cpu_specs() {
        assert_eq!(cleanup_cpus("all"), Ok(None));
        assert_eq!(cleanup_cpus("1,3"), Ok(Some(vec![1, 3])));
        assert_eq!(cleanup_cpus("x"), Err(ConfigError::CleanupCpus));
        assert_eq!(cleanup_cpus(""), Err(ConfigError::CleanupCpus));
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auto = cleanup_cpus("auto").expect("auto");
        if n >= 2 {
            assert_eq!(auto, Some(vec![n - 1]));
        } else {
            assert_eq!(auto, None);
        }
    }
}
