//! The command line: clap definitions for `ringmux serve` (and the hidden
//! `demo-child` subcommand), and their conversion into a validated [`Config`].

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};

/// ringmux gives every reinforcement-learning rollout its own isolated copy of
/// an MCP tool server, behind one address.
#[derive(Debug, Parser)]
#[command(name = "ringmux", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy: route each rollout key to its own child process.
    ///
    /// Example: ringmux serve --listen 127.0.0.1:8000 -- uvicorn --fd 3 my_tools:app
    Serve(Box<ServeArgs>),
    /// Internal: the built-in demo MCP server, run as the child of `serve --demo`
    /// (it serves the listening socket on fd 3). With `--listen ADDR` it binds
    /// its own socket instead: the benchmarks put it behind other proxies.
    #[command(hide = true)]
    DemoChild(DemoChildArgs),
}

/// Flags of the hidden `demo-child` subcommand.
#[derive(Debug, Args)]
pub struct DemoChildArgs {
    /// Bind and serve this address instead of the inherited fd 3. With port 0,
    /// the chosen address is printed as `demo-child: listening on http://ADDR`.
    #[arg(long, value_name = "ADDR", conflicts_with = "fork_server")]
    pub listen: Option<SocketAddr>,
    /// Also (or instead) serve a Unix-domain socket bound at PATH (an existing
    /// socket file there is replaced; printed as `demo-child: listening on
    /// unix:PATH`). With --listen too, one process serves both, so a proxy's
    /// TCP and Unix upstreams reach the same child (benches/hotpath.py).
    #[arg(long, value_name = "PATH", conflicts_with = "fork_server")]
    pub listen_unix: Option<PathBuf>,
    /// Run as a fork server (the child of `serve --demo --fork`): build the
    /// warm state once, then fork a child per spawn request on the channel.
    #[arg(long)]
    pub fork_server: bool,
    /// With --fork-server: MiB of memory to allocate and touch as warm state
    /// (stands in for a tool server's expensive import-time setup).
    #[arg(
        long,
        default_value_t = 0,
        value_name = "MIB",
        requires = "fork_server"
    )]
    pub warm_mib: usize,
}

/// Flags of `ringmux serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (one SO_REUSEPORT listener per worker). Port 0 picks
    /// a free port; the chosen address is printed on stdout as
    /// `ringmux: listening on http://ADDR`.
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Data-plane worker threads, each with its own io_uring and listener
    /// [default: number of CPUs the workers may run on (see --worker-cpus)].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Parent directory for this instance's private directory (mode 0700). Each
    /// child runs in `<instance dir>/<first 16 hex of sha256(key)>`
    /// (`_default` for requests without a key) [default: $TMPDIR/ringmux].
    #[arg(long, value_name = "DIR")]
    pub base_dir: Option<PathBuf>,

    /// Query parameter that carries the rollout key. Its first value selects the
    /// child; requests without it go to one shared default child.
    #[arg(long, default_value = "vf_state_secret", value_name = "NAME")]
    pub key_param: String,

    /// Path that closes a rollout: any method on `PATH?<key-param>=<key>` kills
    /// the key's child, reaps it, deletes its directory, then answers `200 closed`
    /// (also for unknown keys).
    #[arg(long, default_value = "/vf/close", value_name = "PATH")]
    pub close_path: String,

    /// How long a new child may take to answer its first request (setup before
    /// it accepts counts). Past it the child is killed and its waiters get 504.
    /// Units: ms, s, m (e.g. 500ms, 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub ready_timeout: Duration,

    /// Longest drain. A drain (SIGUSR1, or `POST /drain` on the admin
    /// listener) refuses new keys with 503 + Retry-After and makes /readyz
    /// answer 503, keeps serving and closing the live rollouts, and exits 0
    /// when the last is closed; at this timeout it stops as on SIGTERM
    /// (the rollouts still live lose their children).
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Duration,

    /// If set, a keyed child with no request in flight and none started or
    /// ended for this long is closed as if its rollout had closed it (its
    /// state is lost; the key's next request starts a fresh child). Bounds
    /// the children of rollouts that never send their close: a crashed
    /// trainer, or a balancer that moved the key to another instance. Off
    /// by default: a rollout may think for long between tool calls. A
    /// request or a stream in flight, however long, keeps its child.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub child_idle_timeout: Option<Duration>,

    /// Most live children at once; a request for a new key beyond it gets
    /// `503` with `Retry-After` (existing keys are unaffected).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_children: usize,

    /// The admin listener: Prometheus metrics on `http://ADDR/metrics` (live
    /// children, spawns, exits by cause, cleanups, each worker's event-loop
    /// lag, ...), `GET /healthz`, `GET /readyz` (503 while draining) and
    /// `POST /drain` (start a drain; see --drain-timeout). It has no
    /// authentication: keep it on loopback or a private network.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// Keep the directory of a child that crashed or never became ready, for
    /// post-mortem: it is moved to `<base-dir>/ringmux-failed-<hash>-<time>-<id>`
    /// and the log says where. Closed children's directories are always removed.
    #[arg(long)]
    pub keep_failed_dirs: bool,

    /// Most kernel (io-wq) threads deleting the trash while the workers serve.
    /// They run at nice 19; fewer threads disturb other rollouts' requests less
    /// on small machines. When nobody is served, up to two per CPU.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub cleanup_workers: u32,

    /// CPUs the directory-deleting kernel threads keep to while the workers
    /// serve: `auto` (the last CPU, on machines with two or more), `all`, or a
    /// list like `2,3`. Confining them keeps a data-plane wake-up from queueing
    /// behind a kernel thread in the middle of an unlink. When nobody is
    /// served they may use every CPU.
    #[arg(long, default_value = "auto", value_name = "CPUS")]
    pub cleanup_cpus: String,

    /// CPUs the data-plane workers may run on: `auto` (with 3 or more CPUs,
    /// every CPU but the cleanup CPUs, so directory deletion never competes
    /// with a worker; with fewer, any), `all`, or a list like `0,1`.
    #[arg(long, default_value = "auto", value_name = "CPUS")]
    pub worker_cpus: String,

    /// How a closed rollout's directory is deleted. It always goes into the
    /// instance's trash first (one rename, so the close answers at once);
    /// `adaptive` then deletes the trash at full speed while no request is
    /// being served and in short paced bursts while the workers serve
    /// (between --cleanup-floor and --cleanup-rate, slower when the workers'
    /// event loops run late); `off` deletes at full speed always.
    #[arg(long, default_value = "adaptive", value_name = "adaptive|off",
          value_parser = ["adaptive", "off"])]
    pub cleanup_pace: String,

    /// Most trash entries (files and directories) deleted per second while the
    /// workers serve.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub cleanup_rate: u32,

    /// Fewest trash entries deleted per second while the workers serve, however
    /// late their loops run: the trash keeps draining under steady load.
    #[arg(long, default_value_t = 7_000, value_name = "N")]
    pub cleanup_floor: u32,

    /// Trash entries known and not yet deleted past which the trash is deleted
    /// at full speed (logged, and counted in ringmux_trash_over_cap_total),
    /// until it is back under half of it.
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    pub cleanup_backlog_max: u64,

    /// An `Origin` browsers may send (repeatable), e.g.
    /// `--allow-origin http://localhost:3000`; `*` allows any. Without it only
    /// loopback origins are allowed. DNS-rebinding protection, checked before a
    /// request reaches a child: 403 for another Origin, for a browser's
    /// cross-site request (`Sec-Fetch-Site`) without an allowed Origin, and,
    /// when listening on a loopback address, for a Host that is neither a
    /// loopback name nor an allowed origin's host. Clients that send none of
    /// these headers (SDKs, curl) pass. The admin listener follows the same rules.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,

    /// Contain each child and everything it starts in a cgroup v2 of its own
    /// (below ringmux's cgroup), so close, crash, ready timeout and shutdown
    /// kill all of it (`cgroup.kill`), even processes that left the child's
    /// process group (setsid daemons, double forks). `auto`: where cgroup v2
    /// is mounted and ringmux may create cgroups below its own; otherwise
    /// say so once and fall back to process-group kills. `required`: refuse
    /// to start without. `off`: process-group kills only.
    #[arg(long, default_value = "auto", value_name = "auto|required|off")]
    pub cgroup: crate::cgroup::CgroupMode,

    /// Memory limit of each child's cgroup (`memory.max`, everything the
    /// rollout runs together), e.g. `512M`, `2G`. Needs cgroup v2 with the
    /// memory controller; ringmux refuses to start where it is missing.
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES")]
    pub child_memory_max: Option<u64>,

    /// Most processes and threads in each child's cgroup (`pids.max`): a
    /// fork bomb in one rollout stops there. Needs the pids controller.
    #[arg(long, value_name = "N")]
    pub child_pids_max: Option<u64>,

    /// CPU limit of each child's cgroup in CPUs (`cpu.max`), e.g. `0.5` or
    /// `2`. Needs the cpu controller.
    #[arg(long, value_parser = parse_cpus, value_name = "CPUS")]
    pub child_cpu_max: Option<(u64, u64)>,

    /// Time a client has to send a complete request head, counted from
    /// accept or from the first byte of a later request; past it ringmux
    /// answers `408` and closes. Bounds what a connection that dribbles its
    /// head (or sends nothing) can hold.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub head_timeout: Duration,

    /// How long a kept-alive client connection may sit between requests
    /// before ringmux closes it (silently, as HTTP allows).
    #[arg(long, default_value = "75s", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// Longest pause while a client sends a request body; past it the
    /// request gets `408` (or, if the child's response has begun, the
    /// connection is cut) and the connection is closed. A pause ringmux
    /// causes itself (the child is not reading) does not count.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub body_timeout: Duration,

    /// Longest a send to a client may stay unfinished: a client that stops
    /// reading a response (or a stream) it asked for has its connection cut
    /// (the child, paused meanwhile by backpressure, sees the disconnect).
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub send_timeout: Duration,

    /// If set, how long a child may take to start its response once it has
    /// the whole request; past it the client gets `504` and the connection
    /// to the child is closed. Off by default: MCP servers may think for long
    /// before answering, and a stream, once its head is sent, is never timed.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub response_timeout: Option<Duration>,

    /// Largest request body: `413` for a Content-Length over it (before a
    /// child is started or sees a byte), and for a chunked body as soon as a
    /// chunk would take it over. E.g. `512K`, `4M`, `1G`.
    #[arg(long, default_value = "4M", value_parser = parse_body_size, value_name = "BYTES")]
    pub max_body: u64,

    /// Run the built-in demo MCP server as the child (no COMMAND needed).
    #[arg(long, conflicts_with = "command")]
    pub demo: bool,

    /// What each child listens on (its fd 3, already listening): `tcp`,
    /// 127.0.0.1 on an ephemeral port (RINGMUX_CHILD_ADDR=127.0.0.1:PORT,
    /// `Host` the same), or `unix`, an abstract Unix-domain socket
    /// (RINGMUX_CHILD_ADDR=@NAME; requests carry `Host: localhost:0`), which
    /// takes no ports but streams of small writes cross it more slowly.
    /// `uvicorn --fd 3` serves either. See README, "The child contract".
    #[arg(long, value_enum, default_value_t = crate::child::socket::DEFAULT_CHILD_SOCKET,
          value_name = "unix|tcp")]
    pub child_socket: crate::child::socket::ChildSocket,

    /// Fork mode: start COMMAND once as a warm fork server ("zygote") and
    /// fork a copy-on-write child of it per rollout key instead of exec'ing
    /// COMMAND per key. The fork server gets a private channel on fd 3
    /// (RINGMUX_FORK_SERVER_FD=3) and speaks the protocol in the README
    /// ("Fork mode"); `python -m ringmux_fork my_tools:app` does that for any
    /// ASGI app (pip install ./python), `--demo --fork` for the demo.
    #[arg(long)]
    pub fork: bool,

    /// Fork mode: how long the fork server may take to build its warm state
    /// and report ready. Past it, it is killed and restarted with backoff;
    /// meanwhile new rollouts get 503.
    #[arg(long, default_value = "120s", value_parser = parse_duration, value_name = "DURATION")]
    pub fork_server_timeout: Duration,

    /// Fork mode: how long the fork server may take to answer one spawn
    /// request. Past it, the waiters get 504 and the fork server, deemed
    /// wedged, is killed and restarted.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub fork_timeout: Duration,

    /// The child command, after `--`. It is started once per rollout key with
    /// its listening socket on fd 3 (LISTEN_FDS=1), e.g.
    /// `-- uvicorn --fd 3 my_tools:app`; with --fork it is started once, as
    /// the fork server, e.g. `--fork -- python -m ringmux_fork my_tools:app`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// Parses `1048576`, `512K`, `512M`, `2G` (powers of 1024), at least 1M.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_size(s, 1 << 20, "1M")
}

/// Parses a body size like [`parse_bytes`], at least 1K.
pub fn parse_body_size(s: &str) -> Result<u64, String> {
    parse_size(s, 1 << 10, "1K")
}

fn parse_size(s: &str, min: u64, min_text: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .filter(|b| *b >= min)
        .ok_or_else(|| {
            format!("invalid size {s:?}: expected e.g. 512M or 2G (at least {min_text})")
        })
}

/// Parses a number of CPUs (`0.5`, `2`) into a `cpu.max` quota and period.
pub fn parse_cpus(s: &str) -> Result<(u64, u64), String> {
    let n: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid CPU count {s:?}: expected e.g. 0.5 or 2"))?;
    if !n.is_finite() || !(0.01..=1024.0).contains(&n) {
        return Err(format!("CPU count {s:?} out of range [0.01, 1024]"));
    }
    const PERIOD: u64 = 100_000;
    Ok(((n * PERIOD as f64).round() as u64, PERIOD))
}

/// Parses `500ms`, `30s`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 30s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(format!("duration {s:?} out of range (0, 24h]"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl ServeArgs {
    /// Validates the flags into a [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        Config::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn sizes_and_cpus() {
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert!(parse_bytes("1K").is_err() && parse_bytes("x").is_err());
        assert_eq!(parse_cpus("0.5"), Ok((50_000, 100_000)));
        assert_eq!(parse_cpus("2"), Ok((200_000, 100_000)));
        assert!(parse_cpus("0").is_err() && parse_cpus("-1").is_err());
    }

    #[test]
    fn cli_is_consistent_and_parses_a_command_after_dashes() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "ringmux",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--",
            "uvicorn",
            "--fd",
            "3",
            "m:app",
        ])
        .expect("parses");
        let Command::Serve(a) = cli.command else {
            panic!("serve expected")
        };
        assert_eq!(a.command, ["uvicorn", "--fd", "3", "m:app"]);
        assert_eq!(a.key_param, "vf_state_secret");
        assert_eq!(a.close_path, "/vf/close");
        assert_eq!(a.ready_timeout, Duration::from_secs(30));
        assert_eq!(a.drain_timeout, Duration::from_secs(600));
    }
}
