//! Helpers for netcontrol's privileged integration tests.
//!
//! Network rule: every test first moves its own thread into a fresh network namespace
//! ([`isolate_network`]) with only a loopback interface, so that no packet can leave the
//! machine even if the blocker fails; "remote" addresses (127.0.0.10, 169.254.169.254, ...)
//! are put on that loopback.
//!
//! Kernel tests need root. Without it they skip, unless NETCONTROL_REQUIRE_KERNEL_TESTS=1
//! (set by CI), in which case they fail.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod daemon;
pub mod dns;
pub mod docker;
pub mod kube_api;
pub mod peer;
pub mod prometheus;

/// Whether kernel tests can run here. Returns false (skip) when not root, unless CI requires
/// them, in which case it panics with the reason.
pub fn kernel_tests_enabled() -> bool {
    let required = std::env::var("NETCONTROL_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1");
    let problem = if !nix::unistd::geteuid().is_root() {
        Some("kernel tests need root".to_owned())
    } else if !netcontrol_bin().exists() {
        Some(format!("{} is not built (cargo build -p netcontrol)", netcontrol_bin().display()))
    } else {
        None
    };
    match problem {
        None => true,
        Some(p) if required => panic!("NETCONTROL_REQUIRE_KERNEL_TESTS=1 but {p}"),
        Some(p) => {
            eprintln!("SKIPPED (set NETCONTROL_REQUIRE_KERNEL_TESTS=1 to fail instead): {p}");
            false
        }
    }
}

/// A deadline for waiting on netcontrol, stretched by NETCONTROL_TEST_SLOWDOWN (a factor: the
/// kernel lane runs under QEMU's software emulation, where loading the programs alone takes
/// tens of seconds).
pub fn slow(d: Duration) -> Duration {
    let factor = std::env::var("NETCONTROL_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    d * factor
}

/// Whether this kernel runs netcontrol's BPF LSM programs (the kernel lane requires it:
/// NETCONTROL_REQUIRE_LSM=1). Elsewhere a test that needs them says it does not apply.
pub fn lsm_applies(attach_stderr: &str) -> bool {
    let missing = attach_stderr.contains("lsm_socket_create");
    let required = std::env::var("NETCONTROL_REQUIRE_LSM").is_ok_and(|v| v == "1");
    assert!(!(missing && required), "NETCONTROL_REQUIRE_LSM=1, but: {attach_stderr}");
    if missing {
        eprintln!("NOT APPLICABLE on this kernel (the kernel lane runs it): {attach_stderr}");
    }
    !missing
}

/// The running kernel's release as (major, minor).
pub fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname()
        .map_or_else(|_| String::new(), |u| u.release().to_string_lossy().into_owned());
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Whether the running kernel is `major.minor` or newer. If not, the test says so (the kernel
/// lane lists such lines per kernel) and should return: on this kernel it does not apply.
pub fn kernel_at_least(major: u32, minor: u32, what: &str) -> bool {
    let (have_major, have_minor) = kernel_version();
    let ok = (have_major, have_minor) >= (major, minor);
    if !ok {
        eprintln!(
            "NOT APPLICABLE on Linux {have_major}.{have_minor}: needs Linux {major}.{minor} ({what})"
        );
    }
    ok
}

/// The ids of the programs attached to `cgroup` itself, at every attach type, as the kernel
/// lists them (BPF_PROG_QUERY: bpftool's `cgroup show` lists nothing on 5.x kernels).
pub fn cgroup_program_ids(cgroup: &Path) -> Vec<u32> {
    use std::os::fd::AsRawFd;
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
    const BPF_PROG_QUERY: libc::c_long = 16;
    let dir = fs::File::open(cgroup).expect("open the cgroup");
    let mut all = Vec::new();
    // Every attach type the kernels we run know; an unknown one is EINVAL.
    for attach_type in 0..64u32 {
        let mut ids = [0u32; 64];
        let mut q = Query {
            target_fd: dir.as_raw_fd() as u32,
            attach_type,
            query_flags: 0,
            attach_flags: 0,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            _pad: 0,
        };
        // SAFETY: bpf(2) with an attribute of its size and a buffer of 64 ids.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                (&raw mut q).cast::<libc::c_void>(),
                size_of::<Query>() as u32,
            )
        };
        if r == 0 {
            all.extend_from_slice(&ids[..(q.prog_cnt as usize).min(ids.len())]);
        }
    }
    all
}

/// target/<profile>, the directory holding this test binary's `deps/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    if deps.ends_with("deps") {
        deps.parent().expect("profile dir").to_owned()
    } else {
        deps.to_owned()
    }
}

/// The netcontrol binary under test (NETCONTROL_BIN overrides).
pub fn netcontrol_bin() -> PathBuf {
    std::env::var_os("NETCONTROL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("netcontrol"))
}

/// The probe binary (built with this package).
pub fn probe_bin() -> PathBuf {
    target_dir().join("nc-probe")
}

/// A pin root private to the tests, so they never touch a real agent's pins.
pub const TEST_PIN_ROOT: &str = "/sys/fs/bpf/netcontrol-test";

/// How many programs netcontrol attaches to a sandbox's cgroup (every kernel it supports
/// runs all of them; the BPF LSM's are attached to the system, not to cgroups).
pub const CGROUP_HOOKS: usize = 14;

/// The versioned directory under a pin root (`<root>/v<PIN_ABI_VERSION>`).
pub fn pin_abi_dir(root: &Path) -> PathBuf {
    root.join(format!("v{}", netcontrol_common::abi::PIN_ABI_VERSION))
}

/// Put the calling thread (and every process it starts) into a new network namespace with
/// loopback up, `extra` addresses added to lo, and ping sockets allowed for everyone.
pub fn isolate_network(extra: &[&str]) {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    sh("ip link set lo up");
    // An address other than 127.0.0.1, so that getaddrinfo's AI_ADDRCONFIG (without one glibc
    // skips DNS entirely) behaves as on a real host. On lo, like everything else here.
    sh("ip addr add 192.0.2.1/32 dev lo");
    for a in extra {
        // An IPv6 address stays "tentative" (bind() fails with EADDRNOTAVAIL) until the
        // kernel's duplicate address detection work has run, asynchronously even on lo:
        // `nodad` skips it.
        let (prefix, flags) = if a.contains(':') { (128, " nodad") } else { (32, "") };
        sh(&format!("ip addr add {a}/{prefix} dev lo{flags}"));
    }
    if extra.iter().any(|a| a.contains(':')) {
        wait_until_no_tentative_addresses();
    }
    sh("sysctl -qw net.ipv4.ping_group_range='0 2147483647'");
}

/// Belt and braces for `nodad`: every IPv6 address usable before a test binds to it.
fn wait_until_no_tentative_addresses() {
    for _ in 0..200 {
        if sh("ip -6 addr show dev lo tentative").trim().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("IPv6 addresses on lo still tentative after 2 s: {}", sh("ip -6 addr show dev lo"));
}

/// Run a shell command in this thread's namespaces; panic if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP listener and a UDP socket on the same address and port, accepting (and dropping)
/// connections on a background thread, and counting them.
pub struct Server {
    pub addr: SocketAddr,
    _udp: UdpSocket,
    accepted: std::sync::Arc<AtomicU32>,
}

impl Server {
    pub fn start(ip: &str) -> Self {
        let ip: IpAddr = ip.parse().expect("ip");
        Self::at(&SocketAddr::new(ip, 0).to_string())
    }

    /// Like [`Server::start`], on a given port ("ip:port"; port 0 picks one).
    pub fn at(addr: &str) -> Self {
        let tcp = TcpListener::bind(addr.parse::<SocketAddr>().expect("addr")).expect("bind tcp");
        let addr = tcp.local_addr().expect("local_addr");
        let udp = UdpSocket::bind(addr).expect("bind udp on the same port");
        let accepted = std::sync::Arc::new(AtomicU32::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in tcp.incoming() {
                if conn.is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                drop(conn);
            }
        });
        Self { addr, _udp: udp, accepted }
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// "ip:port", bracketed for IPv6.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name for this test's objects.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// The cgroup2 mount point.
pub fn cgroup2_mount() -> PathBuf {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.starts_with("cgroup2 "))
                .then(|| PathBuf::from(left.split(' ').nth(4).expect("mount point")))
        })
        .expect("a cgroup2 mount")
}

/// A cgroup made by the test; its processes are killed and it is removed on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> Self {
        let path = cgroup2_mount().join(unique("nc-test"));
        fs::create_dir(&path).expect("create test cgroup");
        Self { path }
    }

    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&self.path).expect("stat").ino()
    }

    /// A command that moves itself into this cgroup before exec.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        in_cgroup(&self.path, program)
    }
}

/// A command that moves itself into `cgroup` before exec.
pub fn in_cgroup(cgroup: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let procs =
        fs::OpenOptions::new().write(true).open(cgroup.join("cgroup.procs")).expect("cgroup.procs");
    let mut cmd = Command::new(program);
    // SAFETY: write(2) in the forked child; `procs` is moved into the closure and lives as
    // long as the Command.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One probe operation's outcome (see nc-probe).
#[derive(Debug, Clone)]
pub struct Probe {
    pub op: String,
    pub target: String,
    pub ok: bool,
    pub errno: i32,
    pub error: String,
    pub elapsed: Duration,
    /// The whole result line (DNS ops add rcode, answers, p50_us, p99_us).
    pub json: Value,
}

impl Probe {
    pub fn is_eperm(&self) -> bool {
        self.errno == libc::EPERM
    }
}

/// Parse nc-probe's output lines.
pub fn parse_probes(stdout: &[u8]) -> Vec<Probe> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("op").is_some())
        .map(|v| Probe {
            op: v["op"].as_str().unwrap_or_default().to_owned(),
            target: v["target"].as_str().unwrap_or_default().to_owned(),
            ok: v["ok"].as_bool().unwrap_or(false),
            errno: v["errno"].as_i64().unwrap_or(-1) as i32,
            error: v["error"].as_str().unwrap_or_default().to_owned(),
            elapsed: Duration::from_micros(v["elapsed_us"].as_u64().unwrap_or(0)),
            json: v,
        })
        .collect()
}

/// Run nc-probe with one op, outside any sandbox.
pub fn probe_outside(op: &str, target: &str) -> Probe {
    probe_outside_tagged("", op, target)
}

/// [`probe_outside`] with a payload tag (see [`probe_in_tagged`]).
pub fn probe_outside_tagged(tag: &str, op: &str, target: &str) -> Probe {
    let out = Command::new(probe_bin())
        .env("NCPROBE_TAG", tag)
        .args([op, target])
        .output()
        .expect("run nc-probe");
    parse_probes(&out.stdout).pop().unwrap_or_else(|| panic!("no probe output: {out:?}"))
}

/// The JSON events in a file.
pub fn read_events(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}")))
        .collect()
}

/// A process in the background whose stderr the test follows line by line.
pub struct Background {
    child: Option<Child>,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line received so far, and how many `wait_for_line` has looked at.
    log: Vec<String>,
    cursor: usize,
}

impl Background {
    /// Spawn `cmd` with stderr piped to the test.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child =
            cmd.stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child: Some(child), stderr: rx, log: Vec::new(), cursor: 0 }
    }

    /// Hold a child started elsewhere (its stderr not followed): it is killed on drop.
    pub fn adopt(child: Child) -> Self {
        let (_, rx) = mpsc::channel();
        Self { child: Some(child), stderr: rx, log: Vec::new(), cursor: 0 }
    }

    /// Wait for a stderr line containing `needle`, after those earlier calls already matched;
    /// panic with everything seen on timeout.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            while self.cursor < self.log.len() {
                self.cursor += 1;
                if self.log[self.cursor - 1].contains(needle) {
                    return self.log[self.cursor - 1].clone();
                }
            }
            if Instant::now() >= deadline {
                panic!("no {needle:?} within {timeout:?}; stderr:\n{}", self.log.join("\n"));
            }
            match self.stderr.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => self.log.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) =
                        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
                    {
                        panic!(
                            "exited ({status}) before {needle:?}; stderr:\n{}",
                            self.log.join("\n")
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("closed stderr before {needle:?}; stderr:\n{}", self.log.join("\n"))
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM it, wait, assert it exited 0, and return all of its stderr.
    pub fn stop(&mut self) -> String {
        let status = self.end(nix::sys::signal::Signal::SIGTERM);
        assert!(status.success(), "exited with {status}; stderr:\n{}", self.log.join("\n"));
        self.log.join("\n")
    }

    /// Wait for it to exit by itself (within `timeout`), assert it exited 0, and return all of
    /// its stderr.
    pub fn stop_after_exit(&mut self, timeout: Duration) -> String {
        let mut child = self.child.take().expect("running");
        let exited = within(timeout, || child.try_wait().ok().flatten().is_some());
        if exited.is_none() {
            let _ = child.kill();
        }
        let status = child.wait().expect("wait");
        self.log.extend(self.stderr.iter());
        self.cursor = self.log.len();
        assert!(
            exited.is_some() && status.success(),
            "exited with {status}; stderr:\n{}",
            self.log.join("\n")
        );
        self.log.join("\n")
    }

    /// SIGKILL it (no chance to clean up) and wait.
    pub fn kill9(&mut self) {
        self.end(nix::sys::signal::Signal::SIGKILL);
    }

    fn end(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
            .expect("signal the process");
        let status = child.wait().expect("wait");
        // The reader thread ends when the process closes stderr.
        self.log.extend(self.stderr.iter());
        self.cursor = self.log.len();
        status
    }

    /// Everything on stderr so far.
    pub fn log(&mut self) -> String {
        self.log.extend(self.stderr.try_iter());
        self.log.join("\n")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `netcontrol attach` running in the background on a test cgroup.
pub struct Attached {
    pub cgroup: TestCgroup,
    pub events: PathBuf,
    proc: Background,
    _dir: tempfile::TempDir,
}

impl Attached {
    /// Start `netcontrol attach --cgroup <new cgroup> --events <file> ARGS` and wait until it
    /// says it is enforcing.
    pub fn start(args: &[&str]) -> Self {
        Self::start_on(TestCgroup::new(), args)
    }

    /// Like [`Attached::start`], on a cgroup the test prepared (e.g. with processes in it).
    pub fn start_on(cgroup: TestCgroup, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = dir.path().join("events.jsonl");
        let mut cmd = Command::new(netcontrol_bin());
        cmd.arg("attach")
            .arg("--cgroup")
            .arg(&cgroup.path)
            .arg("--events")
            .arg(&events)
            .args(["--pin-root", TEST_PIN_ROOT])
            .args(args)
            .stdout(Stdio::null());
        let mut this = Self { cgroup, events, proc: Background::spawn(cmd), _dir: dir };
        this.wait_for_line("netcontrol: enforcing on", slow(Duration::from_secs(30)));
        this
    }

    /// Wait for a stderr line of netcontrol's containing `needle` (see [`Background`]).
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        self.proc.wait_for_line(needle, timeout)
    }

    /// Its stderr lines read so far (up to "enforcing on", after `start`).
    pub fn stderr_so_far(&self) -> String {
        self.proc.log.join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Run nc-probe with the given ops inside the sandbox cgroup.
    pub fn probe(&self, ops: &[(&str, &str)]) -> Vec<Probe> {
        probe_in(&self.cgroup.path, ops)
    }

    /// [`Attached::probe`], the payloads marked with `tag`.
    pub fn probe_tagged(&self, tag: &str, ops: &[(&str, &str)]) -> Vec<Probe> {
        probe_in_tagged(&self.cgroup.path, tag, ops)
    }

    /// Run a shell command inside the sandbox cgroup.
    pub fn sh_inside(&self, script: &str) -> Output {
        self.cgroup.command("sh").arg("-c").arg(script).output().expect("sh in the sandbox")
    }

    /// Events written so far, waiting up to 5 s until at least `n` are there.
    pub fn events_at_least(&self, n: usize) -> Vec<Value> {
        events_at_least(&self.events, n)
    }

    /// SIGTERM netcontrol, wait for it, and return its stderr. The cgroup stays (until drop),
    /// so a test can check what happens after detaching.
    pub fn stop(&mut self) -> String {
        self.proc.stop()
    }
}

/// Run nc-probe with the given ops inside a cgroup.
pub fn probe_in(cgroup: &Path, ops: &[(&str, &str)]) -> Vec<Probe> {
    probe_in_tagged(cgroup, "", ops)
}

/// [`probe_in`], the payloads of escape attempts marked with `tag` (`NCMARK:<op>:<tag>`).
pub fn probe_in_tagged(cgroup: &Path, tag: &str, ops: &[(&str, &str)]) -> Vec<Probe> {
    let mut cmd = in_cgroup(cgroup, probe_bin());
    cmd.env("NCPROBE_TAG", tag);
    for (op, target) in ops {
        cmd.args([op, target]);
    }
    let out = cmd.output().expect("run nc-probe in the sandbox");
    let probes = parse_probes(&out.stdout);
    assert_eq!(probes.len(), ops.len(), "probe output: {out:?}");
    probes
}

/// The events in a file, waiting up to 5 s until at least `n` are there.
pub fn events_at_least(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + slow(Duration::from_secs(5));
    loop {
        let ev = read_events(path);
        if ev.len() >= n || Instant::now() > deadline {
            return ev;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Find the one event matching all `fields`, panicking with every event if there is none.
pub fn find_event<'a>(events: &'a [Value], fields: &[(&str, Value)]) -> &'a Value {
    events.iter().find(|e| fields.iter().all(|(k, v)| &e[*k] == v)).unwrap_or_else(|| {
        panic!(
            "no event with {fields:?} among:\n{}",
            events.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
        )
    })
}

/// `netcontrol ARGS` to completion, with the test pin root.
pub fn netcontrol(args: &[&str]) -> Output {
    Command::new(netcontrol_bin())
        .args(args)
        .env("NETCONTROL_PIN_ROOT", TEST_PIN_ROOT)
        .output()
        .expect("run netcontrol")
}

/// Stdout and stderr of an Output, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A copy of `bin` that any user can run (the checkout may sit in a directory only root can
/// enter). The copy lives as long as the returned directory.
pub fn world_executable(bin: &Path) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let copy = dir.path().join(bin.file_name().expect("file name"));
    fs::copy(bin, &copy).expect("copy binary");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod binary");
    (dir, copy)
}

/// Servers on each of `ips` at one shared port.
pub fn servers(ips: &[&str]) -> (Vec<Server>, u16) {
    let first = Server::start(ips[0]);
    let port = first.addr.port();
    let mut all = vec![first];
    for ip in &ips[1..] {
        all.push(Server::at(&format!("{ip}:{port}")));
    }
    (all, port)
}

/// Replace a file at once (write aside, rename), as editors and ConfigMaps do.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

/// `dir/policy.yaml` with `text`.
pub fn policy_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("policy.yaml");
    write_atomic(&p, text);
    p
}

/// One TCP connect from inside the sandbox.
pub fn tcp(sb: &Attached, ip: &str, port: u16) -> Probe {
    sb.probe(&[("tcp", &format!("{ip}:{port}"))]).remove(0)
}

/// Poll until `f` holds; how long it took, or None after `limit`.
pub fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A real web server (`python3 -m http.server`) on `ip:port` in this thread's network namespace,
/// ready when returned; stopped on drop.
pub struct HttpServer(Child);

impl HttpServer {
    pub fn start(ip: &str, port: u16) -> Self {
        let child = Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let addr = SocketAddr::new(ip.parse().expect("ip"), port);
        within(Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_ok())
            .unwrap_or_else(|| panic!("http server on {addr} did not start"));
        Self(child)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How many files process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Start `cmd` (an nc-probe in a sandbox) holding `n` TCP connections to `target` open until
/// its stdin closes; returns once they are open.
pub fn hold_connections(mut cmd: Command, n: usize, target: &str) -> Child {
    let mut hog = cmd
        .args([format!("hold:{n}").as_str(), target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn nc-probe hold");
    let mut line = String::new();
    BufRead::read_line(&mut BufReader::new(hog.stdout.take().expect("stdout")), &mut line)
        .expect("the hold's line");
    hog
}
