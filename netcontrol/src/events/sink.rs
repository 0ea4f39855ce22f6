//! Where event records go: JSON lines to a file (rotated by size if asked) or stdout, and/or
//! one human line each on stderr.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::EventRecord;
use crate::error::{Error, Result};

/// Size-based rotation: when the file reaches `max_bytes` it becomes `FILE.1` (the older ones
/// `FILE.2` ... `FILE.<keep>`; the oldest goes) and a new FILE starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: u32,
}

/// The one device events may be sent to.
const DISCARD: &str = "/dev/null";

pub struct Sink {
    json: Option<Json>,
    human: bool,
}

struct Json {
    path: PathBuf,
    out: Out,
}

enum Out {
    /// Through the stdout writer thread (`crate::console`).
    Stdout,
    /// `/dev/null`: records are made (and counted) but go nowhere. Not opened: the checks
    /// for files do not fit a device, and nothing written there can be redirected.
    Discard,
    File {
        w: BufWriter<File>,
        written: u64,
        rotation: Option<Rotation>,
    },
}

impl Sink {
    /// `json`: a path to append JSON lines to, or `-` for stdout. `human`: also print a line per
    /// event on stderr.
    pub fn new(json: Option<&Path>, human: bool) -> Result<Self> {
        Self::with_rotation(json, human, None)
    }

    /// [`Sink::new`], the file rotated by size.
    pub fn with_rotation(
        json: Option<&Path>,
        human: bool,
        rotation: Option<Rotation>,
    ) -> Result<Self> {
        let json = match json {
            None => None,
            Some(p) if p == Path::new("-") => Some(Json { path: p.to_owned(), out: Out::Stdout }),
            Some(p) if p == Path::new(DISCARD) => {
                Some(Json { path: p.to_owned(), out: Out::Discard })
            }
            Some(p) => {
                let (w, written) =
                    open(p).map_err(|source| Error::Events { path: p.to_owned(), source })?;
                Some(Json { path: p.to_owned(), out: Out::File { w, written, rotation } })
            }
        };
        Ok(Self { json, human })
    }

    pub fn write(&mut self, record: &EventRecord) -> Result<()> {
        if let Some(j) = &mut self.json {
            j.write(record).map_err(|source| Error::Events { path: j.path.clone(), source })?;
        }
        if self.human {
            crate::console::say(record.human());
        }
        Ok(())
    }

    /// Flush buffered lines (after each batch, so that `tail -f` sees them promptly).
    pub fn flush(&mut self) -> Result<()> {
        if let Some(j) = &mut self.json {
            let r = match &mut j.out {
                Out::File { w, .. } => w.flush(),
                Out::Stdout | Out::Discard => Ok(()),
            };
            r.map_err(|source| Error::Events { path: j.path.clone(), source })?;
        }
        Ok(())
    }

    /// Where JSON lines go, if anywhere.
    pub fn json_path(&self) -> Option<&Path> {
        self.json.as_ref().map(|j| j.path.as_path())
    }
}

impl Json {
    fn write(&mut self, record: &EventRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::from)?;
        line.push(b'\n');
        match &mut self.out {
            Out::Stdout => {
                crate::console::stdout().bytes(line);
                Ok(())
            }
            Out::Discard => Ok(()),
            Out::File { w, written, rotation } => {
                if let Some(r) = rotation
                    && *written > 0
                    && *written + line.len() as u64 > r.max_bytes
                {
                    w.flush()?;
                    rotate(&self.path, r.keep)?;
                    (*w, *written) = open(&self.path)?;
                }
                w.write_all(&line)?;
                *written += line.len() as u64;
                Ok(())
            }
        }
    }
}

/// Open the events file for appending. netcontrol runs as root and the sandbox's user may
/// have been there first: a symbolic or hard link at the path would make root append to any
/// file, and a file (or a directory on the way) that user owns or may write lets them change
/// or erase the record. So the path must name a regular file of root's alone, in directories
/// only root can change, or nothing yet (it is created, mode 0600).
fn open(path: &Path) -> io::Result<(BufWriter<File>, u64)> {
    check_directories(path)?;
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(refuse("it is a symbolic link (it could point root's writes anywhere)"));
        }
        Ok(m) if !m.is_file() => return Err(refuse("it is not a regular file")),
        _ => {}
    }
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        // Never follow a link planted after the look above, never block on a FIFO.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                refuse("it is a symbolic link (it could point root's writes anywhere)")
            }
            _ => e,
        })?;
    let m = f.metadata()?;
    let me = nix::unistd::geteuid().as_raw();
    if !m.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    if m.uid() != me {
        return Err(refuse(&format!(
            "it is owned by uid {}, who could change or erase the events; remove it and let \
             netcontrol create it",
            m.uid()
        )));
    }
    if m.nlink() != 1 {
        return Err(refuse("it has other hard links (the writes would land in another file too)"));
    }
    if m.mode() & 0o022 != 0 {
        return Err(refuse(&format!(
            "its mode {:o} lets other users write it; chmod go-w it",
            m.mode() & 0o7777
        )));
    }
    let len = m.len();
    Ok((BufWriter::new(f), len))
}

fn refuse(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("refusing to write events there: {why}"),
    )
}

/// Every directory the path goes through must be one that only root can change (owned by
/// root, not writable by others, or sticky like /tmp): else its owner could swap the file.
fn check_directories(path: &Path) -> io::Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let dir = fs::canonicalize(&dir)?;
    for d in dir.ancestors() {
        let m = fs::metadata(d)?;
        let sticky = m.permissions().mode() & 0o1000 != 0;
        let others_write = m.mode() & 0o002 != 0;
        let group_write = m.mode() & 0o020 != 0 && m.gid() != 0;
        if m.uid() != me && m.uid() != 0 {
            return Err(refuse(&format!(
                "directory {} is owned by uid {}, who could replace the file",
                d.display(),
                m.uid()
            )));
        }
        if (others_write || group_write) && !sticky {
            return Err(refuse(&format!(
                "directory {} (mode {:o}) lets other users replace the file",
                d.display(),
                m.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// FILE -> FILE.1 -> FILE.2 ... keeping `keep` old files (0: the full file is just dropped).
fn rotate(path: &Path, keep: u32) -> io::Result<()> {
    let numbered = |n: u32| {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    };
    if keep == 0 {
        return fs::remove_file(path);
    }
    let _ = fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        match fs::rename(numbered(n), numbered(n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    fs::rename(path, numbered(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventRecord;

    #[test]
    fn event_files_are_made_private_and_links_or_foreign_files_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        drop(Sink::new(Some(&path), false).expect("a new file"));
        let mode = fs::metadata(&path).expect("made").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Appending to our own file again is fine.
        drop(Sink::new(Some(&path), false).expect("again"));

        let target = dir.path().join("precious");
        fs::write(&target, "root's").expect("write");
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = Sink::new(Some(&link), false).err().expect("a symlink is refused").to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let hard = dir.path().join("hard.jsonl");
        fs::hard_link(&target, &hard).expect("hard link");
        let err = Sink::new(Some(&hard), false).err().expect("a hard link is refused").to_string();
        assert!(err.contains("hard links"), "{err}");
        assert_eq!(fs::read_to_string(&target).expect("read"), "root's", "nothing appended");

        let open = dir.path().join("open.jsonl");
        fs::write(&open, "").expect("write");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o666)).expect("chmod");
        let err = Sink::new(Some(&open), false).err().expect("0666 is refused").to_string();
        assert!(err.contains("lets other users write it"), "{err}");

        // A file the sandbox's user made beforehand (tests run as root, who can chown).
        if nix::unistd::geteuid().is_root() {
            let theirs = dir.path().join("theirs.jsonl");
            fs::write(&theirs, "").expect("write");
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
            let err = Sink::new(Some(&theirs), false).err().expect("refused").to_string();
            assert!(err.contains("owned by uid 65534"), "{err}");
        }

        let fifo = dir.path().join("fifo.jsonl");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let err = Sink::new(Some(&fifo), false).err().expect("a fifo is refused").to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let err = Sink::new(Some(Path::new("/dev/zero")), false).err().expect("a device");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let mut null = Sink::new(Some(Path::new("/dev/null")), false).expect("/dev/null discards");
        null.flush().expect("nothing to flush");

        let shared = dir.path().join("shared");
        fs::create_dir(&shared).expect("mkdir");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err =
            Sink::new(Some(&shared.join("e.jsonl")), false).err().expect("refused").to_string();
        assert!(err.contains("lets other users replace the file"), "{err}");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).expect("chmod");
        drop(Sink::new(Some(&shared.join("e.jsonl")), false).expect("sticky, like /tmp: fine"));
    }

    fn record(i: u32) -> EventRecord {
        EventRecord { pid: i, comm: "x".repeat(40), ..EventRecord::default() }
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let rotation = Rotation { max_bytes: 1000, keep: 2 };
        let mut sink = Sink::with_rotation(Some(&path), false, Some(rotation)).expect("sink");
        for i in 0..100 {
            sink.write(&record(i)).expect("write");
        }
        sink.flush().expect("flush");
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let rotated = |n: u32| dir.path().join(format!("events.jsonl.{n}"));
        assert!(size(&path) <= 1000 && size(&path) > 0, "current file: {}", size(&path));
        assert!(size(&rotated(1)) <= 1000 && size(&rotated(1)) > 500);
        assert!(rotated(2).exists());
        assert!(!rotated(3).exists(), "only `keep` old files stay");
        // Nothing is lost inside the kept files: the newest record is last in the current file.
        let text = fs::read_to_string(&path).expect("read");
        let last: serde_json::Value =
            serde_json::from_str(text.lines().last().expect("a line")).expect("json");
        assert_eq!(last["pid"], 99);
        let before: serde_json::Value = serde_json::from_str(
            fs::read_to_string(rotated(1)).expect("read").lines().last().expect("line"),
        )
        .expect("json");
        let first_now: serde_json::Value =
            serde_json::from_str(text.lines().next().expect("line")).expect("json");
        assert_eq!(
            before["pid"].as_u64().expect("pid") + 1,
            first_now["pid"].as_u64().expect("pid")
        );
    }
}
