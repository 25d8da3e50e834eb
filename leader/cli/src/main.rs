//! The `meridian` binary: run a region, simulate a deployment on localhost, create
//! certificates, and talk to any region's API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use leader::config::Config;
use leader::{LeaderBuilder, Wiring};

mod bench;
mod cli;
mod simulate;

#[derive(Debug, Parser)]
#[command(
    name = "meridian",
    version,
    about = "Geo-distributed multi-leader replicated key-value store"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one region's leader (one process per region).
    Run {
        /// The shared regions.toml.
        #[arg(long, default_value = "regions.toml", env = "MERIDIAN_CONFIG")]
        config: PathBuf,
        /// Which region of the file this process is.
        #[arg(long, env = "MERIDIAN_REGION")]
        region: String,
        /// Apply the [simulation] link impairments of regions.toml to this region's outgoing
        /// traffic (what `meridian simulate` uses).
        #[arg(long)]
        simulate_links: bool,
        /// Exit when standard input closes: lets `meridian simulate` never leave a child
        /// behind, even if it is killed itself.
        #[arg(long, hide = true)]
        exit_with_stdin: bool,
    },
    /// Start every region of regions.toml as its own process on localhost, with the
    /// configured WAN latency, and show a live table of regions, lag and conflicts.
    Simulate {
        /// The regions.toml to simulate.
        #[arg(long, default_value = "regions.toml", env = "MERIDIAN_CONFIG")]
        config: PathBuf,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration_secs: Option<u64>,
    },
    /// Certificate management.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Write a value: `meridian put TABLE KEY VALUE`.
    Put(cli::KeyArgs),
    /// Read a value: `meridian get TABLE KEY`.
    Get(cli::KeyArgs),
    /// Delete a key: `meridian delete TABLE KEY`.
    Delete(cli::KeyArgs),
    /// Show a region's status and its replication lag as a table.
    Status(cli::Target),
    /// Run anti-entropy now between a region and every connected peer: `meridian repair
    /// --region us-east`. Prints what the rounds found once they are over; keys that
    /// diverged are repaired by then.
    Repair(cli::Target),
    /// Show a region's conflict log, newest first.
    Conflicts(cli::ConflictArgs),
    /// Inspect or impair a region's links to its peers (simulations): `meridian link
    /// --region us-east eu-west --block`, then `--heal`.
    Link(cli::LinkArgs),
    /// Benchmark regions started on localhost (or running ones, --target): throughput,
    /// latency per durability level, lag per region pair, catch-up after a cut; JSON and PNG.
    Bench(bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a cluster CA and one certificate per region in regions.toml's tls_dir.
    Init {
        /// The regions.toml naming the cluster, regions and tls_dir.
        #[arg(long, default_value = "regions.toml", env = "MERIDIAN_CONFIG")]
        config: PathBuf,
        /// Replace existing certificates.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meridian: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(args.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meridian: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run {
            config,
            region,
            simulate_links,
            exit_with_stdin,
        } => {
            run(&config, &region, simulate_links, exit_with_stdin).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            config,
            duration_secs,
        } => simulate::run(&config, duration_secs).await,
        Command::Certs {
            command: CertsCommand::Init { config, force },
        } => {
            certs_init(&config, force)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Put(a) => cli::put(a).await,
        Command::Get(a) => cli::get(a).await,
        Command::Delete(a) => cli::delete(a).await,
        Command::Status(t) => cli::status(t).await,
        Command::Repair(t) => cli::repair(t).await,
        Command::Conflicts(a) => cli::conflicts(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Link(a) => cli::link(a).await,
    }
}

/// Creates the cluster's certificates unless they exist (or `force`).
pub(crate) fn certs_init(config_path: &Path, force: bool) -> Result<()> {
    let config = Config::load(config_path)?;
    let regions: Vec<String> = config.regions.iter().map(|r| r.name.clone()).collect();
    if !force && transport::certs::exists(&config.tls_dir, &regions) {
        eprintln!(
            "certificates already exist in {} (use --force to replace them)",
            config.tls_dir.display()
        );
        return Ok(());
    }
    transport::certs::generate(
        &config.tls_dir,
        &config.cluster,
        &regions,
        transport::certs::KeyAlgorithm::EcdsaP256,
    )
    .with_context(|| format!("creating certificates in {}", config.tls_dir.display()))?;
    eprintln!(
        "created a CA and certificates for {} in {}",
        regions.join(", "),
        config.tls_dir.display()
    );
    Ok(())
}

/// Registers the example resolvers that the shipped regions.toml may name, as any program
/// embedding a leader would.
fn with_examples(builder: LeaderBuilder) -> Result<LeaderBuilder> {
    let builder = builder.register(Arc::new(conflict::examples::Counter))?;
    Ok(builder.register(Arc::new(conflict::examples::UnionSet))?)
}

async fn run(
    config_path: &Path,
    region: &str,
    simulate_links: bool,
    exit_with_stdin: bool,
) -> Result<()> {
    let builder = LeaderBuilder::from_file(config_path, region)?;
    let token = std::env::var("MERIDIAN_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let wiring = Wiring {
        api_token: token,
        impair: simulate_links,
        ..Wiring::default()
    };
    let builder = with_examples(builder)?.wiring(wiring);
    // With `impair`, the node applies the `[simulation]` links itself, before its first packet.
    let node = builder.start().await?;
    eprintln!(
        "meridian: region {region} up; API http://{} ; peers on {}{}",
        node.api_addr()
            .map_or_else(|| "-".into(), |a| a.to_string()),
        node.peer_addr(),
        node.resp_addr().map_or_else(String::new, |a| format!(
            " ; RESP (redis-cli -p {}) on {a}",
            a.port()
        ))
    );
    let stdin_closed = async {
        if exit_with_stdin {
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            use tokio::io::AsyncReadExt;
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        } else {
            std::future::pending::<()>().await;
        }
    };
    let watch = tokio::spawn(watch_bootstrap(node.handle()));
    let mut node = node;
    let reason = tokio::select! {
        r = shutdown_signal() => r?,
        () = stdin_closed => "the simulator's pipe closed",
        r = node.wait() => {
            r?;
            bail!("region {region} stopped unexpectedly");
        }
    };
    eprintln!("meridian: region {region} stopping ({reason})");
    watch.abort();
    node.shutdown().await?;
    Ok(())
}

/// Prints the lines of a snapshot bootstrap of this region ([`cli::BootstrapWatch`]) about
/// once a second, until the node stops.
async fn watch_bootstrap(node: leader::node::NodeHandle) {
    let mut watch = cli::BootstrapWatch::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(status) = node.status().await else {
            return; // stopped
        };
        for line in watch.lines(&leader::status::Status::from(&status)) {
            eprintln!("meridian: {line}");
        }
    }
}

async fn shutdown_signal() -> Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; Ok("SIGINT") }
        _ = term.recv() => Ok("SIGTERM"),
    }
}
