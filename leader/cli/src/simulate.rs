//! `meridian simulate`: every region of regions.toml as its own process on localhost, with
//! the configured WAN links, and a live table of regions, lag and conflicts.
//!
//! Children are started as `meridian run --simulate-links --exit-with-stdin`: each holds a
//! pipe from the simulator on its standard input and exits when it closes, so no child is
//! left behind even if the simulator itself is killed. On Ctrl-C the simulator closes the pipes,
//! waits for clean exits, and kills what is still running after a bound.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use leader::config::Config;
use leader::status::Status;
use meridian::launch::{Launcher, RegionProcess, Stopped, stop_all};

/// How long children get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the live table is refreshed.
const REFRESH: Duration = Duration::from_secs(1);

/// A region of the simulation: its process and its API.
struct Region {
    process: RegionProcess,
    api: String,
}

pub(crate) async fn run(config_path: &Path, duration_secs: Option<u64>) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let names: Vec<String> = config.regions.iter().map(|r| r.name.clone()).collect();
    if !transport::certs::exists(&config.tls_dir, &names) {
        crate::certs_init(config_path, false)?;
    }
    let launcher = Launcher::this_binary(config_path)
        .context("finding the meridian executable")?
        .simulate_links(true);
    let mut regions = Vec::new();
    for r in &config.regions {
        let process = launcher
            .spawn(&r.name, None)
            .with_context(|| format!("starting region {}", r.name))?;
        regions.push(Region {
            process,
            api: format!("http://{}", r.api_addr),
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
    let mut view = LiveView::new(std::io::stdout().is_terminal());
    let reason = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break "Ctrl-C",
            _ = async {
                match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await }
            } => break "duration reached",
            _ = ticker.tick() => {
                let mut exited = false;
                for r in &mut regions {
                    if let Ok(Some(status)) = r.process.try_wait() {
                        eprintln!("region {} exited ({status}); stopping the simulation", r.process.name);
                        exited = true;
                    }
                }
                if exited {
                    break "a region exited";
                }
                view.show(rows(&client, &regions).await);
            }
        }
    };
    println!("\nstopping all regions ({reason})");
    let failed = stop(regions).await;
    Ok(if failed || reason == "a region exited" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The columns of the live view.
const COLUMNS: [&str; 6] = [
    "region",
    "keys",
    "writes",
    "conflicts",
    "fsyncs",
    "peers: lag writes / ms / rtt",
];

/// One region's row of the live view, from its status (or "starting…" without one).
type Row = [String; COLUMNS.len()];

/// Every region's row, asking each for its status.
async fn rows(client: &reqwest::Client, regions: &[Region]) -> Vec<Row> {
    let mut rows = Vec::with_capacity(regions.len());
    for r in regions {
        let name = r.process.name.clone();
        let status: Option<Status> = match client.get(format!("{}/v1/status", r.api)).send().await {
            Ok(resp) => resp.json().await.ok(),
            Err(_) => None,
        };
        let Some(s) = status else {
            rows.push([
                name,
                "starting…".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        };
        let peers: Vec<String> = s
            .peers
            .iter()
            .map(|p| {
                let rtt = p.rtt_ms.map_or("-".into(), |v| format!("{v:.0}ms"));
                let state = if p.replicating { "" } else { " (down)" };
                format!("{} {}/{}ms/{rtt}{state}", p.region, p.lag_writes, p.lag_ms)
            })
            .collect();
        rows.push([
            name,
            s.keys.to_string(),
            s.counters.client_writes.to_string(),
            s.counters.conflicts.to_string(),
            s.counters.fsyncs.to_string(),
            peers.join("  "),
        ]);
    }
    rows
}

/// The live view of `meridian simulate`. On a terminal it is one table redrawn in place, like
/// `top` (the lines above it stay); otherwise (a pipe, a file) it writes one line per region
/// whose row changed, so a log of the run has each change once rather than a table a second.
struct LiveView {
    terminal: bool,
    /// Lines of the table drawn last (terminal).
    drawn: usize,
    /// The rows shown last (not a terminal).
    last: Vec<Row>,
}

impl LiveView {
    fn new(terminal: bool) -> Self {
        LiveView {
            terminal,
            drawn: 0,
            last: Vec::new(),
        }
    }

    fn show(&mut self, rows: Vec<Row>) {
        let text = if self.terminal {
            self.redraw(&rows)
        } else {
            self.changes(&rows)
        };
        self.last = rows;
        let mut out = std::io::stdout().lock();
        // A closed stdout (the reader of a pipe went away) must not stop the regions.
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }

    /// The table, preceded by the escape codes that move the cursor up over the previous one
    /// and clear from there to the end of the screen.
    fn redraw(&mut self, rows: &[Row]) -> String {
        let mut table = crate::cli::table(COLUMNS);
        for row in rows {
            table.add_row(row.iter());
        }
        let table = format!("{table}\n");
        let up = match self.drawn {
            0 => String::new(),
            n => format!("\x1b[{n}A\x1b[J"),
        };
        self.drawn = table.lines().count();
        up + &table
    }

    /// One line per row that differs from the last one shown.
    fn changes(&self, rows: &[Row]) -> String {
        rows.iter()
            .enumerate()
            .filter(|(i, row)| self.last.get(*i) != Some(row))
            .map(|(_, row)| line(row))
            .collect()
    }
}

/// A row as one line of text.
fn line(row: &Row) -> String {
    let [region, keys, writes, conflicts, fsyncs, peers] = row;
    if writes.is_empty() {
        return format!("{region}: {keys}\n");
    }
    format!(
        "{region}: {keys} keys, {writes} writes, {conflicts} conflicts, {fsyncs} fsyncs; \
         peers (lag writes / ms / rtt): {peers}\n"
    )
}

/// Stops every region (see [`stop_all`]), saying what happened to those that did not exit
/// cleanly. Returns whether any had to be killed or exited with an error.
async fn stop(regions: Vec<Region>) -> bool {
    let processes = regions.into_iter().map(|r| r.process).collect();
    let mut failed = false;
    for (name, stopped) in stop_all(processes, STOP_GRACE).await {
        match stopped {
            Stopped::Exited(status) if status.success() => continue,
            Stopped::Exited(status) => eprintln!("region {name} exited with {status}"),
            Stopped::Lost(e) => eprintln!("region {name}: {e}"),
            Stopped::Killed => {
                eprintln!("region {name} did not stop within {STOP_GRACE:?}; it was killed")
            }
        }
        failed = true;
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(region: &str, keys: &str) -> Row {
        [region, keys, "0", "0", "1", "eu 0/0ms/76ms"].map(str::to_owned)
    }

    #[test]
    fn a_terminal_gets_the_table_redrawn_over_the_last_one() {
        let mut view = LiveView::new(true);
        let first = view.redraw(&[row("us", "0"), row("eu", "0")]);
        assert!(first.starts_with('┌'), "{first}");
        let lines = first.lines().count();
        let second = view.redraw(&[row("us", "1"), row("eu", "0")]);
        assert!(
            second.starts_with(&format!("\x1b[{lines}A\x1b[J┌")),
            "{second}"
        );
    }

    #[test]
    fn a_pipe_gets_one_line_per_changed_row() {
        let mut view = LiveView::new(false);
        let starting = [
            "ap".to_owned(),
            "starting…".to_owned(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ];
        let rows = vec![row("us", "0"), starting];
        assert_eq!(
            view.changes(&rows),
            "us: 0 keys, 0 writes, 0 conflicts, 1 fsyncs; peers (lag writes / ms / rtt): eu 0/0ms/76ms\n\
             ap: starting…\n"
        );
        view.last = rows;
        assert_eq!(
            view.changes(&[row("us", "0"), row("ap", "2")]),
            "ap: 2 keys, 0 writes, 0 conflicts, 1 fsyncs; peers (lag writes / ms / rtt): eu 0/0ms/76ms\n"
        );
        assert_eq!(view.changes(&view.last.clone()), "");
    }
}
