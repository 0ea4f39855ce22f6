//! The few bpf(2) commands aya 0.14 does not offer: a cgroup link it cannot hand out (its
//! setsockopt links can be neither pinned nor converted to an `FdLink`), pinning a raw fd,
//! and what the kernel knows about a link (aya does not say which cgroup it is attached to).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// `enum bpf_attach_type`: connect() of IPv4 sockets.
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
/// `enum bpf_attach_type`: the cgroup setsockopt hook.
pub const BPF_CGROUP_SETSOCKOPT: u32 = 22;
/// `enum bpf_link_type`.
pub const BPF_LINK_TYPE_CGROUP: u32 = 3;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is the command's attribute struct (repr(C), zero padding), valid for the
    // call; the kernel reads at most size_of::<T>() bytes of it.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as libc::c_uint)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a new fd the kernel just returned, owned by the caller only.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Attach `prog` to the cgroup `target` with a bpf_link (always multi-attach).
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        _rest: [u64; 4],
    }
    let mut attr = Attr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: target.as_raw_fd() as u32,
        attach_type,
        flags: 0,
        _rest: [0; 4],
    };
    bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}

/// Pin any bpf object fd at `path` (on a bpffs).
pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the pin path"))?;
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let mut attr = Attr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// What the kernel says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    pub type_: u32,
    pub prog_id: u32,
    /// Cgroup links: the cgroup it is attached to, 0 once it was detached.
    pub cgroup_id: u64,
}

pub fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) the union whose cgroup member
    // starts with cgroup_id. The kernel fills what fits into the size we pass.
    #[repr(C, align(8))]
    #[derive(Default)]
    struct Info {
        type_: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        cgroup_id: u64,
        attach_type: u32,
        _pad2: u32,
    }
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = Info::default();
    let mut attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<Info>() as u32,
        info: (&raw mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        id: info.id,
        type_: info.type_,
        prog_id: info.prog_id,
        cgroup_id: info.cgroup_id,
    })
}

/// A new fd for the link with this id (root only).
pub fn link_by_id(id: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = Attr { id, next_id: 0, open_flags: 0 };
    bpf(BPF_LINK_GET_FD_BY_ID, &mut attr).map(owned)
}

/// What the kernel says about the link `id` now (None: it is gone, or the queries failed).
pub fn link_state(id: u32) -> Option<LinkInfo> {
    use std::os::fd::AsFd;
    link_info(link_by_id(id).ok()?.as_fd()).ok()
}

/// Make the link `id` run `prog` again (BPF_LINK_UPDATE: the same link, no gap).
pub fn link_update(id: u32, prog: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let link = link_by_id(id)?;
    let mut attr = Attr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// The cgroup the cgroup link `id` is attached to: 0 once it was detached; None if the kernel
/// does not say (not a cgroup link, or the queries failed).
pub fn link_cgroup(id: u32) -> Option<u64> {
    use std::os::fd::AsFd;
    let fd = link_by_id(id).ok()?;
    let info = link_info(fd.as_fd()).ok()?;
    (info.type_ == BPF_LINK_TYPE_CGROUP).then_some(info.cgroup_id)
}

/// The ids of the programs attached to the cgroup `cgroup` itself (not its ancestors) at
/// `attach_type` (BPF_PROG_QUERY; at most 64).
pub fn cgroup_program_ids(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    #[repr(C)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
    }
    let mut ids = [0u32; 64];
    let mut q = Query {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _pad: 0,
    };
    bpf(BPF_PROG_QUERY, &mut q)?;
    let n = (q.prog_cnt as usize).min(ids.len());
    Ok(ids[..n].to_vec())
}

/// The names of the programs attached to the cgroup `cgroup` itself (not its ancestors) at
/// `attach_type` (BPF_PROG_QUERY, then each program's info).
pub fn cgroup_programs(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<String>> {
    let ids = cgroup_program_ids(cgroup, attach_type)?;
    let mut names = Vec::with_capacity(ids.len());
    for id in &ids {
        #[repr(C)]
        struct ById {
            id: u32,
            next_id: u32,
            open_flags: u32,
        }
        let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut ById { id: *id, next_id: 0, open_flags: 0 })
        else {
            continue; // gone meanwhile
        };
        let fd = owned(fd);
        // struct bpf_prog_info up to and including `name` (at offset 64).
        let mut info = [0u8; 80];
        #[repr(C)]
        struct InfoAttr {
            bpf_fd: u32,
            info_len: u32,
            info: u64,
        }
        let mut attr = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: info.len() as u32,
            info: info.as_mut_ptr() as u64,
        };
        if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).is_ok() {
            let name = &info[64..80];
            let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
            names.push(String::from_utf8_lossy(&name[..end]).into_owned());
        }
    }
    Ok(names)
}
