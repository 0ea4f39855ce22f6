//! Who the command runs as: `--user USER[:GROUP]`, or `--user auto`, a uid and gid of its own
//! for this one run, taken from a range no account uses (as systemd's DynamicUser does), so
//! that no other process — another sandbox included — shares it.

use std::{
    fs::{self, File},
    ops::RangeInclusive,
    os::{fd::AsRawFd, unix::fs::DirBuilderExt},
    path::{Path, PathBuf},
};

use nix::unistd::{Gid, Group, Uid, User};

use crate::error::{Error, Result};

/// The uids `--user auto` takes from, unless NETCONTROL_USER_RANGE says otherwise: away from
/// accounts (below 65536), systemd's DynamicUser (61184-65519) and the usual subordinate id
/// ranges of containers (from 100000 on, 65536 per user), and below 2^31 for tools that keep
/// uids in signed ints.
pub const DEFAULT_RANGE: RangeInclusive<u32> = 1_900_000_000..=1_900_065_535;

/// Where the uids in use are locked, one file each, for as long as their run lives.
const LOCKS: &str = "/run/netcontrol/users";

/// Who CMD runs as, resolved before forking (name lookups are not async-signal-safe).
#[derive(Debug)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
    pub name: String,
    pub home: PathBuf,
    /// `--user auto`: the lock that keeps the uid this run's alone.
    _lease: Option<File>,
}

impl Identity {
    /// `--user SPEC`: `auto`, or a user (name or uid) with an optional `:GROUP`.
    pub fn resolve(spec: &str) -> Result<Self> {
        if spec == "auto" {
            return Self::allocate(&range_from_env()?);
        }
        let err = |why: String| Error::User { spec: spec.to_owned(), why };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let found = match user.parse::<u32>() {
            Ok(n) => User::from_uid(Uid::from_raw(n)),
            Err(_) => User::from_name(user),
        }
        .map_err(|e| err(e.to_string()))?;
        let (uid, mut gid, name, home) = match found {
            Some(u) => (u.uid, u.gid, u.name, u.dir),
            // A bare uid without a passwd entry is fine: it gets its own number as group.
            None => match user.parse::<u32>() {
                Ok(n) => (Uid::from_raw(n), Gid::from_raw(n), n.to_string(), PathBuf::from("/")),
                Err(_) => return Err(err(format!("no user named {user:?}"))),
            },
        };
        if let Some(g) = group {
            gid = match g.parse::<u32>() {
                Ok(n) => Gid::from_raw(n),
                Err(_) => {
                    Group::from_name(g)
                        .map_err(|e| err(e.to_string()))?
                        .ok_or_else(|| err(format!("no group named {g:?}")))?
                        .gid
                }
            };
        }
        let groups = match std::ffi::CString::new(name.clone()) {
            Ok(c) if group.is_none() => {
                nix::unistd::getgrouplist(&c, gid).unwrap_or_else(|_| vec![gid])
            }
            _ => vec![gid],
        };
        Ok(Self { uid, gid, groups, name, home, _lease: None })
    }

    /// Whether the uid is this run's alone (`--user auto`).
    pub fn is_dynamic(&self) -> bool {
        self._lease.is_some()
    }

    /// A uid (and the same gid) from `range` that no account has, no process runs as, and no
    /// other run holds; held until this identity is dropped.
    pub fn allocate(range: &RangeInclusive<u32>) -> Result<Self> {
        let err = |why: String| Error::User { spec: "auto".into(), why };
        let dir = Path::new(LOCKS);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        let in_use = uids_in_use();
        let size = u64::from(range.end() - range.start()) + 1;
        // Start somewhere random: two runs starting together rarely race for one uid, and a
        // uid is not handed out again soon after its run ended.
        let start = u64::from(rand_u32()) % size;
        for i in 0..size {
            let uid = range.start() + ((start + i) % size) as u32;
            if in_use.contains(&uid) || User::from_uid(Uid::from_raw(uid)).ok().flatten().is_some()
            {
                continue;
            }
            let Some(lease) = lock(&dir.join(uid.to_string())) else { continue };
            // Locked: no other run can take it now; a process left by a run that died
            // (and released its lock) would still be seen here.
            if uids_in_use().contains(&uid) {
                continue;
            }
            return Ok(Self {
                uid: Uid::from_raw(uid),
                gid: Gid::from_raw(uid),
                groups: vec![Gid::from_raw(uid)],
                name: format!("netcontrol-{uid}"),
                home: PathBuf::from("/"),
                _lease: Some(lease),
            });
        }
        Err(err(format!(
            "every uid of {}-{} is in use; widen NETCONTROL_USER_RANGE",
            range.start(),
            range.end()
        )))
    }
}

/// NETCONTROL_USER_RANGE=LO-HI, or the default.
fn range_from_env() -> Result<RangeInclusive<u32>> {
    let Ok(text) = std::env::var("NETCONTROL_USER_RANGE") else { return Ok(DEFAULT_RANGE) };
    parse_range(&text).map_err(|why| Error::User { spec: "auto".into(), why })
}

pub fn parse_range(text: &str) -> std::result::Result<RangeInclusive<u32>, String> {
    let bad =
        || format!("NETCONTROL_USER_RANGE={text:?} is not LO-HI (e.g. 1900000000-1900065535)");
    let (lo, hi) = text.trim().split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u32, u32) = (lo.parse().map_err(|_| bad())?, hi.parse().map_err(|_| bad())?);
    if lo > hi || lo < 65_536 {
        return Err(format!(
            "NETCONTROL_USER_RANGE={text:?}: the range must be ascending and above 65535 (the accounts' uids)"
        ));
    }
    Ok(lo..=hi)
}

/// An exclusive lock on `path`, held by the returned file (None if someone holds it).
fn lock(path: &Path) -> Option<File> {
    let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).ok()?;
    // SAFETY: flock on our own fd.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (r == 0).then_some(f)
}

/// Every uid a process runs as (real, effective, saved or filesystem), from /proc.
fn uids_in_use() -> std::collections::BTreeSet<u32> {
    let mut uids = std::collections::BTreeSet::new();
    let Ok(procs) = fs::read_dir("/proc") else { return uids };
    for e in procs.flatten() {
        let Ok(status) = fs::read_to_string(e.path().join("status")) else { continue };
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            uids.extend(line.split_whitespace().skip(1).filter_map(|u| u.parse::<u32>().ok()));
        }
    }
    uids
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: a 4-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
    if n == 4 { u32::from_ne_bytes(b) } else { std::process::id() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_must_be_above_the_accounts() {
        assert_eq!(parse_range("2000000000-2000000009"), Ok(2_000_000_000..=2_000_000_009));
        assert!(parse_range("1000-2000").expect_err("low").contains("above 65535"));
        assert!(parse_range("200000-100000").expect_err("backwards").contains("ascending"));
        assert!(parse_range("lots").expect_err("junk").contains("not LO-HI"));
    }
}
