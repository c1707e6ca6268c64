//! A real `redis-server` per test: a free loopback port, its own temp dir, killed on drop.

use crate::helpers::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    aof: bool,
    /// More `redis-server` arguments (TLS, say).
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A Redis that keeps nothing on disk.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A Redis with the append-only file on and fsync on every write, so a crash loses nothing it
    /// acknowledged.
    pub fn start_with_aof() -> Self {
        Self::start_with(true)
    }

    fn start_with(aof: bool) -> Self {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            aof,
            extra: Vec::new(),
            child: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .args(["--daemonize", "no", "--loglevel", "warning"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        cmd.args(&self.extra);
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .spawn()
            .expect("redis-server runs (install it: apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not come up on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A Redis that also listens with TLS on the returned port, with the certificates in `dir`
    /// (`server.crt`, `server.key`, `ca.crt`: see [`make_certificates`]); with `mutual`, TLS clients must
    /// show a certificate that CA signed. The plain port stays for `cli`.
    pub fn start_tls(dir: &std::path::Path, mutual: bool) -> (Self, u16) {
        let tls_port = free_port();
        let file = |name: &str| dir.join(name).display().to_string();
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            aof: false,
            extra: vec![
                "--tls-port".into(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                file("server.crt"),
                "--tls-key-file".into(),
                file("server.key"),
                "--tls-ca-cert-file".into(),
                file("ca.crt"),
                "--tls-auth-clients".into(),
                if mutual { "yes" } else { "no" }.into(),
            ],
            child: None,
        };
        server.launch();
        (server, tls_port)
    }

    /// A Redis started with more arguments (`--replicaof`, say).
    pub fn start_args(extra: &[String]) -> Self {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            aof: false,
            extra: extra.to_vec(),
            child: None,
        };
        server.launch();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server the hard way (SIGKILL), as a crash would.
    /// Sends `signal` (`STOP`, `CONT`) to the process: a stopped Redis keeps its connections open but
    /// answers nothing.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill -{signal}");
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (with AOF, with everything it acknowledged).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Runs the real `redis-cli` against this server; its trimmed output, or None if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        redis_cli(self.port, None, args)
    }
}

/// Runs the real `redis-cli` against `port` (with `password`, if any); its trimmed output, or None if it
/// failed.
fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-p", &port.to_string()]);
    if let Some(password) = password {
        cmd.args(["--no-auth-warning", "-a", password]);
    }
    let out = cmd.args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.starts_with("Could not connect") && !text.is_empty()).then_some(text)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes a test CA and, signed by it, a server certificate for the name localhost (not for 127.0.0.1) and a client
/// certificate; and a second, unrelated CA (`other-ca.crt`). Uses the real `openssl` command.
pub fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for ca in ["ca", "other-ca"] {
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=herald test {ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
        ]);
    }
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    for (name, cn) in [("server", "localhost"), ("client", "herald-node")] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &format!("{name}.crt"),
        ]);
    }
}

/// One `redis-sentinel` process on a free loopback port, with its own config file (Sentinel rewrites it).
pub struct Sentinel {
    pub port: u16,
    password: Option<String>,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Sentinel {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this sentinel; its trimmed output, or None if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        redis_cli(self.port, self.password.as_deref(), args)
    }

    /// The fields of `SENTINEL master herald`, as name → value.
    fn master_fields(&self) -> std::collections::HashMap<String, String> {
        let text = self.cli(&["SENTINEL", "master", "herald"]).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks_exact(2)
            .map(|kv| (kv[0].to_string(), kv[1].to_string()))
            .collect()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary, its replicas and three sentinels watching it as master `herald` (quorum 2,
/// `down-after-milliseconds` 1000), all real processes on free loopback ports.
pub struct SentinelSetup {
    pub primary: RedisServer,
    pub replicas: Vec<RedisServer>,
    pub sentinels: Vec<Sentinel>,
}

impl SentinelSetup {
    /// Starts everything and waits until each sentinel knows every replica and the other sentinels,
    /// and every replica is in sync.
    pub fn start(replicas: usize) -> Self {
        Self::start_with(replicas, None)
    }

    /// With `password`, the sentinels require it (`requirepass`, and use it among themselves).
    pub fn start_with(replicas: usize, password: Option<&str>) -> Self {
        // Replication runs as its own ACL user, so a test can cut it off (see `cut_replicas`); `hub` is
        // an ACL user for Herald nodes, on every data node.
        let mut user: Vec<String> = ["--user", "repl", "on", ">replpass", "+@all", "~*", "&*"]
            .map(String::from)
            .to_vec();
        user.extend(["--user", "hub", "on", ">hubpass", "+@all", "~*", "&*"].map(String::from));
        let primary = RedisServer::start_args(&user);
        let mut replica_args = user.clone();
        replica_args.extend([
            "--replicaof".to_string(),
            format!("127.0.0.1 {}", primary.port),
            "--masteruser".into(),
            "repl".into(),
            "--masterauth".into(),
            "replpass".into(),
        ]);
        let replicas: Vec<RedisServer> = (0..replicas)
            .map(|_| RedisServer::start_args(&replica_args))
            .collect();
        // Sentinels learn replicas from the primary's INFO, asked every 10 s: start them once replicas are
        // in sync, so the first INFO lists them all.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !replicas.iter().all(|r| {
            r.cli(&["INFO", "replication"])
                .is_some_and(|info| info.contains("master_link_status:up"))
        }) {
            assert!(Instant::now() < deadline, "the replicas never synced");
            std::thread::sleep(Duration::from_millis(50));
        }
        let sentinels = (0..3)
            .map(|_| {
                let port = free_port();
                let dir = tempfile::tempdir().expect("temp dir");
                let conf = dir.path().join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
                         sentinel monitor herald 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds herald 1000\n\
                         sentinel failover-timeout herald 4000\n\
                         sentinel parallel-syncs herald 1\n{}",
                        dir.path().display(),
                        primary.port,
                        password.map_or(String::new(), |p| format!(
                            "requirepass {p}\nsentinel sentinel-pass {p}\n"
                        )),
                    ),
                )
                .expect("sentinel.conf written");
                let child = Command::new("redis-sentinel")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-sentinel runs (install it: apt-get install redis-sentinel)");
                Sentinel {
                    port,
                    password: password.map(String::from),
                    _dir: dir,
                    child,
                }
            })
            .collect();
        let setup = SentinelSetup {
            primary,
            replicas,
            sentinels,
        };
        loop {
            let sentinels_ready = setup.sentinels.iter().all(|s| {
                let fields = s.master_fields();
                fields.get("num-slaves").map(String::as_str) == Some(&setup.replicas.len().to_string())
                    && fields.get("num-other-sentinels").map(String::as_str) == Some("2")
            });
            if sentinels_ready {
                return setup;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels never saw the whole setup"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Cuts the primary off its replicas (they cannot log in again): what it acknowledges from now on
    /// reaches no replica.
    pub fn cut_replicas(&self) {
        assert_eq!(
            self.primary.cli(&["ACL", "SETUSER", "repl", "off"]).as_deref(),
            Some("OK")
        );
        assert!(self.primary.cli(&["CLIENT", "KILL", "TYPE", "replica"]).is_some());
    }

    pub fn urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Sentinel::url).collect()
    }

    /// The port of the primary the sentinels name now.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            s.cli(&["SENTINEL", "get-master-addr-by-name", "herald"])?
                .lines()
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
    }
}

/// A real Redis Cluster: 6 `redis-server --cluster-enabled yes` on free loopback ports (3 primaries,
/// each with one replica, made by `redis-cli --cluster create`), `cluster-node-timeout` 1000 ms so a
/// dead primary's replica takes over within a few seconds, and `cluster-require-full-coverage no` (as
/// the README asks) so the other shards keep answering while one shard has no primary.
pub struct ClusterSetup {
    pub nodes: Vec<RedisServer>,
    /// Dropped after the nodes: the next Cluster starts once these six processes are gone.
    _slot: ClusterSlot,
}

/// One Cluster at a time: six Redis processes of one test beside six of another on two cores made a
/// timing assertion of the failover test (events of healthy shards within a second) fail now and
/// then, through no fault of the code under test.
struct ClusterSlot;

static CLUSTER_BUSY: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
static CLUSTER_FREED: std::sync::Condvar = std::sync::Condvar::new();

impl ClusterSlot {
    fn take() -> Self {
        let mut busy = CLUSTER_BUSY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *busy {
            busy = CLUSTER_FREED
                .wait(busy)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *busy = true;
        ClusterSlot
    }
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        *CLUSTER_BUSY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = false;
        CLUSTER_FREED.notify_one();
    }
}

impl ClusterSetup {
    pub fn start() -> Self {
        let slot = ClusterSlot::take();
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_args(&[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    "nodes.conf".into(),
                    "--cluster-node-timeout".into(),
                    "1000".into(),
                    "--cluster-require-full-coverage".into(),
                    "no".into(),
                    "--cluster-port".into(),
                    free_port().to_string(),
                ])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let setup = ClusterSetup { nodes, _slot: slot };
        setup.wait_healthy(None);
        setup
    }

    /// Waits until every live node says the Cluster is ok and every primary has a replica in sync
    /// (`skip`: a killed node's port, whose shard then has none).
    pub fn wait_healthy(&self, skip: Option<u16>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let live = self.nodes.iter().filter(|n| Some(n.port) != skip);
            let ok = live.clone().all(|n| {
                n.cli(&["CLUSTER", "INFO"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            });
            let primaries = self.primaries();
            let synced = primaries.len() == 3
                && primaries.iter().all(|&port| {
                    skip.is_some()
                        || redis_cli(port, None, &["INFO", "replication"]).is_some_and(|info| {
                            info.contains("connected_slaves:1") && info.contains("state=online")
                        })
                });
            if ok && synced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().take(2).map(RedisServer::url).collect()
    }

    /// Ports of the primaries, in slot order, as the live nodes see them.
    pub fn primaries(&self) -> Vec<u16> {
        let mut ranges = self.slot_ranges();
        ranges.sort();
        let mut ports: Vec<u16> = ranges.into_iter().map(|(_, _, port)| port).collect();
        ports.dedup();
        ports
    }

    /// (first slot, last slot, primary port) per range, as some live node answers `CLUSTER SLOTS`.
    pub fn slot_ranges(&self) -> Vec<(u16, u16, u16)> {
        for node in &self.nodes {
            let Some(text) = node.cli(&["--raw", "CLUSTER", "SLOTS"]) else {
                continue;
            };
            // --raw prints each range as: first, last, then per node ip, port, id (and hostname info).
            let lines: Vec<&str> = text.lines().collect();
            let mut out = Vec::new();
            let mut i = 0;
            while i + 3 < lines.len() {
                let (Ok(first), Ok(last)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>()) else {
                    i += 1;
                    continue;
                };
                if lines[i + 2] == "127.0.0.1" {
                    if let Ok(port) = lines[i + 3].parse::<u16>() {
                        out.push((first, last, port));
                        i += 4;
                        continue;
                    }
                }
                i += 1;
            }
            if !out.is_empty() {
                return out;
            }
        }
        Vec::new()
    }

    /// The port of the primary holding `slot` now.
    pub fn owner(&self, slot: u16) -> u16 {
        self.slot_ranges()
            .into_iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, port)| port)
            .expect("every slot has an owner")
    }

    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of the setup")
    }

    pub fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of the setup")
    }

    /// `redis-cli -c` (following MOVED and ASK) against the first live node; its trimmed output.
    pub fn cli_c(&self, args: &[&str]) -> Option<String> {
        for node in &self.nodes {
            let out = Command::new("redis-cli")
                .args(["-c", "-p", &node.port.to_string()])
                .args(args)
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !text.starts_with("Could not connect") && !text.is_empty() {
                return Some(text);
            }
        }
        None
    }

    /// A node's id (`CLUSTER MYID`).
    pub fn id_of(&self, port: u16) -> String {
        self.node(port).cli(&["CLUSTER", "MYID"]).expect("CLUSTER MYID")
    }
}

/// The Cluster hash slot of a key (CRC16/XMODEM of its hash tag, mod 16384), as Redis computes it.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key
        .find('{')
        .and_then(|open| {
            let close = key[open + 1..].find('}')? + open + 1;
            (close > open + 1).then(|| &bytes[open + 1..close])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}
