//! The kernel lane: the privileged tests on other kernels than this machine's, under QEMU.
//! KVM does not work here (a nested guest), so QEMU emulates the CPU (TCG): slow, but a real
//! kernel with a real verifier. The guest shares the host's root read-only (9p, under an
//! overlay) and has no network device; the test binaries and their results go through a
//! second, writable share.
//!
//! Kernels are Debian's, fetched by name with apt into a cache (`apt-get download` and
//! `dpkg-deb -x`: nothing is installed): bullseye's 5.10, bookworm's 6.1 and 6.12 (whose
//! kernels run the BPF LSM by default and have L2TP/IP as a module). `setup` installs QEMU
//! (from bookworm-backports: bookworm's own would remove the image's qemu-utils) and 6.12;
//! `test` runs the tests the host's kernel cannot show there; `cargo xtask kernels` runs the
//! main suites on each kernel and says, per kernel, how many passed and failed.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{TOOLS_DIR, is_root, run};

/// A Debian kernel the lane can boot.
pub struct Kernel {
    /// What `cargo xtask kernels` is given ("6.1").
    pub series: &'static str,
    /// Where apt finds it.
    sources: &'static str,
    /// Its package names: `linux-image-<prefix><digits><suffix>` (the generic flavour: the
    /// cloud one has no 9p).
    prefix: &'static str,
    suffix: &'static str,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        series: "5.10",
        sources: "deb http://deb.debian.org/debian bullseye main\n\
                  deb http://deb.debian.org/debian-security bullseye-security main\n",
        prefix: "5.10.0-",
        suffix: "-amd64",
    },
    Kernel {
        series: "6.1",
        sources: "deb http://deb.debian.org/debian bookworm main\n\
                  deb http://deb.debian.org/debian-security bookworm-security main\n",
        prefix: "6.1.0-",
        suffix: "-amd64",
    },
    Kernel {
        series: "6.12",
        sources: "deb http://deb.debian.org/debian bookworm-backports main\n\
                  deb http://deb.debian.org/debian-security bookworm-security main\n",
        prefix: "6.12.",
        suffix: "+deb12-amd64",
    },
];

/// The kernel of the lane `cargo xtask test` runs: 6.12, whose BPF LSM is on by default.
const LANE_SERIES: &str = "6.12";

/// Modules the guest loads if the kernel has them as modules (with what they need first, from
/// `modules.dep`): the PCI transport of virtio, the 9p root and its overlay, then what the
/// tests use (veth, L2TP/IP, the sock_diag families the DNS proxy asks).
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "veth",
    "l2tp_ip",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
];
/// The test binaries the lane of `cargo xtask test` runs (tests/tests/<name>.rs).
const TESTS: &[&str] = &["lsm"];
/// What `cargo xtask kernels` runs on each kernel unless told otherwise.
pub const KERNEL_SUITES: &[&str] = &["hooks", "boundary", "run", "daemon", "dns_aware", "lsm"];
/// How much slower than the host the guest is, for the tests' deadlines.
const SLOWDOWN: &str = "20";
/// The guest run, at most, per test binary it runs (a hung test must not hold CI forever;
/// a whole suite under TCG takes up to about 15 minutes).
const GUEST_TIMEOUT_PER_SUITE: Duration = Duration::from_secs(20 * 60);

fn bpo_apt(dir: &Path) -> Vec<String> {
    let d = dir.display();
    vec![
        "-o".into(),
        format!("Dir::Etc::sourcelist={d}/sources.list"),
        // Only these sources, not the machine's as well.
        "-o".into(),
        "Dir::Etc::sourceparts=-".into(),
        "-o".into(),
        format!("Dir::State::lists={d}/lists"),
        "-o".into(),
        format!("Dir::Cache::archives={d}/archives"),
        "-o".into(),
        "APT::Sandbox::User=root".into(),
    ]
}

fn kernel_dir(series: &str) -> PathBuf {
    Path::new(TOOLS_DIR).join(format!("kernel-{series}"))
}

pub fn kernel(series: &str) -> Result<&'static Kernel> {
    KERNELS.iter().find(|k| k.series == series).with_context(|| {
        let known: Vec<&str> = KERNELS.iter().map(|k| k.series).collect();
        format!("no kernel {series:?} in the lane (it has {})", known.join(", "))
    })
}

/// The kernel and suites every `cargo xtask test` also runs (the rest: `cargo xtask kernels`).
/// What every `cargo xtask test` runs of `cargo xtask kernels`, per kernel: 6.1 (Debian 12's
/// and GKE's series) and 5.10 (the oldest the README names), the suites that matter most,
/// chosen to keep the whole CI run well under its budget (TCG is 10-30x slower than the host).
/// 5.10 adds the escape suite: its programs differ most there (a fallback for setsockopt).
const CI_LANE: &[(&str, &[&str])] = &[
    ("6.1", &["hooks", CI_RUN, CI_DAEMON, CI_DNS]),
    ("5.10", &["hooks", "boundary", CI_RUN, CI_DAEMON, CI_DNS]),
];
const CI_RUN: &str = "run:curl_is_blocked,exit_status,grandchildren,killed_netcontrol,user_option";
const CI_DAEMON: &str = "daemon:prometheus_counts,kill_9,sandboxes_follow,another_abi_version";
const CI_DNS: &str = "dns_aware:wildcard_names,any_server,own_network_namespace";

/// Install QEMU and the kernels `cargo xtask test` boots (idempotent).
pub fn setup() -> Result<()> {
    install_qemu()?;
    fetch(kernel(LANE_SERIES)?)?;
    for (series, _) in CI_LANE {
        fetch(kernel(series)?)?;
    }
    Ok(())
}

/// The part of `cargo xtask kernels` that every test run includes (`CI_LANE`): every kernel
/// is run, then any failure is reported.
pub fn test_other_kernels() -> Result<()> {
    let mut failed = Vec::new();
    for (series, specs) in CI_LANE {
        let specs: Vec<Spec> = specs.iter().map(|s| Spec::parse(s)).collect::<Result<_>>()?;
        if let Err(e) = kernels(&[(*series).to_owned()], &specs) {
            eprintln!("kernels: {series}: {e:#}");
            failed.push(*series);
        }
    }
    ensure!(failed.is_empty(), "the kernel lane failed on {}", failed.join(", "));
    Ok(())
}

fn install_qemu() -> Result<()> {
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    if qemu.exists() {
        return Ok(());
    }
    ensure!(is_root(), "setup must install QEMU for the kernel lane and needs root");
    // Its dependencies come from bookworm itself: the scratch list sees only what it names.
    let apt = scratch_apt(
        "qemu",
        "deb http://deb.debian.org/debian bookworm main\n\
         deb http://deb.debian.org/debian bookworm-updates main\n\
         deb http://deb.debian.org/debian-security bookworm-security main\n\
         deb http://deb.debian.org/debian bookworm-backports main\n",
    )?;
    let o = bpo_apt(&apt);
    run(Command::new("apt-get").args(&o).arg("update"))?;
    run(Command::new("apt-get")
        .args(&o)
        .args(["install", "-y", "--no-install-recommends", "-t", "bookworm-backports"])
        .args(["qemu-system-x86", "qemu-utils"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// An apt configuration of its own (lists, archives) for `sources`.
fn scratch_apt(name: &str, sources: &str) -> Result<PathBuf> {
    let apt = Path::new(TOOLS_DIR).join(format!("apt-{name}"));
    for sub in ["lists/partial", "archives/partial"] {
        fs::create_dir_all(apt.join(sub))?;
    }
    fs::write(apt.join("sources.list"), sources)?;
    Ok(apt)
}

/// Unpack the newest kernel of the series and the modules the guest loads (idempotent).
pub fn fetch(k: &Kernel) -> Result<()> {
    let kdir = kernel_dir(k.series);
    if kdir.join("vmlinuz").exists() && kdir.join("modules/order").exists() {
        return Ok(());
    }
    ensure!(is_root(), "fetching a kernel for the lane needs root (apt)");
    let apt = scratch_apt(&format!("kernel-{}", k.series), k.sources)?;
    let o = bpo_apt(&apt);
    run(Command::new("apt-get").args(&o).arg("update"))?;
    let pattern = format!(
        "^linux-image-{}[0-9]+{}$",
        k.prefix.replace('.', "\\."),
        k.suffix.replace('.', "\\.").replace('+', "\\+")
    );
    let search = Command::new("apt-cache")
        .args(&o)
        .args(["search", "--names-only", &pattern])
        .output()
        .context("apt-cache search")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&search.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|n| n.starts_with(&format!("linux-image-{}", k.prefix)) && n.ends_with(k.suffix))
        .collect();
    names.sort_by_key(|n| numbers(n));
    let Some(package) = names.pop() else {
        bail!("apt lists no linux-image-{}N{} ({})", k.prefix, k.suffix, k.sources.trim())
    };
    let work = apt.join("kernel");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    run(Command::new("apt-get").args(&o).args(["download", &package]).current_dir(&work))?;
    let deb = fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("the downloaded kernel package")?;
    let unpacked = work.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let _ = fs::remove_dir_all(&kdir);
    fs::create_dir_all(kdir.join("modules"))?;
    let boot = fs::read_dir(unpacked.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .context("vmlinuz in the kernel package")?;
    fs::copy(&boot, kdir.join("vmlinuz"))?;
    let version = boot.file_name().expect("name").to_string_lossy().replace("vmlinuz-", "");
    let tree = unpacked.join("lib/modules").join(&version);
    // The package leaves modules.dep to depmod in its postinst (and this machine may have no
    // depmod): each module's own `depends=` says what it needs.
    let files = module_files(&tree.join("kernel"))?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for m in MODULES {
        add_module(m, &files, &mut seen, &mut order, &kdir.join("modules"))?;
    }
    fs::write(kdir.join("modules/order"), order.join(" "))?;
    fs::write(kdir.join("version"), &version)?;
    let _ = fs::remove_dir_all(&work);
    eprintln!("kernel lane: {version} (modules: {})", order.join(" "));
    Ok(())
}

/// Every module file under `dir`, by module name (`-` in file names is `_` in module names).
fn module_files(dir: &Path) -> Result<std::collections::BTreeMap<String, PathBuf>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str())
                && let Some(stem) = name.split(".ko").next().filter(|_| name.contains(".ko"))
            {
                out.insert(stem.replace('-', "_"), path.clone());
            }
        }
    }
    Ok(out)
}

/// Copy module `name` (decompressed) into `to`, after what it depends on; a module the kernel
/// has built in (no file) is skipped.
fn add_module(
    name: &str,
    files: &std::collections::BTreeMap<String, PathBuf>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
    to: &Path,
) -> Result<()> {
    if !seen.insert(name.to_owned()) {
        return Ok(());
    }
    let Some(path) = files.get(name) else { return Ok(()) };
    let ko = if path.extension().is_some_and(|x| x == "xz") {
        let out = Command::new("xz").arg("-dc").arg(path).output().context("xz")?;
        ensure!(out.status.success(), "decompressing {}", path.display());
        out.stdout
    } else {
        fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    for dep in depends(&ko) {
        add_module(&dep, files, seen, order, to)?;
    }
    fs::write(to.join(format!("{name}.ko")), ko)?;
    order.push(name.to_owned());
    Ok(())
}

/// The `depends=` of a module's .modinfo (NUL-separated `key=value` strings).
fn depends(ko: &[u8]) -> Vec<String> {
    ko.split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// The numbers in a package name, to order versions: `linux-image-5.10.0-46-amd64` ->
/// [5, 10, 0, 46].
fn numbers(package: &str) -> Vec<u32> {
    package
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The guest's /init: the 9p root under a tmpfs overlay, the results share, then the script.
const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in @MODULES@; do $B insmod /modules/$m.ko || echo "lane: insmod $m failed"; done
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /hostroot
$B mount -t tmpfs tmpfs /upper
$B mkdir -p /upper/u /upper/w
$B mount -t overlay overlay -o lowerdir=/hostroot,upperdir=/upper/u,workdir=/upper/w /newroot
$B mkdir -p /newroot/lane-out
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 laneout /newroot/lane-out
$B umount /proc /sys /dev
exec $B switch_root /newroot /bin/sh /lane-out/guest.sh
"#;

/// In the guest's root: the mounts the tests expect, then each test binary, each with a log
/// of its own.
const GUEST: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /root
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security
ip link set lo up
cd /lane-out
echo "kernel $(uname -r), LSMs $(cat /sys/kernel/security/lsm)" > guest.log
@REQUIRE@
# What runs, every 20 s (readable from the host while the guest runs; kept if a test hangs).
# With each process's current system call and wait channel, and the kernel's last words.
( while :; do sleep 20
  { ps -eo pid,ppid,stat,etime,args
    for p in /proc/[0-9]*; do
      echo "${p#/proc/} syscall $(cut -d' ' -f1 $p/syscall 2>/dev/null) wchan $(cat $p/wchan 2>/dev/null)"
    done
    dmesg | tail -20; } > ps.new 2>&1
  mv ps.new ps.log; done ) &
suite() {
  t=$1; shift
  NETCONTROL_REQUIRE_KERNEL_TESTS=1 NETCONTROL_TEST_SLOWDOWN=@SLOWDOWN@ \
    @STAGE@/deps/$t --test-threads=1 --show-output "$@" > $t.log 2>&1
  echo "$t $?" >> results
}
@SUITES@
sync
echo o > /proc/sysrq-trigger
"#;

/// What the tests that need them require: set for the lane of `cargo xtask test` (whose
/// kernel has both), found out in the guest for `cargo xtask kernels`.
const REQUIRE_ALL: &str = "export NETCONTROL_REQUIRE_LSM=1 NETCONTROL_REQUIRE_L2TP=1";
const REQUIRE_WHAT_IS_THERE: &str = "grep -q bpf /sys/kernel/security/lsm && export NETCONTROL_REQUIRE_LSM=1\n\
[ -d /sys/module/l2tp_ip ] && export NETCONTROL_REQUIRE_L2TP=1";

/// One test binary's outcome in the guest.
pub struct Suite {
    pub name: String,
    pub exit: Option<i32>,
    pub passed: u32,
    pub failed: u32,
    /// Tests that said they do not apply to this kernel (they pass, and are listed).
    pub not_applicable: Vec<String>,
    pub log: String,
}

/// What the guest ran.
pub struct Outcome {
    pub version: String,
    pub kernel_line: String,
    pub suites: Vec<Suite>,
}

/// Run the lane's tests in the guest; fail unless every one passed there.
pub fn test() -> Result<()> {
    let started = Instant::now();
    let k = kernel(LANE_SERIES)?;
    ensure!(
        kernel_dir(k.series).join("vmlinuz").exists()
            && Path::new("/usr/bin/qemu-system-x86_64").exists(),
        "the kernel lane is not installed: run `cargo xtask setup`"
    );
    let tests: Vec<Spec> = TESTS.iter().map(|t| Spec::all(t)).collect();
    let out = run_on(k, &tests, REQUIRE_ALL)?;
    for s in &out.suites {
        eprintln!("{}", s.log);
    }
    let failed: Vec<&Suite> = out.suites.iter().filter(|s| s.exit != Some(0)).collect();
    ensure!(
        out.suites.len() == TESTS.len() && failed.is_empty(),
        "kernel lane ({}): {}",
        out.version,
        if out.suites.is_empty() { "the guest ran no test".to_owned() } else { summary(&out) }
    );
    eprintln!("test: kernel lane on {} passed in {:.0?}", out.version, started.elapsed());
    Ok(())
}

/// `cargo xtask kernels`: the suites on each kernel; one closing line per kernel.
pub fn kernels(series: &[String], suites: &[Spec]) -> Result<()> {
    install_qemu()?;
    let chosen: Vec<&Kernel> = if series.is_empty() {
        KERNELS.iter().collect()
    } else {
        series.iter().map(|s| kernel(s)).collect::<Result<_>>()?
    };
    let suites: Vec<Spec> = if suites.is_empty() {
        KERNEL_SUITES.iter().map(|s| Spec::all(s)).collect()
    } else {
        suites.to_vec()
    };
    let root = super::workspace_root();
    for s in &suites {
        let file = root.join("tests/tests").join(format!("{}.rs", s.name));
        ensure!(file.exists(), "no test suite {:?} ({} does not exist)", s.name, file.display());
    }
    let mut lines = Vec::new();
    let mut ok = true;
    for k in chosen {
        fetch(k)?;
        let started = Instant::now();
        let out = run_on(k, &suites, REQUIRE_WHAT_IS_THERE)?;
        for s in &out.suites {
            if s.exit != Some(0) {
                eprintln!("---- {} on {} ----\n{}", s.name, out.version, tail(&s.log, 80));
            }
            for n in &s.not_applicable {
                eprintln!("kernels: {} on {}: {n}", s.name, out.version);
            }
        }
        ok &= out.suites.len() == suites.len() && out.suites.iter().all(|s| s.exit == Some(0));
        lines.push(format!("{} ({:.0?}): {}", out.kernel_line, started.elapsed(), summary(&out)));
    }
    for l in &lines {
        eprintln!("kernels: {l}");
    }
    ensure!(ok, "some kernel's tests failed (above)");
    Ok(())
}

/// "N passed, M failed, K not applicable (suite: ...)".
fn summary(out: &Outcome) -> String {
    let passed: u32 = out.suites.iter().map(|s| s.passed).sum();
    let failed: u32 = out.suites.iter().map(|s| s.failed).sum();
    let na: usize = out.suites.iter().map(|s| s.not_applicable.len()).sum();
    let bad: Vec<String> = out
        .suites
        .iter()
        .filter(|s| s.exit != Some(0))
        .map(|s| format!("{} exited {}", s.name, s.exit.map_or("?".into(), |c| c.to_string())))
        .collect();
    let mut line = format!("{passed} passed, {failed} failed, {na} not applicable");
    if !bad.is_empty() {
        line.push_str(&format!(" ({})", bad.join(", ")));
    }
    line
}

/// A test binary to run, with libtest name filters (none: all its tests). Written
/// `NAME[:FILTER,FILTER...]` on the command line.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub filters: Vec<String>,
}

impl Spec {
    pub fn parse(text: &str) -> Result<Self> {
        let (name, filters) = text.split_once(':').unwrap_or((text, ""));
        let filters: Vec<String> =
            filters.split(',').filter(|f| !f.is_empty()).map(str::to_owned).collect();
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .chain(filters.iter().flat_map(|f| f.chars()))
                    .all(|c| { c.is_ascii_alphanumeric() || c == '_' }),
            "suite {text:?}: expected NAME or NAME:TEST,TEST (letters, digits, _)"
        );
        Ok(Self { name: name.to_owned(), filters })
    }

    fn all(name: &str) -> Self {
        Self { name: name.to_owned(), filters: Vec::new() }
    }
}

/// Boot `k` with `tests`; what each test binary did.
fn run_on(k: &Kernel, tests: &[Spec], require: &str) -> Result<Outcome> {
    let kdir = kernel_dir(k.series);
    let version = fs::read_to_string(kdir.join("version")).unwrap_or_default();
    let work = tempfile_dir()?;
    let result = run_guest(&kdir, &work, tests, require);
    let results = fs::read_to_string(work.join("out/results")).unwrap_or_default();
    let kernel_line = fs::read_to_string(work.join("out/guest.log"))
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("kernel ?")
        .to_owned();
    let suites = results
        .lines()
        .filter_map(|l| {
            let (name, code) = l.split_once(' ')?;
            let log = fs::read_to_string(work.join(format!("out/{name}.log"))).unwrap_or_default();
            Some(suite(name, code.trim().parse().ok(), log))
        })
        .collect();
    let _ = fs::remove_dir_all(&work);
    result?;
    Ok(Outcome { version, kernel_line, suites })
}

/// A test binary's log: libtest's `test result:` line, and the tests that said they do not
/// apply (a line saying "not applicable", as `netcontrol_tests::kernel_at_least` writes).
fn suite(name: &str, exit: Option<i32>, log: String) -> Suite {
    let count = |line: &str, what: &str| {
        line.split(';')
            .find(|p| p.trim_end().ends_with(what))
            .and_then(|p| p.split_whitespace().rev().nth(1))
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let result = log.lines().rev().find(|l| l.starts_with("test result:")).unwrap_or("");
    // With --show-output, each test's output follows a "---- NAME stdout ----" line.
    let mut test = "";
    let mut not_applicable = Vec::new();
    for line in log.lines() {
        if let Some(name) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----"))
        {
            test = name;
        } else if line.to_ascii_lowercase().contains("not applicable") {
            not_applicable.push(format!("{test}: {}", line.trim()));
        }
    }
    Suite {
        name: name.to_owned(),
        exit,
        passed: count(result, "passed"),
        failed: count(result, "failed"),
        not_applicable,
        log,
    }
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("netcontrol-lane-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for sub in ["initramfs", "out/stage/deps"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    Ok(dir)
}

fn run_guest(kdir: &Path, work: &Path, tests: &[Spec], require: &str) -> Result<()> {
    // The binaries, without debug information (read over 9p, they would be hundreds of MB),
    // in the results share (the guest's /tmp is its own).
    let stage = work.join("out/stage");
    let target = super::workspace_root().join("target/debug");
    for bin in ["netcontrol", "nc-probe"] {
        strip(&target.join(bin), &stage.join(bin))?;
    }
    for t in tests {
        strip(&test_binary(&t.name)?, &stage.join("deps").join(&t.name))?;
    }
    // The initramfs: busybox, the modules, /init.
    let ir = work.join("initramfs");
    for d in ["bin", "proc", "sys", "dev", "hostroot", "upper", "newroot", "modules"] {
        fs::create_dir_all(ir.join(d))?;
    }
    fs::copy("/bin/busybox", ir.join("bin/busybox"))?;
    let order = fs::read_to_string(kdir.join("modules/order")).unwrap_or_default();
    for name in order.split_whitespace() {
        fs::copy(
            kdir.join("modules").join(format!("{name}.ko")),
            ir.join(format!("modules/{name}.ko")),
        )?;
    }
    write_exec(&ir.join("init"), &INIT.replace("@MODULES@", order.trim()))?;
    let cpio = Command::new("sh")
        .arg("-c")
        .arg("find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd.gz")
        .current_dir(&ir)
        .status()?;
    ensure!(cpio.success(), "building the initramfs");
    let guest = GUEST
        .replace(
            "@SUITES@",
            &tests
                .iter()
                .map(|t| format!("suite {} {}", t.name, t.filters.join(" ")))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .replace("@SLOWDOWN@", SLOWDOWN)
        .replace("@REQUIRE@", require)
        .replace("@STAGE@", "/lane-out/stage");
    write_exec(&work.join("out/guest.sh"), &guest)?;
    let mut qemu = Command::new("timeout");
    qemu.arg((GUEST_TIMEOUT_PER_SUITE.as_secs() * tests.len().max(1) as u64).to_string())
        .arg("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-nic", "none"])
        .arg("-serial")
        .arg(format!("file:{}", work.join("out/serial.log").display()))
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=laneout,security_model=none",
            work.join("out").display()
        ))
        .arg("-kernel")
        .arg(kdir.join("vmlinuz"))
        .arg("-initrd")
        .arg(work.join("initrd.gz"))
        // random.trust_cpu: the emulated CPU's RDRAND seeds the kernel's RNG at boot, or
        // getrandom() (every Python start) blocks for minutes on 5.10 with nothing to gather
        // entropy from.
        .args(["-append", "console=ttyS0 panic=-1 quiet random.trust_cpu=on"]);
    run(&mut qemu).with_context(|| {
        // A guest that timed out: where it was (the test running, and what ran).
        let read = |f: &str| fs::read_to_string(work.join("out").join(f)).unwrap_or_default();
        let running = tests
            .iter()
            .map(|t| format!("{}.log", t.name))
            .rfind(|f| work.join("out").join(f).exists());
        format!(
            "the guest (serial console):\n{}\n{}\nwhat ran in the guest last:\n{}",
            tail(&read("serial.log"), 40),
            running.map(|f| format!("{f}:\n{}", tail(&read(&f), 30))).unwrap_or_default(),
            tail(&read("ps.log"), 60)
        )
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn strip(from: &Path, to: &Path) -> Result<()> {
    run(Command::new("objcopy").arg("--strip-debug").arg(from).arg(to))
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The test binary cargo built for tests/tests/<name>.rs.
fn test_binary(name: &str) -> Result<PathBuf> {
    let out = Command::new("cargo")
        .args([
            "test",
            "-p",
            "netcontrol-tests",
            "--test",
            name,
            "--no-run",
            "--message-format=json",
        ])
        .env("NETCONTROL_REQUIRE_EBPF", "1")
        .output()
        .context("cargo test --no-run")?;
    ensure!(out.status.success(), "building the {name} tests");
    // One JSON object per line; the test's has `"executable":"<path>"`.
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains("\"executable\":\"") && l.contains(&format!("\"name\":\"{name}\"")))
        .find_map(|l| {
            let start = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = l[start..].find('"')? + start;
            Some(PathBuf::from(&l[start..end]))
        })
        .with_context(|| format!("no executable for the {name} tests in cargo's output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A renamed test must not drop out of CI's lane unnoticed: each filter names a test.
    #[test]
    fn every_ci_lane_filter_matches_a_test_of_its_suite() {
        for (series, specs) in CI_LANE {
            kernel(series).expect("a lane kernel");
            for text in *specs {
                let spec = Spec::parse(text).expect("parses");
                let path = super::super::workspace_root()
                    .join("tests/tests")
                    .join(format!("{}.rs", spec.name));
                let source = fs::read_to_string(&path).expect("the suite exists");
                for f in &spec.filters {
                    assert!(
                        source.lines().any(|l| l.starts_with("fn ") && l.contains(f.as_str())),
                        "{}: no test matches {f:?}",
                        path.display()
                    );
                }
            }
        }
    }

    #[test]
    fn a_test_log_gives_counts_and_what_did_not_apply_by_test() {
        let log = "running 2 tests\ntest a ... ok\ntest b ... ok\n\nsuccesses:\n\n\
                   ---- b stdout ----\nNOT APPLICABLE on Linux 5.10: needs Linux 6.1 (x)\n\n\
                   successes:\n    a\n    b\n\n\
                   test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n";
        let s = suite("hooks", Some(0), log.to_owned());
        assert_eq!((s.passed, s.failed), (2, 0));
        assert_eq!(s.not_applicable, ["b: NOT APPLICABLE on Linux 5.10: needs Linux 6.1 (x)"]);
    }

    #[test]
    fn suite_specs_parse_or_say_what_is_wrong() {
        let s = Spec::parse("run:exit_status,curl").expect("parses");
        assert_eq!((s.name.as_str(), s.filters.len()), ("run", 2));
        assert!(Spec::parse("hooks").expect("parses").filters.is_empty());
        let e = Spec::parse("run:a b").expect_err("a space").to_string();
        assert!(e.contains("expected NAME or NAME:TEST,TEST"), "{e}");
    }
}
