//! Backing off a loop whose socket keeps failing (EMFILE on accept, ENOBUFS on receive):
//! never a busy loop, and one log line per run of errors.

use std::time::Duration;

/// How long accepting or receiving waits after an error such as "too many open files",
/// doubling up to the most (no busy loop while the error lasts).
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MOST: Duration = Duration::from_secs(1);

/// Waiting after errors that last (out of fds, of memory): doubling, reset by a success.
pub struct Backoff {
    next: Duration,
    what: &'static str,
}

impl Backoff {
    pub fn new(what: &'static str) -> Self {
        Self { next: BACKOFF_FIRST, what }
    }

    pub fn ok(&mut self) {
        self.next = BACKOFF_FIRST;
    }

    pub async fn failed(&mut self, e: &std::io::Error) {
        // The first wait of a run of errors says so; the following ones are counted only.
        if self.next == BACKOFF_FIRST {
            tracing::warn!("{}: {e}; retrying with backoff", self.what);
        }
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(BACKOFF_MOST);
    }
}

impl Backoff {
    /// What an accept (or receive) loop does with one result: the connection, or None after a
    /// transient error (at once) or another one (after the backoff, so that EMFILE does not
    /// spin).
    pub async fn accepted<T>(&mut self, result: std::io::Result<T>) -> Option<T> {
        match result {
            Ok(t) => {
                self.ok();
                Some(t)
            }
            Err(e) if transient(&e) => None,
            Err(e) => {
                self.failed(&e).await;
                None
            }
        }
    }
}

/// Errors that say a connection failed, not the socket: take the next one at once.
pub fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED | libc::ECONNRESET | libc::ECONNREFUSED | libc::EINTR | libc::EAGAIN
        )
    )
}
