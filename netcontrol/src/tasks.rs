//! Supervised tasks: a long-running task that ends or panics is logged, counted
//! (`netcontrol_task_restarts_total{task}`) and started again after a backoff, instead of
//! leaving a DNS proxy deaf or a metrics port closed while the daemon says all is well.
//! Aborting the supervisor (its `JoinHandle`) aborts the task it runs.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::task::{AbortHandle, JoinHandle};

/// Restarts so far, by task name.
static RESTARTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// The first wait before a restart, doubling up to `MOST`; a task that ran this long since
/// its last start begins again at `FIRST`.
const FIRST: Duration = Duration::from_millis(100);
const MOST: Duration = Duration::from_secs(30);
const HEALTHY: Duration = Duration::from_secs(60);

/// Aborts the running task when the supervisor goes.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run `make()`'s future as task `name`, again whenever it ends or panics.
pub fn supervise<F, Fut>(name: &'static str, mut make: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut delay = FIRST;
        loop {
            let started = Instant::now();
            let task = tokio::spawn(make());
            let guard = AbortOnDrop(task.abort_handle());
            let outcome = task.await;
            drop(guard);
            let why = match outcome {
                Ok(()) => "ended".to_owned(),
                Err(e) if e.is_panic() => {
                    format!("panicked: {}", panic_text(e.into_panic().as_ref()))
                }
                Err(_) => return, // aborted: the supervisor is being stopped
            };
            if started.elapsed() > HEALTHY {
                delay = FIRST;
            }
            *RESTARTS.lock().unwrap_or_else(|e| e.into_inner()).entry(name).or_default() += 1;
            tracing::error!("task {name} {why}; starting it again in {delay:?}");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MOST);
        }
    })
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Restarts so far, by task name (for metrics).
pub fn restarts() -> BTreeMap<&'static str, u64> {
    RESTARTS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    #[tokio::test]
    async fn a_task_that_panics_is_counted_and_started_again() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let sup = supervise("test-panics", move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
                std::future::pending::<()>().await;
            }
        });
        // Polls for the state, with a deadline (the restarts wait 100 ms, then 200 ms).
        let deadline = Instant::now() + Duration::from_secs(20);
        while runs.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3, "started again after each panic");
        assert_eq!(restarts().get("test-panics"), Some(&2));
        sup.abort();
    }
}
