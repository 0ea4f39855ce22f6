//! netcontrol's error type. Every variant says what was being done and to what (which syscall,
//! which path, which program), so a user never sees a bare "os error 1".

use std::{io, path::PathBuf};

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "netcontrol needs root privileges to load and attach eBPF programs (missing {missing}); \
         run it with sudo or grant CAP_BPF and CAP_NET_ADMIN"
    )]
    NotPrivileged { missing: String },

    #[error(
        "no cgroup v2 hierarchy is mounted (no cgroup2 entry in /proc/self/mountinfo); \
         netcontrol enforces per cgroup v2 and needs one, e.g. `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,

    #[error("{path} is not a cgroup v2 directory (cgroup2 is mounted at {mount})")]
    NotCgroup2 { path: PathBuf, mount: PathBuf },

    #[error("cgroup {op} {path}: {source}")]
    Cgroup { op: &'static str, path: PathBuf, source: io::Error },

    #[error(
        "the kernel ({kernel}) is too old: netcontrol needs Linux {needed} or newer for {feature}"
    )]
    KernelTooOld { kernel: String, needed: &'static str, feature: &'static str },

    #[error(
        "the kernel does not support the {hook} hook (it needs Linux {since} or newer with \
         CONFIG_CGROUP_BPF=y): {source}"
    )]
    MissingHook { hook: &'static str, since: &'static str, source: io::Error },

    #[error(
        "this netcontrol binary was built without its eBPF programs (NETCONTROL_SKIP_EBPF=1); \
         rebuild it with the BPF toolchain (`cargo xtask setup`)"
    )]
    NoEbpfObject,

    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),

    #[error(
        "the kernel verifier rejected program {program}: {source}\n--- verifier log ---\n{log}"
    )]
    Verifier { program: &'static str, source: io::Error, log: String },

    #[error("loading program {program}: {source}")]
    Program { program: &'static str, source: aya::programs::ProgramError },

    #[error("attaching {program} to cgroup {cgroup}: {source}{hint}")]
    Attach { program: &'static str, cgroup: PathBuf, source: io::Error, hint: &'static str },

    #[error("{op} map {map}: {source}")]
    Map { op: &'static str, map: &'static str, source: aya::maps::MapError },

    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),

    #[error("eBPF program {0} is missing from the object")]
    MissingProgram(&'static str),

    #[error("{op} {path}: {source}")]
    Pin { op: &'static str, path: PathBuf, source: io::Error },

    #[error("no bpffs to pin to: {0}")]
    NoBpffs(String),

    #[error("refusing pin directory {path}: {why}; {fix}")]
    UnsafePinDir { path: PathBuf, why: String, fix: String },

    #[error(
        "pinned map {path} was made by another netcontrol version ({found}; this one needs \
         {expected}); remove the old pins with `netcontrol uninstall`"
    )]
    PinnedMismatch { path: PathBuf, found: String, expected: String },

    #[error("{0}")]
    Policy(#[from] crate::policy::PolicyError),

    /// Docker is unreachable, or a container is not there or not running.
    #[error("{0}")]
    Docker(String),

    /// The daemon refused a request, or none answers.
    #[error("{0}")]
    Daemon(String),

    #[error("events output {path}: {source}")]
    Events { path: PathBuf, source: io::Error },

    #[error("reloading: {0}")]
    Reload(String),

    #[error("--user {spec}: {why}")]
    User { spec: String, why: String },

    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

impl Error {
    /// Wrap an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io { what: what.into(), source }
    }
}
