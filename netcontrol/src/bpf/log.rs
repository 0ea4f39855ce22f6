//! Kernel-side diagnostics (aya-log, `--bpf-log`): drained from the AYA_LOGS ring buffer and
//! forwarded into netcontrol's own log under the target `bpf`. Off by default, and then the
//! verifier prunes every log statement from the programs.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::{io::unix::AsyncFd, task::JoinHandle};

use crate::error::{Error, Result};

/// Hands aya-log records to tracing.
pub struct ToTracing;

static TO_TRACING: ToTracing = ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        match r.level() {
            log::Level::Error => tracing::error!(target: "bpf", "bpf: {}", r.args()),
            log::Level::Warn => tracing::warn!(target: "bpf", "bpf: {}", r.args()),
            log::Level::Info => tracing::info!(target: "bpf", "bpf: {}", r.args()),
            log::Level::Debug => tracing::debug!(target: "bpf", "bpf: {}", r.args()),
            log::Level::Trace => tracing::trace!(target: "bpf", "bpf: {}", r.args()),
        }
    }

    fn flush(&self) {}
}

pub type Logger = EbpfLogger<&'static ToTracing>;

/// Take AYA_LOGS from the object. Must happen before the programs load (they refer to it).
pub fn init(ebpf: &mut Ebpf) -> Result<Logger> {
    EbpfLogger::init_with_logger(ebpf, &TO_TRACING)
        .map_err(|e| Error::io("starting the eBPF logger", std::io::Error::other(e)))
}

/// Drains the logger while it lives; aborted on drop.
pub struct Forwarder(JoinHandle<()>);

impl Forwarder {
    pub fn start(logger: Logger) -> Result<Self> {
        // SAFETY: the logger owns its ring buffer fd and keeps it open, unchanged, until dropped.
        let mut fd =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                .map_err(|e| {
                    Error::io("watching the eBPF log buffer", std::io::Error::other(e.to_string()))
                })?;
        Ok(Self(tokio::spawn(async move {
            while let Ok(mut guard) = fd.readable_mut().await {
                guard.get_inner_mut().flush();
                guard.clear_ready();
                // A record committed before clear_ready woke nobody: look again.
                fd.get_mut().flush();
            }
        })))
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.0.abort();
    }
}
