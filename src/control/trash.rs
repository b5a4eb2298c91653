//! The instance's trash, `<instance>/.trash`: where a closed rollout's
//! directory goes the moment its child is gone, so the close can answer at
//! once whatever the tree's size. A rename within one filesystem is O(1);
//! the deletion of what the trash holds happens afterwards, paced
//! ([`super::pace`]), by ordinary [`super::cleanup::Cleanup`]s.
//!
//! The trash lives inside the instance directory, so the instance's `flock`
//! covers it: a trash left by a SIGKILLed instance is part of that dead
//! instance's directory, which the next instance finds and moves into its
//! own trash ([`super::sweep`]). Entries are named by a counter only (never
//! by key).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, RenameFlags};
use rustix::io::Errno;

/// The trash's name inside the instance directory.
pub const DIR_NAME: &std::ffi::CStr = c".trash";

/// An open trash directory.
#[derive(Debug)]
pub struct Trash {
    fd: OwnedFd,
    next: u64,
    /// Why the trash cannot take anything (deleted, read-only): every later
    /// take fails the same way, so closes delete in place.
    broken: Option<Errno>,
}

impl Trash {
    /// Creates (or opens) the trash inside the instance directory.
    pub fn open(instance: BorrowedFd<'_>) -> io::Result<Trash> {
        match rustix::fs::mkdirat(instance, DIR_NAME, Mode::RWXU) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let fd = super::cleanup::open_dir_fd(instance, DIR_NAME)?;
        Ok(Trash {
            fd,
            next: 1,
            broken: None,
        })
    }

    /// Whether a move into the trash failed for a reason that is the
    /// trash's own (it was deleted, or its filesystem is read-only).
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// The trash directory (cleanups of its entries are relative to it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Moves `from/name` into the trash as `<prefix>-<n>`. `Ok(None)`: there
    /// was nothing to move. Fails with `EXDEV` when `from` is on another
    /// filesystem, and with `ENOENT` when the trash itself was deleted under
    /// us (the caller then deletes in place).
    pub fn take(
        &mut self,
        from: BorrowedFd<'_>,
        name: &str,
        prefix: &str,
    ) -> io::Result<Option<String>> {
        if let Some(e) = self.broken {
            return Err(e.into());
        }
        loop {
            let to = format!("{prefix}-{:x}", self.next);
            self.next += 1;
            match rustix::fs::renameat_with(
                from,
                name,
                &self.fd,
                to.as_str(),
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => return Ok(Some(to)),
                // ENOENT is also what a deleted trash answers: only a
                // missing source means there was nothing to move.
                Err(Errno::NOENT) => {
                    if let Err(Errno::NOENT) =
                        rustix::fs::statat(from, name, AtFlags::SYMLINK_NOFOLLOW)
                    {
                        return Ok(None);
                    }
                    self.broken = Some(Errno::NOENT);
                    return Err(Errno::NOENT.into());
                }
                // A name left from an earlier life of this directory: next.
                Err(Errno::EXIST) => continue,
                // A read-only filesystem refuses every move.
                Err(Errno::ROFS) => {
                    self.broken = Some(Errno::ROFS);
                    return Err(Errno::ROFS.into());
                }
                // Another filesystem (EXDEV), a mount point (EBUSY), ...:
                // this tree only.
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Names already in the trash (left by a crash of this instance's
    /// predecessor in the same directory, or by a cleanup that gave up).
    pub fn entries(&self) -> Vec<String> {
        let Ok(dup) = self.fd.try_clone() else {
            return Vec::new();
        };
        let Ok(mut dir) = rustix::fs::Dir::new(dup) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(Ok(e)) = dir.read() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n != "." && n != ".." {
                out.push(n);
            }
        }
        out
    }

    /// Removes the (empty) trash directory.
    pub fn remove(self, instance: BorrowedFd<'_>) -> io::Result<()> {
        drop(self.fd);
        rustix::fs::unlinkat(instance, DIR_NAME, AtFlags::REMOVEDIR)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn takes_a_tree_in_one_rename_and_never_by_its_name() {
        let base = std::env::temp_dir().join(format!("ringmux-trash-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("abc/sub")).expect("mkdir");
        fs::write(base.join("abc/sub/f"), b"x").expect("write");
        let inst = fs::File::open(&base).expect("open");
        let mut t = Trash::open(inst.as_fd()).expect("trash");
        let got = t.take(inst.as_fd(), "abc", "k").expect("take");
        assert_eq!(got.as_deref(), Some("k-1"));
        assert!(!base.join("abc").exists());
        assert!(base.join(".trash/k-1/sub/f").exists());
        assert_eq!(t.take(inst.as_fd(), "abc", "k").expect("again"), None);
        // A name taken already is skipped, never replaced.
        fs::create_dir_all(base.join("abc")).expect("mkdir");
        fs::create_dir_all(base.join(".trash/k-2")).expect("squat");
        assert_eq!(
            t.take(inst.as_fd(), "abc", "k").expect("take").as_deref(),
            Some("k-3")
        );
        let mut names = t.entries();
        names.sort();
        assert_eq!(names, ["k-1", "k-2", "k-3"]);
        // Opening again finds the same trash.
        assert!(Trash::open(inst.as_fd()).is_ok());
        fs::remove_dir_all(base.join(".trash/k-1")).expect("rm");
        fs::remove_dir_all(base.join(".trash/k-2")).expect("rm");
        fs::remove_dir_all(base.join(".trash/k-3")).expect("rm");
        t.remove(inst.as_fd()).expect("remove");
        assert!(!base.join(".trash").exists());
        fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn a_deleted_trash_is_an_error_not_nothing_to_move() {
        let base = std::env::temp_dir().join(format!("ringmux-trash-gone-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("abc")).expect("mkdir");
        let inst = fs::File::open(&base).expect("open");
        let mut t = Trash::open(inst.as_fd()).expect("trash");
        fs::remove_dir(base.join(".trash")).expect("rmdir trash");
        let e = t
            .take(inst.as_fd(), "abc", "k")
            .expect_err("a deleted trash");
        assert_eq!(e.raw_os_error(), Some(Errno::NOENT.raw_os_error()));
        assert!(
            base.join("abc").exists(),
            "the tree stays for an in-place delete"
        );
        assert!(t.is_broken());
        // Later takes fail the same way, without trying.
        assert!(t.take(inst.as_fd(), "abc", "k").is_err());
        fs::remove_dir_all(&base).expect("cleanup");
    }
}
