//! The bpffs pin root: `<root>/v<ABI>/`, default root /sys/fs/bpf/netcontrol.
//!
//! Pinning a link keeps the program attached (and its maps alive) after netcontrol exits or
//! is killed: a sandbox fails closed instead of open. Detaching is removing the pin.
//!
//! Layout (see docs/architecture.md):
//! - `standalone/<cgroup id>-<pid>-<start time>/<hook>`: links of a `run` / `attach` process.
//!   The owner is in the name, so a later netcontrol can tell live owners from dead ones.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use netcontrol_common::abi::PIN_ABI_VERSION;

use crate::{
    cgroup,
    error::{Error, Result},
};

pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/netcontrol";

#[derive(Clone, Debug)]
pub struct PinRoot {
    /// `<root>/v<ABI>`
    pub path: PathBuf,
}

/// A process's identity that survives pid reuse: pid plus its start time (clock ticks since
/// boot, field 22 of /proc/PID/stat).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
}

impl Owner {
    pub fn current() -> Self {
        let pid = std::process::id();
        Self { pid, start: start_time(pid).unwrap_or(0) }
    }

    pub fn is_alive(self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

/// Pins of a `run` / `attach` process whose owner is gone.
#[derive(Clone, Debug)]
pub struct Orphan {
    pub dir: PathBuf,
    pub cgroup_id: u64,
    pub owner: Owner,
}

impl PinRoot {
    /// Open (creating it if needed) the versioned pin directory under `root`. The default
    /// root's bpffs is mounted at /sys/fs/bpf if nothing is mounted there yet.
    ///
    /// bpffs is usually writable by everyone (mode 1777): a pin root someone else made first,
    /// or one they can write to, would let them replace or remove netcontrol's pins. So the
    /// root and everything under it are directories of root's alone (mode 0700, checked when
    /// they exist already), never symbolic links.
    pub fn open(root: &Path) -> Result<Self> {
        // Before anything is made: a pin root an unprivileged netcontrol made would be one
        // that user owns.
        crate::privileges::check()?;
        ensure_bpffs(root)?;
        if let Some(parent) = root.parent()
            && !parent.exists()
        {
            fs::create_dir_all(parent).map_err(|source| Error::Pin {
                op: "creating",
                path: parent.to_owned(),
                source,
            })?;
        }
        check_parent(root)?;
        create_private_dir(root)?;
        let path = root.join(format!("v{PIN_ABI_VERSION}"));
        create_private_dir(&path)?;
        Ok(Self { path })
    }

    /// Like [`PinRoot::open`], but never mounts a bpffs: in a container (the DaemonSet) a
    /// bpffs mounted here would be the container's own, and the pins — enforcement with them
    /// — would go when the container does. The host's must be mounted in.
    pub fn open_host(root: &Path) -> Result<Self> {
        let existing = root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
        if !is_bpffs(existing) {
            return Err(Error::NoBpffs(format!(
                "{} is not on the node's bpf filesystem: mount the host's /sys/fs/bpf there (the \
                 DaemonSet does, with a hostPath volume; the node must have bpffs mounted, as \
                 systemd does at boot). Pins on a filesystem of the container's own would die \
                 with it, and enforcement with them",
                root.display()
            )));
        }
        Self::open(root)
    }

    /// A pin tree of another version found next to ours (see `other_versions`): read and
    /// removed only, never created.
    pub fn other(path: PathBuf) -> Self {
        Self { path }
    }

    /// Whether anything of standalone `run` / `attach` processes is pinned in this tree.
    pub fn has_standalone(&self) -> bool {
        fs::read_dir(self.standalone()).is_ok_and(|mut e| e.next().is_some())
    }

    fn standalone(&self) -> PathBuf {
        self.path.join("standalone")
    }

    /// Pin trees of other ABI versions next to this one. Their links keep enforcing what an
    /// agent of that version last wrote (any program that denies, denies): nothing is opened
    /// by their presence, but this version neither reads nor updates them.
    pub fn other_versions(&self) -> Vec<PathBuf> {
        let Some(root) = self.path.parent() else { return Vec::new() };
        let Ok(entries) = fs::read_dir(root) else { return Vec::new() };
        let ours = format!("v{PIN_ABI_VERSION}");
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                // `v<N>`, or a set put aside (`v<N>_aside_<time>`).
                let version = name.strip_prefix('v').map(|n| n.split('_').next().unwrap_or(""));
                name != ours
                    && version.is_some_and(|n| n.parse::<u32>().is_ok())
                    && e.file_type().is_ok_and(|t| t.is_dir())
            })
            .map(|e| e.path())
            .collect();
        found.sort();
        found
    }

    /// Move the daemon's pins (maps, programs, links) into a tree of their own next to this
    /// one, `v<N>_aside_<unix time>`, where they keep enforcing until a daemon takes over
    /// from them as from another version's. Returns where they went.
    pub fn set_daemon_aside(&self) -> Result<PathBuf> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!("v{PIN_ABI_VERSION}_aside_{secs}");
        let aside = self.path.with_file_name(name);
        create_private_dir(&aside)?;
        let to = aside.join("daemon");
        fs::rename(self.path.join("daemon"), &to).map_err(|source| Error::Pin {
            op: "setting aside",
            path: self.path.join("daemon"),
            source,
        })?;
        Ok(aside)
    }

    /// The daemon's maps.
    pub fn daemon_maps(&self) -> PathBuf {
        self.path.join("daemon/maps")
    }

    /// The daemon's programs (one directory per build).
    pub fn daemon_programs(&self) -> PathBuf {
        self.path.join("daemon/programs")
    }

    /// The daemon's links of the global hooks (the BPF LSM's), one set for all its sandboxes.
    pub fn daemon_global(&self) -> PathBuf {
        self.path.join("daemon/global")
    }

    /// The daemon's links for a cgroup.
    pub fn daemon_links(&self, cgroup_id: u64) -> PathBuf {
        self.path.join("daemon/links").join(cgroup_id.to_string())
    }

    /// Cgroup ids with daemon links pinned.
    pub fn daemon_link_dirs(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = fs::read_dir(self.path.join("daemon/links")) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
            .collect()
    }

    /// Where a `run` / `attach` process pins its links for a cgroup.
    pub fn standalone_dir(&self, cgroup_id: u64, owner: Owner) -> PathBuf {
        self.standalone().join(format!("{cgroup_id}-{}-{}", owner.pid, owner.start))
    }

    /// Every standalone pin set, with the process that made it.
    fn standalone_sets(&self) -> Vec<Orphan> {
        let Ok(entries) = fs::read_dir(self.standalone()) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let mut parts = name.split('-');
                let cgroup_id = parts.next()?.parse().ok()?;
                let owner =
                    Owner { pid: parts.next()?.parse().ok()?, start: parts.next()?.parse().ok()? };
                Some(Orphan { dir: e.path(), cgroup_id, owner })
            })
            .collect()
    }

    /// Standalone pin sets whose owning process has exited.
    pub fn standalone_orphans(&self) -> Vec<Orphan> {
        self.standalone_sets().into_iter().filter(|o| !o.owner.is_alive()).collect()
    }

    /// Live standalone processes (their pids) enforcing on a cgroup.
    pub fn standalone_owners(&self, cgroup_id: u64) -> Vec<u32> {
        self.standalone_sets()
            .into_iter()
            .filter(|o| o.cgroup_id == cgroup_id && o.owner.is_alive())
            .map(|o| o.owner.pid)
            .collect()
    }
}

/// Create a directory of root's alone (0700) under the pin root, with its missing parents,
/// or check that an existing one is: not a symbolic link, owned by this (root) user, writable
/// by nobody else.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) => return check_private(dir, &meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Pin { op: "reading", path: dir.to_owned(), source }),
    }
    if let Some(parent) = dir.parent()
        && !parent.exists()
    {
        create_private_dir(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        // Another netcontrol made it meanwhile: check it like any existing one.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(Error::Pin { op: "creating", path: dir.to_owned(), source }),
    }
    let meta = fs::symlink_metadata(dir).map_err(|source| Error::Pin {
        op: "reading",
        path: dir.to_owned(),
        source,
    })?;
    check_private(dir, &meta)
}

fn check_private(dir: &Path, meta: &fs::Metadata) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::UnsafePinDir {
            path: dir.to_owned(),
            why,
            fix: format!("remove it (`rm -r {}`) and run netcontrol again", dir.display()),
        })
    };
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return refuse("it is not a directory".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return refuse(format!(
            "it is owned by uid {}, not by uid {me} (root): another user may have made it to \
             take over netcontrol's pins",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "its mode {:o} lets other users change what is pinned in it",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The directory holding the pin root must not let other users rename or replace it: it is
/// either writable by root only, or sticky (bpffs' own 1777).
fn check_parent(root: &Path) -> Result<()> {
    let Some(parent) = root.parent() else { return Ok(()) };
    let meta = fs::metadata(parent).map_err(|source| Error::Pin {
        op: "reading",
        path: parent.to_owned(),
        source,
    })?;
    let others_write = meta.mode() & 0o022 != 0;
    let sticky = meta.permissions().mode() & 0o1000 != 0;
    if others_write && !sticky {
        return Err(Error::UnsafePinDir {
            path: parent.to_owned(),
            why: format!(
                "other users may write to it (mode {:o}, not sticky), so they could rename {} \
                 away and put their own in its place",
                meta.mode() & 0o7777,
                root.display()
            ),
            fix: "choose a --pin-root in a directory only root can write to".into(),
        });
    }
    Ok(())
}

/// Remove a pin tree and everything in it (programs, maps, links: each goes once nothing
/// else holds it).
pub fn remove_tree(dir: &Path) -> Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            // Never follow a link out of the tree (bpffs has none of its own).
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            } else {
                fs::remove_file(e.path()).map_err(|source| Error::Pin {
                    op: "removing",
                    path: e.path(),
                    source,
                })?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Pin { op: "removing", path: dir.to_owned(), source }),
    }
}

/// Remove a pin directory: each link pin removed detaches that link once no process holds
/// it open any more.
pub fn remove_dir(dir: &Path) -> Result<()> {
    remove_tree(dir)
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

fn ensure_bpffs(root: &Path) -> Result<()> {
    // The nearest existing ancestor decides which filesystem the root will be on.
    let existing = root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        return Ok(());
    }
    let default_mount = Path::new("/sys/fs/bpf");
    if root.starts_with(default_mount) && existing.starts_with("/sys/fs") {
        fs::create_dir_all(default_mount).map_err(|source| Error::Pin {
            op: "creating",
            path: default_mount.to_owned(),
            source,
        })?;
        // Only root may create pins in a bpffs netcontrol mounts.
        nix::mount::mount(
            Some("bpf"),
            default_mount,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .map_err(|e| Error::NoBpffs(format!("mounting bpffs at /sys/fs/bpf failed: {e}")))?;
        tracing::info!("mounted bpffs at /sys/fs/bpf");
        return Ok(());
    }
    Err(Error::NoBpffs(format!(
        "{} is not on a bpf filesystem; mount one there (`mount -t bpf bpf DIR`) or choose \
         another --pin-root",
        root.display()
    )))
}

/// Clean up after standalone processes that died without detaching (kill -9, crash):
/// - pins of cgroups that are gone or empty are removed (an empty `run` cgroup too);
/// - a cgroup that still has processes stays enforced (fail closed) and is reported, unless it
///   is `adopting`, which the caller is about to take over.
///
/// Returns the orphans of `adopting`, for the caller to remove after attaching its own links
/// (make before break).
pub fn collect_garbage(root: &PinRoot, mount: &Path, adopting: Option<u64>) -> Vec<Orphan> {
    let mut adopted = Vec::new();
    for orphan in root.standalone_orphans() {
        if Some(orphan.cgroup_id) == adopting {
            adopted.push(orphan);
            continue;
        }
        let path = cgroup::path_by_id(mount, orphan.cgroup_id);
        let busy = path.as_deref().is_some_and(|p| cgroup::populated(p).unwrap_or(false));
        if busy {
            tracing::warn!(
                "cgroup {} is still enforced by the pins of netcontrol pid {}, which is gone; \
                 nobody reads its events. End its processes or take it over with \
                 `netcontrol attach --cgroup {0}`",
                path.as_deref().unwrap_or(Path::new("?")).display(),
                orphan.owner.pid
            );
            continue;
        }
        super::orphan::report(&orphan, path.as_deref());
        if let Err(e) = remove_dir(&orphan.dir) {
            tracing::warn!("{e}");
            continue;
        }
        if let Some(p) = path.filter(|p| cgroup::is_run_cgroup(p)) {
            let _ = cgroup::remove(&p);
        }
        tracing::debug!("removed stale pins {}", orphan.dir.display());
    }
    adopted
}

/// The errno behind a failed pin (aya's error hides it in its source).
pub fn pin_io(e: aya::pin::PinError) -> io::Error {
    match e {
        aya::pin::PinError::SyscallError(s) => s.io_error,
        other => io::Error::other(other),
    }
}

/// The errno behind a failed link operation.
pub fn link_io(e: aya::programs::links::LinkError) -> io::Error {
    match e {
        aya::programs::links::LinkError::SyscallError(s) => s.io_error,
        other => io::Error::other(other),
    }
}

/// Open the link pinned at `path`.
pub fn open_link(path: &Path) -> Result<aya::programs::links::PinnedLink> {
    aya::programs::links::PinnedLink::from_pin(path).map_err(|e| Error::Pin {
        op: "opening pinned link",
        path: path.to_owned(),
        source: link_io(e),
    })
}
