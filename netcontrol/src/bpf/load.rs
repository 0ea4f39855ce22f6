//! Loading the embedded eBPF object and its programs, with errors a user can act on.

use std::{
    hash::{Hash, Hasher},
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    programs::{CgroupSock, CgroupSockAddr, Program, ProgramError},
    util::KernelVersion,
};
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
    /// Size of the event ring buffer in bytes (a power of two, at least a page); None keeps
    /// the object's 1 MiB.
    pub events_bytes: Option<u32>,
    /// Maps to re-adopt from (or pin to) these bpffs paths.
    pub map_pins: Vec<(&'static str, PathBuf)>,
    /// Pin the programs under this bpffs directory, and re-adopt the ones a run of the same
    /// build pinned there (the daemon: one set of programs across restarts).
    pub program_pins: Option<PathBuf>,
}

/// A loaded object with all programs verified and loaded, not yet attached anywhere.
pub struct Loaded {
    /// Its maps; its programs unless they were adopted.
    pub ebpf: Ebpf,
    /// Programs re-adopted from pins, in [`HOOKS`] order.
    adopted: Option<Vec<Program>>,
    /// Kernel-side logs, when enabled: hand it to [`super::log::Forwarder`].
    pub logger: Option<super::log::Logger>,
}

impl Loaded {
    pub fn new(opts: &LoadOptions) -> Result<Self> {
        let custom = custom_object()?;
        let object: &[u8] = match &custom {
            Some(words) => bytes_of(words),
            None if OBJECT.is_empty() => return Err(Error::NoEbpfObject),
            None => OBJECT,
        };
        check_kernel()?;
        let level = opts.bpf_log_level;
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &level, false);
        if let Some(n) = opts.events_bytes {
            loader.map_max_entries(abi::map::EVENTS, n);
        }
        for (name, path) in &opts.map_pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).map_err(|e| match e {
            aya::EbpfError::MapError(ref m) if is_eperm(m) => not_privileged(),
            e => Error::Load(e),
        })?;
        // Must exist before the programs load: they refer to its map (aya pitfall P4).
        let logger = if level > 0 { Some(super::log::init(&mut ebpf)?) } else { None };
        let pins = opts.program_pins.as_deref().map(|d| d.join(build_key(object, level)));
        // Pinned programs log into their own AYA_LOGS, not this object's: with logging on,
        // load fresh ones.
        if let Some(dir) = &pins
            && logger.is_none()
            && let Some(adopted) = adopt_programs(dir)
        {
            tracing::info!("re-adopted the programs pinned in {}", dir.display());
            return Ok(Self { ebpf, adopted: Some(adopted), logger });
        }
        for hook in HOOKS {
            load_program(&mut ebpf, hook)?;
        }
        if let Some(dir) = &pins {
            pin_programs(&mut ebpf, dir)?;
        }
        Ok(Self { ebpf, adopted: None, logger })
    }

    /// The loaded program of a hook.
    pub fn program_mut(&mut self, hook: &Hook) -> Option<&mut Program> {
        match &mut self.adopted {
            Some(progs) => HOOKS.iter().position(|h| h.name == hook.name).map(|i| &mut progs[i]),
            None => self.ebpf.program_mut(hook.program),
        }
    }

    /// Whether the programs were re-adopted from pins rather than loaded.
    pub fn adopted(&self) -> bool {
        self.adopted.is_some()
    }
}

/// Names the build of the programs: pins are re-adopted only by the build that made them.
fn build_key(object: &[u8], log_level: u8) -> String {
    // SipHash with fixed keys: the same bytes give the same key in every process.
    let mut h = std::hash::DefaultHasher::new();
    object.hash(&mut h);
    log_level.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Every hook's program from `dir`, or None if any is missing.
fn adopt_programs(dir: &Path) -> Option<Vec<Program>> {
    HOOKS
        .iter()
        .map(|hook| {
            let path = dir.join(hook.name);
            Some(match hook.kind {
                HookKind::SockAddr(t) => {
                    Program::CgroupSockAddr(CgroupSockAddr::from_pin(&path, t).ok()?)
                }
                HookKind::Sock(t) => Program::CgroupSock(CgroupSock::from_pin(&path, t).ok()?),
            })
        })
        .collect()
}

/// Pin the loaded programs in `dir`, and drop the pins of other builds' programs next to it
/// (links that still run one keep it loaded).
fn pin_programs(ebpf: &mut Ebpf, dir: &Path) -> Result<()> {
    let pin_err = |op, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Pin { op, path, source }
    };
    if let Some(parent) = dir.parent()
        && let Ok(entries) = std::fs::read_dir(parent)
    {
        for e in entries.flatten().filter(|e| e.path() != dir) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(pin_err("creating", dir))?;
    for hook in HOOKS {
        let prog = ebpf.program_mut(hook.program).ok_or(Error::MissingProgram(hook.program))?;
        let path = dir.join(hook.name);
        prog.pin(&path).map_err(super::pins::pin_io).map_err(pin_err("pinning program", &path))?;
    }
    Ok(())
}

fn load_program(ebpf: &mut Ebpf, hook: &Hook) -> Result<()> {
    let prog = ebpf.program_mut(hook.program).ok_or(Error::MissingProgram(hook.program))?;
    let result = match hook.kind {
        HookKind::SockAddr(_) => {
            let p: &mut CgroupSockAddr = prog
                .try_into()
                .map_err(|source| Error::Program { program: hook.program, source })?;
            p.load()
        }
        HookKind::Sock(_) => {
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
            classify_load_failure(hook, io_error, verifier_log.to_string())
        }
        source => Error::Program { program: hook.program, source },
    }
}

/// BPF_PROG_LOAD failed: tell a missing privilege, a kernel without the hook and a verifier
/// rejection apart.
fn classify_load_failure(hook: &Hook, io_error: io::Error, log: String) -> Error {
    match io_error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) if log.trim().is_empty() => not_privileged(),
        // An unknown expected_attach_type is refused before the verifier runs, so no log.
        Some(libc::EINVAL) if log.trim().is_empty() => {
            Error::MissingHook { hook: hook.name, since: hook.since, source: io_error }
        }
        _ => Error::Verifier { program: hook.program, source: io_error, log },
    }
}

/// A developer knob: NETCONTROL_EBPF_OBJECT=path loads that object instead of the embedded one
/// (copied into u64 words: the ELF parser wants aligned data).
fn custom_object() -> Result<Option<Vec<u64>>> {
    let Some(path) = std::env::var_os("NETCONTROL_EBPF_OBJECT") else { return Ok(None) };
    let bytes = std::fs::read(&path).map_err(|e| {
        Error::io(format!("reading NETCONTROL_EBPF_OBJECT {}", path.to_string_lossy()), e)
    })?;
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        words[i] = u64::from_ne_bytes(w);
    }
    words.push(bytes.len() as u64); // length, dropped again by bytes_of
    Ok(Some(words))
}

fn bytes_of(words: &[u64]) -> &[u8] {
    let (len, data) = words.split_last().expect("length word");
    // SAFETY: u64 words reinterpreted as their bytes; `len` <= 8 * data.len() by construction.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), *len as usize) }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str) -> &'static Hook {
        HOOKS.iter().find(|h| h.name == name).expect("hook")
    }

    #[test]
    fn a_kernel_without_the_hook_is_named() {
        let e = classify_load_failure(
            hook("sendmsg4"),
            io::Error::from_raw_os_error(libc::EINVAL),
            String::new(),
        );
        let msg = e.to_string();
        assert!(matches!(e, Error::MissingHook { hook: "sendmsg4", since: "4.18", .. }), "{msg}");
        assert!(
            msg.contains("does not support the sendmsg4 hook") && msg.contains("Linux 4.18"),
            "{msg}"
        );
    }

    #[test]
    fn a_verifier_rejection_carries_the_whole_log() {
        let log = "0: (61) r2 = *(u32 *)(r1 +1000)\ninvalid bpf_context access off=1000 size=4\n"
            .to_owned();
        let e = classify_load_failure(
            hook("connect4"),
            io::Error::from_raw_os_error(libc::EACCES),
            log.clone(),
        );
        let msg = e.to_string();
        assert!(msg.contains("verifier rejected program nc_connect4"), "{msg}");
        assert!(msg.ends_with(&log), "{msg}");
    }

    #[test]
    fn eperm_without_a_log_is_a_privilege_problem() {
        let e = classify_load_failure(
            hook("connect4"),
            io::Error::from_raw_os_error(libc::EPERM),
            String::new(),
        );
        assert!(matches!(e, Error::NotPrivileged { .. }), "{e}");
    }

    #[test]
    fn custom_objects_keep_their_exact_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("obj");
        std::fs::write(&path, b"0123456789abc").expect("write");
        // SAFETY (test): no other thread reads this variable.
        unsafe { std::env::set_var("NETCONTROL_EBPF_OBJECT", &path) };
        let words = custom_object().expect("read").expect("set");
        unsafe { std::env::remove_var("NETCONTROL_EBPF_OBJECT") };
        assert_eq!(bytes_of(&words), b"0123456789abc");
    }
}
