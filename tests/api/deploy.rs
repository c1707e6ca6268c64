//! The deployment topology from local binaries (`deploy/local.sh`): redis-server, three nodes and the
//! distro's nginx with the very `deploy/nginx/herald.conf` docker compose uses. Each node is restarted in
//! turn while publishing continues through nginx; every subscriber, reconnecting through nginx the way a
//! browser does, ends with every message exactly once, in order.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::{Event, Eventsource};
use futures_util::StreamExt;

use crate::helpers::{assert_exact, free_port, Outcome, PATIENCE};

/// A running `deploy/local.sh` topology; dropping it runs `down`.
struct Topology {
    env: Vec<(String, String)>,
    lb: String,
    _state: tempfile::TempDir,
}

impl Topology {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/local.sh")
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new(Self::script())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("deploy/local.sh runs");
        assert!(
            out.status.success(),
            "deploy/local.sh {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn up() -> Topology {
        assert!(
            std::path::Path::new("/usr/sbin/nginx").exists(),
            "nginx is missing: apt-get install nginx"
        );
        let state = tempfile::tempdir().unwrap();
        let lb_port = free_port();
        let env = vec![
            ("HERALD_BIN".into(), env!("CARGO_BIN_EXE_herald").into()),
            ("STATE_DIR".into(), state.path().display().to_string()),
            ("LB_PORT".into(), lb_port.to_string()),
            ("NODE_PORT_BASE".into(), free_port_run(3).to_string()),
            ("REDIS_PORT".into(), free_port().to_string()),
            ("NODES".into(), "3".into()),
            ("HERALD__SSE__RETRY_MS".into(), "100".into()),
        ];
        let topology = Topology {
            env,
            lb: format!("http://127.0.0.1:{lb_port}"),
            _state: state,
        };
        topology.run(&["up"]);
        topology
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .arg("down")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output();
    }
}

/// The first of `n` consecutive free ports (checked one by one; retried if any is taken).
fn free_port_run(n: u16) -> u16 {
    loop {
        let base = free_port();
        if base < 65000 && (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
}

/// A subscriber that behaves like `EventSource`: when its stream ends or fails, it reconnects (through
/// the load balancer) with `Last-Event-ID`.
fn browser_like(
    lb: String,
    client: reqwest::Client,
) -> (Arc<Mutex<Vec<Event>>>, tokio::task::JoinHandle<()>) {
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let seen = Arc::clone(&events);
    let task = tokio::spawn(async move {
        loop {
            let last = seen.lock().unwrap().last().map(|e| e.id.clone());
            let mut request = client.get(format!("{lb}/events?topic=t"));
            if let Some(id) = last {
                request = request.header("Last-Event-ID", id);
            }
            if let Ok(response) = request.send().await {
                if response.status() == 200 {
                    let mut stream = response.bytes_stream().eventsource();
                    while let Some(Ok(event)) = stream.next().await {
                        seen.lock().unwrap().push(event);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (events, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_through_nginx_loses_nothing() {
    let topology = Topology::up();
    let client = reqwest::Client::new();
    let subscribers: Vec<_> = (0..6)
        .map(|_| browser_like(topology.lb.clone(), client.clone()))
        .collect();
    // Let every subscriber connect before the first publish.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let publishing = async {
        let mut outcomes = Vec::new();
        for n in 0..400 {
            let data = format!("m{n}");
            let response = client
                .post(format!("{}/topics/t", topology.lb))
                .body(data.clone())
                .send()
                .await;
            // No answer at all (status 0) is an unknown outcome, like a 502.
            let outcome = Outcome::from_response(data, response).await;
            outcomes.push(outcome);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        outcomes
    };
    let restarting = async {
        for node in ["1", "2", "3"] {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let started = Instant::now();
            tokio::task::block_in_place(|| topology.run(&["restart", node]));
            eprintln!("node {node} restarted in {:?}", started.elapsed());
        }
    };
    let (outcomes, ()) = tokio::join!(publishing, restarting);
    let acked: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 200).collect();
    eprintln!(
        "{} of {} publishes acknowledged through nginx during the rolling restart; others: {:?}",
        acked.len(),
        outcomes.len(),
        outcomes
            .iter()
            .filter(|o| o.status != 200)
            .map(|o| o.status)
            .collect::<Vec<_>>()
    );
    if acked.len() < 300 {
        // What nginx saw first, to tell a node's error from a topology-wide "no live upstreams".
        let log = std::fs::read_to_string(topology._state.path().join("nginx-error.log")).unwrap_or_default();
        let first: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("no live upstreams"))
            .take(20)
            .collect();
        eprintln!("nginx's first errors:\n{}", first.join("\n"));
    }
    assert!(
        acked.len() >= 300,
        "most publishes went through while nodes restarted"
    );

    for (i, (events, task)) in subscribers.into_iter().enumerate() {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let have = {
                let events = events.lock().unwrap();
                acked
                    .iter()
                    .filter(|o| events.iter().any(|e| e.data == o.data))
                    .count()
            };
            if have == acked.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "subscriber {i} has {have} of {} acknowledged",
                acked.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        task.abort();
        let events = events.lock().unwrap().clone();
        assert_exact(&format!("subscriber {i}"), &events, &outcomes, &["t"], "t");
    }
}

#[test]
fn the_dockerfile_and_compose_file_name_files_that_exist() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    assert!(
        copied.contains(&"src") && copied.contains(&"Cargo.lock"),
        "{copied:?}"
    );
    for path in copied {
        assert!(
            root.join(path).exists(),
            "the Dockerfile copies {path}, which does not exist"
        );
    }
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    for mount in compose.lines().filter_map(|l| l.trim().strip_prefix("- ./")) {
        let source = mount.split(':').next().unwrap();
        assert!(
            root.join(source).exists(),
            "compose mounts {source}, which does not exist"
        );
    }
    for file in [
        "deploy/nginx/compose/upstream.conf",
        "deploy/nginx/compose/server.conf",
    ] {
        assert!(root.join(file).exists(), "{file} is missing");
    }
}
