//! netcontrol: kernel-enforced egress allowlists for untrusted code.
//!
//! The data path, in module order:
//! [`policy`] (rules and files -> allow entries), [`resolve`] (domain names followed in DNS)
//! -> [`bpf`] (maps, programs, links, pins) -> kernel verdicts (netcontrol-ebpf) -> [`events`]
//! (ring buffer -> JSON) and counters ([`datapath::Counts`]). [`datapath`] is the loaded
//! programs and maps shared by every sandbox of a process, [`enforcer`] one sandbox's part of
//! them, [`sandbox`] drives it from a policy and DNS, [`watch`] notices policy file changes;
//! [`cli`] is the command line.

pub mod backoff;
pub mod bpf;
pub mod cgroup;
pub mod cli;
pub mod confine;
pub mod console;
pub mod daemon;
pub mod datapath;
pub mod dnsproxy;
pub mod docker;
pub mod enforcer;
pub mod error;
pub mod events;
pub mod kubernetes;
pub mod learn;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod privileges;
pub mod rebinding;
pub mod resolve;
pub mod sandbox;
pub mod tasks;
pub mod watch;

pub use error::{Error, Result};
