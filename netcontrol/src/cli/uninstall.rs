//! `netcontrol uninstall`: remove every pin under the pin root. Each removed link pin ends
//! that enforcement (once no process holds the link open).

use std::path::Path;

use super::UninstallArgs;
use crate::{
    daemon::{control, runtime},
    error::{Error, Result},
};

pub async fn main(args: &UninstallArgs) -> Result<i32> {
    if control::is_live(&args.socket.path).await && !args.force {
        return Err(Error::Daemon(format!(
            "a daemon answers on {}: stop it first (its sandboxes stay enforced by their pins \
             until this command removes them), or pass --force",
            args.socket.path.display()
        )));
    }
    crate::privileges::check()?;
    let root = &args.pin_root;
    if !root.exists() {
        eprintln!("netcontrol: nothing to remove: {} does not exist", root.display());
        return Ok(0);
    }
    let mut links = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(root)
        .map_err(|e| Error::io(format!("reading {}", root.display()), e))?
        .flatten()
    {
        let (l, f) = remove_tree(&entry.path())?;
        links += l;
        files += f;
    }
    let _ = std::fs::remove_dir(root);
    let _ = std::fs::remove_file(runtime::file_for(&args.socket.path));
    eprintln!(
        "netcontrol: removed {files} pins under {} ({links} links: nothing netcontrol attached enforces any more)",
        root.display()
    );
    Ok(0)
}

/// Remove a pin tree depth first; returns (link pins, all pins) removed.
fn remove_tree(path: &Path) -> Result<(usize, usize)> {
    let err = |e| Error::Pin { op: "removing", path: path.to_owned(), source: e };
    let meta = std::fs::symlink_metadata(path).map_err(err)?;
    if !meta.is_dir() {
        std::fs::remove_file(path).map_err(err)?;
        let is_link =
            path.components().any(|c| c.as_os_str() == "links" || c.as_os_str() == "standalone");
        return Ok((usize::from(is_link), 1));
    }
    let mut counts = (0, 0);
    for e in std::fs::read_dir(path).map_err(err)?.flatten() {
        let (l, f) = remove_tree(&e.path())?;
        counts.0 += l;
        counts.1 += f;
    }
    std::fs::remove_dir(path).map_err(err)?;
    Ok(counts)
}
