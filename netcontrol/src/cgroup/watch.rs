//! Noticing cgroups come, go and get their first process, without looking at each one every
//! second: with thousands of sandboxes, a stat and a `cgroup.procs` walk per sandbox and second
//! were most of the daemon's idle CPU.
//!
//! One inotify instance (one file) holds:
//! - a watch on the parent directory of each sandbox's cgroup: `mkdir` and `rmdir` there are
//!   directory entries made and removed (IN_CREATE, IN_DELETE), so a cgroup that appears, goes
//!   or is made anew at the same path is noticed at once;
//! - a watch on `cgroup.events` of each sandbox waiting for its first process: the kernel
//!   reports a change of its `populated` line as a modification (cgroup-v2.rst, "cgroup.events").
//!
//! What cannot be watched (no parent yet, the watch limit reached) the caller keeps looking
//! at each second, and after an overflow of the event queue it looks at everything once.

use std::{
    collections::{HashMap, HashSet},
    io,
    path::{Path, PathBuf},
};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::io::unix::AsyncFd;

/// What a watch is on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    /// A directory whose child cgroups are sandboxes.
    Parent,
    /// A sandbox cgroup's `cgroup.events`.
    Populated,
}

/// What the events said.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Cgroups (by path) made, removed, renamed, or whose `populated` changed.
    pub paths: HashSet<PathBuf>,
    /// Events were lost: look at every cgroup.
    pub overflow: bool,
}

pub struct CgroupWatch {
    /// None: nothing is watched (no inotify); every cgroup is to be looked at.
    fd: Option<AsyncFd<Inotify>>,
    by_wd: HashMap<WatchDescriptor, (Kind, PathBuf)>,
    by_path: HashMap<(Kind, PathBuf), WatchDescriptor>,
}

impl CgroupWatch {
    pub fn new() -> io::Result<Self> {
        // SAFETY: the Inotify owns its fd and keeps it open, unchanged, until dropped.
        let fd = Some(unsafe {
            AsyncFd::register_with_interest(Inotify::init()?, tokio::io::Interest::READABLE)
        }?);
        Ok(Self { fd, by_wd: HashMap::new(), by_path: HashMap::new() })
    }

    /// A watch that watches nothing: `set` returns every cgroup, `next` never returns.
    pub fn none() -> Self {
        Self { fd: None, by_wd: HashMap::new(), by_path: HashMap::new() }
    }

    /// Watch exactly these parents' entries and these cgroups' `populated`, adding and
    /// removing watches as needed. Returns the cgroups to look at by other means: those
    /// whose watch could not be added (no parent yet, the watch limit reached), and those
    /// whose watch is new (what changed before it was added was not seen).
    pub fn set(&mut self, parents_of: &[&Path], populated: &[&Path]) -> HashSet<PathBuf> {
        let mut want: HashSet<(Kind, PathBuf)> = HashSet::new();
        for c in parents_of {
            if let Some(p) = c.parent() {
                want.insert((Kind::Parent, p.to_owned()));
            }
        }
        for c in populated {
            want.insert((Kind::Populated, c.to_path_buf()));
        }
        let gone: Vec<(Kind, PathBuf)> =
            self.by_path.keys().filter(|k| !want.contains(*k)).cloned().collect();
        for key in gone {
            if let Some(wd) = self.by_path.remove(&key) {
                self.by_wd.remove(&wd);
                // Fails when the kernel removed it already (the file went): nothing to do.
                if let Some(fd) = &mut self.fd {
                    let _ = fd.get_mut().watches().remove(wd);
                }
            }
        }
        // Watches not in place before this call (new, or failed).
        let mut unseen: HashSet<(Kind, PathBuf)> = HashSet::new();
        for key in want {
            if self.by_path.contains_key(&key) {
                continue;
            }
            let (path, mask) = match key.0 {
                Kind::Parent => (
                    key.1.clone(),
                    WatchMask::CREATE
                        | WatchMask::DELETE
                        | WatchMask::MOVED_FROM
                        | WatchMask::MOVED_TO
                        | WatchMask::DELETE_SELF
                        | WatchMask::ONLYDIR,
                ),
                Kind::Populated => (key.1.join("cgroup.events"), WatchMask::MODIFY),
            };
            let added = match &mut self.fd {
                Some(fd) => fd.get_mut().watches().add(&path, mask),
                None => Err(io::Error::other("no inotify")),
            };
            match added {
                Ok(wd) => {
                    self.by_wd.insert(wd.clone(), key.clone());
                    self.by_path.insert(key.clone(), wd);
                }
                Err(e) => tracing::debug!("watching {}: {e}", path.display()),
            }
            unseen.insert(key);
        }
        // Cgroups, not parents.
        let mut out: HashSet<PathBuf> = populated
            .iter()
            .filter(|c| unseen.contains(&(Kind::Populated, c.to_path_buf())))
            .map(|c| c.to_path_buf())
            .collect();
        out.extend(
            parents_of
                .iter()
                .filter(|c| {
                    c.parent().is_none_or(|p| unseen.contains(&(Kind::Parent, p.to_owned())))
                })
                .map(|c| c.to_path_buf()),
        );
        out
    }

    /// Whether the parent of `cgroup` is watched.
    pub fn watches_parent_of(&self, cgroup: &Path) -> bool {
        cgroup.parent().is_some_and(|p| self.by_path.contains_key(&(Kind::Parent, p.to_owned())))
    }

    /// Whether `cgroup`'s first process will be noticed.
    pub fn watches_populated(&self, cgroup: &Path) -> bool {
        self.by_path.contains_key(&(Kind::Populated, cgroup.to_owned()))
    }

    /// Wait for events; what they said. Cancel-safe: events stay queued in the kernel until
    /// read, and reading does not wait.
    pub async fn next(&mut self) -> io::Result<Seen> {
        let Self { fd, by_wd, by_path } = self;
        let Some(fd) = fd else { return std::future::pending().await };
        loop {
            let mut guard = fd.readable_mut().await?;
            let mut buf = [0u8; 4096];
            let mut seen = Seen::default();
            let read = guard.try_io(|fd| {
                let events = fd.get_mut().read_events(&mut buf)?;
                for e in events {
                    if e.mask.contains(EventMask::Q_OVERFLOW) {
                        seen.overflow = true;
                        continue;
                    }
                    let Some((kind, path)) = by_wd.get(&e.wd) else { continue };
                    match (kind, e.name) {
                        (Kind::Parent, Some(name)) => {
                            seen.paths.insert(path.join(name));
                        }
                        // The parent itself went (DELETE_SELF) or the watch ended: its
                        // children are gone too; look at all (it is rare).
                        (Kind::Parent, None) => seen.overflow = true,
                        (Kind::Populated, _) => {
                            seen.paths.insert(path.clone());
                        }
                    }
                    if e.mask.contains(EventMask::IGNORED) {
                        // The kernel dropped the watch (its file went): the next `set` adds it
                        // anew if still wanted.
                        if let Some(key) = by_wd.remove(&e.wd) {
                            by_path.remove(&key);
                        }
                    }
                }
                Ok(())
            });
            match read {
                Ok(Ok(())) if seen.overflow || !seen.paths.is_empty() => return Ok(seen),
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                // Not readable after all: wait again.
                Err(_would_block) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(w: &mut CgroupWatch) -> Option<Seen> {
        tokio::time::timeout(Duration::from_secs(5), w.next()).await.ok().map(|r| r.expect("read"))
    }

    // A plain directory stands in for a cgroup hierarchy: the parent's events are the VFS's.
    #[tokio::test]
    async fn a_child_made_and_removed_is_reported_by_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = dir.path().join("sandbox");
        let mut w = CgroupWatch::new().expect("inotify");
        // Looked at once: what happened before the watch was not seen.
        assert_eq!(w.set(&[child.as_path()], &[]), HashSet::from([child.clone()]));
        assert!(w.watches_parent_of(&child));
        assert!(w.set(&[child.as_path()], &[]).is_empty(), "watched now");
        std::fs::create_dir(&child).expect("mkdir");
        let seen = next(&mut w).await.expect("the mkdir is seen");
        assert!(seen.paths.contains(&child), "{seen:?}");
        std::fs::remove_dir(&child).expect("rmdir");
        let seen = next(&mut w).await.expect("the rmdir is seen");
        assert!(seen.paths.contains(&child), "{seen:?}");
    }

    #[tokio::test]
    async fn what_cannot_be_watched_is_returned_for_polling() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("no/such/parent/sandbox");
        let mut w = CgroupWatch::new().expect("inotify");
        let left = w.set(&[deep.as_path()], &[deep.as_path()]);
        assert_eq!(left, HashSet::from([deep.clone()]));
        assert!(!w.watches_parent_of(&deep) && !w.watches_populated(&deep));
    }

    #[tokio::test]
    async fn watches_no_longer_wanted_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a/x");
        std::fs::create_dir_all(&a).expect("mkdir");
        let mut w = CgroupWatch::new().expect("inotify");
        w.set(&[a.as_path()], &[]);
        assert!(w.watches_parent_of(&a));
        w.set(&[], &[]);
        assert!(!w.watches_parent_of(&a));
        assert!(w.by_wd.is_empty() && w.by_path.is_empty());
    }
}
