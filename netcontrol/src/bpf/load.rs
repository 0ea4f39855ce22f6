//! Loading the embedded eBPF object and its programs, with errors a user can act on.

use std::{
    hash::{Hash, Hasher},
    io,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader, include_bytes_aligned,
    programs::{CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt, Lsm, Program, ProgramError},
    util::KernelVersion,
};
use netcontrol_common::abi;

use super::hooks::{HOOKS, Hook, HookKind};
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
    /// Programs re-adopted from pins, in [`HOOKS`] order (None where this kernel lacks one).
    adopted: Option<Vec<Option<Program>>>,
    /// Kernel-side logs, when enabled: hand it to [`super::log::Forwarder`].
    pub logger: Option<super::log::Logger>,
    /// Optional hooks this kernel cannot run, and why.
    missing: Vec<Missing>,
    /// The kernel's id of each hook's program, once asked (they never change once loaded;
    /// the tamper check compares every link with them every second).
    prog_ids: std::collections::HashMap<&'static str, u32>,
    /// The hooks whose fallback program was loaded instead (hook name -> program name).
    fallbacks: std::collections::HashMap<&'static str, &'static str>,
}

/// An optional hook that is not there: what stays unprotected, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub hook: &'static str,
    pub protects: &'static str,
    pub why: String,
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
        let mut ebpf = {
            // The loader holds the kernel's BTF, parsed (several MiB): gone after this block.
            let mut loader = EbpfLoader::new();
            loader.override_global(aya_log::LEVEL, &level, false);
            if let Some(n) = opts.events_bytes {
                loader.map_max_entries(abi::map::EVENTS, n);
            }
            for (name, path) in &opts.map_pins {
                loader.map_pin_path(name, path.as_path());
            }
            loader.load(object).map_err(|e| match e {
                aya::EbpfError::MapError(ref m) if is_eperm(m) => not_privileged(),
                e => Error::Load(e),
            })?
        };
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
            let missing = HOOKS
                .iter()
                .zip(&adopted)
                .filter(|(_, p)| p.is_none())
                .filter_map(|(h, _)| {
                    Some(Missing {
                        hook: h.name,
                        protects: h.protects?,
                        why: "the daemon that pinned these programs could not load it".into(),
                    })
                })
                .collect();
            release_freed_memory();
            return Ok(Self {
                ebpf,
                adopted: Some(adopted),
                logger,
                missing,
                prog_ids: Default::default(),
                fallbacks: Default::default(),
            });
        }
        let lsm_inactive = bpf_lsm_inactive();
        // Only LSM programs need the kernel's BTF here.
        let btf = if lsm_inactive.is_none() { Btf::from_sys_fs().ok() } else { None };
        let mut missing = Vec::new();
        let mut fallbacks = std::collections::HashMap::new();
        for hook in HOOKS {
            let why = match (&hook.kind, &lsm_inactive) {
                (HookKind::Lsm(_), Some(why)) => why.clone(),
                _ => {
                    match (load_hook(&mut ebpf, hook, btf.as_ref(), &mut fallbacks), hook.protects)
                    {
                        (Ok(()), _) => continue,
                        (Err(e), None) => return Err(e),
                        // Root was refused: not a missing privilege but a policy of this machine.
                        (Err(Error::NotPrivileged { .. }), Some(_)) => format!(
                            "the kernel refused to load the program (Operation not permitted: \
                         lockdown or another security policy forbids {} programs here)",
                            hook.kind_name()
                        ),
                        (Err(e), Some(_)) => one_line(e),
                    }
                }
            };
            if let Some(protects) = hook.protects {
                missing.push(Missing { hook: hook.name, protects, why });
            }
        }
        drop(btf);
        release_freed_memory();
        if let Some(dir) = &pins {
            let loaded: Vec<&Hook> =
                HOOKS.iter().filter(|h| !missing.iter().any(|m| m.hook == h.name)).collect();
            pin_programs(&mut ebpf, dir, &loaded, &fallbacks)?;
        }
        Ok(Self { ebpf, adopted: None, logger, missing, prog_ids: Default::default(), fallbacks })
    }

    /// The loaded program of a hook.
    /// The kernel's id of `hook`'s program.
    pub fn program_id(&mut self, hook: &Hook) -> Option<u32> {
        if let Some(id) = self.prog_ids.get(hook.name) {
            return Some(*id);
        }
        let id = self.program_mut(hook)?.info().ok()?.id();
        self.prog_ids.insert(hook.name, id);
        Some(id)
    }

    pub fn program_mut(&mut self, hook: &Hook) -> Option<&mut Program> {
        if !self.available(hook) {
            return None;
        }
        match &mut self.adopted {
            Some(progs) => {
                HOOKS.iter().position(|h| h.name == hook.name).and_then(|i| progs[i].as_mut())
            }
            None => self.ebpf.program_mut(program_name(hook, &self.fallbacks)),
        }
    }

    /// Whether this kernel runs the hook.
    pub fn available(&self, hook: &Hook) -> bool {
        !self.missing.iter().any(|m| m.hook == hook.name)
    }

    /// The optional hooks this kernel cannot run.
    pub fn missing(&self) -> &[Missing] {
        &self.missing
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

/// Every hook's program from `dir` (None for optional ones not pinned there), or None if a
/// required one is missing.
fn adopt_programs(dir: &Path) -> Option<Vec<Option<Program>>> {
    HOOKS
        .iter()
        .map(|hook| {
            let path = dir.join(hook.name);
            let prog = match hook.kind {
                HookKind::SockAddr(t) => {
                    CgroupSockAddr::from_pin(&path, t).ok().map(Program::CgroupSockAddr)
                }
                HookKind::Sock(t) => CgroupSock::from_pin(&path, t).ok().map(Program::CgroupSock),
                HookKind::Sockopt(t) => {
                    CgroupSockopt::from_pin(&path, t).ok().map(Program::CgroupSockopt)
                }
                HookKind::Skb(t) => CgroupSkb::from_pin(&path, t).ok().map(Program::CgroupSkb),
                HookKind::Lsm(_) => Lsm::from_pin(&path).ok().map(Program::Lsm),
            };
            match (prog, hook.protects) {
                (Some(p), _) => Some(Some(p)),
                (None, Some(_)) => Some(None),
                (None, None) => None,
            }
        })
        .collect()
}

/// Pin the loaded programs in `dir`, and drop the pins of other builds' programs next to it
/// (links that still run one keep it loaded).
fn pin_programs(
    ebpf: &mut Ebpf,
    dir: &Path,
    hooks: &[&Hook],
    fallbacks: &std::collections::HashMap<&'static str, &'static str>,
) -> Result<()> {
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
    super::pins::create_private_dir(dir)?;
    for hook in hooks {
        let name = program_name(hook, fallbacks);
        let prog = ebpf.program_mut(name).ok_or(Error::MissingProgram(name))?;
        let path = dir.join(hook.name);
        prog.pin(&path).map_err(super::pins::pin_io).map_err(pin_err("pinning program", &path))?;
    }
    Ok(())
}

/// Hand the heap that parsing BTF left free back to the system: glibc's malloc keeps it
/// otherwise, and a long-running agent would carry it in its RSS for good.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory; it touches nothing in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The program that runs `hook`: its own, or the fallback loaded in its place.
fn program_name(
    hook: &Hook,
    fallbacks: &std::collections::HashMap<&'static str, &'static str>,
) -> &'static str {
    fallbacks.get(hook.name).copied().unwrap_or(hook.program)
}

/// Load `hook`'s program, or where the verifier refuses it, its fallback (noted in
/// `fallbacks`, and said once: the fallback refuses more).
fn load_hook(
    ebpf: &mut Ebpf,
    hook: &Hook,
    btf: Option<&Btf>,
    fallbacks: &mut std::collections::HashMap<&'static str, &'static str>,
) -> Result<()> {
    match (load_program(ebpf, hook, hook.program, btf), hook.fallback) {
        (Err(Error::Verifier { program, log, .. }), Some(fallback)) => {
            load_program(ebpf, hook, fallback, btf)?;
            tracing::info!(
                "{}: this kernel refused {program} ({}); loaded {fallback}, which refuses the \
                 hook's risky operations to tasks in cgroups below a sandbox's own",
                hook.name,
                verifier_reason(&log).unwrap_or("no reason given")
            );
            fallbacks.insert(hook.name, fallback);
            Ok(())
        }
        (result, _) => result,
    }
}

fn load_program(
    ebpf: &mut Ebpf,
    hook: &Hook,
    program: &'static str,
    btf: Option<&Btf>,
) -> Result<()> {
    let prog = ebpf.program_mut(program).ok_or(Error::MissingProgram(program))?;
    let wrong_type = |source| Error::Program { program, source };
    let result = match hook.kind {
        HookKind::SockAddr(_) => {
            let p: &mut CgroupSockAddr = prog.try_into().map_err(wrong_type)?;
            p.load()
        }
        HookKind::Sock(_) => {
            let p: &mut CgroupSock = prog.try_into().map_err(wrong_type)?;
            p.load()
        }
        HookKind::Sockopt(_) => {
            let p: &mut CgroupSockopt = prog.try_into().map_err(wrong_type)?;
            p.load()
        }
        HookKind::Skb(_) => {
            let p: &mut CgroupSkb = prog.try_into().map_err(wrong_type)?;
            p.load()
        }
        HookKind::Lsm(name) => {
            let p: &mut Lsm = prog.try_into().map_err(wrong_type)?;
            let Some(btf) = btf else {
                return Err(Error::MissingHook {
                    hook: hook.name,
                    since: hook.since,
                    source: io::Error::other("the kernel has no BTF (/sys/kernel/btf/vmlinux)"),
                });
            };
            p.load(name, btf)
        }
    };
    result.map_err(|e| program_error(hook, program, e))
}

/// Why the kernel would not run BPF LSM programs even if they load (the BPF LSM is built in
/// but not in the active list: `lsm=...,bpf` on the kernel command line), if it would not.
fn bpf_lsm_inactive() -> Option<String> {
    const LSM: &str = "/sys/kernel/security/lsm";
    let list = std::fs::read_to_string(LSM).ok().or_else(|| {
        // securityfs may not be mounted (containers): mount it where it belongs.
        nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .ok()?;
        std::fs::read_to_string(LSM).ok()
    });
    match list {
        Some(l) if l.trim().split(',').any(|m| m == "bpf") => None,
        Some(l) => Some(format!(
            "the kernel does not run the BPF LSM (active LSMs: {}; add bpf to lsm= on the kernel command line)",
            l.trim()
        )),
        None => Some(format!("{LSM} cannot be read, so whether the BPF LSM runs is unknown")),
    }
}

fn program_error(hook: &Hook, program: &'static str, e: ProgramError) -> Error {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            classify_load_failure(hook, program, io_error, verifier_log.to_string())
        }
        source => Error::Program { program, source },
    }
}

/// BPF_PROG_LOAD failed: tell a missing privilege, a kernel without the hook and a verifier
/// rejection apart.
/// Why an optional program did not load, in one line: the start and end lines say what is
/// missing, and a verifier log (thousands of lines) would drown them. The log goes to the
/// debug log.
fn one_line(e: Error) -> String {
    match e {
        Error::Verifier { program, source, log } => {
            tracing::debug!("the verifier's log for {program}:\n{log}");
            match verifier_reason(&log) {
                Some(why) => format!("the kernel verifier rejected {program}: {why} ({source})"),
                None => format!("the kernel verifier rejected {program}: {source}"),
            }
        }
        e => e.to_string(),
    }
}

/// The verifier's complaint: the last line of its log before its closing statistics.
fn verifier_reason(log: &str) -> Option<&str> {
    log.lines().map(str::trim).rev().find(|l| {
        !l.is_empty()
            && !l.starts_with("verification time")
            && !l.starts_with("stack depth")
            && !l.starts_with("processed ")
    })
}

fn classify_load_failure(
    hook: &Hook,
    program: &'static str,
    io_error: io::Error,
    log: String,
) -> Error {
    match io_error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) if log.trim().is_empty() => not_privileged(),
        // An unknown expected_attach_type is refused before the verifier runs, so no log.
        Some(libc::EINVAL) if log.trim().is_empty() => {
            Error::MissingHook { hook: hook.name, since: hook.since, source: io_error }
        }
        _ => Error::Verifier { program, source: io_error, log },
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
            hook("sendmsg4").program,
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
    fn an_optional_program_the_verifier_rejects_is_said_in_one_line() {
        // The end of what Linux 5.10 said of nc_setsockopt.
        let log = "56: (bf) r1 = r6\n57: (85) call bpf_get_current_ancestor_cgroup_id#123\n\
                   unknown func bpf_get_current_ancestor_cgroup_id#123\n\
                   verification time 7991 usec\nstack depth 280+0\n\
                   processed 132 insns (limit 1000000) max_states_per_insn 1\n";
        let e = Error::Verifier {
            program: "nc_setsockopt",
            source: io::Error::from_raw_os_error(libc::EINVAL),
            log: log.into(),
        };
        let line = one_line(e);
        assert_eq!(
            line,
            "the kernel verifier rejected nc_setsockopt: unknown func \
             bpf_get_current_ancestor_cgroup_id#123 (Invalid argument (os error 22))"
        );
    }

    #[test]
    fn a_verifier_rejection_carries_the_whole_log() {
        let log = "0: (61) r2 = *(u32 *)(r1 +1000)\ninvalid bpf_context access off=1000 size=4\n"
            .to_owned();
        let e = classify_load_failure(
            hook("connect4"),
            hook("connect4").program,
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
            hook("connect4").program,
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
