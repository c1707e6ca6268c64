//! The demo page and native `EventSource` behaviour in real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver). A missing browser fails these tests; it never skips them.

use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::helpers::{spawn_app, spawn_app_with, spawn_redis_node, TestApp, PATIENCE};
use crate::redis_server::RedisServer;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Two browsers at a time: each is a few processes, and this machine has two cores.
static BROWSERS: Semaphore = Semaphore::const_new(2);

/// A headless Chromium session; `close` ends it, and dropping kills chromedriver's process group.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    _permit: SemaphorePermit<'static>,
}

impl Browser {
    pub async fn start() -> Browser {
        Self::start_with(&[]).await
    }

    /// With more Chromium arguments (a certificate to trust, say).
    pub async fn start_with(extra: &[String]) -> Browser {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install Debian's browser with `apt-get install chromium chromium-driver`"
            );
        }
        let permit = BROWSERS.acquire().await.expect("semaphore open");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--window-size=1280,900",
        ]
        .into_iter()
        .map(String::from)
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .chain(extra.iter().cloned())
        .collect();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": args,
            }),
        );
        let deadline = Instant::now() + PATIENCE;
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "chromedriver/chromium did not start: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
            _permit: permit,
        }
    }

    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect("script runs")
    }

    /// Clicks the element with this id.
    pub async fn click(&self, id: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("no element #{id}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("#{id} cannot be clicked: {e}"));
    }

    /// Polls `script` until it returns true.
    pub async fn wait_for(&self, what: &str, script: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.js(script).await != Value::Bool(true) {
            assert!(Instant::now() < deadline, "the page never showed {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn state(&self) -> String {
        self.js("return document.getElementById('state').textContent")
            .await
            .as_str()
            .unwrap_or("")
            .into()
    }

    /// The events the demo page shows, oldest first: (id, text).
    pub async fn events(&self) -> Vec<(String, String)> {
        let list = self
            .js(
                "return Array.from(document.querySelectorAll('#log li.event')).reverse()
                   .map(li => [li.dataset.id || '', li.querySelector('pre').textContent]);",
            )
            .await;
        serde_json::from_value(list).expect("pairs")
    }

    pub async fn wait_events(&self, n: usize) -> Vec<(String, String)> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let events = self.events().await;
            if events.len() >= n {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "the page shows {} events, not {n}",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn open_demo(&self, app: &TestApp, topics: &[&str]) {
        let query: Vec<String> = topics
            .iter()
            .map(|t| format!("topic={}", crate::helpers::pct(t)))
            .collect();
        self.client
            .goto(&app.url(&format!("/?{}", query.join("&"))))
            .await
            .expect("page loads");
        self.wait_for(
            "an open stream",
            "return document.getElementById('state').textContent === 'open'",
        )
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium runs in chromedriver's process group: end the whole group, even after a failed test.
        // (Never through the `kill` command: procps-ng 4.0.2 misreads `kill -KILL -<pgid>` as pid -1.)
        let pgid = self
            .driver
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .filter(|&id| id > 1);
        if let Some(pgid) = pgid {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_shows_events_published_over_http_from_its_form_and_from_redis_cli() {
    let browser = Browser::start().await;

    // Memory engine: an HTTP publish, then the page's own publish form.
    let app = spawn_app().await;
    browser.open_demo(&app, &["news"]).await;
    let id = app.publish("news", "hello, browser").await;
    assert_eq!(
        browser.wait_events(1).await,
        vec![(id.clone(), "hello, browser".to_string())]
    );
    let data = browser.client.find(Locator::Id("pub-data")).await.unwrap();
    data.clear().await.unwrap();
    data.send_keys("{\"from\": \"the form\"}").await.unwrap();
    browser
        .client
        .find(Locator::Id("pub-kind"))
        .await
        .unwrap()
        .select_by_value("json")
        .await
        .unwrap();
    browser.click("send").await;
    let events = browser.wait_events(2).await;
    assert_eq!(
        events[1].1, "{\n  \"from\": \"the form\"\n}",
        "JSON is shown pretty-printed"
    );
    browser
        .wait_for(
            "the publish result",
            "return document.getElementById('result').textContent.startsWith('stored as ')",
        )
        .await;

    // Redis engine: published with the real redis-cli.
    let redis = RedisServer::start();
    let node = spawn_redis_node(&redis).await;
    browser.open_demo(&node, &["news"]).await;
    let id = redis
        .cli(&["FCALL", "herald_publish", "1", "herald:{news}", "from redis-cli"])
        .unwrap();
    assert_eq!(
        browser.wait_events(1).await,
        vec![(id, "from redis-cli".to_string())]
    );
    browser.close().await;
}

/// One native `EventSource` on two topics with `envelope=json` (as the demo page opens it): the page
/// tells which topic each event is from, and an IRI (commas, slashes, `%` and braces included) is a topic
/// like any other, typed into the page's form too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_says_which_topic_each_event_of_a_multi_topic_stream_is_from() {
    let browser = Browser::start().await;
    let app = spawn_app().await;
    let news_iri = "https://example.com/news?ids=1,2&q=%7B{x}";
    browser.open_demo(&app, &["prices", news_iri]).await;
    let news = app.publish(&crate::helpers::pct(news_iri), "a headline").await;
    let price = app.publish("prices", "{\"eur\": 1.08}").await;
    // The page shows each event's own id (from the envelope), not the stream's composite position.
    assert_eq!(
        browser.wait_events(2).await,
        vec![
            (news, "a headline".to_string()),
            (price, "{\n  \"eur\": 1.08\n}".to_string())
        ]
    );
    let shown = browser
        .js(
            "return Array.from(document.querySelectorAll('#log li.event')).reverse()
               .map(li => [li.dataset.topic, li.querySelector('.meta').textContent]);",
        )
        .await;
    let shown: Vec<(String, String)> = serde_json::from_value(shown).expect("pairs");
    assert_eq!(shown[0].0, news_iri);
    assert_eq!(shown[1].0, "prices");
    assert!(shown[1].1.contains(" · prices · "), "{shown:?}");
    // The page's form publishes to the IRI it was given (it was filled with the first topic).
    browser.js("document.getElementById('pub-topic').value = 'https://example.com/news?ids=1,2&q=%7B{x}'; return 1;").await;
    browser.click("send").await;
    let events = browser.wait_events(3).await;
    let last = browser
        .js("return document.querySelector('#log li.event').dataset.topic")
        .await;
    assert_eq!(last, Value::String(news_iri.into()), "{events:?}");
    let history = app
        .get_json(&format!("/topics/{}/history", crate::helpers::pct(news_iri)))
        .await;
    assert_eq!(history["events"].as_array().map(Vec::len), Some(2), "{history}");

    // examples/subscribe.js, run as a page would: told the topic, and the data parsed as JSON.
    let script = format!(
        "{}\nwindow.got = []; subscribe(location.origin, ['prices', 'news'], \
         (data, id, topic) => window.got.push([topic, id, JSON.stringify(data)])); return 1;",
        include_str!("../../examples/subscribe.js")
    );
    browser.js(&script).await;
    let deadline = Instant::now() + PATIENCE;
    while app.metric("herald_connections").await < 2 {
        assert!(Instant::now() < deadline, "the example's stream never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = app.publish("prices", "{\"eur\": 1.09}").await;
    browser
        .wait_for("the example's callback", "return window.got.length >= 1")
        .await;
    let got: Vec<(String, String, String)> =
        serde_json::from_value(browser.js("return window.got").await).expect("triples");
    assert_eq!(got, vec![("prices".into(), id, "{\"eur\":1.09}".into())]);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_reconnects_by_itself_after_its_node_restarts_and_misses_nothing() {
    let browser = Browser::start().await;
    let redis = RedisServer::start();
    let url = redis.url();
    let settings = move |s: &mut herald::config::Settings| {
        s.redis.url = url.clone();
        s.sse.retry_ms = 200;
    };
    let page_node = spawn_app_with(settings.clone()).await;
    let port = page_node.port;
    let publisher = spawn_redis_node(&redis).await;
    browser.open_demo(&page_node, &["t"]).await;

    let publishing = async {
        let mut ids = Vec::new();
        for n in 0..60 {
            ids.push(publisher.publish("t", &format!("m{n}")).await);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ids
    };
    let restarting = async {
        browser.wait_events(10).await;
        page_node.shutdown.run().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_ne!(browser.state().await, "open", "the page saw its stream end");
        // The same node comes back on the same port; the browser's own retry finds it.
        spawn_app_with(move |s| {
            settings(s);
            s.server.port = port;
        })
        .await
    };
    let (ids, _restarted) = tokio::join!(publishing, restarting);
    let events = browser.wait_events(60).await;
    let expected: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.clone(), format!("m{n}")))
        .collect();
    assert_eq!(events, expected, "every message once, in order");
    assert_eq!(browser.state().await, "open");
    let notices = browser
        .js("return document.querySelectorAll('#log li.notice').length")
        .await;
    assert!(
        notices.as_u64() >= Some(2),
        "the page says it reconnected and resumed"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_subscribes_only_when_its_origin_is_allowed() {
    let browser = Browser::start().await;
    let allowed_site = spawn_app().await;
    let other_site = spawn_app().await;
    let allowed_origin = allowed_site.address.clone();
    let hub = spawn_app_with(move |s| s.cors.allowed_origins = vec![allowed_origin]).await;
    let script = format!(
        "window.got = []; window.opened = false;
         const es = new EventSource('{}/events?topic=c');
         es.onopen = () => window.opened = true;
         es.onmessage = (e) => window.got.push(e.data);
         es.onerror = () => window.failed = es.readyState === EventSource.CLOSED;
         window.posted = null;
         fetch('{}/topics/c', {{ method: 'POST', headers: {{ 'content-type': 'application/json' }}, body: '{{\"x\":1}}' }})
           .then((r) => window.posted = r.status, () => window.posted = 'refused');",
        hub.address, hub.address
    );

    // Allowed: the stream opens, events arrive, and a JSON publish (with its preflight) goes through.
    browser.client.goto(&allowed_site.url("/healthz")).await.unwrap();
    browser.js(&script).await;
    browser
        .wait_for("an open cross-origin stream", "return window.opened === true")
        .await;
    browser
        .wait_for("the cross-origin publish", "return window.posted === 200")
        .await;
    hub.publish("c", "cross-origin hello").await;
    browser
        .wait_for("the event", "return window.got.includes('cross-origin hello')")
        .await;

    // Not allowed: the browser refuses the stream and the publish.
    browser.client.goto(&other_site.url("/healthz")).await.unwrap();
    browser.js(&script).await;
    browser
        .wait_for("a refused stream", "return window.failed === true")
        .await;
    browser
        .wait_for("a refused publish", "return window.posted === 'refused'")
        .await;
    hub.publish("c", "not for you").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        browser.js("return window.opened || window.got.length > 0").await,
        Value::Bool(false)
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_of_the_demo_page_at_desktop_and_phone_widths() {
    let browser = Browser::start().await;
    let app = spawn_app_with(|s| s.history.max_len = 3).await;
    let first = app.publish("news", "seen, then trimmed").await;
    app.publish("news", "missed and trimmed: the gap").await;
    for n in 0..3 {
        app.publish("news", &format!("{{\"headline\":\"story {n}\",\"score\":{n}}}"))
            .await;
    }
    // Resuming from a trimmed id shows the gap notice, then the replay, then live events.
    browser.client.goto(&app.url("/?topics=news")).await.unwrap();
    browser.js(&format!("lastId = '{first}'; connect();")).await;
    browser.wait_events(3).await;
    app.publish("news", "a live one, after the replay").await;
    browser.wait_events(4).await;
    browser
        .wait_for(
            "the gap notice",
            "return document.querySelectorAll('#log li.gap').length === 1",
        )
        .await;

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, width, height) in [("desktop", 1280u32, 900u32), ("phone", 390, 844)] {
        browser.client.set_window_size(width, height).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let overflow = browser
            .js("return document.documentElement.scrollWidth <= window.innerWidth")
            .await;
        assert_eq!(overflow, Value::Bool(true), "no sideways scrolling at {width} px");
        let png = browser.client.screenshot().await.unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let shot_width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
        assert!(
            shot_width <= width && shot_width >= width - 20,
            "screenshot is {shot_width} px wide"
        );
        let path = dir.join(format!("demo-{name}.png"));
        std::fs::write(&path, &png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
    browser.close().await;
}

/// The status page, reached from the demo page's link, shows the node's numbers as they change; with
/// auth on it asks for a publisher's token and shows the status once given one. Saves a screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_node_live_and_asks_for_a_token_when_auth_is_on() {
    let browser = Browser::start().await;
    let app = spawn_app().await;
    let mut subs = Vec::new();
    for (topic, n) in [("prices", 5), ("news", 3), ("alerts", 1)] {
        for _ in 0..n {
            subs.push(app.subscribe(&[topic], None).await);
        }
    }
    browser.client.goto(&app.url("/")).await.unwrap();
    browser.click("status-link").await;
    // 9, or 10 until the node notices that the demo page's own stream (on `news`) went away with it.
    browser
        .wait_for(
            "the status page with its connections",
            "return Number(document.getElementById('connections')?.textContent) >= 9",
        )
        .await;
    let rows = browser
        .js("return Array.from(document.querySelectorAll('#busiest tr')).map(r => r.textContent)")
        .await;
    let rows: Vec<String> = serde_json::from_value(rows).unwrap();
    assert_eq!(rows[0], "prices5", "{rows:?}");
    assert!(rows[1] == "news3" || rows[1] == "news4", "{rows:?}");
    assert_eq!(rows[2], "alerts1", "{rows:?}");
    for n in 0..20 {
        app.publish("prices", &format!("{n}")).await;
    }
    browser
        .wait_for(
            "publishes counted",
            "return Number(document.getElementById('publishes').textContent) > 0",
        )
        .await;
    assert_eq!(browser.state().await, "ready");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    browser.client.set_window_size(1280, 720).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let png = browser.client.screenshot().await.unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let path = dir.join("status-desktop.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());

    // With auth on: the page asks for a token, and shows the status with a publisher's.
    let secret = "status-secret-status-secret-status-42";
    let secured = spawn_app_with(move |s| {
        s.auth.anonymous_publish = false;
        s.auth.hs_secret = secret.into();
    })
    .await;
    browser.client.goto(&secured.url("/status")).await.unwrap();
    browser
        .wait_for(
            "the token form",
            "return document.getElementById('auth').className === 'shown'",
        )
        .await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"mercure": {"publish": ["*"]}, "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let input = browser.client.find(Locator::Id("token")).await.unwrap();
    input.send_keys(&token).await.unwrap();
    browser.click("use-token").await;
    browser
        .wait_for(
            "the status behind the token",
            "return document.getElementById('engine').textContent === 'memory'",
        )
        .await;
    browser.close().await;
}

/// Herald as a Mercure hub for a page: native `EventSource`s on `/.well-known/mercure` with a URI
/// template and a URL pattern; a private update held back from the anonymous page and delivered once
/// the page holds Mercure's cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_subscribes_through_mercure_with_templates_url_patterns_and_the_cookie() {
    const SECRET: &str = "browser-mercure-secret-browser-mercure-secret";
    let browser = Browser::start().await;
    let hub = spawn_app_with(|s| {
        s.auth.anonymous_publish = false;
        s.auth.hs_secret = SECRET.into();
    })
    .await;
    let mint = |publish: &[&str], subscribe: &[&str]| {
        let claims = herald::auth::claims(
            publish.iter().map(|s| s.to_string()).collect(),
            subscribe.iter().map(|s| s.to_string()).collect(),
            600,
            None,
        );
        herald::auth::mint(SECRET, &claims).unwrap()
    };
    let publisher = mint(&["*"], &[]);
    let publish = |topic: &'static str, data: &'static str, private: bool| {
        let form = format!(
            "topic={}&data={data}{}",
            crate::helpers::pct(topic),
            if private { "&private=on" } else { "" }
        );
        hub.client
            .post(hub.url("/.well-known/mercure"))
            .bearer_auth(&publisher)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
    };
    browser.client.goto(&hub.url("/healthz")).await.unwrap();
    browser
        .js("window.got = {}; window.open = 0;
             window.watch = (name, query) => {
               window.got[name] = [];
               const es = new EventSource('/.well-known/mercure?' + query);
               es.onopen = () => window.open++;
               es.onmessage = (e) => window.got[name].push(e.lastEventId + ' ' + e.data);
             };
             watch('books', 'topic=' + encodeURIComponent('https://example.com/books/{id}'));
             watch('users', 'matchURLPattern=' + encodeURIComponent('https://example.com/users/:id'));")
        .await;
    browser
        .wait_for("two open streams", "return window.open === 2")
        .await;
    for (topic, data, private) in [
        ("https://example.com/books/1", "book", false),
        ("https://example.com/users/42", "secret", true),
        ("https://example.com/users/42", "hello", false),
        ("https://example.com/books/1/reviews", "review", false),
    ] {
        let response = publish(topic, data, private).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    browser
        .wait_for("the public user update", "return window.got.users.length === 1")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = browser.js("return window.got").await;
    let data = |name: &str| -> Vec<String> {
        got[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().split_once(' ').unwrap().1.to_string())
            .collect()
    };
    assert_eq!(data("books"), ["book"]);
    assert_eq!(
        data("users"),
        ["hello"],
        "the private update reached an anonymous page"
    );
    // Each event carries the update's own id (a UUID URN here).
    assert!(got["books"][0].as_str().unwrap().starts_with("urn:uuid:"));

    // With Mercure's cookie, the page receives private updates its token allows.
    let reader = mint(&[], &["https://example.com/users/{id}"]);
    browser
        .js(&format!(
            "document.cookie = 'mercureAuthorization={reader}; path=/';
             watch('allowed', 'matchURLPattern=' + encodeURIComponent('https://example.com/users/:id'));"
        ))
        .await;
    browser
        .wait_for("the third stream", "return window.open === 3")
        .await;
    publish("https://example.com/users/42", "for-the-cookie", true)
        .await
        .unwrap();
    browser
        .wait_for(
            "the private update on the page with the cookie",
            "return window.got.allowed.some((e) => e.endsWith(' for-the-cookie'))",
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let users = browser.js("return window.got.users").await;
    assert_eq!(users.as_array().map(Vec::len), Some(1), "{users}");
    browser.close().await;
}

/// `examples/who-is-online.html` in Chromium: the page lists a room's subscribers from the subscriptions
/// API, then keeps the list live with the subscription events (native `EventSource`): it shows a join
/// and a leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_who_is_online_example_shows_a_join_and_a_leave() {
    const SECRET: &str = "browser-presence-secret-browser-presence-secret";
    const ROOM: &str = "https://example.com/rooms/1";
    let browser = Browser::start().await;
    let hub = spawn_app_with(|s| {
        s.presence.enabled = true;
        s.auth.hs_secret = SECRET.into();
    })
    .await;
    let claims = herald::auth::claims(
        vec![],
        vec!["/.well-known/mercure/subscriptions{/topic}{/subscriber}".into()],
        600,
        None,
    );
    let watcher = herald::auth::mint(SECRET, &claims).unwrap();
    let named = |name: &str| {
        let mut claims = herald::auth::claims(vec![], vec![ROOM.into()], 600, None);
        claims.mercure.payload = Some(json!({ "name": name }));
        herald::auth::mint(SECRET, &claims).unwrap()
    };
    let join = |token: String| {
        hub.client
            .get(hub.url(&format!(
                "/.well-known/mercure?topic={}",
                crate::helpers::pct(ROOM)
            )))
            .bearer_auth(token)
            .send()
    };
    let ada = join(named("Ada")).await.unwrap();
    assert_eq!(ada.status(), 200);
    // The example page itself, written into a page of the hub's origin (its fetch and stream are
    // same-origin there), with the room and token in the query as the page reads them.
    let page = include_str!("../../examples/who-is-online.html");
    browser
        .client
        .goto(&hub.url(&format!(
            "/healthz?room={}&token={watcher}",
            crate::helpers::pct(ROOM)
        )))
        .await
        .unwrap();
    browser
        .client
        .execute(
            "document.open(); document.write(arguments[0]); document.close();",
            vec![json!(page)],
        )
        .await
        .expect("the page is written");
    let names = "return Array.from(document.querySelectorAll('#people li')).map((li) => li.textContent).sort().join(',')";
    browser
        .wait_for("Ada, already there", &format!("{names} === 'Ada'"))
        .await;
    let grace = join(named("Grace")).await.unwrap();
    browser
        .wait_for("Grace's join", &format!("{names} === 'Ada,Grace'"))
        .await;
    drop(ada);
    browser
        .wait_for("Ada's leave", &format!("{names} === 'Grace'"))
        .await;
    drop(grace);
    browser
        .wait_for("an empty room", &format!("{names} === ''"))
        .await;
    browser.close().await;
}
