//! The control plane driven through its mailbox, on its own thread and ring,
//! with a fake spawner (each "child" is a real `sleep` process, so pidfds,
//! WAITID reaping and kills are real): the per-key state machine, the
//! per-directory fork lock, capacity and shutdown, without HTTP.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::child::{start_process, SpawnError, Spawned, Spawner};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::msg::{mailbox, Inbox, Mailbox, ToControl, ToWorker};
use crate::route::RouteKey;

use super::{Control, ControlConfig, Maker};

/// Starts `sleep 60` per spawn and records each spawn's directory and pid.
struct FakeSpawner {
    log: Arc<Mutex<Vec<(PathBuf, u32)>>>,
}

impl Spawner for FakeSpawner {
    fn spawn(
        &mut self,
        dir: &Path,
        listener: BorrowedFd<'_>,
        _addr: &crate::child::socket::ChildAddr,
        cgroup: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<Spawned, SpawnError> {
        let argv = ["sleep".into(), "60".into()];
        let s = start_process(&argv, dir, listener, &[], cgroup)?;
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((dir.to_path_buf(), s.pid));
        Ok(s)
    }
}

struct Harness {
    ctl: Mailbox<ToControl>,
    inbox: Inbox<ToWorker>,
    spawns: Arc<Mutex<Vec<(PathBuf, u32)>>>,
    dir: PathBuf,
    base: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn key(k: &str) -> RouteKey {
    RouteKey::from_key(Some(k))
}

impl Harness {
    fn new(max_children: usize) -> Harness {
        Harness::build(max_children, true)
    }

    /// A control plane whose trash cannot be made (a regular file holds its
    /// name), so a closed key's directory is deleted in place and the key
    /// stays locked (`Teardown`) until the last unlink: the one case where
    /// the per-directory fork lock is held long enough to observe.
    fn without_trash(max_children: usize) -> Harness {
        Harness::build(max_children, false)
    }

    fn build(max_children: usize, trash: bool) -> Harness {
        let base = std::env::temp_dir().join(format!(
            "ringmux-ctl-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let dir = base.join("ringmux-1-00");
        std::fs::create_dir_all(&dir).expect("instance dir");
        if !trash {
            std::fs::write(dir.join(".trash"), b"not a directory").expect("trash blocker");
        }
        let open = |p: &Path| {
            rustix::fs::open(
                p,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .expect("open dir")
        };
        let cfg = ControlConfig {
            instance_dir: dir.clone(),
            instance_fd: open(&dir),
            ready_timeout: Duration::from_secs(30),
            max_children,
            child_idle_timeout: None,
            keep_failed_dirs: false,
            cleanup_workers: 2,
            cleanup_cpus: None,
            base_fd: open(&base),
            metrics: Arc::new(Metrics::new(1)),
            cgroups: None,
            pace: crate::control::pace::PaceConfig::default(),
            child_socket: crate::child::socket::ChildSocket::Tcp,
        };
        let (ctl, ctl_in) = mailbox::<ToControl>().expect("mailbox");
        let (w_tx, inbox) = mailbox::<ToWorker>().expect("mailbox");
        let spawns = Arc::new(Mutex::new(Vec::new()));
        let maker = Maker::Exec(Box::new(FakeSpawner {
            log: Arc::clone(&spawns),
        }));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let c = Control::new(ctl_in, vec![w_tx], maker, cfg).expect("control ring");
            let _ = ready_tx.send(());
            c.run();
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("control started");
        Harness {
            ctl,
            inbox,
            spawns,
            dir,
            base,
            thread: Some(thread),
        }
    }

    fn acquire(&self, k: RouteKey) {
        let msg = ToControl::Acquire {
            key: k,
            worker: 0,
            query: String::new(),
        };
        assert!(self.ctl.send(msg).is_ok());
    }

    fn close(&self, k: RouteKey, token: u64) {
        let msg = ToControl::Close {
            key: k,
            worker: 0,
            token,
        };
        assert!(self.ctl.send(msg).is_ok());
    }

    /// The next `n` messages to the worker (within 10 s).
    fn next(&self, n: usize) -> Vec<ToWorker> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        while out.len() < n {
            out.extend(self.inbox.drain());
            assert!(Instant::now() < deadline, "only {out:?} of {n} messages");
            std::thread::sleep(Duration::from_millis(1));
        }
        out
    }

    fn spawned(&self) -> Vec<(PathBuf, u32)> {
        self.spawns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn shutdown(mut self) {
        // The trash blocker is the test's own file, not ringmux's to delete.
        let _ = std::fs::remove_file(self.dir.join(".trash"));
        let (tx, rx) = mpsc::channel();
        assert!(self.ctl.send(ToControl::Shutdown { done: tx }).is_ok());
        rx.recv_timeout(Duration::from_secs(10))
            .expect("shutdown finished");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for (_, pid) in self.spawned() {
            assert!(!alive(pid), "child {pid} alive after shutdown");
        }
        assert!(!self.dir.exists(), "instance dir left after shutdown");
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn alive(pid: u32) -> bool {
    // A reaped child has no /proc entry; a zombie would show state Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, r)| !r.starts_with('Z'))
        })
        .unwrap_or(false)
}

fn ready_id(m: &ToWorker) -> Option<(RouteKey, u64)> {
    match m {
        ToWorker::Ready { key, child } => Some((*key, child.id)),
        _ => None,
    }
}

#[test]
fn concurrent_acquires_share_one_child() {
    let h = Harness::new(16);
    let k = key("a");
    h.acquire(k);
    h.acquire(k);
    let msgs = h.next(2);
    let ids: Vec<_> = msgs.iter().filter_map(ready_id).collect();
    assert_eq!(ids.len(), 2, "{msgs:?}");
    assert_eq!(ids[0], ids[1], "one child for both");
    assert_eq!(h.spawned().len(), 1);
    h.shutdown();
}

#[test]
fn close_answers_after_the_child_is_reaped_and_its_directory_gone() {
    let h = Harness::new(16);
    let k = key("b");
    h.acquire(k);
    h.next(1);
    let (dir, pid) = h.spawned()[0].clone();
    for i in 0..500 {
        std::fs::write(dir.join(format!("f{i}")), b"x").expect("file");
    }
    h.close(k, 7);
    let msgs = h.next(2);
    assert!(
        matches!(msgs.last(), Some(ToWorker::Closed { token: 7 })),
        "{msgs:?}"
    );
    assert!(matches!(msgs[0], ToWorker::Gone { .. }), "{msgs:?}");
    assert!(!dir.exists(), "directory left after the close answered");
    assert!(
        !alive(pid),
        "child alive (or a zombie) after the close answered"
    );
    // An unknown key closes at once.
    h.close(key("never"), 8);
    assert!(matches!(h.next(1)[0], ToWorker::Closed { token: 8 }));
    h.shutdown();
}

#[test]
fn the_fork_lock_is_per_directory() {
    // With a trash the close is one rename and the lock is held for
    // microseconds, so which of the two keys' spawns is answered first is a
    // race; deleting in place holds it for the 20,000 unlinks.
    let h = Harness::without_trash(16);
    let (slow, other) = (key("slow"), key("other"));
    h.acquire(slow);
    let first = h.next(1).iter().find_map(ready_id).expect("ready");
    let (dir, _) = h.spawned()[0].clone();
    for i in 0..20_000 {
        std::fs::write(dir.join(format!("f{i}")), b"x").expect("file");
    }
    h.close(slow, 1);
    // While the slow key's directory is deleted: its next child waits, the
    // other key's child does not.
    h.acquire(slow);
    h.acquire(other);
    let msgs = h.next(4);
    let pos = |pred: &dyn Fn(&ToWorker) -> bool| msgs.iter().position(pred).expect("present");
    let other_ready = pos(&|m| ready_id(m).is_some_and(|(k, _)| k == other));
    let closed = pos(&|m| matches!(m, ToWorker::Closed { token: 1 }));
    let slow_ready = pos(&|m| ready_id(m).is_some_and(|(k, _)| k == slow));
    assert!(
        other_ready < closed,
        "another key waited for a cleanup: {msgs:?}"
    );
    assert!(
        closed < slow_ready,
        "a key's new child started before its old directory was gone"
    );
    assert_ne!(ready_id(&msgs[slow_ready]).map(|r| r.1), Some(first.1));
    h.shutdown();
}

#[test]
fn capacity_refuses_new_keys_only() {
    let h = Harness::new(1);
    h.acquire(key("one"));
    h.next(1);
    h.acquire(key("two"));
    let m = h.next(1);
    assert!(
        matches!(
            &m[0],
            ToWorker::Failed {
                error: ProxyError::AtCapacity,
                ..
            }
        ),
        "{m:?}"
    );
    h.acquire(key("one"));
    assert!(
        ready_id(&h.next(1)[0]).is_some(),
        "an existing key is served"
    );
    h.shutdown();
}

#[test]
fn a_crashed_child_is_reaped_and_its_key_starts_afresh() {
    let h = Harness::new(16);
    let k = key("crash");
    h.acquire(k);
    let (_, id1) = h.next(1).iter().find_map(ready_id).expect("ready");
    let (dir, pid) = h.spawned()[0].clone();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::KILL,
    );
    assert!(matches!(h.next(1)[0], ToWorker::Gone { child_id, .. } if child_id == id1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.exists() || alive(pid) {
        assert!(
            Instant::now() < deadline,
            "crashed child not reaped / dir not removed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    h.acquire(k);
    let (_, id2) = h.next(1).iter().find_map(ready_id).expect("ready again");
    assert_ne!(id1, id2);
    h.shutdown();
}
