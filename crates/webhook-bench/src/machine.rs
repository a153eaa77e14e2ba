//! What the numbers were measured on: cores, memory, CPU, versions, date.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub ram_mib: u64,
    pub cpu: String,
    pub kernel: String,
    pub postgres: String,
    pub rabbitmq: String,
    pub rustc: String,
    pub commit: String,
    pub date: String,
}

fn command(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl Machine {
    /// Looks everything up; what cannot be found is "unknown".
    pub async fn describe(database_url: &str) -> Self {
        let unknown = || "unknown".to_owned();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let ram_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(unknown);
        let postgres = match sqlx::PgPool::connect(database_url).await {
            Ok(pool) => {
                let v: Option<String> = sqlx::query_scalar("SHOW server_version")
                    .fetch_one(&pool)
                    .await
                    .ok();
                pool.close().await;
                v.map(|v| format!("PostgreSQL {v}")).unwrap_or_else(unknown)
            }
            Err(_) => unknown(),
        };
        let rabbitmq = command("rabbitmqctl", &["version"])
            .or_else(|| command("rabbitmqctl", &["--version"]))
            .map(|v| format!("RabbitMQ {v}"))
            .unwrap_or_else(unknown);
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            ram_mib: ram_kib / 1024,
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| unknown()),
            postgres,
            rabbitmq,
            rustc: command("rustc", &["--version"]).unwrap_or_else(unknown),
            commit: command("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(unknown),
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}
