//! What the pins of a netcontrol that died without detaching (kill -9, a crash) kept doing:
//! its links enforced on, and its programs counted and queued events that nobody read. Before
//! a later netcontrol removes those pins, it reads the dead one's maps through them and says
//! what happened, so that no blocked attempt goes unreported.

use std::{fs, path::Path};

use aya::maps::{Map, MapData, MapInfo, PerCpuHashMap, RingBuf};
use netcontrol_common::abi::{self, StatsKey};

use super::pins::Orphan;
use crate::datapath::Counts;

/// What the kernel counted for the orphan's cgroup, and the events never delivered.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Left {
    pub counts: Counts,
    pub events_queued: usize,
}

/// Read what the orphan's programs left (None when its maps cannot be reached: no link pin
/// opens, or the kernel does not say which maps its program uses).
pub fn left_by(orphan: &Orphan) -> Option<Left> {
    let prog_id = fs::read_dir(&orphan.dir).ok()?.flatten().find_map(|e| {
        let link = super::pins::open_link(&e.path()).ok()?;
        let link: aya::programs::links::FdLink = link.into();
        link.info().ok().map(|i| i.program_id())
    })?;
    let program = aya::programs::loaded_programs().flatten().find(|p| p.id() == prog_id)?;
    let mut left = Left::default();
    for id in program.map_ids().ok()??.into_iter() {
        let Ok(info) = MapInfo::from_id(id) else { continue };
        match info.name_as_str() {
            Some(abi::map::STATS) => {
                let Ok(data) = MapData::from_id(id) else { continue };
                let Ok(stats) =
                    PerCpuHashMap::<_, StatsKey, u64>::try_from(Map::PerCpuHashMap(data))
                else {
                    continue;
                };
                for (k, per_cpu) in stats.iter().flatten() {
                    if k.sandbox_id == orphan.cgroup_id {
                        left.counts.add(&k, per_cpu.iter().sum());
                    }
                }
            }
            Some(abi::map::EVENTS) => {
                let Ok(data) = MapData::from_id(id) else { continue };
                let Ok(mut ring) = RingBuf::try_from(Map::RingBuf(data)) else { continue };
                while ring.next().is_some() {
                    left.events_queued += 1;
                }
            }
            _ => {}
        }
    }
    Some(left)
}

/// Say what a dead netcontrol's pins did for `cgroup`, before they are removed.
pub fn report(orphan: &Orphan, cgroup: Option<&Path>) {
    let cgroup = cgroup
        .map_or_else(|| format!("cgroup id {}", orphan.cgroup_id), |p| p.display().to_string());
    let Some(left) = left_by(orphan) else {
        tracing::warn!(
            "netcontrol pid {} ended without detaching from {cgroup}; what its pins counted \
             since cannot be read",
            orphan.owner.pid
        );
        return;
    };
    let c = left.counts;
    tracing::warn!(
        "netcontrol pid {} ended without detaching from {cgroup} (killed?); its pins kept \
         enforcing: {} connection attempts blocked in all, {} would have been (audit), {} \
         allowed; {} events it never delivered",
        orphan.owner.pid,
        c.blocked,
        c.would_block,
        c.allowed,
        left.events_queued + c.summarized as usize
    );
}
