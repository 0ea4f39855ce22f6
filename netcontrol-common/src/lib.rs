//! Shared between netcontrol's eBPF programs (built `no_std` for bpfel-unknown-none) and its
//! userspace: the map and event ABI ([`abi`]), the pure verdict logic ([`verdict`]), and, with
//! the `user` feature, what only userspace needs ([`user`]).
#![no_std]

pub mod abi;
pub mod verdict;

#[cfg(feature = "user")]
extern crate std;

#[cfg(feature = "user")]
pub mod user;
