//! Sandboxes attached through the control socket are not in the configuration file: they are
//! kept in a small JSON file next to the socket so that a restarted daemon re-adopts them too.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::control::PolicyRef;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Attached {
    pub name: String,
    pub cgroup: PathBuf,
    pub policy: PolicyRef,
}

/// Where the list lives for a control socket.
pub fn file_for(socket: &Path) -> PathBuf {
    socket.with_file_name("sandboxes.json")
}

/// The list (empty when there is no file yet). A corrupt file is reported, not fatal.
pub fn load(path: &Path) -> Vec<Attached> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!("ignoring {}: {e}", path.display());
            Vec::new()
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            tracing::warn!("reading {}: {e}", path.display());
            Vec::new()
        }
    }
}

/// Replace the list atomically (a crash leaves the old or the new one, never half).
pub fn save(path: &Path, list: &[Attached]) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(list).map_err(io::Error::from)?)?;
    std::fs::rename(&tmp, path)
}
