//! A second host for the tests: a network namespace one veth hop away from the test's own
//! (the one [`crate::isolate_network`] made), with a packet capture on its side. Packets sent
//! there never leave the machine; the capture shows what arrived, which is how a test proves
//! that a sandbox's packet did *not* get out.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{probe_bin, sh};

/// The test side's addresses and the peer's.
pub const HERE_V4: &str = "198.51.100.1";
pub const PEER_V4: &str = "198.51.100.2";
pub const HERE_V6: &str = "fd00:b::1";
pub const PEER_V6: &str = "fd00:b::2";
/// The peer's interface (its end of the veth pair), and the test side's.
pub const PEER_IFACE: &str = "ncpeer1";
pub const HERE_IFACE: &str = "ncpeer0";

pub struct Peer {
    /// Holds the namespace: `unshare --net sleep`.
    holder: Child,
}

impl Peer {
    /// Make the namespace and the veth pair (call after `isolate_network`).
    pub fn start() -> Self {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "infinity"])
            .spawn()
            .expect("unshare --net sleep");
        let this = Self { holder };
        // The holder's namespace exists once /proc shows one other than ours.
        let ours = std::fs::read_link("/proc/thread-self/ns/net").expect("our netns");
        let theirs = format!("/proc/{}/ns/net", this.holder.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(&theirs).ok().is_none_or(|l| l == ours) {
            assert!(Instant::now() < deadline, "the peer namespace did not appear");
            std::thread::sleep(Duration::from_millis(10));
        }
        sh(&format!(
            "ip link add {HERE_IFACE} type veth peer name {PEER_IFACE} && \
             ip link set {PEER_IFACE} netns {pid} && \
             ip addr add {HERE_V4}/24 dev {HERE_IFACE} && \
             ip -6 addr add {HERE_V6}/64 dev {HERE_IFACE} nodad && \
             ip link set {HERE_IFACE} up",
            pid = this.holder.id()
        ));
        this.sh(&format!(
            "ip link set lo up && ip link set {PEER_IFACE} up && \
             ip addr add {PEER_V4}/24 dev {PEER_IFACE} && \
             ip -6 addr add {PEER_V6}/64 dev {PEER_IFACE} nodad"
        ));
        this
    }

    /// Make the test side send packets for `ip` on the veth to the peer, as a host on that
    /// link that answers for the address would have it (a neighbour entry).
    pub fn answer_for(&self, ip: &str) {
        // (Not /sys/class/net: nsenter --net keeps the test's sysfs.)
        let mac = self.sh(&format!("ip -br link show dev {PEER_IFACE} | awk '{{print $3}}'"));
        sh(&format!("ip neigh replace {ip} lladdr {} dev {HERE_IFACE} nud permanent", mac.trim()));
    }

    /// `nsenter` into the peer's network namespace, for `program`.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", self.holder.id())).arg("--").arg(program);
        c
    }

    /// Run a shell command in the peer; panic if it fails.
    pub fn sh(&self, cmd: &str) -> String {
        let out = self.command("sh").arg("-c").arg(cmd).output().expect("nsenter sh");
        assert!(
            out.status.success(),
            "`{cmd}` in the peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Watch what arrives on the peer's interface, from now on.
    pub fn capture(&self) -> Capture {
        let mut child = self
            .command(probe_bin().to_str().expect("utf8"))
            .args(["capture", PEER_IFACE])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nc-probe capture");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut c = Capture { child, lines: rx, seen: Vec::new() };
        c.wait_for("capturing", Duration::from_secs(10));
        c
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A running capture on the peer.
pub struct Capture {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every marker seen so far.
    pub seen: Vec<String>,
}

impl Capture {
    fn wait_for(&mut self, line: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l == line => return,
                Ok(l) => self.seen.extend(l.strip_prefix("seen ").map(str::to_owned)),
                Err(_) => panic!("capture: no {line:?} within {timeout:?}; seen {:?}", self.seen),
            }
        }
    }

    /// Wait until the marker `NCMARK:<op>:<tag>` has arrived; every marker seen up to then.
    /// Packets on one veth arrive in order, so a sentinel sent after the attempts proves that
    /// whatever was not seen before it never came.
    pub fn until(&mut self, marker: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|m| m == marker) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.extend(l.strip_prefix("seen ").map(str::to_owned)),
                Err(_) => panic!(
                    "capture: {marker} did not arrive within {timeout:?}; seen {:?}",
                    self.seen
                ),
            }
        }
        self.seen.clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
