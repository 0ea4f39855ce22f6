//! Kernel events to users: the ring buffer reader ([`reader`]), the stable JSON record
//! ([`record`]) and where records go ([`sink`]).

pub mod labels;
pub mod reader;
pub mod record;
pub mod sink;

pub use self::{
    labels::{ContainerName, Identity, Labels, PodName},
    reader::{EventPump, Injector},
    record::{Clock, EventRecord},
    sink::{Rotation, Sink},
};
