//! The `showcase` binary: a thin command line over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use showcase::app::{runtime, Application};
use showcase::config::Encoding;
use showcase::config::{Config, LogConfig};
use showcase::engine::transcode::{run_child, ChildFault, TranscodeSpec};

/// jemalloc instead of glibc's malloc. Under upload load the server's many threads each churn
/// through megabyte-sized body buffers; glibc gives every thread an arena of its own and keeps
/// what those arenas once held, so a node whose live heap never passed ~120 MB sat at 1.4-2 GB
/// resident after a minute of 300 users (bench, 2 GiB cgroup). jemalloc hands unused pages
/// back to the kernel after a short decay, so resident memory follows the live heap.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "showcase",
    version,
    about = "ANB Rising Stars Showcase video platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server until SIGTERM or SIGINT.
    Serve {
        /// Configuration file [default: ./config.toml, or the embedded defaults when that file
        /// does not exist]. A file named here must exist.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Applies the store's schema (PostgreSQL's migrations, which `serve` also applies at
    /// start); with --from and --to, copies a whole platform from one configuration's stores
    /// into another's: users, videos, votes, queued and dead-lettered jobs, media. Stop the
    /// nodes of the source first; the copy can be run again.
    Migrate {
        /// Configuration file whose store gets the schema [default: ./config.toml].
        #[arg(long, conflicts_with_all = ["from", "to"])]
        config: Option<PathBuf>,
        /// The configuration of the platform to copy from.
        #[arg(long, requires = "to")]
        from: Option<PathBuf>,
        /// The configuration of the platform to copy into.
        #[arg(long, requires = "from")]
        to: Option<PathBuf>,
    },
    /// Prints the OpenAPI 3.1 document of the HTTP API (the one `/api/openapi.json` serves).
    Openapi,
    /// Transcodes one video (run by the server in a child process; progress as JSON lines on
    /// stdout; exit 0 done, 65 the input cannot be decoded, 1 any other failure).
    Transcode {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long)]
        poster: PathBuf,
        #[command(flatten)]
        encoding: Encoding,
        /// Fault injection: `crash` or `hang` part-way through, or `escape` (try to read
        /// `--escape-target` from inside the sandbox).
        #[arg(long, hide = true)]
        fault: Option<ChildFault>,
        #[arg(long, hide = true)]
        escape_target: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // Everything this process creates (database, media, temp files, the generated secret) is
    // its owner's alone; systemd's UMask= says the same for the service.
    // SAFETY: umask only sets the process's file mode creation mask.
    unsafe { libc::umask(0o077) };
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Migrate { config, from, to } => migrate(config, from.zip(to)),
        Command::Openapi => {
            let doc = showcase::http::openapi::document();
            match serde_json::to_string_pretty(doc) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Transcode {
            input,
            output,
            poster,
            encoding,
            fault,
            escape_target,
        } => {
            let spec = TranscodeSpec {
                input,
                output,
                poster,
                encoding,
            };
            ExitCode::from(run_child(&spec, fault, escape_target.as_deref()) as u8)
        }
    }
}

/// `showcase migrate`: the schema, or a copy; says what it did, exit 1 with why when it fails.
fn migrate(config: Option<PathBuf>, copy: Option<(PathBuf, PathBuf)>) -> ExitCode {
    let loaded = |path: &PathBuf, explicit: bool| {
        Config::load(path, explicit).map_err(|e| format!("{}: {e}", path.display()))
    };
    let outcome = runtime().block_on(async {
        match copy {
            Some((from, to)) => {
                let (from, to) = (loaded(&from, true)?, loaded(&to, true)?);
                init_logging(&to.log);
                let report = showcase::app::copy_platform(&from, &to)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut lines: Vec<String> = report.iter().map(ToString::to_string).collect();
                lines.push(
                    "verified: every record, vote count and ranking is in the destination".into(),
                );
                Ok(lines.join("\n"))
            }
            None => {
                let explicit = config.is_some();
                let path = config.unwrap_or_else(|| PathBuf::from("config.toml"));
                let config = loaded(&path, explicit)?;
                init_logging(&config.log);
                showcase::app::apply_schema(&config)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    });
    match outcome {
        Ok(said) => {
            println!("{said}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("showcase migrate: {why}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(log: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    // The database driver's notices ("relation already exists, skipping") are not news.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},sqlx=warn", log.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn serve(config_path: Option<PathBuf>) -> ExitCode {
    let explicit = config_path.is_some();
    let config_path = config_path.unwrap_or_else(|| PathBuf::from("config.toml"));
    let config = match Config::load(&config_path, explicit) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("showcase: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
    let exit_deadline = Duration::from_secs(config.server.shutdown_grace_s) + EXIT_MARGIN;
    let system = actix::System::with_tokio_rt(runtime);
    let result = system.block_on(async move {
        let app = Application::build(config)
            .await
            .map_err(|e| e.to_string())?;
        app.run_until_stopped(shutdown_signal(exit_deadline))
            .await
            .map_err(|e| e.to_string())
    });
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "showcase stopped with an error");
            1
        }
    };
    // Everything durable is flushed. Exit now rather than drop the runtime, whose drop waits
    // for every blocking thread, including one stuck for good.
    exit_now(code)
}

/// Ends the process at once with `code`, once what was logged is written. Not
/// `std::process::exit`: libc's `exit` runs the calling thread's thread-local destructors,
/// and those of the actix System and of tokio, dropped in an order of their own, can reach
/// each other after destruction and abort the process (seen as SIGABRT after a clean stop).
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process without running anything; nothing is left to run.
    unsafe { libc::_exit(code) }
}

/// Time a stopping process has beyond `server.shutdown_grace_s` before it exits regardless.
const EXIT_MARGIN: Duration = Duration::from_secs(5);

/// Resolves on the first SIGTERM or SIGINT, and from then on guarantees that the process is
/// gone within `exit_deadline`, whatever is stuck (a blocking thread, a flush).
async fn shutdown_signal(exit_deadline: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    let armed = std::thread::Builder::new()
        .name("exit-deadline".into())
        .spawn(move || {
            std::thread::sleep(exit_deadline);
            tracing::error!(
                deadline_s = exit_deadline.as_secs(),
                "shutdown did not complete in time; exiting now"
            );
            exit_now(1);
        });
    if let Err(error) = armed {
        tracing::warn!(%error, "could not arm the exit deadline");
    }
}
