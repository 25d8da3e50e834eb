//! Regions as processes: how `meridian simulate`, `meridian bench` and the process tests start
//! `meridian run` for each region of a regions.toml, and stop them.
//!
//! Every child runs with `--exit-with-stdin` and its standard input piped from the parent, so
//! it exits by itself when the parent goes away, however that happens; the [`Child`] is also
//! killed when dropped. [`stop_all`] stops children cleanly: it closes every pipe (which the
//! child turns into a clean shutdown), waits a bounded time, and kills what still runs.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, ChildStdin, Command};

/// How a deployment's regions are started: the `meridian` binary, the regions.toml, and the
/// options every region of it gets.
#[derive(Debug, Clone)]
pub struct Launcher {
    exe: PathBuf,
    config: PathBuf,
    simulate_links: bool,
    log_filter: Option<String>,
    data_limit_bytes: Option<u64>,
}

impl Launcher {
    /// Regions of `config`, each run by the `meridian` binary at `exe`.
    pub fn new(exe: impl Into<PathBuf>, config: impl Into<PathBuf>) -> Self {
        Launcher {
            exe: exe.into(),
            config: config.into(),
            simulate_links: false,
            log_filter: None,
            data_limit_bytes: None,
        }
    }

    /// Regions of `config`, run by the binary of this process (`meridian` itself).
    pub fn this_binary(config: impl Into<PathBuf>) -> io::Result<Self> {
        Ok(Launcher::new(std::env::current_exe()?, config))
    }

    /// Run every region over the impairment layer with the `[simulation]` links of the
    /// configuration (`--simulate-links`), so links can be changed through the admin API.
    pub fn simulate_links(mut self, on: bool) -> Self {
        self.simulate_links = on;
        self
    }

    /// The children's log filter (`MERIDIAN_LOG`); by default they inherit this process's.
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = Some(filter.to_owned());
        self
    }

    /// Cap each child's data segment and private writable mappings at `bytes` (`RLIMIT_DATA`,
    /// set by `prlimit`, which then execs the binary): its heap, whatever allocator it uses.
    pub fn data_limit_bytes(mut self, bytes: Option<u64>) -> Self {
        self.data_limit_bytes = bytes;
        self
    }

    /// The regions.toml the regions run.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The same options for the regions of another regions.toml.
    pub fn for_config(&self, config: impl Into<PathBuf>) -> Self {
        Launcher {
            config: config.into(),
            ..self.clone()
        }
    }

    /// The command that runs `region`, not yet spawned: its standard input is piped (for
    /// `--exit-with-stdin`), and its output goes to `log` (both streams) or, without one,
    /// standard error to this process's and standard output nowhere. Add to it what a caller
    /// needs, then [`RegionProcess::spawn`] it.
    pub fn command(&self, region: &str, log: Option<File>) -> io::Result<Command> {
        let mut command = match self.data_limit_bytes {
            None => Command::new(&self.exe),
            Some(bytes) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--data={bytes}")).arg("--").arg(&self.exe);
                // glibc's per-thread arenas each map 64 MiB; two keep the cap about the
                // program's own memory rather than the allocator's spread over threads.
                c.env("MALLOC_ARENA_MAX", "2");
                c
            }
        };
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--region")
            .arg(region)
            .arg("--exit-with-stdin");
        if self.simulate_links {
            command.arg("--simulate-links");
        }
        if let Some(filter) = &self.log_filter {
            command.env("MERIDIAN_LOG", filter);
        }
        match log {
            Some(file) => command
                .stdout(Stdio::from(file.try_clone()?))
                .stderr(Stdio::from(file)),
            None => command.stdout(Stdio::null()).stderr(Stdio::inherit()),
        };
        command.stdin(Stdio::piped()).kill_on_drop(true);
        Ok(command)
    }

    /// Starts `region`, its output to `log` (see [`Launcher::command`]).
    pub fn spawn(&self, region: &str, log: Option<File>) -> io::Result<RegionProcess> {
        RegionProcess::spawn(region, self.command(region, log)?)
    }
}

/// A running `meridian run` process of one region.
#[derive(Debug)]
pub struct RegionProcess {
    /// The region it runs.
    pub name: String,
    child: Child,
    /// Held open for `--exit-with-stdin`; dropping it asks the child to stop.
    stdin: Option<ChildStdin>,
}

/// How a region's process ended in [`stop_all`].
#[derive(Debug)]
pub enum Stopped {
    /// It exited by itself with this status.
    Exited(ExitStatus),
    /// It did not exit within the grace period and was killed.
    Killed,
    /// Waiting for it failed.
    Lost(io::Error),
}

impl RegionProcess {
    /// Spawns `command` (from [`Launcher::command`]) as the process of `region`.
    pub fn spawn(region: &str, mut command: Command) -> io::Result<Self> {
        let mut child = command.spawn()?;
        let stdin = child.stdin.take();
        Ok(RegionProcess {
            name: region.to_owned(),
            child,
            stdin,
        })
    }

    /// The OS process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if it has exited (without waiting).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Sends SIGKILL and waits until the process is gone: no shutdown path runs.
    pub async fn kill(mut self) -> io::Result<()> {
        self.child.kill().await
    }

    /// Sends SIGKILL without waiting (for `Drop` implementations).
    pub fn start_kill(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Stops every process cleanly: closes every standard input pipe at once, gives them `grace`
/// to exit, then kills those still running. Returns how each ended, in order.
pub async fn stop_all(processes: Vec<RegionProcess>, grace: Duration) -> Vec<(String, Stopped)> {
    let mut processes = processes;
    for p in &mut processes {
        drop(p.stdin.take());
    }
    let deadline = tokio::time::Instant::now() + grace;
    let mut out = Vec::with_capacity(processes.len());
    for mut p in processes {
        let stopped = match tokio::time::timeout_at(deadline, p.child.wait()).await {
            Ok(Ok(status)) => Stopped::Exited(status),
            Ok(Err(e)) => Stopped::Lost(e),
            Err(_) => {
                let _ = p.child.kill().await;
                Stopped::Killed
            }
        };
        out.push((p.name, stopped));
    }
    out
}
