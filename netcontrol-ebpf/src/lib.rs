//! What the programs need that core cannot give on the BPF target: an atomic add (core's
//! atomics are missing there). Its own crate so that only this needs the unstable feature
//! (RUSTC_BOOTSTRAP names this crate, see .cargo/config.toml); the programs are in main.rs.
#![no_std]
#![feature(asm_experimental_arch)]

/// Add 1 to `*p` atomically: BPF_XADD, which every kernel has.
///
/// # Safety
/// `p` must point to an 8-aligned u64 in a map value.
#[inline(always)]
pub unsafe fn atomic_inc(p: *mut u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: the caller's promise.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) p,
            v = in(reg) 1u64,
            options(nostack),
        )
    };
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller's promise (host builds only type-check this crate).
    unsafe {
        *p += 1
    };
}
