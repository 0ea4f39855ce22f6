//! Everything that talks to the kernel's BPF subsystem: loading the object ([`load`]), the
//! hooks ([`hooks`]) and their attachment to cgroups ([`attach`]), typed map access
//! ([`maps`]) and the bpffs pin root ([`pins`]).

pub mod attach;
pub mod hooks;
pub mod load;
pub mod log;
pub mod maps;
pub mod orphan;
pub mod pins;
pub mod sys;

pub use self::{
    attach::Attachment,
    hooks::{HOOKS, Hook},
    load::{LoadOptions, Loaded},
    maps::Maps,
    pins::PinRoot,
};
