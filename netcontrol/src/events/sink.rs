//! Where event records go: JSON lines to a file (rotated by size if asked) or stdout, and/or
//! one human line each on stderr.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
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

pub struct Sink {
    json: Option<Json>,
    human: bool,
}

struct Json {
    path: PathBuf,
    out: Out,
}

enum Out {
    Stdout(BufWriter<io::Stdout>),
    File { w: BufWriter<File>, written: u64, rotation: Option<Rotation> },
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
            Some(p) if p == Path::new("-") => {
                Some(Json { path: p.to_owned(), out: Out::Stdout(BufWriter::new(io::stdout())) })
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
            eprintln!("{}", record.human());
        }
        Ok(())
    }

    /// Flush buffered lines (after each batch, so that `tail -f` sees them promptly).
    pub fn flush(&mut self) -> Result<()> {
        if let Some(j) = &mut self.json {
            let r = match &mut j.out {
                Out::Stdout(w) => w.flush(),
                Out::File { w, .. } => w.flush(),
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
            Out::Stdout(w) => w.write_all(&line),
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

fn open(path: &Path) -> io::Result<(BufWriter<File>, u64)> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let len = f.metadata()?.len();
    Ok((BufWriter::new(f), len))
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
