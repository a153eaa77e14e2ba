//! The real binaries as child processes: started with the run's environment, waited for until
//! ready, measured (peak RSS from `/proc/<pid>/status`), and stopped with SIGTERM.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Peak resident set size (`VmHWM`) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A running binary.
pub struct Service {
    pub name: String,
    pub port: u16,
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Service {
    /// Starts `bin` with exactly `env` (plus `PATH`), its output appended to `log_dir/<name>.log`.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &HashMap<String, String>,
        port: u16,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bin.exists(),
            "{} is not built (make bench builds it; for --smoke run `cargo build --workspace --bins`)",
            bin.display()
        );
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = Command::new(bin)
            .args(args)
            .env_clear()
            .envs(env)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("child pid")?;
        Ok(Self {
            name: name.to_owned(),
            port,
            child,
            pid,
            log,
        })
    }

    /// Waits until `GET path` answers 200, failing early if the process exits.
    pub async fn wait_ready(&mut self, path: &str, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "{} exited with {status} at start; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if let Ok(r) = client.get(&url).send().await
                && r.status() == 200
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} not ready within {timeout:?}; see {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak RSS so far, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        peak_rss_kib(self.pid)
    }

    /// Reads the peak RSS, then stops the process (SIGTERM, then SIGKILL after 15 s).
    pub async fn stop(mut self) -> Option<u64> {
        let rss = self.peak_rss_kib();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        rss
    }
}
