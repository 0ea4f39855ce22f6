use std::process::ExitCode;

use clap::Parser;
use netcontrol::cli::{self, Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_filter(), cli.log_format);
    // One thread for the commands (a ring-buffer reader and a child to wait for); the daemon
    // has worker threads, so that its DNS proxies, event pump, scrapes and control requests
    // never wait for the supervisor loop (which stays on this thread) or for each other.
    let runtime = match &cli.command {
        Command::Daemon(_) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4)))
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netcontrol: error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // `run` reserves 125 for its own failures (126/127 and the rest are CMD's).
    let (result, failure) = match cli.command {
        Command::Run(args) => (runtime.block_on(cli::run::main(args)), 125),
        Command::Attach(args) => (runtime.block_on(cli::attach::main(args)), 1),
        Command::Daemon(args) => (runtime.block_on(cli::daemon::main(args)), 1),
        Command::Status(args) => (runtime.block_on(cli::status::main(&args)), 1),
        Command::Detach(args) => (runtime.block_on(cli::detach::main(&args)), 1),
        Command::Uninstall(args) => (runtime.block_on(cli::uninstall::main(&args)), 1),
        Command::CheckPolicy(args) => (Ok(cli::check_policy::main(&args)), 1),
    };
    let code = match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            netcontrol::console::say(format!("netcontrol: error: {e}"));
            ExitCode::from(failure)
        }
    };
    // What is queued for stderr and stdout goes out first (unless they are stuck).
    netcontrol::console::flush(std::time::Duration::from_secs(5));
    code
}

fn init_logging(filter: &str, format: LogFormat) {
    // aya-log (kernel-side diagnostics) speaks the `log` crate: route it into tracing.
    let _ = tracing_log::LogTracer::init();
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("netcontrol: ignoring invalid --log-level {filter:?}: {e}");
        EnvFilter::new("warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
