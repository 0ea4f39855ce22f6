//! cgroup v2: finding the hierarchy, creating, emptying and removing sandbox cgroups, and
//! mapping between paths and the 64-bit ids the kernel side sees.
//!
//! Nothing here hard-codes /sys/fs/cgroup: hybrid hosts mount cgroup2 at
//! /sys/fs/cgroup/unified, GKE and current distributions at /sys/fs/cgroup.

use std::{
    ffi::OsStr,
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::error::{Error, Result};

pub mod watch;

/// Name prefix of the cgroups `netcontrol run` creates.
pub const RUN_PREFIX: &str = "netcontrol-run-";

/// Whether `path` is a cgroup made by `netcontrol run` (garbage collection may remove it).
pub fn is_run_cgroup(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(RUN_PREFIX))
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn mount_point() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
    parse_mountinfo(&text, "cgroup2").ok_or(Error::NoCgroup2)
}

/// First mount point of a filesystem type in mountinfo text.
pub fn parse_mountinfo(text: &str, fstype: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split(' ').nth(4)?;
        (right.split(' ').next()? == fstype).then(|| PathBuf::from(unescape(mount)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> std::ffi::OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsStr::from_bytes(&out).to_owned()
}

/// Whether `path` is a directory on a cgroup2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Check that `path` is a cgroup v2 directory and return it canonicalized.
pub fn validate(path: &Path) -> Result<PathBuf> {
    let canonical = fs::canonicalize(path).map_err(|source| Error::Cgroup {
        op: "opening",
        path: path.to_owned(),
        source,
    })?;
    if !is_cgroup2(&canonical) || !canonical.join("cgroup.procs").exists() {
        return Err(Error::NotCgroup2 { path: canonical, mount: mount_point()? });
    }
    Ok(canonical)
}

/// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`): the inode number of the
/// cgroup directory on cgroup2.
pub fn id(path: &Path) -> Result<u64> {
    fs::metadata(path).map(|m| m.ino()).map_err(|source| Error::Cgroup {
        op: "reading the id of",
        path: path.to_owned(),
        source,
    })
}

/// Open a cgroup directory (for attaching programs).
pub fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| Error::Cgroup {
        op: "opening",
        path: path.to_owned(),
        source,
    })
}

/// Create a cgroup (and missing parents).
pub fn create(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|source| Error::Cgroup {
        op: "creating",
        path: path.to_owned(),
        source,
    })
}

/// Whether any process is left in the cgroup or its descendants.
pub fn populated(path: &Path) -> Result<bool> {
    let events = path.join("cgroup.events");
    let text = fs::read_to_string(&events).map_err(|source| Error::Cgroup {
        op: "reading",
        path: events.clone(),
        source,
    })?;
    Ok(text.lines().any(|l| l == "populated 1"))
}

/// SIGKILL every process in the cgroup and its descendants, and wait until it is empty.
pub fn kill_all(path: &Path, timeout: Duration) -> Result<()> {
    let kill = path.join("cgroup.kill");
    let deadline = Instant::now() + timeout;
    while populated(path)? {
        if kill.exists() {
            // Linux >= 5.14: one write kills the whole subtree, racing forks included.
            fs::write(&kill, "1").map_err(|source| Error::Cgroup {
                op: "writing",
                path: kill.clone(),
                source,
            })?;
        } else {
            for pid in procs_recursive(path)? {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Cgroup {
                op: "emptying",
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::TimedOut, "processes survived SIGKILL"),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Some process in the cgroup or its descendants, if any.
pub fn first_pid(path: &Path) -> Option<u32> {
    procs_recursive(path).ok()?.into_iter().next()
}

/// Every process in the cgroup and its descendants.
pub fn pids(path: &Path) -> Vec<u32> {
    procs_recursive(path).unwrap_or_default()
}

fn procs_recursive(path: &Path) -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    let procs = path.join("cgroup.procs");
    let text = fs::read_to_string(&procs).unwrap_or_default();
    pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    for entry in fs::read_dir(path).map_err(|source| Error::Cgroup {
        op: "listing",
        path: path.to_owned(),
        source,
    })? {
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(procs_recursive(&entry.path())?);
        }
    }
    Ok(pids)
}

/// Remove an empty cgroup and its (empty) descendants.
pub fn remove(path: &Path) -> Result<()> {
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&entry.path())?;
            }
        }
    }
    // rmdir can briefly fail with EBUSY right after the last process exited.
    let mut tries = 0;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(Error::Cgroup { op: "removing", path: path.to_owned(), source });
            }
        }
    }
}

/// The path of the cgroup with this id, if it still exists (open_by_handle_at on the cgroup2
/// mount; needs CAP_DAC_READ_SEARCH, which root has).
pub fn path_by_id(mount: &Path, id: u64) -> Option<PathBuf> {
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let mount_dir = File::open(mount).ok()?;
    let mut handle = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, id };
    // SAFETY: a valid file_handle with 8 bytes of payload; the fd returned is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_dir.as_raw_fd(),
            &raw mut handle,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a new fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "\
24 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
27 24 0:25 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
28 27 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
29 27 0:27 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd
";
        assert_eq!(parse_mountinfo(hybrid, "cgroup2"), Some("/sys/fs/cgroup/unified".into()));
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(unified, "cgroup2"), Some("/sys/fs/cgroup".into()));
        let v1_only = "29 27 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_mountinfo(v1_only, "cgroup2"), None);
        // Optional fields (several tags) before the separator, and an escaped space.
        let odd = "40 24 0:31 / /mnt/my\\040cg rw shared:1 master:2 - cgroup2 none rw\n";
        assert_eq!(parse_mountinfo(odd, "cgroup2"), Some("/mnt/my cg".into()));
    }
}
