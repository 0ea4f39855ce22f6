//! `netcontrol detach`: stop enforcing on a cgroup, through the daemon if it runs, else by
//! removing the pins netcontrol left for it.

use std::time::Duration;

use aya::maps::{HashMap, Map, MapData};
use netcontrol_common::abi::{self, SandboxValue};

use super::DetachArgs;
use crate::{
    bpf::{PinRoot, pins},
    cgroup,
    daemon::control::{self, Request},
    error::{Error, Result},
};

pub async fn main(args: &DetachArgs) -> Result<i32> {
    if control::is_live(&args.socket.path).await {
        // The cgroup, to see in the kernel when it is done: named, or the sandbox's.
        let cgroup = match (&args.cgroup, &args.name) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(name)) => {
                let status =
                    control::call(&args.socket.path, &Request::Status, Duration::from_secs(30))
                        .await?;
                status
                    .status
                    .and_then(|s| s.sandboxes.into_iter().find(|b| &b.name == name))
                    .filter(|b| b.state == "enforcing" && b.origin != "child")
                    .map(|b| b.cgroup)
            }
            (None, None) => None,
        };
        let request = Request::Detach { name: args.name.clone(), cgroup: args.cgroup.clone() };
        let response = control::call(&args.socket.path, &request, Duration::from_secs(30)).await?;
        if !response.ok {
            return Err(Error::Daemon(response.error.unwrap_or_default()));
        }
        // Done only once the kernel no longer runs the programs for it.
        if let Some(c) = &cgroup
            && let Ok(path) = cgroup::validate(c)
        {
            crate::bpf::attach::wait_enforced(&path, false).await?;
        }
        eprintln!("netcontrol: {}", response.message.unwrap_or_default());
        return Ok(0);
    }
    let Some(cgroup_path) = &args.cgroup else {
        return Err(Error::Daemon(format!(
            "no daemon answers on {}; without one, name the cgroup (--cgroup)",
            args.socket.path.display()
        )));
    };
    crate::privileges::check()?;
    let path = cgroup::validate(cgroup_path)?;
    let id = cgroup::id(&path)?;
    let root = PinRoot::open(&args.pin_root)?;
    let mut removed = 0;
    let daemon_dir = root.daemon_links(id);
    if daemon_dir.exists() {
        pins::remove_dir(&daemon_dir)?;
        removed += 1;
        forget_sandbox(&root, id)?;
    }
    for orphan in root.standalone_orphans().into_iter().filter(|o| o.cgroup_id == id) {
        crate::bpf::orphan::report(&orphan, Some(&path));
        pins::remove_dir(&orphan.dir)?;
        removed += 1;
    }
    let live: Vec<u32> = root.standalone_owners(id);
    if removed == 0 && live.is_empty() {
        return Err(Error::Daemon(format!(
            "nothing of netcontrol's is pinned for {}",
            path.display()
        )));
    }
    if removed > 0 && live.is_empty() {
        crate::bpf::attach::wait_enforced(&path, false).await?;
    }
    if removed > 0 {
        eprintln!(
            "netcontrol: detached from {} (no daemon was running; its configuration may attach it again)",
            path.display()
        );
    }
    for pid in live {
        eprintln!(
            "netcontrol: {} is still enforced by the running netcontrol pid {pid}: stop that process",
            path.display()
        );
    }
    Ok(0)
}

/// Remove the cgroup's entry from the daemon's pinned sandbox table: with its links gone, a
/// stale entry would still decide for it under an enforced ancestor.
fn forget_sandbox(root: &PinRoot, cgroup_id: u64) -> Result<()> {
    let path = root.daemon_maps().join(abi::map::SANDBOXES);
    if !path.exists() {
        return Ok(());
    }
    let err = |source| Error::Map { op: "opening pinned", map: abi::map::SANDBOXES, source };
    let data = MapData::from_pin(&path).map_err(err)?;
    let mut map: HashMap<MapData, u64, SandboxValue> =
        HashMap::try_from(Map::HashMap(data)).map_err(err)?;
    match map.remove(&cgroup_id) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(Error::Map { op: "removing from", map: abi::map::SANDBOXES, source }),
    }
}
