//! Everything that talks to the kernel's BPF subsystem: loading the object ([`load`]), the
//! hooks and their attachment to cgroups ([`attach`]), typed map access ([`maps`]) and the
//! bpffs pin root ([`pins`]).

pub mod attach;
pub mod load;
pub mod log;
pub mod maps;
pub mod pins;
pub mod sys;

pub use self::{
    attach::{Attachment, HOOKS, Hook},
    load::{LoadOptions, Loaded},
    maps::Maps,
    pins::PinRoot,
};
