//! netcontrol: kernel-enforced egress allowlists for untrusted code.
//!
//! The data path, in module order:
//! [`policy`] (rules -> allow entries) -> [`bpf`] (maps, programs, links, pins) -> kernel
//! verdicts (netcontrol-ebpf) -> [`events`] (ring buffer -> JSON) and counters
//! ([`enforcer::Counts`]). [`enforcer`] ties them together for one sandbox; [`cli`] is the
//! command line.

pub mod bpf;
pub mod cgroup;
pub mod cli;
pub mod enforcer;
pub mod error;
pub mod events;
pub mod policy;
pub mod privileges;

pub use error::{Error, Result};
