//! netcontrol's own lines on stderr (and JSON events on stdout), written from a thread of
//! their own. `run`'s command shares these descriptions: it can make them non-blocking (a
//! plain write would then fail, and `eprintln!` panic) or stop reading them (a terminal's
//! output stopped, a pipe left full), and netcontrol's one async thread — the DNS proxy, the
//! event reader, the tamper checks — must not wait on that. Lines queue here; a full queue
//! drops stderr lines (counted, and said once stderr moves again), never blocks the caller.

use std::{
    io,
    os::fd::RawFd,
    sync::{
        Arc, Condvar, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant},
};

/// Lines waiting for stderr at most; beyond, they are dropped and counted.
const STDERR_QUEUE: usize = 4096;
/// JSON lines waiting for stdout at most; beyond, the caller waits (events are not dropped).
const STDOUT_QUEUE: usize = 65_536;

/// How many lines are queued and not written yet, and a wakeup for when that changes.
type Pending = (Mutex<u64>, Condvar);

/// A writer thread for one file descriptor.
pub struct Writer {
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
    pending: Arc<Pending>,
}

impl Writer {
    fn spawn(fd: RawFd, capacity: usize, name: &str) -> Self {
        let (tx, rx) = sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let pending: Arc<Pending> = Arc::new((Mutex::new(0), Condvar::new()));
        let (d, p) = (dropped.clone(), pending.clone());
        let spawned =
            std::thread::Builder::new().name(name.into()).spawn(move || serve(fd, &rx, &d, &p));
        if let Err(e) = spawned {
            // No thread: lines are dropped (and counted) rather than written by the caller.
            tracing::warn!("starting the {name} writer: {e}");
        }
        Self { tx, dropped, pending }
    }

    fn queued(&self) {
        *self.pending.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    /// Queue a line; drop it (counted) if the queue is full.
    pub fn line(&self, mut text: String) {
        text.push('\n');
        self.queued();
        match self.tx.try_send(text.into_bytes()) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                finish(&self.pending);
            }
        }
    }

    /// Queue bytes, waiting while the queue is full (for events, which are not dropped).
    pub fn bytes(&self, data: Vec<u8>) {
        self.queued();
        if self.tx.send(data).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            finish(&self.pending);
        }
    }

    /// Wait until everything queued so far is written, for at most `timeout`.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.pending;
        let mut n = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            n = cv.wait_timeout(n, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

fn finish(pending: &Pending) {
    let mut p = pending.0.lock().unwrap_or_else(|e| e.into_inner());
    *p = p.saturating_sub(1);
    pending.1.notify_all();
}

fn serve(fd: RawFd, rx: &Receiver<Vec<u8>>, dropped: &AtomicU64, pending: &Pending) {
    let mut said = 0;
    for data in rx {
        let _ = write_all(fd, &data);
        finish(pending);
        let lost = dropped.load(Ordering::Relaxed);
        if lost > said {
            let note = format!(
                "netcontrol: {} lines for this output were not shown (it did not keep up)\n",
                lost - said
            );
            let _ = write_all(fd, note.as_bytes());
            said = lost;
        }
    }
}

/// Write all of `data`, waiting for the descriptor when it is non-blocking and full.
pub fn write_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: a valid buffer of data.len() bytes.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n >= 0 {
            data = &data[n as usize..];
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => {
                let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd. A second at most: the flag may be cleared again.
                unsafe { libc::poll(&raw mut pfd, 1, 1000) };
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

static STDERR: OnceLock<Writer> = OnceLock::new();
static STDOUT: OnceLock<Writer> = OnceLock::new();

/// The stderr writer.
pub fn stderr() -> &'static Writer {
    STDERR.get_or_init(|| Writer::spawn(libc::STDERR_FILENO, STDERR_QUEUE, "stderr"))
}

/// The stdout writer (JSON events to `-`).
pub fn stdout() -> &'static Writer {
    STDOUT.get_or_init(|| Writer::spawn(libc::STDOUT_FILENO, STDOUT_QUEUE, "stdout"))
}

/// A line for stderr (queued).
pub fn say(text: impl Into<String>) {
    stderr().line(text.into());
}

/// Before exiting: let what is queued out, for at most `timeout` each.
pub fn flush(timeout: Duration) {
    if let Some(w) = STDOUT.get() {
        w.flush(timeout);
    }
    if let Some(w) = STDERR.get() {
        w.flush(timeout);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: two ints for the kernel to fill.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) }, 0);
        // SAFETY: new fds, owned here.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn read_all(fd: &OwnedFd) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65_536];
        loop {
            // SAFETY: a buffer of buf.len() bytes.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
    }

    #[test]
    fn a_full_non_blocking_output_neither_fails_nor_blocks_the_caller() {
        let (r, w) = pipe();
        let writer = Writer::spawn(w.as_raw_fd(), 16, "test");
        // Far more than the pipe holds: the caller never waits, the thread does.
        let started = Instant::now();
        for i in 0..2000 {
            writer.line(format!("{i:0>100}"));
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        // The reader drains; what was queued arrives, and the drop is said.
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(&got).contains("were not shown") {
            assert!(Instant::now() < deadline, "{} bytes", got.len());
            got.extend(read_all(&r));
        }
        writer.flush(Duration::from_secs(5));
        got.extend(read_all(&r));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with(&format!("{:0>100}\n", 0)), "in order, from the first");
        assert!(text.lines().all(|l| l.len() == 100 || l.contains("were not shown")));
    }
}
