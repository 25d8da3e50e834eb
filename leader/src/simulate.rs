//! `meridian simulate`: every region of regions.toml as its own process on localhost, with
//! the configured WAN links, and a live table of regions, lag and conflicts.
//!
//! Children are started as `meridian run --simulate-links --exit-with-stdin`: each holds a
//! pipe from the simulator on its standard input and exits when it closes, so no child is
//! left behind even if the simulator itself is killed. On Ctrl-C the simulator closes the pipes,
//! waits for clean exits, and kills what is still running after a bound.

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use leader::config::Config;
use serde_json::Value as Json;
use tokio::process::{Child, Command};

/// How long children get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the live table is refreshed.
const REFRESH: Duration = Duration::from_secs(1);

struct Region {
    name: String,
    api: String,
    child: Child,
}

pub(crate) async fn run(config_path: &Path, duration_secs: Option<u64>) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let names: Vec<String> = config.regions.iter().map(|r| r.name.clone()).collect();
    if !transport::certs::exists(&config.tls_dir, &names) {
        crate::certs_init(config_path, false)?;
    }
    let exe = std::env::current_exe().context("finding the meridian executable")?;
    let mut regions = Vec::new();
    for r in &config.regions {
        let child = Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(config_path)
            .arg("--region")
            .arg(&r.name)
            .arg("--simulate-links")
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting region {}", r.name))?;
        regions.push(Region {
            name: r.name.clone(),
            api: format!("http://{}", r.api_addr),
            child,
        });
    }
    println!(
        "Meridian simulation of cluster '{}' ({} regions)",
        config.cluster,
        regions.len()
    );
    for r in &config.regions {
        println!(
            "  {:<12} API http://{}  peers {}  data {}",
            r.name,
            r.api_addr,
            r.peer_addr,
            r.data_dir.display()
        );
    }
    for l in &config.simulation.links {
        println!(
            "  link {} -> {}: {} ms ± {} ms, loss {}",
            l.from, l.to, l.latency_ms, l.jitter_ms, l.loss
        );
    }
    println!(
        "Try: curl -X PUT --data hello http://{}/v1/kv/default/greeting",
        config.regions[0].api_addr
    );
    println!("Press Ctrl-C to stop all regions.\n");

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = duration_secs.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut ticker = tokio::time::interval(REFRESH);
    let mut drawn = 0;
    let reason = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break "Ctrl-C",
            _ = async {
                match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await }
            } => break "duration reached",
            _ = ticker.tick() => {
                for r in &mut regions {
                    if let Ok(Some(status)) = r.child.try_wait() {
                        eprintln!("region {} exited ({status}); stopping the simulation", r.name);
                    }
                }
                if regions.iter_mut().any(|r| matches!(r.child.try_wait(), Ok(Some(_)))) {
                    break "a region exited";
                }
                print_table(&client, &regions, &mut drawn).await;
            }
        }
    };
    println!("\nstopping all regions ({reason})");
    let failed = stop_all(regions).await;
    Ok(if failed || reason == "a region exited" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn print_table(client: &reqwest::Client, regions: &[Region], drawn: &mut usize) {
    let mut table = crate::cli::table([
        "region",
        "keys",
        "writes",
        "conflicts",
        "fsyncs",
        "peers: lag writes / ms / rtt",
    ]);
    for r in regions {
        let status: Option<Json> = match client.get(format!("{}/v1/status", r.api)).send().await {
            Ok(resp) => resp.json().await.ok(),
            Err(_) => None,
        };
        let Some(s) = status else {
            table.add_row([
                r.name.clone(),
                "starting…".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        };
        let peers: Vec<String> = s["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let rtt = p["rtt_ms"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.0}ms"));
                let state = if p["replicating"] == true {
                    ""
                } else {
                    " (down)"
                };
                format!(
                    "{} {}/{}ms/{rtt}{state}",
                    p["region"].as_str().unwrap_or("?"),
                    p["lag_writes"],
                    p["lag_ms"]
                )
            })
            .collect();
        table.add_row([
            r.name.clone(),
            s["keys"].to_string(),
            s["counters"]["client_writes"].to_string(),
            s["counters"]["conflicts"].to_string(),
            s["counters"]["fsyncs"].to_string(),
            peers.join("  "),
        ]);
    }
    // On a terminal the table is redrawn in place (the lines above it stay); piped output
    // gets one table per refresh.
    let text = table.to_string();
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) && *drawn > 0 {
        print!("\x1b[{}A\x1b[J", *drawn);
    }
    *drawn = text.lines().count();
    println!("{text}");
}

/// Closes every child's stdin pipe (which `--exit-with-stdin` turns into a clean shutdown),
/// waits up to [`STOP_GRACE`], then kills what still runs. Returns whether any child had to be
/// killed or exited with an error.
async fn stop_all(regions: Vec<Region>) -> bool {
    let mut failed = false;
    let mut waits = Vec::new();
    for mut r in regions {
        drop(r.child.stdin.take());
        waits.push(tokio::spawn(async move {
            match tokio::time::timeout(STOP_GRACE, r.child.wait()).await {
                Ok(Ok(status)) if status.success() => false,
                Ok(Ok(status)) => {
                    eprintln!("region {} exited with {status}", r.name);
                    true
                }
                Ok(Err(e)) => {
                    eprintln!("region {}: {e}", r.name);
                    true
                }
                Err(_) => {
                    eprintln!(
                        "region {} did not stop within {STOP_GRACE:?}; killing it",
                        r.name
                    );
                    let _ = r.child.kill().await;
                    true
                }
            }
        }));
    }
    for w in waits {
        failed |= w.await.unwrap_or(true);
    }
    failed
}
