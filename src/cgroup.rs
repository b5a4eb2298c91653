//! The cgroup v2 subtree one ringmux instance owns: where the hierarchy is
//! (from `/proc/self/mountinfo` and `/proc/self/cgroup`, never assumed), the
//! instance's cgroup `<own cgroup>/ringmux-<pid>-<nonce>` (held with `flock`
//! for the instance's life, so a later instance can tell a dead owner's
//! cgroups from a live one's, as with directories), one cgroup per child
//! below it, and the few file operations on them: join (`cgroup.procs`),
//! kill everything inside (`cgroup.kill`), emptiness (`cgroup.events`),
//! removal (`rmdir`). Plain file I/O on cgroupfs: each call is one short,
//! non-blocking kernel operation.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// `--cgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Use cgroups where possible; otherwise say so once and fall back to
    /// process-group kills.
    Auto,
    /// Refuse to start without a usable cgroup v2 hierarchy.
    Required,
    /// Never use cgroups.
    Off,
}

impl std::str::FromStr for CgroupMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CgroupMode::Auto),
            "required" => Ok(CgroupMode::Required),
            "off" => Ok(CgroupMode::Off),
            _ => Err(format!("--cgroup must be auto, required or off, not {s:?}")),
        }
    }
}

/// Per-child limits (`--child-memory-max`, `--child-pids-max`,
/// `--child-cpu-max`), written to each child's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max`, bytes.
    pub memory_max: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
    /// `cpu.max`: (quota µs, period µs).
    pub cpu_max: Option<(u64, u64)>,
}

impl Limits {
    /// Whether any limit is asked for.
    pub fn any(&self) -> bool {
        self.memory_max.is_some() || self.pids_max.is_some() || self.cpu_max.is_some()
    }

    /// The controllers they need, with the flag that asks for each.
    pub fn controllers(&self) -> Vec<(&'static str, &'static str)> {
        let mut v = Vec::new();
        if self.memory_max.is_some() {
            v.push(("memory", "--child-memory-max"));
        }
        if self.pids_max.is_some() {
            v.push(("pids", "--child-pids-max"));
        }
        if self.cpu_max.is_some() {
            v.push(("cpu", "--child-cpu-max"));
        }
        v
    }

    /// (file, value) pairs for a child's cgroup.
    fn files(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(m) = self.memory_max {
            v.push(("memory.max", m.to_string()));
        }
        if let Some(p) = self.pids_max {
            v.push(("pids.max", p.to_string()));
        }
        if let Some((q, p)) = self.cpu_max {
            v.push(("cpu.max", format!("{q} {p}")));
        }
        v
    }
}

/// Why no cgroup could be had.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 filesystem in `/proc/self/mountinfo`.
    #[error("no cgroup v2 hierarchy is mounted (none in /proc/self/mountinfo)")]
    NotMounted,
    /// `/proc/self/cgroup` has no `0::` line.
    #[error("this process is in no cgroup v2 cgroup (no 0:: line in /proc/self/cgroup)")]
    NoOwnCgroup,
    /// Our cgroup is not visible through the mount (another namespace).
    #[error("our cgroup {own} is not below the cgroup2 mount's root {root}")]
    Outside {
        /// From /proc/self/cgroup.
        own: String,
        /// The mount's root.
        root: String,
    },
    /// Creating or opening a cgroup failed (permission, delegation).
    #[error("cannot create cgroups below {path}: {source}")]
    Create {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The kernel lacks `cgroup.kill` (Linux < 5.14).
    #[error("{0} has no cgroup.kill (needs Linux >= 5.14)")]
    NoKill(PathBuf),
    /// A limit flag whose controller this hierarchy does not offer.
    #[error("{flag} needs the cgroup v2 {controller} controller, which {path} does not offer (available: {available}); on hosts that mount cgroup v1 beside v2 (hybrid), the controllers stay with v1")]
    NoController {
        /// The flag.
        flag: &'static str,
        /// The controller.
        controller: &'static str,
        /// Where we looked.
        path: PathBuf,
        /// What is there.
        available: String,
    },
    /// Our cgroup's controllers are enabled for a cgroup we may not remove
    /// (another live instance's), so we cannot get a leaf of our own.
    #[error("{path} already gives the {controllers} controller(s) to a live cgroup (another ringmux instance with limits?): with limits, run each instance in a cgroup of its own ({source})")]
    Shared {
        /// Our cgroup.
        path: PathBuf,
        /// What is enabled there.
        controllers: String,
        /// Why disabling failed.
        source: io::Error,
    },
    /// Enabling a controller for the children failed.
    #[error("enabling the {controller} controller below {path}: {source}")]
    Enable {
        /// The controller.
        controller: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The mount point and mount root of the cgroup2 filesystem, from
/// `/proc/self/mountinfo` text (fields: id parent dev root mountpoint opts
/// ... - fstype source superopts).
pub fn parse_mountinfo(text: &str) -> Option<(PathBuf, String)> {
    for line in text.lines() {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let f: Vec<&str> = pre.split_whitespace().collect();
        if f.len() >= 5 {
            return Some((PathBuf::from(unescape(f[4])), unescape(f[3])));
        }
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path of this process, from `/proc/self/cgroup` text.
pub fn parse_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end_matches(" (deleted)").to_string())
}

/// Our own cgroup's directory: the mount point plus our path relative to
/// the mount's root.
fn own_dir(mount: &Path, root: &str, own: &str) -> Result<PathBuf, CgroupError> {
    let rel = if root == "/" {
        own.trim_start_matches('/')
    } else {
        match own.strip_prefix(root) {
            Some(r) if r.is_empty() || r.starts_with('/') => r.trim_start_matches('/'),
            _ => {
                return Err(CgroupError::Outside {
                    own: own.into(),
                    root: root.into(),
                })
            }
        }
    };
    Ok(if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    })
}

fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn write_at(dir: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    let fd = rustix::fs::openat(dir, name, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut f = fs::File::from(fd);
    f.write_all(value)
}

fn read_at(dir: BorrowedFd<'_>, name: &str) -> Option<String> {
    let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    io::read_to_string(fs::File::from(fd)).ok()
}

/// Whether `cgroup.events` in `dir` says something still runs inside.
pub fn populated(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let fd = rustix::fs::openat(
        dir,
        "cgroup.events",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    populated_events(fd.as_fd())
}

/// Whether the `cgroup.events` file open at `events` says something still
/// runs inside; reading re-arms its poll notification.
pub fn populated_events(events: BorrowedFd<'_>) -> io::Result<bool> {
    let mut buf = [0u8; 256];
    let n = rustix::io::pread(events, &mut buf, 0)?;
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("populated "))
        .is_some_and(|v| v.trim() != "0"))
}

/// Kills every process in the cgroup at `dir` and below (`cgroup.kill`).
pub fn kill(dir: BorrowedFd<'_>) -> io::Result<()> {
    write_at(dir, "cgroup.kill", b"1")
}

/// This instance's cgroup.
#[derive(Debug)]
pub struct Tree {
    /// Its directory.
    pub path: PathBuf,
    /// Its parent (our own cgroup), where other instances' cgroups live.
    pub parent: PathBuf,
    /// Open and `flock`ed for the instance's life (never read: holding it is
    /// the point).
    _lock: OwnedFd,
    /// Written into every child's cgroup.
    limits: Limits,
    /// The leaf ringmux moved itself into (`<instance>.supervisor`) and the
    /// controllers it enabled in the parent, so `remove` can put both back.
    leaf: Option<PathBuf>,
}

impl Tree {
    /// Finds the hierarchy and creates `<own cgroup>/<name>`.
    pub fn create(name: &str) -> Result<Tree, CgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let (mount, root) = parse_mountinfo(&mountinfo).ok_or(CgroupError::NotMounted)?;
        let own = parse_proc_cgroup(&fs::read_to_string("/proc/self/cgroup").unwrap_or_default())
            .ok_or(CgroupError::NoOwnCgroup)?;
        let parent = own_dir(&mount, &root, &own)?;
        let path = parent.join(name);
        let create = |source| CgroupError::Create {
            path: parent.clone(),
            source,
        };
        fs::create_dir(&path).map_err(create)?;
        let fd = match open_dir(&path) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = fs::remove_dir(&path);
                return Err(create(e));
            }
        };
        if let Err(e) = rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        {
            let _ = fs::remove_dir(&path);
            return Err(create(e.into()));
        }
        if !path.join("cgroup.kill").exists() {
            let _ = fs::remove_dir(&path);
            return Err(CgroupError::NoKill(path));
        }
        Ok(Tree {
            path,
            parent,
            _lock: fd,
            limits: Limits::default(),
            leaf: None,
        })
    }

    /// Makes `limits` enforceable: refuses a limit whose controller the
    /// hierarchy does not offer; otherwise enables the controllers for the
    /// children (moving ringmux into a leaf cgroup of its own first when its
    /// cgroup is not the root: cgroup v2 lets a cgroup with processes in it
    /// give no controllers to its children). Nothing is changed when no limit
    /// is asked for.
    pub fn apply_limits(&mut self, limits: Limits) -> Result<(), CgroupError> {
        if !limits.any() {
            return Ok(());
        }
        let available =
            fs::read_to_string(self.parent.join("cgroup.controllers")).unwrap_or_default();
        let offered: Vec<&str> = available.split_whitespace().collect();
        for (controller, flag) in limits.controllers() {
            if !offered.contains(&controller) {
                return Err(CgroupError::NoController {
                    flag,
                    controller,
                    path: self.parent.clone(),
                    available: if offered.is_empty() {
                        "none".into()
                    } else {
                        offered.join(" ")
                    },
                });
            }
        }
        let is_root = !self.parent.join("cgroup.procs").exists()
            || fs::read_to_string(self.parent.join("cgroup.type")).is_err();
        if !is_root {
            self.clear_parent_controllers()?;
            // Our own leaf, beside the instance cgroup, so the parent has no
            // processes of its own.
            let leaf = self.path.with_extension("supervisor");
            let enable = |source| CgroupError::Enable {
                controller: "(leaf)",
                path: leaf.clone(),
                source,
            };
            fs::create_dir(&leaf).map_err(enable)?;
            self.leaf = Some(leaf.clone());
            fs::write(leaf.join("cgroup.procs"), b"0").map_err(enable)?;
        }
        for (controller, _) in limits.controllers() {
            for dir in [&self.parent, &self.path] {
                fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}")).map_err(
                    |source| CgroupError::Enable {
                        controller,
                        path: dir.clone(),
                        source,
                    },
                )?;
            }
        }
        self.limits = limits;
        Ok(())
    }

    /// A predecessor that was killed (not stopped) leaves its controllers
    /// enabled in our parent, and with us in it the parent acts as a thread
    /// root: the kernel then refuses (`EOPNOTSUPP`) to move us into a domain
    /// leaf. So, before moving, remove dead instances' cgroups (nothing is
    /// served yet, so waiting here delays no one; bounded to 2 s each) and
    /// their leaves, and disable what they enabled. A live instance's cgroup
    /// keeps its controllers, and we say that two instances with limits need
    /// a cgroup each.
    fn clear_parent_controllers(&self) -> Result<(), CgroupError> {
        let enabled =
            fs::read_to_string(self.parent.join("cgroup.subtree_control")).unwrap_or_default();
        let enabled: Vec<&str> = enabled.split_whitespace().collect();
        if enabled.is_empty() {
            return Ok(());
        }
        for (path, fd) in self.stale() {
            let _ = kill(fd.as_fd());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while populated(fd.as_fd()).unwrap_or(false) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            match remove_tree(&path) {
                Ok(()) => {
                    tracing::info!(cgroup = %path.display(), "removed a dead instance's cgroup before taking over its controllers")
                }
                Err(e) => {
                    tracing::warn!(cgroup = %path.display(), error = %e, "could not remove a dead instance's cgroup")
                }
            }
        }
        self.remove_dead_leaves();
        let off: Vec<String> = enabled.iter().map(|c| format!("-{c}")).collect();
        fs::write(self.parent.join("cgroup.subtree_control"), off.join(" ")).map_err(|source| {
            CgroupError::Shared {
                path: self.parent.clone(),
                controllers: enabled.join(" "),
                source,
            }
        })
    }

    /// Creates the cgroup of one child.
    pub fn child(&self, name: &str) -> io::Result<ChildCgroup> {
        let path = self.path.join(name);
        fs::create_dir(&path)?;
        let made = (|| {
            let dir = open_dir(&path)?;
            let procs = rustix::fs::openat(
                &dir,
                "cgroup.procs",
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            Ok::<_, io::Error>((dir, procs))
        })();
        let made = made.and_then(|(dir, procs)| {
            for (file, value) in self.limits.files() {
                write_at(dir.as_fd(), file, value.as_bytes())?;
            }
            Ok((dir, procs))
        });
        match made {
            Ok((dir, procs)) => Ok(ChildCgroup {
                path,
                name: name.to_string(),
                dir,
                procs,
            }),
            Err(e) => {
                let _ = fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    /// Removes the (empty) instance cgroup; where ringmux moved itself into
    /// a leaf, it also disables the controllers it enabled in the parent,
    /// moves itself back and removes the leaf, so a stop leaves the parent as
    /// it found it (a cgroup that holds a process cannot be removed, so only
    /// this process can do that; what fails is logged, and the next instance
    /// removes a leaf left behind).
    pub fn remove(&self) -> io::Result<()> {
        let removed = fs::remove_dir(&self.path);
        if let Some(leaf) = &self.leaf {
            let off: Vec<String> = self
                .limits
                .controllers()
                .iter()
                .map(|(c, _)| format!("-{c}"))
                .collect();
            if !off.is_empty() {
                if let Err(e) = fs::write(self.parent.join("cgroup.subtree_control"), off.join(" "))
                {
                    tracing::warn!(cgroup = %self.parent.display(), error = %e,
                        "could not disable the controllers ringmux enabled");
                }
            }
            let back = fs::write(self.parent.join("cgroup.procs"), b"0")
                .and_then(|()| fs::remove_dir(leaf));
            if let Err(e) = back {
                tracing::warn!(cgroup = %leaf.display(), error = %e,
                    "could not leave and remove ringmux's own leaf cgroup");
            }
        }
        removed
    }

    /// Removes the empty supervisor leaves (`<instance>.supervisor`) dead
    /// instances left beside ours; a live instance's leaf holds that
    /// instance, so its `rmdir` fails and it stays.
    pub fn remove_dead_leaves(&self) {
        let Ok(entries) = fs::read_dir(&self.parent) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(inst) = name.strip_suffix(".supervisor") {
                if crate::control::is_instance_dir_name(inst) && fs::remove_dir(e.path()).is_ok() {
                    tracing::info!(cgroup = %e.path().display(), "removed a dead instance's supervisor cgroup");
                }
            }
        }
    }

    /// Cgroups of dead instances beside ours (`ringmux-<pid>-<hex>` whose
    /// `flock` we can take), each opened and locked by us.
    pub fn stale(&self) -> Vec<(PathBuf, OwnedFd)> {
        let own = self.path.file_name().map(|n| n.to_owned());
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&self.parent) else {
            return out;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if Some(&name) == own.as_ref()
                || !crate::control::is_instance_dir_name(&name.to_string_lossy())
            {
                continue;
            }
            let Ok(fd) = open_dir(&e.path()) else {
                continue;
            };
            if rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
            {
                out.push((e.path(), fd));
            }
        }
        out
    }
}

/// Removes an emptied cgroup subtree, leaves first.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    fs::remove_dir(path)
}

/// One child's cgroup.
#[derive(Debug)]
pub struct ChildCgroup {
    /// Its directory.
    pub path: PathBuf,
    /// Its name (logs, metrics: never a key).
    pub name: String,
    dir: OwnedFd,
    procs: OwnedFd,
}

impl ChildCgroup {
    /// Its `cgroup.procs`, open for writing: a new process writes `0` there
    /// to enter the cgroup before it runs code of its own.
    pub fn procs(&self) -> BorrowedFd<'_> {
        self.procs.as_fd()
    }

    /// Its directory (a fork server forks into it with `CLONE_INTO_CGROUP`).
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Moves process `pid` into it.
    pub fn add_pid(&self, pid: u32) -> io::Result<()> {
        let n = rustix::io::write(&self.procs, pid.to_string().as_bytes())?;
        if n == 0 {
            return Err(io::Error::other("short write to cgroup.procs"));
        }
        Ok(())
    }

    /// CPU seconds used by everything that ran inside (`cpu.stat`).
    pub fn cpu_seconds(&self) -> Option<f64> {
        let text = read_at(self.dir.as_fd(), "cpu.stat")?;
        text.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|us| us as f64 / 1e6)
    }

    /// Peak memory in bytes (`memory.peak`), where the memory controller is
    /// enabled.
    pub fn memory_peak(&self) -> Option<f64> {
        read_at(self.dir.as_fd(), "memory.peak")?
            .trim()
            .parse::<u64>()
            .ok()
            .map(|b| b as f64)
    }

    /// Whether the kernel's OOM killer killed something in it under its
    /// memory limit (`memory.events`: `oom_kill` > 0).
    pub fn oom_killed(&self) -> bool {
        read_at(self.dir.as_fd(), "memory.events").is_some_and(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    }

    /// Kills everything inside.
    pub fn kill(&self) -> io::Result<()> {
        kill(self.dir.as_fd())
    }

    /// Its `cgroup.events`, open for reading and polling (`POLLPRI` fires
    /// when it changes after the last read).
    pub fn events(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.dir,
            "cgroup.events",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// Its path and open directory (to remove it later, once empty).
    pub fn into_parts(self) -> (PathBuf, OwnedFd) {
        (self.path, self.dir)
    }

    /// Removes it (it must be empty).
    pub fn remove(self) -> io::Result<()> {
        fs::remove_dir(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_v1_ones() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(text),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".to_string()))
        );
        assert_eq!(parse_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
        let escaped = "41 31 0:38 /a /my\\040cg rw shared:1 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(escaped),
            Some((PathBuf::from("/my cg"), "/a".to_string()))
        );
    }

    #[test]
    fn own_cgroup_relative_to_the_mount_root() {
        assert_eq!(
            parse_proc_cgroup("4:memory:/x\n0::/system.slice/r.service\n").as_deref(),
            Some("/system.slice/r.service")
        );
        assert_eq!(parse_proc_cgroup("4:memory:/x\n"), None);
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            own_dir(m, "/", "/").expect("root"),
            PathBuf::from("/sys/fs/cgroup")
        );
        assert_eq!(
            own_dir(m, "/", "/a/b").expect("a/b"),
            PathBuf::from("/sys/fs/cgroup/a/b")
        );
        assert_eq!(
            own_dir(m, "/a", "/a/b").expect("b"),
            PathBuf::from("/sys/fs/cgroup/b")
        );
        assert!(own_dir(m, "/a", "/ab").is_err());
        assert!("auto".parse::<CgroupMode>().is_ok() && "x".parse::<CgroupMode>().is_err());
    }
}
