//! Where event records go: JSON lines to a file or stdout, and/or one human line each on
//! stderr.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use super::EventRecord;
use crate::error::{Error, Result};

pub struct Sink {
    json: Option<(BufWriter<Box<dyn Write + Send>>, PathBuf)>,
    human: bool,
}

impl Sink {
    /// `json`: a path to append JSON lines to, or `-` for stdout. `human`: also print a line per
    /// event on stderr.
    pub fn new(json: Option<&Path>, human: bool) -> Result<Self> {
        let json = match json {
            None => None,
            Some(p) if p == Path::new("-") => Some((
                BufWriter::new(Box::new(io::stdout()) as Box<dyn Write + Send>),
                p.to_owned(),
            )),
            Some(p) => {
                let f: File = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| Error::Events { path: p.to_owned(), source })?;
                Some((BufWriter::new(Box::new(f) as Box<dyn Write + Send>), p.to_owned()))
            }
        };
        Ok(Self { json, human })
    }

    pub fn write(&mut self, record: &EventRecord) -> Result<()> {
        if let Some((w, path)) = &mut self.json {
            serde_json::to_writer(&mut *w, record)
                .map_err(io::Error::from)
                .and_then(|()| w.write_all(b"\n"))
                .map_err(|source| Error::Events { path: path.clone(), source })?;
        }
        if self.human {
            eprintln!("{}", record.human());
        }
        Ok(())
    }

    /// Flush buffered lines (after each batch, so that `tail -f` sees them promptly).
    pub fn flush(&mut self) -> Result<()> {
        if let Some((w, path)) = &mut self.json {
            w.flush().map_err(|source| Error::Events { path: path.clone(), source })?;
        }
        Ok(())
    }

    /// Where JSON lines go, if anywhere.
    pub fn json_path(&self) -> Option<&Path> {
        self.json.as_ref().map(|(_, p)| p.as_path())
    }
}
