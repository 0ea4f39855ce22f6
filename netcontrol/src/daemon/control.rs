//! The daemon's control socket: a unix socket only root may use, one JSON request per
//! connection and one JSON response, for `netcontrol status`, `attach --daemon` and `detach`.

use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot},
};

use crate::error::{Error, Result};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Enforce a policy on a cgroup until detached (kept across daemon restarts).
    Attach {
        name: Option<String>,
        cgroup: PathBuf,
        policy: PolicyRef,
    },
    /// Stop enforcing on a sandbox attached through the socket.
    Detach {
        name: Option<String>,
        cgroup: Option<PathBuf>,
    },
    /// Re-read the configuration file.
    Reload,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum PolicyRef {
    /// A policy of the daemon's configuration.
    Named(String),
    /// A policy in the policy file format; `source` names it in errors.
    Inline { yaml: String, source: PathBuf },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    pub fn done(message: impl Into<String>) -> Self {
        Self { ok: true, message: Some(message.into()), ..Self::default() }
    }

    pub fn failed(error: impl std::fmt::Display) -> Self {
        Self { ok: false, error: Some(error.to_string()), ..Self::default() }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub config: PathBuf,
    pub pin_root: PathBuf,
    pub ready: bool,
    /// The programs were re-adopted from pins rather than loaded.
    pub programs_adopted: bool,
    pub sandboxes: Vec<SandboxStatus>,
    pub maps: Vec<MapUsage>,
    /// Events dropped because the kernel's ring buffer or netcontrol's queue was full.
    pub events_lost: u64,
    /// What this kernel does not let netcontrol close (hooks it cannot run, and why).
    #[serde(default)]
    pub kernel_gaps: Option<String>,
    /// What Landlock lets `netcontrol run` confine commands to on this kernel.
    #[serde(default)]
    pub landlock: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SandboxStatus {
    pub name: String,
    pub cgroup: PathBuf,
    pub cgroup_id: Option<u64>,
    pub policy: String,
    /// enforce | audit
    pub mode: String,
    /// proxy | resolver
    pub dns_mode: String,
    /// "config" (the configuration file), "control" (attached through the socket),
    /// "container" (a container a `containers:` sandbox selects) or "child" (a container
    /// under a cgroup sandbox).
    pub origin: String,
    /// The container's 12-digit id, for containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// enforcing | waiting
    pub state: String,
    /// Why it is waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Its links were re-adopted from pins at start.
    pub adopted: bool,
    pub allowed: u64,
    pub blocked: u64,
    pub would_block: u64,
    pub events_lost: u64,
    pub dns_refused: u64,
    /// Times its links were found detached or unpinned (and put right).
    #[serde(default)]
    pub tampered: u64,
    /// Why it does not enforce its policy as configured (`reason: detail`), if it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub entries_v4: usize,
    pub entries_v6: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MapUsage {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
}

/// A request and where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

/// Longest request accepted (an inline policy included).
const MAX_REQUEST: usize = 4 << 20;
/// A client has this long to send its request, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// Bind the socket (0600 in a 0700 directory) and hand every request to `calls`. A socket
/// left behind by a dead daemon is replaced; one a live daemon answers on is an error.
pub async fn listen(path: &Path, calls: mpsc::Sender<Call>) -> Result<()> {
    let err = |what: &str, e: io::Error| Error::io(format!("{what} {}", path.display()), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err("creating the directory of", e))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(Error::io(
                format!("starting the control socket {}", path.display()),
                io::Error::new(io::ErrorKind::AddrInUse, "another netcontrol daemon is running"),
            ));
        }
        std::fs::remove_file(path).map_err(|e| err("removing the stale socket", e))?;
    }
    // Created with mode 0600 (umask), so no one else can connect between bind and chmod.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|e| err("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err("setting the mode of", e))?;
    let listener = Arc::new(listener);
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    crate::tasks::supervise("control_socket", move || {
        accept(Arc::clone(&listener), calls.clone(), Arc::clone(&open))
    });
    Ok(())
}

/// Take connections for good, each served in a task of its own.
async fn accept(listener: Arc<UnixListener>, calls: mpsc::Sender<Call>, open: Arc<Semaphore>) {
    let mut backoff = crate::backoff::Backoff::new("control socket: accepting");
    loop {
        let Ok(permit) = Arc::clone(&open).acquire_owned().await else { return };
        let Some((stream, _)) = backoff.accepted(listener.accept().await).await else { continue };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, calls).await {
                tracing::debug!("control connection: {e}");
            }
            drop(permit);
        });
    }
}

async fn serve(stream: UnixStream, calls: mpsc::Sender<Call>) -> io::Result<()> {
    // Root only, whatever the file mode says.
    let cred = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    // The request is read in any case: answering before it is read would break the pipe
    // under the client, which would then never see the answer.
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let timed_out =
        match tokio::time::timeout(IO_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
            Ok(read) => read.map(|_| false)?,
            Err(_) => true,
        };
    let response = if cred.uid() != 0 {
        Response::failed("the control socket is for root only")
    } else if timed_out {
        Response::failed(format!("no request within {} s", IO_TIMEOUT.as_secs()))
    } else {
        // Bytes, not text: a request that is not UTF-8 gets an answer saying so.
        match serde_json::from_slice::<Request>(&line) {
            Err(e) => Response::failed(format!("not a valid request: {e}")),
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((req, tx)).await.is_err() {
                    Response::failed("the daemon is shutting down")
                } else {
                    rx.await.unwrap_or_else(|_| Response::failed("the daemon dropped the request"))
                }
            }
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::from)?;
    out.push(b'\n');
    let answer = async {
        write.write_all(&out).await?;
        write.shutdown().await
    };
    tokio::time::timeout(IO_TIMEOUT, answer).await.unwrap_or_else(|_| {
        Err(io::Error::new(io::ErrorKind::TimedOut, "the answer was not taken"))
    })
}

/// Send one request to the daemon listening on `path`.
pub async fn call(path: &Path, request: &Request, timeout: Duration) -> Result<Response> {
    let err = |e: io::Error| {
        let hint = match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                " (is `netcontrol daemon` running? --socket names another socket)"
            }
            io::ErrorKind::PermissionDenied => " (the control socket is for root only)",
            _ => "",
        };
        Error::io(format!("talking to the daemon at {}{hint}", path.display()), e)
    };
    let exchange = async {
        let mut stream = UnixStream::connect(path).await?;
        let mut line = serde_json::to_vec(request).map_err(io::Error::from)?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).await?;
        serde_json::from_str::<Response>(&answer).map_err(io::Error::from)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(err(io::Error::new(io::ErrorKind::TimedOut, "no answer"))),
    }
}

/// Whether a daemon answers on `path`.
pub async fn is_live(path: &Path) -> bool {
    UnixStream::connect(path).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_plain_json() {
        let r = Request::Attach {
            name: Some("job".into()),
            cgroup: "/sys/fs/cgroup/job".into(),
            policy: PolicyRef::Named("ci".into()),
        };
        let text = serde_json::to_string(&r).expect("json");
        assert_eq!(
            text,
            r#"{"op":"attach","name":"job","cgroup":"/sys/fs/cgroup/job","policy":{"named":"ci"}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).expect("back"), r);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"status"}"#).expect("status"),
            Request::Status
        );
    }
}
