//! The local three-node RabbitMQ cluster of `scripts/rabbitmq-cluster.sh` (ports 5681-5683,
//! beside the machine's node): start it, stop and start its nodes, find a queue's leader, and
//! talk to it from a test.

use std::path::PathBuf;
use std::process::Command;

use lapin::{Channel, Connection, ConnectionProperties};

pub struct Cluster {
    /// The AMQP_URL list of the three nodes.
    pub url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster.sh")
}

fn run(args: &[&str]) -> String {
    let out = Command::new(script())
        .args(args)
        .output()
        .expect("run scripts/rabbitmq-cluster.sh");
    assert!(
        out.status.success(),
        "scripts/rabbitmq-cluster.sh {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Cluster {
    /// Starts the cluster, or reuses it when it runs (about 20 s the first time).
    pub async fn up() -> Self {
        let url = tokio::task::spawn_blocking(|| run(&["up"])).await.unwrap();
        assert!(url.starts_with("amqp://"), "unexpected output: {url}");
        Self { url }
    }

    pub fn node_url(&self, n: u8) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", 5680 + u16::from(n))
    }

    /// Stops node `n` (1-3) cleanly: its connections closed, its leaderships handed over.
    pub async fn stop(&self, n: u8) {
        tokio::task::spawn_blocking(move || run(&["stop", &n.to_string()]))
            .await
            .unwrap();
    }

    /// Crashes node `n`: SIGKILL of its Erlang VM (no clean close, no leadership hand-over).
    pub async fn kill(&self, n: u8) {
        tokio::task::spawn_blocking(move || run(&["kill", &n.to_string()]))
            .await
            .unwrap();
    }

    /// Starts node `n` again; it rejoins the cluster.
    pub async fn start(&self, n: u8) {
        tokio::task::spawn_blocking(move || run(&["start", &n.to_string()]))
            .await
            .unwrap();
    }

    /// The node (1-3) leading quorum queue `queue`.
    pub async fn leader(&self, queue: &str) -> Option<u8> {
        let queue = queue.to_owned();
        tokio::task::spawn_blocking(move || run(&["leader", &queue]))
            .await
            .unwrap()
            .parse()
            .ok()
    }

    /// A channel on the first node that answers.
    pub async fn channel(&self) -> (Connection, Channel) {
        for n in 1..=3 {
            if let Ok(conn) = Connection::connect(&self.node_url(n), ConnectionProperties::default()).await {
                let ch = conn.create_channel().await.expect("channel");
                return (conn, ch);
            }
        }
        panic!("no node of the cluster answers");
    }

    /// Messages ready in `queue` (it must exist).
    pub async fn depth(&self, queue: &str) -> u32 {
        let (_conn, ch) = self.channel().await;
        webhook_amqp::Channel::from(ch)
            .queue_depth(queue)
            .await
            .unwrap_or_else(|e| panic!("queue {queue} on the cluster: {e}"))
    }
}
