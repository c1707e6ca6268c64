use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::future::join_all;
use futures_util::{Stream, StreamExt};
use herald::config::Settings;
use herald::startup::{Application, Shutdown};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// How long a test waits for something that should arrive at once before it fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub shutdown: Shutdown,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a node on the Redis engine, against `redis`.
pub async fn spawn_redis_node(redis: &crate::redis_server::RedisServer) -> TestApp {
    spawn_redis_node_with(redis, |_| {}).await
}

/// Starts a node on the Redis engine, against `redis`, with the settings as changed by `change`.
pub async fn spawn_redis_node_with(
    redis: &crate::redis_server::RedisServer,
    change: impl FnOnce(&mut Settings),
) -> TestApp {
    let url = redis.url();
    spawn_app_with(move |s| {
        s.redis.url = url;
        s.redis.startup_wait_secs = Duration::from_secs(5);
        change(s);
    })
    .await
}

/// Starts a node on a free port with the default settings as changed by `change`.
pub async fn spawn_app_with(change: impl FnOnce(&mut Settings)) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        herald::telemetry::init_logs(false);
    }
    let mut settings = Settings::defaults().expect("defaults load");
    settings.server.port = 0;
    settings.server.workers = 2;
    settings.server.lean_streams = crate::LEAN_STREAMS;
    change(&mut settings);
    settings.validate().expect("test settings are valid");
    let app = Application::build(settings).await.expect("node builds");
    let port = app.port();
    let shutdown = app.shutdown_handle();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client builds"),
        shutdown,
    }
}

pub type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// A subscriber: the parsed event stream of one `GET /events`.
pub struct Subscriber {
    events: Events,
}

impl Subscriber {
    /// A subscriber over a stream the test opened itself (to send its own headers).
    pub fn from_events(events: Events) -> Self {
        Subscriber { events }
    }

    /// The next event, failing the test if none comes within [`PATIENCE`].
    pub async fn next(&mut self) -> Event {
        match tokio::time::timeout(PATIENCE, self.events.next()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
            Ok(None) => panic!("stream ended"),
            Err(_) => panic!("no event within {PATIENCE:?}"),
        }
    }

    /// The next event, or None once the stream ended; fails the test on a stream error.
    pub async fn next_or_end(&mut self) -> Option<Event> {
        match self.events.next().await {
            Some(Ok(event)) => Some(event),
            Some(Err(e)) => panic!("stream error: {e}"),
            None => None,
        }
    }

    pub async fn take(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Every event until the node ends the stream (it must end within [`PATIENCE`]).
    pub async fn until_end(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(PATIENCE, self.events.next()).await {
                Ok(Some(Ok(event))) => out.push(event),
                Ok(None) => return out,
                Ok(Some(Err(e))) => panic!("stream error: {e}"),
                Err(_) => panic!("the stream did not end within {PATIENCE:?}"),
            }
        }
    }

    /// Every event, with when it arrived, until the stream ends or nothing arrives for `quiet`.
    pub async fn until_end_or_quiet(&mut self, quiet: Duration) -> Vec<(Event, std::time::Instant)> {
        let mut out = Vec::new();
        while let Ok(Some(next)) = tokio::time::timeout(quiet, self.events.next()).await {
            match next {
                Ok(event) => out.push((event, std::time::Instant::now())),
                Err(e) => panic!("stream error: {e}"),
            }
        }
        out
    }

    /// Asserts that nothing arrives for `quiet` (used after the expected events, to catch duplicates).
    pub async fn assert_silent(&mut self, quiet: Duration) {
        if let Ok(Some(event)) = tokio::time::timeout(quiet, self.events.next()).await {
            panic!("unexpected event: {event:?}");
        }
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post(
        &self,
        topic: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/topics/{topic}")))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("publish request")
    }

    /// Publishes text and returns the id, failing the test on any error status.
    pub async fn publish(&self, topic: &str, data: &str) -> String {
        let response = self
            .post(topic, "text/plain; charset=utf-8", data.to_string())
            .await;
        assert_eq!(
            response.status(),
            200,
            "publish failed: {:?}",
            response.text().await
        );
        let body: serde_json::Value = response.json().await.expect("json answer");
        body["id"].as_str().expect("id in answer").to_string()
    }

    pub async fn subscribe(&self, topics: &[&str], last_event_id: Option<&str>) -> Subscriber {
        let query: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
        self.subscribe_query(&query.join("&"), last_event_id).await
    }

    /// Subscribes with a query string of its own (`topic=a&envelope=json`, say).
    pub async fn subscribe_query(&self, query: &str, last_event_id: Option<&str>) -> Subscriber {
        self.subscribe_at(&format!("/events?{query}"), last_event_id)
            .await
    }

    /// Subscribes at any stream path and query (`/.well-known/mercure?topic=…`).
    pub async fn subscribe_at(&self, path: &str, last_event_id: Option<&str>) -> Subscriber {
        let mut request = self.client.get(self.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = tokio::time::timeout(PATIENCE, request.send())
            .await
            .expect("response head arrives at once")
            .expect("subscribe request");
        assert_eq!(
            response.status(),
            200,
            "subscribe failed: {:?}",
            response.text().await
        );
        Subscriber {
            events: Box::pin(response.bytes_stream().eventsource()),
        }
    }

    /// GETs `path` and parses the JSON answer.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.client.get(self.url(path)).send().await.expect("GET request");
        response.json().await.expect("a JSON answer")
    }

    /// A counter or gauge from `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Waits until the node has noticed that subscribers went away, leaving `left` connections. A node
    /// notices a closed socket when it next writes to it, so this publishes to `topic` while waiting.
    pub async fn wait_connections(&self, topic: &str, left: u64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.metric("herald_connections").await != left {
            assert!(
                tokio::time::Instant::now() < deadline,
                "subscribers were never noticed to be gone"
            );
            self.publish(topic, "are you there?").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `/metrics` shows `name` at `value` (state changes on other tasks take a moment).
    pub async fn wait_metric(&self, name: &str, value: u64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let now = self.metric(name).await;
            if now == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} stayed {now}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Orders ids as the hub defines them (`<ms>-<seq>`), for checking delivery order.
pub fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("id has a dash");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

/// The id of `topic`'s event as a stream of `topics` carries it: the id itself on a single-topic stream,
/// its position for `topic` in a multi-topic stream's composite (whose tag must be the stream's set).
pub fn id_in(id: &str, topics: &[&str], topic: &str) -> String {
    if topics.len() < 2 {
        return id.to_string();
    }
    let names: Vec<herald::domain::TopicName> = topics
        .iter()
        .map(|t| herald::domain::TopicName::parse(t, 1024).expect("a topic"))
        .collect();
    let parsed: herald::cursor::LastEventId = id.parse().expect("an id the hub wrote");
    let herald::cursor::LastEventId::Composite { tag, .. } = parsed else {
        panic!("a multi-topic stream sends composite ids, not {id}");
    };
    assert_eq!(
        tag,
        herald::cursor::set_tag(&herald::cursor::sorted(&names)),
        "{id}: tag of another topic set"
    );
    let at = topics
        .iter()
        .position(|t| *t == topic)
        .expect("a topic of the stream");
    parsed.after_for(&names)[at].to_string()
}

/// Asserts an error answer: the status, problem+json, and a human sentence in `detail`.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status(), status, "wrong status for {}", response.url());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(content_type, "application/problem+json");
    let body: serde_json::Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status);
    assert_eq!(body["code"], code, "{body}");
    let detail = body["detail"].as_str().unwrap_or("");
    assert!(
        detail.len() > 10 && detail.contains(' '),
        "detail is not a sentence: {body}"
    );
    body
}

// Shared checks: what several test files assert the same way.

const TOPICS: [&str; 3] = ["alpha", "beta", "gamma"];

/// Which topics subscriber `i` listens to: singles and pairs, and every fifth one takes all three.
fn topics_of(i: usize) -> Vec<&'static str> {
    match i % 5 {
        0 => TOPICS.to_vec(),
        1 | 2 => vec![TOPICS[i % 3]],
        _ => vec![TOPICS[i % 3], TOPICS[(i + 1) % 3]],
    }
}

/// Subscribers spread over `nodes` read while `publishers` publishers (spread over the nodes too) send
/// `messages` messages over three topics; each subscriber must get exactly its topics' messages, once
/// each, in id order.
pub async fn fan_out_is_exact(nodes: &[&TestApp], subscribers: usize, messages: usize, publishers: usize) {
    let mut subs = Vec::new();
    for i in 0..subscribers {
        subs.push(nodes[i % nodes.len()].subscribe(&topics_of(i), None).await);
    }
    let publishing = join_all((0..publishers).map(|p| async move {
        let node = nodes[p % nodes.len()];
        let mut sent = Vec::new();
        for n in (p..messages).step_by(publishers) {
            let topic = TOPICS[n % 3];
            let data = format!("p{p}-m{n}");
            sent.push((node.publish(topic, &data).await, topic, data));
        }
        sent
    }));
    let reading = join_all(subs.into_iter().enumerate().map(|(i, mut sub)| async move {
        let expected = (0..messages)
            .filter(|n| topics_of(i).contains(&TOPICS[n % 3]))
            .count();
        let events = sub.take(expected).await;
        sub.assert_silent(Duration::from_millis(300)).await;
        events
    }));
    let (published, received) = tokio::join!(publishing, reading);
    let mut all: Vec<(String, &str, String)> = published.into_iter().flatten().collect();
    assert_eq!(all.len(), messages);
    all.sort_by_key(|(id, _, _)| id_key(id));
    let unique: HashSet<(&str, &str)> = all.iter().map(|(id, t, _)| (id.as_str(), *t)).collect();
    assert_eq!(unique.len(), messages, "ids are unique within a topic");

    // Per topic, exactly its messages in id order; ids are ordered per topic only.
    for (i, events) in received.into_iter().enumerate() {
        let topics = topics_of(i);
        for topic in &topics {
            let want: Vec<(String, &str)> = all
                .iter()
                .filter(|(_, t, _)| t == topic)
                .map(|(id, _, d)| (id.clone(), d.as_str()))
                .collect();
            let got: Vec<(String, &str)> = events
                .iter()
                .filter(|e| all.iter().any(|(_, t, d)| t == topic && *d == e.data))
                .map(|e| (id_in(&e.id, &topics, topic), e.data.as_str()))
                .collect();
            assert!(
                got == want,
                "subscriber {i} did not get exactly {topic}'s messages in id order"
            );
        }
    }
}

/// One publish outcome: the data sent, and the id if it was acknowledged.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub data: String,
    pub status: u16,
    pub id: Option<String>,
}

impl Outcome {
    /// What a publish answered: the id if acknowledged, the status otherwise (0: no answer at all).
    pub async fn from_response(data: String, response: reqwest::Result<reqwest::Response>) -> Outcome {
        match response {
            Ok(r) if r.status() == 200 => {
                let body: serde_json::Value = r.json().await.expect("json");
                let id = body["id"].as_str().map(String::from);
                Outcome {
                    data,
                    status: 200,
                    id,
                }
            }
            Ok(r) => Outcome {
                data,
                status: r.status().as_u16(),
                id: None,
            },
            Err(_) => Outcome {
                data,
                status: 0,
                id: None,
            },
        }
    }
}

/// Checks what a subscriber of `topics` received against the outcomes of publishes to `published_to`:
/// every acknowledged message exactly once, in id order; a refused one (503) never; one of unknown
/// outcome (504) at most once.
pub fn assert_exact(
    who: &str,
    received: &[eventsource_stream::Event],
    outcomes: &[Outcome],
    topics: &[&str],
    published_to: &str,
) {
    let by_data: HashMap<&str, &Outcome> = outcomes.iter().map(|o| (o.data.as_str(), o)).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for event in received {
        let outcome = by_data
            .get(event.data.as_str())
            .unwrap_or_else(|| panic!("{who}: received {:?}, which nobody published", event.data));
        assert_ne!(
            outcome.status, 503,
            "{who}: received {:?}, refused with 503",
            event.data
        );
        if let Some(id) = &outcome.id {
            assert_eq!(
                &id_in(&event.id, topics, published_to),
                id,
                "{who}: wrong id for {:?}",
                event.data
            );
        }
        *seen.entry(outcome.data.as_str()).or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "{who}: duplicates received");
    for outcome in outcomes.iter().filter(|o| o.status == 200) {
        assert!(
            seen.contains_key(outcome.data.as_str()),
            "{who}: lost acknowledged {:?}",
            outcome.data
        );
    }
    let ids: Vec<(u64, u64)> = received
        .iter()
        .map(|e| id_key(&id_in(&e.id, topics, published_to)))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{who}: not in id order");
}

/// Percent-encodes every byte of `s` but RFC 3986's unreserved ones: a topic as a path segment or a
/// query value.
pub fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads from `socket` into `into` until it holds `needle`; panics if the peer closes first, or if
/// nothing arrives for `PATIENCE`.
pub async fn read_until(socket: &mut tokio::net::TcpStream, into: &mut Vec<u8>, needle: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(into).contains(needle) {
        let n = tokio::time::timeout(PATIENCE, socket.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{needle:?} did not arrive: {:?}", String::from_utf8_lossy(into)))
            .expect("the socket reads");
        assert!(
            n > 0,
            "closed before {needle:?} arrived: {:?}",
            String::from_utf8_lossy(into)
        );
        into.extend_from_slice(&buf[..n]);
    }
}

/// Starts the herald binary on a free port with `env` (its streams on the path this test binary
/// tests); answers it, the address it listens on, and its later log lines (read on, so the node never
/// blocks on a full pipe).
pub async fn start_binary(
    env: &[(&str, String)],
) -> (
    tokio::process::Child,
    String,
    tokio::task::JoinHandle<Vec<String>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--port", "0"])
        .env("HERALD__SERVER__LEAN_STREAMS", crate::LEAN_STREAMS.to_string())
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the herald binary starts");
    let mut log = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let address = tokio::time::timeout(PATIENCE, async {
        while let Ok(Some(line)) = log.next_line().await {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.split_whitespace().next().map(String::from);
            }
        }
        None
    })
    .await
    .expect("the binary logs its address")
    .expect("the binary says where it listens");
    let lines = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Ok(Some(line)) = log.next_line().await {
            lines.push(line);
        }
        lines
    });
    (child, address, lines)
}
