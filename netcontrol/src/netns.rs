//! Network namespaces: the DNS proxy's sockets must be reachable from the sandbox, which may live
//! in a namespace of its own (a container). A socket belongs to the namespace it was created
//! in, for good: so they are created by a short-lived thread that joins the sandbox's namespace,
//! and then served from netcontrol's own threads.

use std::{
    fs::File,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

/// A network namespace other than netcontrol's own.
pub struct Netns {
    file: File,
    pub path: PathBuf,
}

impl Netns {
    /// The network namespace of process `pid`, or None if it is netcontrol's own.
    pub fn of_pid(pid: u32) -> io::Result<Option<Self>> {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let theirs = std::fs::metadata(&path)?;
        let ours = std::fs::metadata("/proc/self/ns/net")?;
        if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
            return Ok(None);
        }
        Ok(Some(Self { file: File::open(&path)?, path }))
    }

    /// Run `f` on a thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                // A fresh thread: the namespace change dies with it.
                setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                    io::Error::other(format!("joining {}: {e}", self.path.display()))
                })?;
                f()
            })
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))?
        })
    }
}

/// Run `f` in `ns` if given, else right here.
pub fn within<T: Send>(
    ns: Option<&Netns>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    match ns {
        Some(ns) => ns.run(f),
        None => f(),
    }
}

/// The network namespace of the processes in a cgroup: that of the first one found (processes
/// of one sandbox share one). None when it is netcontrol's own or the cgroup is empty.
pub fn of_cgroup(cgroup: &Path) -> io::Result<Option<Netns>> {
    match crate::cgroup::first_pid(cgroup) {
        Some(pid) => Netns::of_pid(pid),
        None => Ok(None),
    }
}
