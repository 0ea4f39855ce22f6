//! Docker containers as sandboxes: the Engine API ([`client`]), where a container's cgroup
//! is ([`cgroup`]), which containers a sandbox means ([`select`]), and their lifecycle as it
//! happens ([`follow`]).

pub mod cgroup;
pub mod client;
pub mod follow;
pub mod select;

pub use self::{
    client::{Container, Docker},
    follow::Lifecycle,
    select::Selector,
};
