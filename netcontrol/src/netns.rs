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

    /// Which namespace this is (device and inode of its file): two handles on one namespace
    /// have the same.
    pub fn id(&self) -> io::Result<(u64, u64)> {
        let m = self.file.metadata()?;
        Ok((m.dev(), m.ino()))
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

/// Where a cgroup's processes are, as the sandbox sees it.
pub struct Placement {
    /// Some process is in netcontrol's own namespace (the host's network): the sandbox gets
    /// the host's rules (listening, abstract unix sockets), whichever namespace the others
    /// are in. A process that made a namespace of its own must not lift them for the rest.
    pub host: bool,
    /// The namespace to serve the sandbox's DNS in, when no process is in ours: that of the
    /// first process, if root made it (a container's, a pod's). One an unprivileged process
    /// made (owned by a user namespace of its own) is no place for netcontrol's proxy, and no
    /// reason to lift the host's rules either: such a sandbox counts as the host's.
    pub ns: Option<Netns>,
}

/// Where the processes of a cgroup are (an empty cgroup: nowhere yet, `host` false).
pub fn of_cgroup(cgroup: &Path) -> io::Result<Placement> {
    let pids = crate::cgroup::pids(cgroup);
    let mut first = None;
    for pid in pids {
        match Netns::of_pid(pid) {
            Ok(None) => return Ok(Placement { host: true, ns: None }),
            Ok(Some(ns)) if first.is_none() => first = Some(ns),
            // Gone meanwhile, or another namespace: the first decides where DNS is served.
            _ => {}
        }
    }
    Ok(match first {
        Some(ns) if owned_by_our_userns(&ns)? => Placement { host: false, ns: Some(ns) },
        Some(ns) => {
            tracing::info!(
                "{} is a network namespace an unprivileged user made: the sandbox keeps the \
                 host's rules, and its DNS proxy stays in netcontrol's namespace",
                ns.path.display()
            );
            Placement { host: true, ns: None }
        }
        None => Placement { host: false, ns: None },
    })
}

/// Whether the namespace belongs to netcontrol's own user namespace (NS_GET_USERNS): made by
/// someone as privileged as netcontrol, not by a user with a namespace of its own. (Ours, not
/// pid 1's: in a container, pid 1's may not be readable, and ours is the one that matters.)
fn owned_by_our_userns(ns: &Netns) -> io::Result<bool> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    // SAFETY: an ioctl on an open namespace file; it returns a new fd or -1.
    let fd = unsafe { libc::ioctl(ns.file.as_raw_fd(), NS_GET_USERNS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd, owned here.
    let owner = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let ours = std::fs::metadata("/proc/thread-self/ns/user")?;
    let owner = owner.metadata()?;
    Ok((owner.dev(), owner.ino()) == (ours.dev(), ours.ino()))
}
