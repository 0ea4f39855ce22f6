//! The hooks netcontrol attaches: which program, which attach point, since which kernel, and
//! what stays open on a kernel that lacks it.

use aya::programs::{
    CgroupSkbAttachType, CgroupSockAddrAttachType, CgroupSockAttachType, CgroupSockoptAttachType,
};
use netcontrol_common::abi::program;

#[derive(Clone, Copy, Debug)]
pub enum HookKind {
    /// BPF_PROG_TYPE_CGROUP_SOCK_ADDR
    SockAddr(CgroupSockAddrAttachType),
    /// BPF_PROG_TYPE_CGROUP_SOCK
    Sock(CgroupSockAttachType),
    /// BPF_PROG_TYPE_CGROUP_SOCKOPT
    Sockopt(CgroupSockoptAttachType),
    /// BPF_PROG_TYPE_CGROUP_SKB
    Skb(CgroupSkbAttachType),
    /// BPF_PROG_TYPE_LSM, on the named LSM hook, for every task of the system.
    Lsm(&'static str),
}

#[derive(Debug)]
pub struct Hook {
    /// Program (function) name in the object.
    pub program: &'static str,
    /// A program for the same hook to load where the kernel refuses `program` (it does
    /// less, and refuses what it cannot judge).
    pub fallback: Option<&'static str>,
    /// The attach point, as named in events, errors and pins.
    pub name: &'static str,
    /// First Linux release with this attach type.
    pub since: &'static str,
    pub kind: HookKind,
    /// What stays open without it: None if netcontrol cannot enforce at all without it (it
    /// refuses to start); otherwise it starts, and says what this kernel does not protect.
    pub protects: Option<&'static str>,
}

impl Hook {
    /// Attached once for the whole system, not per cgroup.
    pub fn is_global(&self) -> bool {
        matches!(self.kind, HookKind::Lsm(_))
    }

    /// Its `enum bpf_attach_type` (what BPF_PROG_QUERY asks by); None for the global hooks.
    pub fn attach_type(&self) -> Option<u32> {
        use CgroupSockAddrAttachType as A;
        Some(match self.kind {
            HookKind::Skb(CgroupSkbAttachType::Ingress) => 0,
            HookKind::Skb(CgroupSkbAttachType::Egress) => 1,
            HookKind::Sock(CgroupSockAttachType::SockCreate) => 2,
            HookKind::Sock(CgroupSockAttachType::PostBind4) => 12,
            HookKind::Sock(CgroupSockAttachType::PostBind6) => 13,
            HookKind::Sock(CgroupSockAttachType::SockRelease) => 34,
            HookKind::SockAddr(A::Bind4) => 8,
            HookKind::SockAddr(A::Bind6) => 9,
            HookKind::SockAddr(A::Connect4) => 10,
            HookKind::SockAddr(A::Connect6) => 11,
            HookKind::SockAddr(A::UDPSendMsg4) => 14,
            HookKind::SockAddr(A::UDPSendMsg6) => 15,
            HookKind::SockAddr(A::UDPRecvMsg4) => 19,
            HookKind::SockAddr(A::UDPRecvMsg6) => 20,
            HookKind::SockAddr(A::GetPeerName4) => 29,
            HookKind::SockAddr(A::GetPeerName6) => 30,
            HookKind::SockAddr(A::GetSockName4) => 31,
            HookKind::SockAddr(A::GetSockName6) => 32,
            HookKind::Sockopt(CgroupSockoptAttachType::Get) => 21,
            HookKind::Sockopt(CgroupSockoptAttachType::Set) => 22,
            HookKind::Lsm(_) => return None,
        })
    }

    /// The kind of program, as the kernel documentation names it.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            HookKind::SockAddr(_) => "cgroup sock_addr",
            HookKind::Sock(_) => "cgroup sock",
            HookKind::Sockopt(_) => "cgroup sockopt",
            HookKind::Skb(_) => "cgroup skb",
            HookKind::Lsm(_) => "BPF LSM",
        }
    }
}

const fn addr_hook(
    program: &'static str,
    name: &'static str,
    since: &'static str,
    t: CgroupSockAddrAttachType,
    protects: Option<&'static str>,
) -> Hook {
    Hook { program, fallback: None, name, since, kind: HookKind::SockAddr(t), protects }
}

const FAMILIES_AND_UNIX: &str =
    "socket families beyond IP, unix and netlink (vsock, packet, ...) and abstract unix sockets";

pub static HOOKS: &[Hook] = &[
    Hook {
        program: program::SOCK_CREATE,
        fallback: None,
        name: "sock_create",
        since: "4.10",
        kind: HookKind::Sock(CgroupSockAttachType::SockCreate),
        protects: None,
    },
    addr_hook(program::CONNECT4, "connect4", "4.17", CgroupSockAddrAttachType::Connect4, None),
    addr_hook(program::CONNECT6, "connect6", "4.17", CgroupSockAddrAttachType::Connect6, None),
    addr_hook(program::SENDMSG4, "sendmsg4", "4.18", CgroupSockAddrAttachType::UDPSendMsg4, None),
    addr_hook(program::SENDMSG6, "sendmsg6", "4.18", CgroupSockAddrAttachType::UDPSendMsg6, None),
    addr_hook(program::RECVMSG4, "recvmsg4", "5.2", CgroupSockAddrAttachType::UDPRecvMsg4, None),
    addr_hook(program::RECVMSG6, "recvmsg6", "5.2", CgroupSockAddrAttachType::UDPRecvMsg6, None),
    addr_hook(
        program::GETPEERNAME4,
        "getpeername4",
        "5.8",
        CgroupSockAddrAttachType::GetPeerName4,
        None,
    ),
    addr_hook(
        program::GETPEERNAME6,
        "getpeername6",
        "5.8",
        CgroupSockAddrAttachType::GetPeerName6,
        None,
    ),
    Hook {
        program: program::SETSOCKOPT,
        fallback: Some(program::SETSOCKOPT_FLAT),
        name: "setsockopt",
        since: "5.3",
        kind: HookKind::Sockopt(CgroupSockoptAttachType::Set),
        protects: Some("socket options that route packets (IPv6 routing headers, IP_OPTIONS)"),
    },
    Hook {
        program: program::SKB_EGRESS,
        fallback: None,
        name: "skb_egress",
        since: "4.10",
        kind: HookKind::Skb(CgroupSkbAttachType::Egress),
        protects: Some(
            "source-routed packets asked for in control messages, and where ping sockets send",
        ),
    },
    Hook {
        program: program::SKB_INGRESS,
        fallback: None,
        name: "skb_ingress",
        since: "4.10",
        kind: HookKind::Skb(CgroupSkbAttachType::Ingress),
        protects: Some("connections from outside to listening sockets"),
    },
    addr_hook(
        program::BIND4,
        "bind4",
        "4.17",
        CgroupSockAddrAttachType::Bind4,
        Some("bind() to non-loopback addresses"),
    ),
    addr_hook(
        program::BIND6,
        "bind6",
        "4.17",
        CgroupSockAddrAttachType::Bind6,
        Some("bind() to non-loopback addresses"),
    ),
    Hook {
        program: program::LSM_SOCKET,
        fallback: None,
        name: "lsm_socket_create",
        since: "5.7 with the BPF LSM",
        kind: HookKind::Lsm("socket_create"),
        protects: Some(FAMILIES_AND_UNIX),
    },
    Hook {
        program: program::LSM_CONNECT,
        fallback: None,
        name: "lsm_socket_connect",
        since: "5.7 with the BPF LSM",
        kind: HookKind::Lsm("socket_connect"),
        protects: Some(FAMILIES_AND_UNIX),
    },
    Hook {
        program: program::LSM_SENDMSG,
        fallback: None,
        name: "lsm_socket_sendmsg",
        since: "5.7 with the BPF LSM",
        kind: HookKind::Lsm("socket_sendmsg"),
        protects: Some(FAMILIES_AND_UNIX),
    },
];

/// Which hooks an attachment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The per-cgroup hooks.
    Cgroup,
    /// The per-cgroup hooks and the global ones (a process's only sandbox: `run`, `attach`).
    CgroupAndGlobal,
    /// The global hooks only (the daemon's, once for all its sandboxes).
    Global,
}

impl Scope {
    pub fn wants(self, hook: &Hook) -> bool {
        match self {
            Self::Cgroup => !hook.is_global(),
            Self::CgroupAndGlobal => true,
            Self::Global => hook.is_global(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cgroup_hook_has_an_attach_type_of_its_own() {
        let types: Vec<u32> = HOOKS.iter().filter_map(Hook::attach_type).collect();
        assert_eq!(types.len(), HOOKS.iter().filter(|h| !h.is_global()).count());
        let mut unique = types.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), types.len(), "{types:?}");
        let connect4 = HOOKS.iter().find(|h| h.name == "connect4").expect("connect4");
        assert_eq!(connect4.attach_type(), Some(crate::bpf::sys::BPF_CGROUP_INET4_CONNECT));
    }

    #[test]
    fn program_names_fit_the_kernel_and_hooks_are_unique() {
        for h in HOOKS {
            // The kernel keeps 15 bytes of a program's name; pins are named after hooks.
            assert!(h.program.len() <= 15, "{}", h.program);
            assert!(!h.name.contains('.'), "bpffs names cannot contain dots: {}", h.name);
            assert_eq!(HOOKS.iter().filter(|o| o.name == h.name).count(), 1, "{}", h.name);
        }
        // What enforcement cannot do without is marked so.
        for name in ["sock_create", "connect4", "connect6", "sendmsg4", "sendmsg6"] {
            let h = HOOKS.iter().find(|h| h.name == name).expect("hook");
            assert!(h.protects.is_none(), "{name}");
        }
        assert!(HOOKS.iter().filter(|h| h.is_global()).all(|h| h.protects.is_some()));
    }
}
