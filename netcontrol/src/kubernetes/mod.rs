//! Kubernetes pods as sandboxes: the pods of this node as the API server reports them
//! ([`follow`]), what the daemon needs of a pod ([`pod`]), and where its cgroup is
//! ([`cgroup`]).

pub mod cgroup;
pub mod follow;
pub mod pod;

pub use self::{
    follow::PodEvent,
    pod::{Pod, Qos},
};
