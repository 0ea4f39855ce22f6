//! Where a container's cgroup v2 directory is. The kernel says it, whatever the cgroup driver
//! (cgroupfs: `/docker/<id>`, systemd: `/system.slice/docker-<id>.scope`) or the layout
//! (unified, or hybrid with cgroup2 at /sys/fs/cgroup/unified): the `0::` line of the
//! container process's /proc/<pid>/cgroup, under the cgroup2 mount.

use std::path::{Path, PathBuf};

use super::Container;
use crate::error::{Error, Result};

/// The cgroup v2 directory of a running container.
pub fn of_container(c: &Container) -> Result<PathBuf> {
    let pid = match (c.running, c.pid) {
        (true, Some(pid)) => pid,
        _ => return Err(not_running(c)),
    };
    let mount = match crate::cgroup::mount_point() {
        Ok(m) => m,
        Err(Error::NoCgroup2) => {
            return Err(Error::Docker(
                "this host has cgroup v1 only: netcontrol enforces per cgroup v2 directory, and \
                 containers get one only on hosts with a cgroup2 hierarchy (unified, or hybrid \
                 with /sys/fs/cgroup/unified)"
                    .into(),
            ));
        }
        Err(e) => return Err(e),
    };
    let path = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Docker(format!("reading {path} of container {} (did it just stop?): {e}", c.name))
    })?;
    let relative = unified_path(&text).ok_or_else(|| {
        Error::Docker(format!(
            "container {} has no cgroup v2 directory of its own ({path} says: {}); with a hybrid \
             layout the container runtime must create one under {}",
            c.name,
            text.trim().replace('\n', "; "),
            mount.display()
        ))
    })?;
    let dir = under(&mount, relative);
    if !crate::cgroup::is_cgroup2(&dir) {
        return Err(Error::NotCgroup2 { path: dir, mount });
    }
    Ok(dir)
}

pub fn not_running(c: &Container) -> Error {
    Error::Docker(format!("container {} ({}) is not running; start it first", c.name, c.short_id()))
}

/// The cgroup v2 path in a /proc/<pid>/cgroup text: the `0::` line, if it names more than the
/// root (in a hybrid layout a runtime that ignores cgroup2 leaves its containers at the root).
pub fn unified_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
        .filter(|p| p.starts_with('/') && *p != "/")
}

fn under(mount: &Path, relative: &str) -> PathBuf {
    mount.join(relative.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "ed6bd821a6f25593ff8089daf987d59d7ebac922bd1fc88a2bc1d5aa513d7835";

    #[test]
    fn cgroupfs_driver_on_a_hybrid_host() {
        let text = format!(
            "12:pids:/docker/{ID}\n9:name=systemd:/docker/{ID}\n1:cpu:/docker/{ID}\n0::/docker/{ID}\n"
        );
        assert_eq!(unified_path(&text), Some(format!("/docker/{ID}").as_str()));
        assert_eq!(
            under(Path::new("/sys/fs/cgroup/unified"), unified_path(&text).expect("path")),
            Path::new(&format!("/sys/fs/cgroup/unified/docker/{ID}"))
        );
    }

    #[test]
    fn systemd_driver_on_a_unified_host() {
        let text = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(unified_path(&text), Some(format!("/system.slice/docker-{ID}.scope").as_str()));
    }

    #[test]
    fn a_container_left_at_the_root_has_no_directory_of_its_own() {
        assert_eq!(unified_path("1:cpu:/docker/x\n0::/\n"), None);
        assert_eq!(unified_path("1:cpu:/docker/x\n"), None, "cgroup v1 only");
    }
}
