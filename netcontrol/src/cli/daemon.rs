//! `netcontrol daemon --config FILE`.

use super::DaemonArgs;
use crate::{daemon, error::Result};

pub async fn main(args: DaemonArgs) -> Result<i32> {
    daemon::run(daemon::Options {
        config: args.config,
        pin_root: args.pin_root,
        metrics_addr: args.metrics_addr.map(|m| m.0),
        control_socket: args.socket,
        events: args.events,
        load: args.load.options(),
    })
    .await
}
