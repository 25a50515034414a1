//! `flanneld`: the flannel daemon, `flanneld config check FILE` or
//! `flanneld mk-docker-opts`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use flannel_core::config::NetConfig;
use flanneld::cli::{CliError, Command, Options};

fn main() -> ExitCode {
    match Command::parse_env_and_args() {
        Ok(Command::Run(opts)) => run(*opts),
        Ok(Command::ConfigCheck(path)) => match config_check(&path) {
            Ok(json) => print(&format!("{json}\n"), ExitCode::SUCCESS),
            Err(msg) => {
                eprintln!("error: {}: {msg}", path.display());
                ExitCode::from(1)
            }
        },
        Ok(Command::MkDockerOpts(args)) => match flanneld::docker_opts::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Err(e @ (CliError::Help(_) | CliError::Version(_))) => {
            print(&e.to_string(), ExitCode::from(e.exit_code()))
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `-v` maps to tracing levels (Go's klog verbosity) for flannel's own
/// crates only: every `flannel*` target (`flanneld`, `flannel_core`,
/// `flannel_subnet`, the backends, ...). Dependencies (h2, tonic, hyper,
/// rustls, netlink) stay at `warn`, since their debug output at `-v=2` would
/// drown flannel's. `RUST_LOG`, when set, replaces the whole filter.
fn log_filter(v: i32) -> String {
    let level = match v {
        i32::MIN..=0 => "info",
        1..=3 => "debug",
        _ => "trace",
    };
    // Directive targets match by prefix: `flannel` covers `flanneld` and
    // every `flannel_*` crate.
    format!("warn,flannel={level}")
}

fn init_logging(v: i32) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(v)));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn run(opts: Options) -> ExitCode {
    init_logging(opts.v);
    tracing::info!("CLI flags config: {opts}");
    for flag in opts.ignored_flags() {
        tracing::warn!(
            "flag -{flag} is accepted for compatibility with Go flanneld but has no effect"
        );
    }
    // One thread: flanneld's work is all async I/O, and every extra thread
    // that allocates gets its own glibc malloc arena (resident memory).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(flanneld::daemon::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

/// Writes to stdout, ignoring a closed pipe (`flanneld --help | head`).
fn print(text: &str, code: ExitCode) -> ExitCode {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    code
}

/// Reads, validates and re-serialises a `net-conf.json`.
fn config_check(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut cfg = NetConfig::parse(&text).map_err(|e| e.to_string())?;
    cfg.check().map_err(|e| e.to_string())?;
    cfg.stack().map_err(|e| e.to_string())?;
    let mut json = cfg.to_json();
    // Go's serialisation leaves an absent `Backend` out; show the type that
    // will run (vxlan, as the documentation says) so the output is complete.
    if cfg.backend.is_none() && json.ends_with('}') {
        let ty = serde_json::to_string(&cfg.backend_type).map_err(|e| e.to_string())?;
        json.pop();
        json.push_str(&format!(",\"Backend\":{{\"Type\":{ty}}}}}"));
    }
    Ok(json)
}
