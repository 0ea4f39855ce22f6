//! Project tasks: `cargo xtask setup | demo | test | bench | lane | kernels | image`.
//!
//! Every step prints the command it runs, so that what setup does to a machine is visible and
//! can be repeated by hand (docs/toolchain.md explains why each piece is needed).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};

mod lane;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "netcontrol's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF programs and running the tests need (Debian/Ubuntu,
    /// root): Debian's rustc-web with the prebuilt BPF core, LLVM 22, bpf-linker 0.13.0, and the
    /// test tools. Idempotent: a second run changes nothing.
    Setup,
    /// Set up, build, and show netcontrol blocking and reporting a connection (root; runs in a
    /// private network namespace, so nothing leaves the machine).
    Demo {
        /// Skip `setup` (the toolchain is already installed).
        #[arg(long)]
        no_setup: bool,
    },
    /// Run the benchmarks (root) and write their reports under docs/benchmarks/.
    Bench {
        /// A short run that checks the benchmarks still work, without timing goals or reports.
        #[arg(long)]
        smoke: bool,
    },
    /// Build the agent image (deploy/Dockerfile: the static binary on an empty base) with the
    /// Docker engine of DOCKER_HOST.
    Image {
        /// The image's name and tag.
        #[arg(long, default_value = concat!("netcontrol:", env!("CARGO_PKG_VERSION")))]
        tag: String,
    },
    /// Run the kernel lane alone: the tests this machine's kernel cannot show (BPF LSM,
    /// L2TP/IP), on Debian's 6.12 kernel under QEMU (root; `setup` installs it).
    Lane,
    /// Run the privileged test suites on Debian's kernels under QEMU (root): each kernel is
    /// fetched with apt into a cache on first use, and its result is one closing line
    /// ("N passed, M failed, K not applicable"). Kernels: 5.10, 6.1, 6.12 (all by default).
    Kernels {
        /// Kernel series to run on (5.10, 6.1, 6.12); all of them if none.
        versions: Vec<String>,
        /// A test suite (tests/tests/<name>.rs) to run, all of it or only the tests whose names
        /// contain one of the filters (`run:exit_status,curl`); repeatable. Default: hooks,
        /// run, daemon, dns_aware, lsm.
        #[arg(long = "suite", value_name = "NAME[:TEST,...]", value_parser = lane::Spec::parse)]
        suites: Vec<lane::Spec>,
    },
    /// Run every test: formatting, clippy, unit tests, and the privileged kernel tests (root).
    Test {
        /// Leave out the kernel tests (they need root).
        #[arg(long)]
        no_kernel: bool,
        /// Extra arguments for the kernel tests' test binaries (e.g. a test name filter); with
        /// any, the kernel lane and the benchmark smoke run are left out.
        #[arg(last = true)]
        filter: Vec<String>,
    },
}

fn main() -> Result<()> {
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Demo { no_setup } => {
            if !no_setup {
                setup()?;
            }
            demo()
        }
        Task::Test { no_kernel, filter } => test(no_kernel, &filter),
        Task::Bench { smoke } => bench(smoke),
        Task::Lane => {
            run(Command::new("cargo")
                .args(["build", "-p", "netcontrol", "-p", "netcontrol-tests", "--bins"])
                .env("NETCONTROL_REQUIRE_EBPF", "1"))?;
            lane::test()
        }
        Task::Kernels { versions, suites } => {
            ensure!(is_root(), "the kernel lane boots kernels under QEMU and needs root");
            run(Command::new("cargo")
                .args(["build", "-p", "netcontrol", "-p", "netcontrol-tests", "--bins"])
                .env("NETCONTROL_REQUIRE_EBPF", "1"))?;
            lane::kernels(&versions, &suites)
        }
        Task::Image { tag } => image(&tag),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_owned()
}

/// Print and run a command; fail with its exit status.
fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", show(cmd));
    let status = cmd.status().with_context(|| format!("starting {}", show(cmd)))?;
    ensure!(status.success(), "{} failed ({status})", show(cmd));
    Ok(())
}

fn show(cmd: &Command) -> String {
    let envs: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    [envs.join(" "), cmd.get_program().to_string_lossy().into_owned(), args.join(" ")]
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ---- setup -------------------------------------------------------------------------------

/// Debian packages: the BPF toolchain (docs/toolchain.md), then what the tests run.
const TOOLCHAIN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "clang-22",
    "lld-22",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "procps",
    "python3",
    "curl",
    "util-linux",
    "dnsmasq",
    "dnsutils",
    "musl-tools",
    "busybox-static",
    // The kernel lane: stripping the binaries it runs, unpacking the kernel's modules.
    "binutils",
    "xz-utils",
    // The daemon's tests: a real Prometheus (and promtool), and the kernel's view of links.
    "prometheus",
    "bpftool",
    // Container tests run their own dockerd (no service is started by the package).
    "docker.io",
    // The benchmarks compare against these, and label their charts in DejaVu Sans.
    "iptables",
    "nftables",
    "fonts-dejavu-core",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

fn setup() -> Result<()> {
    check_system()?;
    let wanted: Vec<&str> = TOOLCHAIN_PACKAGES.iter().chain(TEST_PACKAGES).copied().collect();
    let missing: Vec<&str> = wanted.iter().copied().filter(|p| !package_installed(p)).collect();
    if missing.is_empty() {
        eprintln!("setup: all {} Debian packages are installed", wanted.len());
    } else {
        ensure!(
            is_root(),
            "setup must install {} and needs root: run `sudo cargo xtask setup`",
            missing.join(" ")
        );
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get").args(["install", "-y", "--no-install-recommends"]).args(&missing)).with_context(
            || {
                "installing the BPF toolchain packages failed. netcontrol's kernel side is built with Debian \
                 12's rustc-web 1.96 and its prebuilt BPF core (libstd-rust-web-dev-bpf); a release without \
                 them needs a nightly Rust with rust-src instead (docs/toolchain.md)"
            },
        )?;
    }
    if succeeds("rustup", &["run", "bpf", "rustc", "--version"]) {
        eprintln!("setup: rustup toolchain `bpf` is linked");
    } else {
        ensure!(
            succeeds("rustup", &["--version"]),
            "rustup is needed (the host toolchain comes from it)"
        );
        run(Command::new("rustup").args(["toolchain", "link", "bpf", "/usr"]))?;
    }
    let linker = Command::new("bpf-linker").arg("--version").output().ok();
    let have = linker
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if have.contains(BPF_LINKER_VERSION) {
        eprintln!("setup: {} is installed", have.trim());
    } else {
        // bpf-linker links against Debian's LLVM 22; without LLVM_PREFIX its build looks in
        // /usr/lib64 and fails with "unable to find library -lLLVM".
        let path = format!("/usr/lib/llvm-22/bin:{}", env::var("PATH").unwrap_or_default());
        run(Command::new("cargo")
            .args(["install", "--locked", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("PATH", path))?;
    }
    let target = Path::new("/usr/lib/rustlib/bpfel-unknown-none");
    ensure!(
        target.exists(),
        "{} is missing after setup (package libstd-rust-web-dev-bpf)",
        target.display()
    );
    install_python_tools()?;
    lane::setup()?;
    eprintln!("setup: done; the BPF toolchain is ready");
    Ok(())
}

/// Where the test tools from PyPI live (a venv of their own).
const TOOLS_DIR: &str = "/opt/netcontrol-tools";
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// kubernetes-validate (the manifests' tests validate against its offline schemas).
fn install_python_tools() -> Result<()> {
    let venv = Path::new(TOOLS_DIR).join("kv");
    let tool = venv.join("bin/kubernetes-validate");
    if tool.exists() {
        eprintln!("setup: {} is installed", tool.display());
        return Ok(());
    }
    ensure!(is_root(), "setup must install {KUBERNETES_VALIDATE} under {TOOLS_DIR} and needs root");
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", KUBERNETES_VALIDATE]))
}

fn check_system() -> Result<()> {
    let os = fs::read_to_string("/etc/os-release").unwrap_or_default();
    debian_family(&os)?;
    ensure!(
        succeeds("dpkg-query", &["--version"]),
        "dpkg-query is missing: this is not a working Debian system"
    );
    Ok(())
}

/// Accept Debian and its derivatives (by /etc/os-release), with a message that says what to
/// do elsewhere.
fn debian_family(os_release: &str) -> Result<()> {
    let field = |k: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    let (id, like, name) = (field("ID"), field("ID_LIKE"), field("PRETTY_NAME"));
    if id == "debian" || id == "ubuntu" || like.split(' ').any(|l| l == "debian") {
        return Ok(());
    }
    bail!(
        "unsupported system {:?}: `cargo xtask setup` installs Debian/Ubuntu packages. Elsewhere install \
         a Rust toolchain that can build for bpfel-unknown-none, LLVM 22 and bpf-linker {BPF_LINKER_VERSION} \
         yourself (docs/toolchain.md lists what each is for)",
        if name.is_empty() { "unknown (no /etc/os-release)".to_owned() } else { name }
    )
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

// ---- demo --------------------------------------------------------------------------------

fn demo() -> Result<()> {
    ensure!(is_root(), "the demo loads eBPF programs and needs root: run `sudo cargo xtask demo`");
    run(Command::new("cargo")
        .args(["build", "--release", "-p", "netcontrol"])
        .env("NETCONTROL_REQUIRE_EBPF", "1"))?;
    let bin = workspace_root().join("target/release/netcontrol");
    // A private network namespace with only loopback: nothing the demo does can leave the
    // machine, blocked or not.
    ensure!(
        succeeds("unshare", &["--net", "true"]),
        "`unshare --net` failed: the demo needs to create a network namespace"
    );
    let script = format!(
        r#"set -e
say() {{ printf '%s\n' "$*"; }}
ip link set lo up
python3 -m http.server 8080 --bind 127.0.0.10 >/dev/null 2>&1 & A=$!
python3 -m http.server 8080 --bind 127.0.0.11 >/dev/null 2>&1 & B=$!
trap 'kill $A $B' EXIT
for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.11:8080/ && curl -s -o /dev/null http://127.0.0.10:8080/ && break; sleep 0.1; done
say
say "Two web servers run on 127.0.0.10:8080 and 127.0.0.11:8080 (in a private network namespace)."
say "The sandbox may reach 127.0.0.11:8080 only."
say
say '$ netcontrol run --allow 127.0.0.11:8080 -- curl -sS -o /dev/null -w "HTTP %{{http_code}}\n" http://127.0.0.11:8080/'
{bin} run --allow 127.0.0.11:8080 -- curl -sS -o /dev/null -w "HTTP %{{http_code}}\n" http://127.0.0.11:8080/
say
say '$ netcontrol run --allow 127.0.0.11:8080 --events - -- curl -sS http://127.0.0.10:8080/'
{bin} run --allow 127.0.0.11:8080 --events - -- curl -sS http://127.0.0.10:8080/ || say "(curl exited with $?)"
say
say 'curl got EPERM ("Operation not permitted") from connect() at once: no packet was sent.'
say 'The JSON line is the event. Next: `cargo xtask test` runs the test suite.'
"#,
        bin = bin.display()
    );
    eprintln!("+ unshare --net sh -c <demo script>");
    let status = Command::new("unshare").args(["--net", "sh", "-c", &script]).status()?;
    ensure!(status.success(), "the demo failed ({status})");
    Ok(())
}

// ---- test --------------------------------------------------------------------------------

fn test(no_kernel: bool, filter: &[String]) -> Result<()> {
    let started = Instant::now();
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    // The eBPF crate only builds for the BPF target (through netcontrol's build.rs).
    run(Command::new("cargo")
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            "netcontrol-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .env("NETCONTROL_REQUIRE_EBPF", "1"))?;
    run(Command::new("cargo").arg("test").env("NETCONTROL_REQUIRE_EBPF", "1"))?;
    if no_kernel {
        eprintln!("test: kernel tests left out (--no-kernel)");
    } else {
        ensure!(
            is_root(),
            "the kernel tests load eBPF programs and need root: run `sudo cargo xtask test`, or pass --no-kernel"
        );
        // The tests run the netcontrol binary: build it (with its eBPF programs) first, and
        // the static one the image test puts in an image.
        run(Command::new("cargo")
            .args(["build", "-p", "netcontrol", "-p", "netcontrol-tests", "--bins"])
            .env("NETCONTROL_REQUIRE_EBPF", "1"))?;
        let static_bin = build_static(false)?;
        run(Command::new("cargo")
            .args(["test", "-p", "netcontrol-tests", "--"])
            .args(filter)
            .env("NETCONTROL_REQUIRE_EBPF", "1")
            .env("NETCONTROL_REQUIRE_KERNEL_TESTS", "1")
            .env("NETCONTROL_STATIC_BIN", &static_bin)
            .env("NETCONTROL_TOOLS", TOOLS_DIR))?;
        if filter.is_empty() {
            // What this kernel cannot show (the BPF LSM, L2TP/IP), on Debian's 6.12 under QEMU.
            lane::test()?;
            lane::test_other_kernels()?;
            // The benchmarks, briefly, so that they cannot rot.
            bench(true)?;
        } else {
            eprintln!("test: a filter runs the matching kernel tests only (no lane, no benchmark)");
        }
    }
    eprintln!("test: all passed in {:.0?}", started.elapsed());
    Ok(())
}

// ---- image -------------------------------------------------------------------------------

/// The target a static binary is built for (its own target dir: the flag must not reach
/// build scripts and proc macros).
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Build netcontrol as a static-pie binary (glibc, crt-static); its path.
fn build_static(release: bool) -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "-p", "netcontrol", "--bin", "netcontrol", "--target", STATIC_TARGET]);
    if release {
        cmd.arg("--release");
    }
    run(cmd
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static")
        .env("NETCONTROL_REQUIRE_EBPF", "1"))?;
    let profile = if release { "release" } else { "debug" };
    Ok(workspace_root().join("target").join(STATIC_TARGET).join(profile).join("netcontrol"))
}

fn image(tag: &str) -> Result<()> {
    let bin = build_static(true)?;
    let context = workspace_root().join("target/image");
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(&context)?;
    fs::copy(&bin, context.join("netcontrol"))
        .context("copying the binary into the build context")?;
    // The legacy builder: it needs no BuildKit component and pulls nothing for `FROM scratch`.
    run(Command::new("docker")
        .args(["build", "-t", tag, "-f"])
        .arg(workspace_root().join("deploy/Dockerfile"))
        .arg(&context)
        .env("DOCKER_BUILDKIT", "0"))?;
    eprintln!("image: built {tag}; push it where your nodes pull from (deploy/README.md)");
    Ok(())
}

// ---- bench -------------------------------------------------------------------------------

fn bench(smoke: bool) -> Result<()> {
    ensure!(
        is_root(),
        "the benchmarks load eBPF programs and need root: run `sudo cargo xtask bench`"
    );
    // Reports come from release builds; the smoke run only checks that the scenarios work and
    // reuses the debug build the tests made.
    let profile = if smoke { "debug" } else { "release" };
    let mut build = Command::new("cargo");
    build.args(["build", "-p", "netcontrol", "-p", "netcontrol-tests", "--bins"]);
    if !smoke {
        build.arg("--release");
    }
    run(build.env("NETCONTROL_REQUIRE_EBPF", "1"))?;
    let bin = workspace_root().join("target").join(profile).join("nc-bench");
    let mut cmd = Command::new(&bin);
    if smoke {
        // The charts too, but not over the committed report.
        let scratch = env::temp_dir().join(format!("nc-bench-smoke-{}", std::process::id()));
        cmd.arg("--smoke").arg("--out").arg(&scratch);
        run(cmd.stdout(Stdio::null()))?;
        let _ = fs::remove_dir_all(&scratch);
    } else {
        let out_dir = workspace_root().join("docs/benchmarks");
        run(cmd.arg("--out").arg(&out_dir))?;
        eprintln!("bench: the report is {}", out_dir.join("README.md").display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::debian_family;

    #[test]
    fn debian_and_derivatives_are_supported_others_get_told_why_not() {
        assert!(
            debian_family("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n").is_ok()
        );
        assert!(debian_family("ID=ubuntu\nID_LIKE=debian\n").is_ok());
        assert!(debian_family("ID=pop\nID_LIKE=\"ubuntu debian\"\n").is_ok());
        let err = debian_family("PRETTY_NAME=\"Fedora Linux 41\"\nID=fedora\n")
            .expect_err("fedora")
            .to_string();
        assert!(
            err.contains("unsupported system \"Fedora Linux 41\"")
                && err.contains("docs/toolchain.md"),
            "{err}"
        );
        let err = debian_family("").expect_err("empty").to_string();
        assert!(err.contains("no /etc/os-release"), "{err}");
    }
}
