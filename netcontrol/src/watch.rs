//! Noticing that a policy file changed. The directory is watched, not the file: editors and
//! Kubernetes ConfigMaps replace files by renaming, which a watch on the old inode never sees.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Changes come in bursts (write, then rename, then attribute change): wait this long for the
/// burst to end before reporting one change.
const SETTLE: Duration = Duration::from_millis(200);

pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<()>,
}

impl FileWatch {
    pub fn new(file: &Path) -> Result<Self> {
        Self::of(&[file.to_owned()])
    }

    /// Watch several files (a daemon configuration and the policy files it names).
    pub fn of(files: &[PathBuf]) -> Result<Self> {
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .map(|f| {
                f.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_owned()
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        let names: Vec<OsString> =
            files.iter().filter_map(|f| f.file_name().map(ToOwned::to_owned)).collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Any event naming one of the files, or one without paths (overflow): look at
                // the files again. ConfigMaps swap a `..data` symlink next to them, so changes
                // to entries starting with ".." count too. Reading a file (ours included) is
                // not a change; writes also come as modify events.
                let relevant = event.as_ref().map_or(true, |e| {
                    !e.kind.is_access()
                        && (e.paths.is_empty()
                            || e.paths.iter().any(|p| {
                                p.file_name().is_some_and(|n| {
                                    names.iter().any(|w| w == n)
                                        || n.to_string_lossy().starts_with("..")
                                })
                            }))
                });
                if relevant {
                    let _ = tx.send(());
                }
            })
            .map_err(|e| watch_error(dirs.first().map_or(Path::new("."), PathBuf::as_path), e))?;
        for dir in &dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive).map_err(|e| watch_error(dir, e))?;
        }
        Ok(Self { _watcher: watcher, rx })
    }

    /// Wait for the next change (cancel-safe: nothing is consumed until it returns).
    pub async fn changed(&mut self) {
        if self.rx.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// After [`FileWatch::changed`]: let the burst of events end, and swallow it.
    pub async fn settle(&mut self) {
        tokio::time::sleep(SETTLE).await;
        while self.rx.try_recv().is_ok() {}
    }
}

fn watch_error(dir: &Path, e: notify::Error) -> Error {
    Error::io(format!("watching {} for policy changes", dir.display()), std::io::Error::other(e))
}

/// The path to watch and reload: as given (relative paths stay relative to where netcontrol
/// started).
pub fn policy_path(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn quiet(w: &mut FileWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(300), w.changed()).await.is_err()
    }

    #[tokio::test]
    async fn reading_is_not_a_change_and_replacing_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, "allow: []\n").expect("write");
        let mut watch = FileWatch::new(&file).expect("watch");
        // What every reload does: read the file. That must not look like a change, or each
        // reload would set off the next.
        std::fs::read_to_string(&file).expect("read");
        assert!(quiet(&mut watch).await, "reading the file was taken for a change");
        let tmp = dir.path().join("policy.tmp");
        std::fs::write(&tmp, "allow: [10.0.0.0/8]\n").expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
        assert!(!quiet(&mut watch).await, "replacing the file went unnoticed");
    }
}
