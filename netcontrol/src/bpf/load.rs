//! Loading the embedded eBPF object and its programs, with errors a user can act on.

use std::io;

use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    programs::{CgroupSock, CgroupSockAddr, ProgramError},
    util::KernelVersion,
};
use aya_log::EbpfLogger;
use netcontrol_common::abi;

use super::attach::{HOOKS, Hook, HookKind};
use crate::error::{Error, Result};

/// The eBPF object built from netcontrol-ebpf by build.rs.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netcontrol"));

/// Oldest kernel with everything the programs use: cgroup bpf_link (5.7), BPF ring buffer
/// (5.8), bpf_get_current_ancestor_cgroup_id (5.6).
const MIN_KERNEL: (u8, u8, &str) = (5, 8, "5.8");

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Kernel-side diagnostics through aya-log (0 = off: the verifier then prunes every log
    /// statement, so the connect() path pays nothing).
    pub bpf_log_level: u8,
    /// Capacity of the allow tries (entries); None keeps the object's defaults.
    pub allow_v4_max: Option<u32>,
    pub allow_v6_max: Option<u32>,
}

/// A loaded object with all programs verified and loaded, not yet attached anywhere.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// Keeps AYA_LOGS open (the programs refer to it) and forwards kernel-side logs.
    pub logger: Option<EbpfLogger<&'static dyn log::Log>>,
}

impl Loaded {
    pub fn new(opts: &LoadOptions) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(Error::NoEbpfObject);
        }
        check_kernel()?;
        let level = opts.bpf_log_level;
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &level, false);
        if let Some(n) = opts.allow_v4_max {
            loader.map_max_entries(abi::map::ALLOW_V4, n);
        }
        if let Some(n) = opts.allow_v6_max {
            loader.map_max_entries(abi::map::ALLOW_V6, n);
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| match e {
            aya::EbpfError::MapError(ref m) if is_eperm(m) => not_privileged(),
            e => Error::Load(e),
        })?;
        // Must exist before the programs load: they refer to its map (aya pitfall P4).
        let logger = if level > 0 {
            Some(
                EbpfLogger::init(&mut ebpf)
                    .map_err(|e| Error::io("starting the eBPF logger", io::Error::other(e)))?,
            )
        } else {
            None
        };
        for hook in HOOKS {
            load_program(&mut ebpf, hook)?;
        }
        Ok(Self { ebpf, logger })
    }
}

fn load_program(ebpf: &mut Ebpf, hook: &Hook) -> Result<()> {
    let prog = ebpf.program_mut(hook.program).ok_or(Error::MissingProgram(hook.program))?;
    let result = match hook.kind {
        HookKind::SockAddr => {
            let p: &mut CgroupSockAddr = prog
                .try_into()
                .map_err(|source| Error::Program { program: hook.program, source })?;
            p.load()
        }
        HookKind::Sock => {
            let p: &mut CgroupSock = prog
                .try_into()
                .map_err(|source| Error::Program { program: hook.program, source })?;
            p.load()
        }
    };
    result.map_err(|e| program_error(hook, e))
}

fn program_error(hook: &Hook, e: ProgramError) -> Error {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            match io_error.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) if log.trim().is_empty() => not_privileged(),
                // An unknown expected_attach_type is refused before the verifier runs.
                Some(libc::EINVAL) if log.trim().is_empty() => {
                    Error::MissingHook { hook: hook.name, since: hook.since, source: io_error }
                }
                _ => Error::Verifier { program: hook.program, source: io_error, log },
            }
        }
        source => Error::Program { program: hook.program, source },
    }
}

fn is_eperm(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::CreateError { io_error, .. }
        if matches!(io_error.raw_os_error(), Some(libc::EPERM | libc::EACCES)))
}

pub(crate) fn not_privileged() -> Error {
    Error::NotPrivileged { missing: crate::privileges::missing().join(", ") }
}

fn check_kernel() -> Result<()> {
    let (major, minor, needed) = MIN_KERNEL;
    match KernelVersion::current() {
        Ok(v) if v < KernelVersion::new(major, minor, 0) => Err(Error::KernelTooOld {
            kernel: format!("{v:?}"),
            needed,
            feature: "cgroup bpf_link and the BPF ring buffer",
        }),
        // Unparsable version strings (custom kernels): let the syscalls decide.
        _ => Ok(()),
    }
}
