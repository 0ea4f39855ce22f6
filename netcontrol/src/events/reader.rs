//! Reading the EVENTS ring buffer on the tokio runtime and handing records to the sink, with
//! the records netcontrol makes itself (DNS decisions) merged in, and the summary records of
//! denials that got no event of their own (from `DENIALS`, once a second).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use netcontrol_common::abi::{DenialKey, Event};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{Clock, EventRecord, Labels, Sink};
use crate::{
    bpf::maps::Denials,
    error::{Error, Result},
};

/// Records netcontrol makes itself that may wait for the sink; beyond it they are counted as
/// lost, like a full ring buffer.
const INJECT_QUEUE: usize = 4096;

/// How often the reader looks for events that were queued without a wakeup.
const TAIL_LOOK: Duration = Duration::from_millis(50);

/// How often denials counted without an event are summarized.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// A `DENIALS` key with no attempt for this long is forgotten (the map is bounded).
const QUIET_NS: u64 = 60_000_000_000;

/// A running reader. `finish` stops it after draining everything queued.
pub struct EventPump {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<Sink>>,
    injector: Injector,
}

/// Hands records made in userspace to the sink.
#[derive(Clone)]
pub struct Injector {
    tx: mpsc::Sender<EventRecord>,
    lost: Arc<AtomicU64>,
    /// Records the sink failed to write (a full disk): counted, and the pump goes on.
    write_failed: Arc<AtomicU64>,
}

impl Injector {
    pub fn send(&self, record: EventRecord) {
        if self.tx.try_send(record).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records that found the queue full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Records the events output failed to take.
    pub fn write_failed(&self) -> u64 {
        self.write_failed.load(Ordering::Relaxed)
    }
}

impl EventPump {
    pub fn start(
        ring: RingBuf<MapData>,
        denials: Denials,
        sink: Sink,
        labels: Labels,
    ) -> Result<Self> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until dropped.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| {
                Error::io("watching the event ring buffer", std::io::Error::other(e.to_string()))
            })?;
        let (stop, stopped) = oneshot::channel();
        let (tx, rx) = mpsc::channel(INJECT_QUEUE);
        let summaries = Summaries { denials, seen: HashMap::new() };
        let write_failed = Arc::new(AtomicU64::new(0));
        let out = Output { sink, failing: false, failed: write_failed.clone() };
        let task = tokio::spawn(pump(fd, rx, summaries, out, labels, Clock::new(), stopped));
        let injector = Injector { tx, lost: Arc::new(AtomicU64::new(0)), write_failed };
        Ok(Self { stop, task, injector })
    }

    pub fn injector(&self) -> Injector {
        self.injector.clone()
    }

    /// Drain what is queued, stop, and hand the sink back.
    pub async fn finish(self) -> Result<Sink> {
        let _ = self.stop.send(());
        self.task.await.map_err(|e| Error::io("event reader", std::io::Error::other(e)))?
    }
}

/// The sink, and whether it is failing: a write error (a full disk) must not stop the pump
/// for good. It is said once per run of failures, each record lost is counted
/// (`netcontrol_events_lost_total{source="events_output"}`), and writing goes on.
struct Output {
    sink: Sink,
    failing: bool,
    failed: Arc<AtomicU64>,
}

impl Output {
    /// A write or a drain: a success may only have filled the buffer, so only a failure
    /// counts here.
    fn survive<T>(&mut self, r: Result<T>) {
        if let Err(e) = r {
            self.failed(&e);
        }
    }

    /// A drain: it flushed what it wrote, if it wrote anything.
    fn survive_drain(&mut self, r: Result<usize>) {
        match r {
            Ok(0) => {}
            Ok(_) => self.survive_flush(Ok(())),
            Err(e) => self.failed(&e),
        }
    }

    /// A flush: its success says writing works.
    fn survive_flush(&mut self, r: Result<()>) {
        match r {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("writing events works again");
            }
            Ok(()) => {}
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, e: &Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if !self.failing {
            self.failing = true;
            tracing::error!(
                "writing events failed: {e}; each event that cannot be written is counted as \
                 lost until writing works again"
            );
        }
    }
}

async fn pump(
    mut fd: AsyncFd<RingBuf<MapData>>,
    mut injected: mpsc::Receiver<EventRecord>,
    mut summaries: Summaries,
    mut out: Output,
    labels: Labels,
    clock: Clock,
    mut stopped: oneshot::Receiver<()>,
) -> Result<Sink> {
    // The programs wake us for the first event after a quiet spell and then at most every
    // few milliseconds per CPU (netcontrol_common::verdict::wake_reader); the tail of a burst
    // that woke no one is picked up here.
    let mut tick = tokio::time::interval(TAIL_LOOK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summary_tick = tokio::time::interval(SUMMARY_EVERY);
    summary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard.map_err(|e| Error::io("waiting for events", e))?;
                let r = drain(guard.get_inner_mut(), &mut out.sink, &labels, clock);
                out.survive_drain(r);
                guard.clear_ready();
                // An event committed between the drain and clear_ready woke nobody: look again.
                let r = drain(fd.get_mut(), &mut out.sink, &labels, clock);
                out.survive_drain(r);
            }
            Some(record) = injected.recv() => {
                let r = out.sink.write(&record);
                out.survive(r);
                while let Ok(record) = injected.try_recv() {
                    let r = out.sink.write(&record);
                    out.survive(r);
                }
                let r = out.sink.flush();
                out.survive_flush(r);
            }
            _ = tick.tick() => {
                let r = drain(fd.get_mut(), &mut out.sink, &labels, clock);
                out.survive_drain(r);
            }
            _ = summary_tick.tick() => {
                // Events first, so that a summary follows the events of its key.
                let r = drain(fd.get_mut(), &mut out.sink, &labels, clock);
                out.survive_drain(r);
                let r = summaries.sweep(&mut out.sink, &labels, clock, false);
                out.survive(r);
            }
            _ = &mut stopped => {
                let r = drain(fd.get_mut(), &mut out.sink, &labels, clock);
                out.survive_drain(r);
                while let Ok(record) = injected.try_recv() {
                    let r = out.sink.write(&record);
                    out.survive(r);
                }
                let r = summaries.sweep(&mut out.sink, &labels, clock, true);
                out.survive(r);
                let r = out.sink.flush();
                out.survive_flush(r);
                return Ok(out.sink);
            }
        }
    }
}

/// Hand every queued event to the sink.
pub fn drain(
    ring: &mut RingBuf<MapData>,
    sink: &mut Sink,
    labels: &Labels,
    clock: Clock,
) -> Result<usize> {
    let mut n = 0;
    while let Some(item) = ring.next() {
        if item.len() < size_of::<Event>() {
            tracing::warn!("short event record ({} bytes) ignored", item.len());
            continue;
        }
        // SAFETY: Event is Pod and the record is at least that long; the ring buffer gives no
        // alignment guarantee beyond 8, so read unaligned.
        let event: Event = unsafe { item.as_ptr().cast::<Event>().read_unaligned() };
        drop(item);
        sink.write(&EventRecord::new(&event, clock, labels))?;
        n += 1;
    }
    if n > 0 {
        sink.flush()?;
    }
    Ok(n)
}

/// Summary records for denials counted in `DENIALS` without an event of their own.
struct Summaries {
    denials: Denials,
    /// What has been reported of each key (mirrors DENIALS_REPORTED, read once per key).
    seen: HashMap<DenialKey, u64>,
}

impl Summaries {
    /// Report every key with attempts not reported yet; forget keys that went quiet (all of
    /// them when `last`: the sandboxes are gone).
    fn sweep(&mut self, sink: &mut Sink, labels: &Labels, clock: Clock, last: bool) -> Result<()> {
        let now = super::record::monotonic_ns();
        let mut wrote = false;
        for (key, value) in self.denials.all() {
            let reported = match self.seen.get(&key) {
                Some(n) => *n,
                None => self.denials.reported(&key),
            };
            let delta = value.suppressed.saturating_sub(reported);
            if delta > 0 {
                sink.write(&EventRecord::summary(&key, &value, delta, clock, labels))?;
                wrote = true;
                self.seen.insert(key, value.suppressed);
                if let Err(e) = self.denials.set_reported(&key, value.suppressed) {
                    tracing::warn!("{e}");
                }
            } else if last || now.saturating_sub(value.last_ns) > QUIET_NS {
                self.seen.remove(&key);
                if let Err(e) = self.denials.forget(&key) {
                    tracing::warn!("{e}");
                }
            } else {
                self.seen.insert(key, reported);
            }
        }
        if wrote {
            sink.flush()?;
        }
        Ok(())
    }
}
