//! The systems under test, each started fresh on free loopback ports and stopped on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

use crate::procfs;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    HeraldMemory,
    HeraldRedis,
    HeraldRedis3,
    NchanMemory,
    NchanRedis,
    Express,
    /// Herald on a primary with one replica, publishes acknowledged by the primary (min_replicas 0).
    HeraldReplica,
    /// The same, publishes acknowledged once the replica has them (min_replicas 1, WAIT).
    HeraldWait,
    /// Herald with its SSE streams served through actix-web (`server.lean_streams = false`), memory engine.
    HeraldMemoryActix,
    /// The same on Redis.
    HeraldRedisActix,
    /// Herald on a 3-shard Redis Cluster (3 primaries, no replicas; `redis.cluster_nodes`).
    HeraldCluster,
}

impl Kind {
    /// Systems run only when named (`--systems`): the replicated-publish comparison.
    /// And the lean stream path against actix-web's, in one run.
    /// And one Redis against a 3-shard Cluster.
    pub const EXTRA: [Kind; 5] = [
        Kind::HeraldReplica,
        Kind::HeraldWait,
        Kind::HeraldMemoryActix,
        Kind::HeraldRedisActix,
        Kind::HeraldCluster,
    ];

    pub const ALL: [Kind; 6] = [
        Kind::HeraldMemory,
        Kind::HeraldRedis,
        Kind::HeraldRedis3,
        Kind::NchanMemory,
        Kind::NchanRedis,
        Kind::Express,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::HeraldMemory => "herald-memory",
            Kind::HeraldRedis => "herald-redis",
            Kind::HeraldRedis3 => "herald-redis-3nodes",
            Kind::NchanMemory => "nchan-memory",
            Kind::NchanRedis => "nchan-redis",
            Kind::Express => "express",
            Kind::HeraldReplica => "herald-redis-replica",
            Kind::HeraldWait => "herald-redis-wait1",
            Kind::HeraldMemoryActix => "herald-memory-actix",
            Kind::HeraldRedisActix => "herald-redis-actix",
            Kind::HeraldCluster => "herald-redis-cluster",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .chain(Kind::EXTRA)
            .find(|k| k.name() == name)
    }

    pub fn is_herald(self) -> bool {
        matches!(
            self,
            Kind::HeraldMemory
                | Kind::HeraldRedis
                | Kind::HeraldRedis3
                | Kind::HeraldReplica
                | Kind::HeraldWait
                | Kind::HeraldMemoryActix
                | Kind::HeraldRedisActix
                | Kind::HeraldCluster
        )
    }

    pub fn replays(self) -> bool {
        self != Kind::Express
    }
}

pub struct System {
    pub kind: Kind,
    /// Ports subscribers spread over (one per node).
    pub sub_ports: Vec<u16>,
    pub pub_port: u16,
    /// The Redis this system runs on (one Redis, not a Cluster), for its own statistics.
    pub redis_port: Option<u16>,
    servers: Vec<Child>,
    redis: Option<Child>,
    replica: Option<Child>,
    /// The primaries of a Cluster.
    shards: Vec<Child>,
    _dir: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {port} after 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
}

async fn start_redis(dir: &Path, replica_of: Option<u16>) -> Result<(Child, u16)> {
    let port = free_port()?;
    let mut cmd = Command::new("redis-server");
    if let Some(primary) = replica_of {
        cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
    }
    let child = quiet(
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir),
    )
    .spawn()
    .context("redis-server (apt-get install redis-server)")?;
    wait_port(port).await?;
    Ok((child, port))
}

/// Three `redis-server --cluster-enabled yes` made one Cluster by `redis-cli --cluster create` (no
/// replicas), ok on every node.
async fn start_cluster(dir: &Path) -> Result<(Vec<Child>, Vec<u16>)> {
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for n in 0..3 {
        let port = free_port()?;
        let node_dir = dir.join(format!("shard{n}"));
        std::fs::create_dir_all(&node_dir)?;
        let child = quiet(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .args(["--appendonly", "no", "--cluster-enabled", "yes"])
                .args(["--cluster-port", &free_port()?.to_string()])
                .arg("--dir")
                .arg(&node_dir),
        )
        .spawn()
        .context("redis-server (apt-get install redis-server)")?;
        wait_port(port).await?;
        children.push(child);
        ports.push(port);
    }
    let create = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .await?;
    if !create.status.success() {
        bail!(
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&create.stdout)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for port in &ports {
        loop {
            let info = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
                .output()
                .await?;
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            if Instant::now() > deadline {
                bail!("the Cluster never became ok");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok((children, ports))
}

async fn start_herald(
    bin: &Path,
    redis: Option<u16>,
    cluster: &[u16],
    min_replicas: u32,
    lean: bool,
    env: &[(&str, String)],
) -> Result<(Child, u16)> {
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.args(["--port", &port.to_string()])
        .env("RUST_LOG", "warn")
        // Room for the whole fan-out burst per connection (the client reads on one thread), for
        // replaying 1,000 missed, and for 18,000 connections.
        .env("HERALD__SSE__QUEUE_CAPACITY", "4096")
        .env("HERALD__HISTORY__MAX_LEN", "5000")
        .env("HERALD__LIMITS__MAX_CONNECTIONS", "30000")
        // A node on the actix path may notice a vanished client only when it next writes; a 1 s
        // heartbeat frees the previous scenario's connections before the next one starts.
        .env("HERALD__SSE__HEARTBEAT_SECS", "1")
        .env("HERALD__SERVER__LEAN_STREAMS", lean.to_string())
        .env("HERALD__REDIS__MIN_REPLICAS", min_replicas.to_string());
    if let Some(redis) = redis {
        cmd.args(["--redis-url", &format!("redis://127.0.0.1:{redis}")]);
    }
    if !cluster.is_empty() {
        let nodes: Vec<String> = cluster.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect();
        cmd.env("HERALD__REDIS__CLUSTER_NODES", nodes.join(","));
    }
    let child = quiet(&mut cmd)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    wait_port(port).await?;
    Ok((child, port))
}

async fn start_nchan(repo: &Path, dir: &Path, redis: Option<u16>) -> Result<(Child, u16)> {
    let port = free_port()?;
    let template = std::fs::read_to_string(repo.join("bench/nchan/nginx.conf.template"))?;
    let (upstream, storage) = match redis {
        Some(r) => (
            format!("upstream redis_store {{ nchan_redis_server \"redis://127.0.0.1:{r}\"; }}"),
            "nchan_redis_pass redis_store;".to_string(),
        ),
        None => (String::new(), String::new()),
    };
    let conf = template
        .replace("@PORT@", &port.to_string())
        .replace("@PREFIX@", &dir.display().to_string())
        .replace("@REDIS_UPSTREAM@", &upstream)
        .replace("@STORAGE@", &storage);
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = quiet(Command::new("nginx").arg("-p").arg(dir).arg("-c").arg(&path))
        .spawn()
        .context("nginx with nchan (apt-get install nginx libnginx-mod-nchan)")?;
    wait_port(port).await?;
    Ok((child, port))
}

async fn start_express(repo: &Path) -> Result<(Child, u16)> {
    let port = free_port()?;
    let dir = repo.join("bench/express");
    if !dir.join("node_modules/express").exists() {
        let status = Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .await?;
        if !status.success() {
            bail!("npm ci failed in {}", dir.display());
        }
    }
    let child = quiet(
        Command::new("node")
            .arg("server.js")
            .current_dir(&dir)
            .env("PORT", port.to_string()),
    )
    .spawn()
    .context("node (apt-get install nodejs)")?;
    wait_port(port).await?;
    Ok((child, port))
}

impl System {
    pub async fn start(kind: Kind, herald: &Path, repo: &Path) -> Result<System> {
        Self::start_with(kind, herald, repo, &[]).await
    }

    /// As `start`, with extra environment variables for Herald's nodes (settings a scenario needs).
    pub async fn start_with(
        kind: Kind,
        herald: &Path,
        repo: &Path,
        env: &[(&str, String)],
    ) -> Result<System> {
        let dir = tempfile::tempdir()?;
        let needs_redis = !matches!(
            kind,
            Kind::HeraldMemory
                | Kind::HeraldMemoryActix
                | Kind::NchanMemory
                | Kind::Express
                | Kind::HeraldCluster
        );
        let (shards, shard_ports) = if kind == Kind::HeraldCluster {
            start_cluster(dir.path()).await?
        } else {
            (Vec::new(), Vec::new())
        };
        let (redis, redis_port) = if needs_redis {
            let (child, port) = start_redis(dir.path(), None).await?;
            (Some(child), Some(port))
        } else {
            (None, None)
        };
        let replica = if matches!(kind, Kind::HeraldReplica | Kind::HeraldWait) {
            let replica_dir = dir.path().join("replica");
            std::fs::create_dir_all(&replica_dir)?;
            let (child, port) = start_redis(&replica_dir, redis_port).await?;
            // In sync before the first publish (a WAIT would otherwise time out).
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "INFO", "replication"])
                    .output()
                    .await?;
                if String::from_utf8_lossy(&info.stdout).contains("master_link_status:up") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the replica on port {port} never synced");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(child)
        } else {
            None
        };
        let min_replicas = u32::from(kind == Kind::HeraldWait);
        let mut servers = Vec::new();
        let mut ports = Vec::new();
        let nodes = if kind == Kind::HeraldRedis3 { 3 } else { 1 };
        for _ in 0..nodes {
            let (child, port) = match kind {
                k if k.is_herald() => {
                    let lean = !matches!(k, Kind::HeraldMemoryActix | Kind::HeraldRedisActix);
                    start_herald(herald, redis_port, &shard_ports, min_replicas, lean, env).await?
                }
                Kind::NchanMemory | Kind::NchanRedis => start_nchan(repo, dir.path(), redis_port).await?,
                _ => start_express(repo).await?,
            };
            servers.push(child);
            ports.push(port);
        }
        Ok(System {
            kind,
            pub_port: ports[0],
            sub_ports: ports,
            servers,
            redis,
            replica,
            shards,
            redis_port,
            _dir: dir,
        })
    }

    /// Every process that does the system's work: servers, their workers, and Redis.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .servers
            .iter()
            .filter_map(Child::id)
            .flat_map(procfs::with_children)
            .collect();
        pids.extend(
            self.redis
                .iter()
                .chain(&self.replica)
                .chain(&self.shards)
                .filter_map(Child::id),
        );
        pids
    }

    /// Server processes without Redis (whose memory does not grow with browser connections).
    pub fn server_pids(&self) -> Vec<u32> {
        self.servers
            .iter()
            .filter_map(Child::id)
            .flat_map(procfs::with_children)
            .collect()
    }

    pub fn sub_path(&self, topic: &str) -> String {
        match self.kind {
            k if k.is_herald() => format!("/events?topic={topic}"),
            Kind::NchanMemory | Kind::NchanRedis => format!("/sub/{topic}"),
            _ => format!("/events/{topic}"),
        }
    }

    pub fn pub_path(&self, topic: &str) -> String {
        match self.kind {
            k if k.is_herald() => format!("/topics/{topic}"),
            Kind::NchanMemory | Kind::NchanRedis => format!("/pub/{topic}"),
            _ => format!("/publish/{topic}"),
        }
    }

    pub fn version(&self) -> String {
        match self.kind {
            k if k.is_herald() => format!("herald {}", env!("CARGO_PKG_VERSION")),
            Kind::NchanMemory | Kind::NchanRedis => "nginx + nchan (Debian)".into(),
            _ => "express 5.3.0 (npm)".into(),
        }
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Drop for System {
    /// SIGTERM first: nginx's master stops its workers on SIGTERM, while the SIGKILL `kill_on_drop` sends
    /// would leave them running (and holding their ports).
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for child in &self.servers {
            if let Some(pid) = child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .filter(|&id| id > 1)
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
