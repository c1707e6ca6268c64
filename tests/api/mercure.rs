//! Herald as a Mercure hub at `/.well-known/mercure`: updates published by a real Mercure client
//! (Debian's php-symfony-mercure) and by hand-made forms, received through Mercure and the native API,
//! private updates held back, and resumes from a publisher's own id on two nodes of one Redis.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::auth::{self, Claims, MercureClaim};

use crate::helpers::{assert_problem, pct, spawn_app, spawn_app_with, spawn_redis_node, Subscriber, TestApp};
use crate::redis_server::RedisServer;

const SECRET: &str = "mercure-test-secret-mercure-test-secret";
const BOOK: &str = "https://example.com/books/1";
const ALT: &str = "https://example.com/shelves/7";
const USER: &str = "https://example.com/users/42";
const HUB: &str = "/.well-known/mercure";
const QUIET: Duration = Duration::from_millis(400);

fn token(publish: &[&str], subscribe: &[&str]) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = Claims {
        mercure: MercureClaim {
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            payload: None,
        },
        exp: Some(exp),
        aud: None,
    };
    auth::mint(SECRET, &claims).unwrap()
}

/// A node that needs a publisher's token, as a Mercure hub does.
async fn hub() -> TestApp {
    spawn_app_with(|s| {
        s.auth.anonymous_publish = false;
        s.auth.hs_secret = SECRET.into();
    })
    .await
}

async fn publish_form(app: &TestApp, token: Option<&str>, form: &str) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(HUB))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("publish request")
}

/// Publishes `form` and answers the id the hub replied with (200, text/plain).
async fn publish_ok(app: &TestApp, token: Option<&str>, form: &str) -> String {
    let response = publish_form(app, token, form).await;
    assert_eq!(response.status(), 200, "{form}: {:?}", response.text().await);
    let kind = response.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(kind, "text/plain; charset=utf-8");
    response.text().await.unwrap()
}

fn hub_path(selectors: &[&str]) -> String {
    let query: Vec<String> = selectors.iter().map(|t| format!("topic={}", pct(t))).collect();
    format!("{HUB}?{}", query.join("&"))
}

async fn mercure_sub(app: &TestApp, selectors: &[&str]) -> Subscriber {
    app.subscribe_at(&hub_path(selectors), None).await
}

/// Subscribes with a token in the Authorization header (what a server-side client sends).
async fn mercure_sub_with(app: &TestApp, path: &str, header: (&str, String)) -> Subscriber {
    use eventsource_stream::Eventsource;
    let response = app
        .client
        .get(app.url(path))
        .header(header.0, header.1)
        .send()
        .await
        .expect("subscribe request");
    assert_eq!(response.status(), 200, "{path}: {:?}", response.text().await);
    Subscriber::from_events(Box::pin(response.bytes_stream().eventsource()))
}

#[tokio::test]
async fn updates_published_through_mercure_reach_mercure_and_native_subscribers_once_each() {
    let app = hub().await;
    let publisher = token(&["*"], &[]);
    let mut book = mercure_sub(&app, &[BOOK]).await;
    let mut both = mercure_sub(&app, &[BOOK, ALT]).await;
    let mut native_alt = app.subscribe_query(&format!("topic={}", pct(ALT)), None).await;

    let form = format!(
        "topic={}&topic={}&data=a%0Ab+c&id=book-1&type=change&retry=1500",
        pct(BOOK),
        pct(ALT)
    );
    assert_eq!(publish_ok(&app, Some(&publisher), &form).await, "book-1");
    let event = book.next().await;
    assert_eq!(
        (event.id.as_str(), event.event.as_str(), event.data.as_str()),
        ("book-1", "change", "a\nb c")
    );
    assert_eq!(event.retry, Some(Duration::from_millis(1500)));
    // Subscribed to both of its topics: still once.
    assert_eq!(both.next().await.id, "book-1");
    both.assert_silent(QUIET).await;
    // The native API sees it on the alternate topic, under Herald's own id.
    let native = native_alt.next().await;
    assert_eq!(
        (native.event.as_str(), native.data.as_str()),
        ("change", "a\nb c")
    );
    assert!(
        native
            .id
            .split_once('-')
            .is_some_and(|(ms, _)| ms.parse::<u64>().is_ok()),
        "{}",
        native.id
    );

    // Without an id the hub makes one: a UUID URN.
    let made = publish_ok(&app, Some(&publisher), &format!("topic={}&data=x", pct(BOOK))).await;
    assert!(made.starts_with("urn:uuid:") && made.len() == 45, "{made}");
    assert_eq!(book.next().await.id, made);
    // A native publish reaches Mercure subscribers, under its native id.
    let response = app
        .client
        .post(app.url(&format!("/topics/{}", pct(BOOK))))
        .bearer_auth(&publisher)
        .body("native")
        .send()
        .await
        .unwrap();
    // Native answers about a topic name the hub (discovery), on this origin by default.
    assert_eq!(
        response.headers()["link"],
        "</.well-known/mercure>; rel=\"mercure\""
    );
    let id = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let event = book.next().await;
    assert_eq!((event.id.as_str(), event.data.as_str()), (id.as_str(), "native"));
    book.assert_silent(QUIET).await;
}

#[tokio::test]
async fn mercure_publishes_are_checked_and_refused_with_a_sentence() {
    let app = spawn_app_with(|s| {
        s.auth.anonymous_publish = false;
        s.auth.hs_secret = SECRET.into();
        s.limits.max_body_bytes = 4096;
        s.mercure.public_url = "https://hub.example.com/.well-known/mercure".into();
    })
    .await;
    let history = app.client.get(app.url("/topics/a/history")).send().await.unwrap();
    assert_eq!(
        history.headers()["link"],
        "<https://hub.example.com/.well-known/mercure>; rel=\"mercure\""
    );
    let form = format!("topic={}&data=x", pct(BOOK));
    let response = publish_form(&app, None, &form).await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"herald\"");
    assert_problem(response, 401, "token-missing").await;
    let response = publish_form(&app, Some("not.a.jwt"), &form).await;
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error=\"invalid_token\""));
    assert_problem(response, 401, "token-invalid").await;

    // Publish selectors are URI templates too, and must match every topic of the update.
    let books = token(&["https://example.com/books/{id}"], &[]);
    publish_ok(&app, Some(&books), &form).await;
    let response = publish_form(&app, Some(&books), &format!("{form}&topic={}", pct(USER))).await;
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    assert_problem(response, 403, "forbidden").await;

    let publisher = token(&["*"], &[]);
    for bad in [
        "data=no-topic".to_string(),
        "topic=*&data=x".to_string(),
        format!("topic={}&data=x", pct("/.well-known/mercure/subscriptions/a")),
        "topic=a&type=mercure".to_string(),
        "topic=a&id=%23fragment".to_string(),
        "topic=a&id=earliest".to_string(),
        "topic=a&id=a%0Ab".to_string(),
        "topic=a&type=a%0Ab".to_string(),
        "topic=a%0Ab".to_string(),
        "topic=a&retry=1s".to_string(),
        "topic=a&retry=-1".to_string(),
        "topic=a&data=%FF".to_string(),
        format!("topic=a&id={}", "i".repeat(129)),
    ] {
        let response = publish_form(&app, Some(&publisher), &bad).await;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(status, 400, "{bad}: {body}");
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            problem["detail"].as_str().is_some_and(|d| d.len() > 20),
            "{bad}: {body}"
        );
    }
    let response = app
        .client
        .post(app.url(HUB))
        .bearer_auth(&publisher)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "bad-request").await;
    let big = format!("topic=a&data={}", "x".repeat(5000));
    assert_problem(
        publish_form(&app, Some(&publisher), &big).await,
        413,
        "body-too-large",
    )
    .await;
    // Unknown fields are ignored.
    assert_eq!(
        publish_ok(&app, Some(&publisher), "topic=a&data=x&id=ok-1&color=red").await,
        "ok-1"
    );

    // A repeated id is stored once, and answered with the same id.
    let mut sub = mercure_sub(&app, &["dup"]).await;
    assert_eq!(
        publish_ok(&app, Some(&publisher), "topic=dup&data=1&id=dup-1").await,
        "dup-1"
    );
    assert_eq!(
        publish_ok(&app, Some(&publisher), "topic=dup&data=2&id=dup-1").await,
        "dup-1"
    );
    assert_eq!(sub.next().await.data, "1");
    sub.assert_silent(QUIET).await;
}

#[tokio::test]
async fn private_updates_reach_only_subscribers_allowed_to_see_them_live_and_replayed() {
    let app = hub().await;
    let publisher = token(&["*"], &[]);
    let reader = token(&[], &["https://example.com/users/{id}"]);
    let path = hub_path(&[USER]);
    let mut anonymous = mercure_sub(&app, &[USER]).await;
    let mut bearer = mercure_sub_with(&app, &path, ("authorization", format!("Bearer {reader}"))).await;
    let mut cookie =
        mercure_sub_with(&app, &path, ("cookie", format!("mercureAuthorization={reader}"))).await;
    let native_path = format!("/events?topic={}", pct(USER));
    let mut native_anonymous = app.subscribe_at(&native_path, None).await;
    let mut native_bearer =
        mercure_sub_with(&app, &native_path, ("authorization", format!("Bearer {reader}"))).await;

    let topic = pct(USER);
    publish_ok(
        &app,
        Some(&publisher),
        &format!("topic={topic}&data=secret&private=on&id=p-1"),
    )
    .await;
    publish_ok(
        &app,
        Some(&publisher),
        &format!("topic={topic}&data=hello&id=p-2"),
    )
    .await;
    for (name, sub) in [
        ("bearer", &mut bearer),
        ("cookie", &mut cookie),
        ("native bearer", &mut native_bearer),
    ] {
        let data: Vec<String> = sub.take(2).await.into_iter().map(|e| e.data).collect();
        assert_eq!(data, ["secret", "hello"], "{name}");
    }
    for (name, sub) in [
        ("anonymous", &mut anonymous),
        ("native anonymous", &mut native_anonymous),
    ] {
        assert_eq!(sub.next().await.data, "hello", "{name}");
        sub.assert_silent(QUIET).await;
    }
    // The replay follows the same rule, with the token presented now.
    let replay = format!("{path}&lastEventID=earliest");
    let mut anonymous = app.subscribe_at(&replay, None).await;
    assert_eq!(anonymous.next().await.id, "p-2");
    anonymous.assert_silent(QUIET).await;
    let mut bearer = mercure_sub_with(&app, &replay, ("authorization", format!("Bearer {reader}"))).await;
    let ids: Vec<String> = bearer.take(2).await.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["p-1", "p-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_resume_from_a_publishers_id_with_every_spelling_exactly() {
    let redis = RedisServer::start();
    let (a, b) = (spawn_redis_node(&redis).await, spawn_redis_node(&redis).await);
    let mut live = mercure_sub(&b, &[BOOK]).await;
    for n in 1..=5 {
        let id = publish_ok(
            &a,
            None,
            &format!("topic={}&data=u{n}&id=urn:test:{n}", pct(BOOK)),
        )
        .await;
        assert_eq!(id, format!("urn:test:{n}"));
    }
    let live_ids: Vec<String> = live.take(5).await.into_iter().map(|e| e.id).collect();
    assert_eq!(
        live_ids,
        (1..=5).map(|n| format!("urn:test:{n}")).collect::<Vec<_>>()
    );

    let base = hub_path(&[BOOK]);
    let mut resumed = Vec::new();
    for (node, spelling) in [
        (&b, "header"),
        (&a, "lastEventID"),
        (&b, "Last-Event-ID"),
        (&a, "last_event_id"),
    ] {
        let (path, header) = match spelling {
            "header" => (base.clone(), Some("urn:test:2")),
            query => (format!("{base}&{query}=urn:test:2"), None),
        };
        let mut request = node.client.get(node.url(&path));
        if let Some(id) = header {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{spelling}");
        assert_eq!(response.headers()["last-event-id"], "urn:test:2", "{spelling}");
        assert_eq!(
            response.headers()["mercure-last-event-id"],
            "urn:test:2",
            "{spelling}"
        );
        use eventsource_stream::Eventsource;
        let mut sub = Subscriber::from_events(Box::pin(response.bytes_stream().eventsource()));
        let ids: Vec<String> = sub.take(3).await.into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["urn:test:3", "urn:test:4", "urn:test:5"], "{spelling}");
        resumed.push((spelling, sub));
    }
    publish_ok(&b, None, &format!("topic={}&data=u6&id=urn:test:6", pct(BOOK))).await;
    for (spelling, sub) in &mut resumed {
        assert_eq!(sub.next().await.id, "urn:test:6", "{spelling}");
        sub.assert_silent(QUIET).await;
    }
    let mut all = a
        .subscribe_at(&format!("{base}&lastEventID=earliest"), None)
        .await;
    let ids: Vec<String> = all.take(6).await.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, (1..=6).map(|n| format!("urn:test:{n}")).collect::<Vec<_>>());
    all.assert_silent(QUIET).await;
}

#[tokio::test]
async fn symfonys_mercure_client_publishes_and_its_ids_come_back() {
    let script = format!(
        "{}/tests/fixtures/mercure_publish.php",
        env!("CARGO_MANIFEST_DIR")
    );
    assert!(
        std::path::Path::new("/usr/share/php/Symfony/Component/Mercure/autoload.php").exists(),
        "this test runs Debian's Mercure client: apt-get install php-cli php-symfony-mercure"
    );
    let app = hub().await;
    let mut anonymous = mercure_sub(&app, &[BOOK, USER]).await;
    let reader = token(&[], &["*"]);
    let mut allowed = mercure_sub_with(
        &app,
        &hub_path(&[BOOK, USER]),
        ("authorization", format!("Bearer {reader}")),
    )
    .await;
    let updates = serde_json::json!([
        { "topics": [BOOK], "data": "{\"title\": \"Dune & co\"}", "id": "book-v1" },
        { "topics": [BOOK], "data": "no id given" },
        { "topics": [USER, BOOK], "data": "line 1\nline 2", "private": true, "id": "user-v1", "type": "profile" },
        { "topics": USER, "data": "with retry", "retry": 2500 },
    ]);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), updates.to_string()).unwrap();
    let output = tokio::process::Command::new("php")
        .arg(&script)
        .arg(app.url(HUB))
        .arg(token(&["*"], &[]))
        .arg(file.path())
        .output()
        .await
        .expect("php runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the Symfony client failed: {stderr}");
    let ids: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(ids[0], "book-v1");
    assert!(ids[1].starts_with("urn:uuid:"), "{ids:?}");
    assert_eq!(ids[2], "user-v1");

    let got: Vec<_> = allowed.take(4).await;
    let seen: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(seen, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(got[0].data, "{\"title\": \"Dune & co\"}");
    assert_eq!(
        (got[2].event.as_str(), got[2].data.as_str()),
        ("profile", "line 1\nline 2")
    );
    assert_eq!(got[3].retry, Some(Duration::from_millis(2500)));
    allowed.assert_silent(QUIET).await;
    // The private update is held back from the anonymous page.
    let public: Vec<String> = anonymous.take(3).await.into_iter().map(|e| e.id).collect();
    assert_eq!(public, [ids[0].clone(), ids[1].clone(), ids[3].clone()]);
    anonymous.assert_silent(QUIET).await;
}

/// What a stream got: (id, data) pairs, until it has been quiet for a while.
async fn got(sub: &mut Subscriber) -> Vec<(String, String)> {
    sub.until_end_or_quiet(QUIET)
        .await
        .into_iter()
        .map(|(e, _)| (e.id, e.data))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_selectors_select_topics_once_each_on_one_node_and_across_redis_nodes() {
    let redis = RedisServer::start();
    let (a, b) = (spawn_redis_node(&redis).await, spawn_redis_node(&redis).await);
    let memory = spawn_app().await;
    for (name, publisher, subscriber) in [("redis", &a, &b), ("memory", &memory, &memory)] {
        let template = "https://example.com/books/{id}";
        // Both spellings: the newest draft's (matchURLPattern) and the (match_urlpattern).
        let spelling = if name == "redis" {
            "matchURLPattern"
        } else {
            "match_urlpattern"
        };
        let url_pattern = format!("{HUB}?{spelling}={}", pct("https://example.com/books/:id"));
        let mut by_template = mercure_sub(subscriber, &[template]).await;
        let mut by_url = subscriber.subscribe_at(&url_pattern, None).await;
        let mut everything = mercure_sub(subscriber, &["*", BOOK]).await;
        let mut mixed = mercure_sub(subscriber, &[BOOK, template]).await;
        // Two patterns that both select the books: each event still once.
        let two = format!(
            "{}&matchURLPattern={}",
            hub_path(&[template]),
            pct("https://example.com/books/:id")
        );
        let mut two_patterns = subscriber.subscribe_at(&two, None).await;
        let mut native = subscriber
            .subscribe_query(&format!("topic={}", pct(BOOK)), None)
            .await;
        let topics = [
            BOOK,
            "https://example.com/books/2",
            "https://example.com/books/2/reviews",
            "other",
        ];
        for (n, topic) in topics.iter().enumerate() {
            publish_ok(
                publisher,
                None,
                &format!("topic={}&data=d{n}&id={name}-{n}", pct(topic)),
            )
            .await;
        }
        let want = |ns: &[usize]| -> Vec<(String, String)> {
            ns.iter()
                .map(|n| (format!("{name}-{n}"), format!("d{n}")))
                .collect()
        };
        assert_eq!(got(&mut by_template).await, want(&[0, 1]), "{name}: URI template");
        assert_eq!(got(&mut by_url).await, want(&[0, 1]), "{name}: URL pattern");
        assert_eq!(
            got(&mut everything).await,
            want(&[0, 1, 2, 3]),
            "{name}: * and a topic"
        );
        assert_eq!(
            got(&mut mixed).await,
            want(&[0, 1]),
            "{name}: a topic and a template"
        );
        assert_eq!(
            got(&mut two_patterns).await,
            want(&[0, 1]),
            "{name}: two patterns"
        );
        let native: Vec<String> = got(&mut native).await.into_iter().map(|(_, d)| d).collect();
        assert_eq!(native, ["d0"], "{name}: native");

        // Resuming a pattern stream: what the template selects is replayed exactly too (the engines list
        // the topics published to lately), after what the named topic holds.
        let resume = format!("{}&lastEventID={name}-0", hub_path(&[BOOK, template]));
        let response = subscriber
            .client
            .get(subscriber.url(&resume))
            .send()
            .await
            .unwrap();
        use eventsource_stream::Eventsource;
        assert_eq!(response.headers()["last-event-id"], format!("{name}-0").as_str());
        let mut resumed = Subscriber::from_events(Box::pin(response.bytes_stream().eventsource()));
        assert_eq!(
            got(&mut resumed).await,
            want(&[1]),
            "{name}: the template's replay"
        );
        // From the start: every topic `*` selects, each event once.
        let all = format!("{}&lastEventID=earliest", hub_path(&["*"]));
        let mut everything = subscriber.subscribe_at(&all, None).await;
        let mut replayed = got(&mut everything).await;
        replayed.retain(|(id, _)| id.starts_with(name));
        replayed.sort();
        assert_eq!(replayed, want(&[0, 1, 2, 3]), "{name}: * from the start");
    }
}

/// Mercure 1.0 access tokens (RFC 9068 `at+jwt`, `authorization_details`), as the Mercure project's own
/// conformance tests mint them: its key, audience and issuer.
#[tokio::test]
async fn mercure_access_tokens_grant_what_their_authorization_details_say_and_nothing_else() {
    const KEY: &str = "!ChangeThisMercureHubJWTSecretKey!";
    const AUD: &str = "https://localhost/.well-known/mercure";
    const ISS: &str = "https://localhost";
    let app = spawn_app_with(|s| {
        s.auth.anonymous_publish = false;
        s.auth.hs_secret = KEY.into();
        s.auth.audience = AUD.into();
        s.auth.issuer = ISS.into();
    })
    .await;
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let sign = |claims: serde_json::Value| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()),
        )
        .unwrap()
    };
    let token = |details: serde_json::Value| {
        sign(serde_json::json!({ "aud": AUD, "iss": ISS, "exp": exp, "authorization_details": details }))
    };
    let detail = |actions: &[&str], topics: serde_json::Value| serde_json::json!({ "type": "https://mercure.rocks/authorization-detail", "actions": actions, "topics": topics });
    let publisher = token(serde_json::json!([detail(
        &["publish"],
        serde_json::json!([{ "match": BOOK }])
    )]));
    let form = |topic: &str, extra: &str| format!("topic={}&data=x{extra}", pct(topic));
    publish_ok(&app, Some(&publisher), &form(BOOK, "")).await;
    assert_problem(
        publish_form(&app, Some(&publisher), &form(USER, "")).await,
        403,
        "forbidden",
    )
    .await;

    // A subscriber allowed users by URL pattern (the newest draft's spelling of the detail type) gets
    // their private updates; one allowed books only does not.
    let users = token(serde_json::json!([{
        "type": "mercure", "actions": ["subscribe"],
        "topics": [{ "match": "https://example.com/users/:id", "matchType": "URLPattern" }],
        "payload": { "name": "Ada" },
    }]));
    let books = token(serde_json::json!([detail(
        &["subscribe"],
        serde_json::json!([{ "match_urlpattern": "https://example.com/books/:id" }])
    )]));
    let all = token(serde_json::json!([detail(
        &["publish", "subscribe"],
        serde_json::json!([{ "match": "*" }])
    )]));
    let path = hub_path(&[USER]);
    let mut allowed = mercure_sub_with(&app, &path, ("authorization", format!("Bearer {users}"))).await;
    let mut other = mercure_sub_with(&app, &path, ("authorization", format!("Bearer {books}"))).await;
    publish_ok(
        &app,
        Some(&all),
        &format!("topic={}&data=secret&private=on&id=at-1", pct(USER)),
    )
    .await;
    publish_ok(
        &app,
        Some(&all),
        &format!("topic={}&data=hello&id=at-2", pct(USER)),
    )
    .await;
    let ids: Vec<String> = allowed.take(2).await.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["at-1", "at-2"]);
    assert_eq!(other.next().await.id, "at-2");
    other.assert_silent(QUIET).await;

    // Refused as invalid: no exp, another issuer, an unknown action, a bad topic entry (even beside a
    // good detail), a URL pattern that does not compile.
    let good = detail(&["publish"], serde_json::json!([{ "match": "*" }]));
    for (why, bad) in [
        (
            "no exp",
            sign(serde_json::json!({ "aud": AUD, "iss": ISS, "authorization_details": [good.clone()] })),
        ),
        (
            "another issuer",
            sign(
                serde_json::json!({ "aud": AUD, "iss": "https://evil", "exp": exp, "authorization_details": [good.clone()] }),
            ),
        ),
        (
            "an unknown action",
            token(serde_json::json!([detail(
                &["delete"],
                serde_json::json!([{ "match": "*" }])
            )])),
        ),
        (
            "a bad topic beside a good detail",
            token(serde_json::json!([
                good.clone(),
                detail(&["publish"], serde_json::json!(["not-an-object"]))
            ])),
        ),
        (
            "an unknown matchType",
            token(serde_json::json!([detail(
                &["publish"],
                serde_json::json!([{ "match": "*", "matchType": "Regex" }])
            )])),
        ),
        (
            "a broken URL pattern",
            token(serde_json::json!([detail(
                &["publish"],
                serde_json::json!([{ "match_urlpattern": "https://x/(" }])
            )])),
        ),
        (
            "no topics",
            token(serde_json::json!([detail(&["publish"], serde_json::json!([]))])),
        ),
    ] {
        let response = publish_form(&app, Some(&bad), &form(BOOK, "")).await;
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token"),
            "{why}"
        );
        assert_problem(response, 401, "token-invalid").await;
    }
    // An access token grants only what its details say: legacy claims in it count for nothing.
    let legacy_inside =
        sign(serde_json::json!({ "aud": AUD, "iss": ISS, "exp": exp, "mercure": { "publish": ["*"] } }));
    assert_problem(
        publish_form(&app, Some(&legacy_inside), &form(BOOK, "")).await,
        403,
        "forbidden",
    )
    .await;
}

/// Which token counts when several are sent: the Authorization header, else the query
/// (`authorization`, or RFC 6750's `access_token`), else a cookie.
#[tokio::test]
async fn the_header_beats_the_query_which_beats_the_cookie() {
    let app = hub().await;
    let publisher = token(&["*"], &[]);
    let reader = token(&[], &[USER]);
    let stranger = token(&[], &["https://example.com/other"]);
    publish_ok(
        &app,
        Some(&publisher),
        &format!("topic={}&data=secret&private=on&id=q-1", pct(USER)),
    )
    .await;
    let replay = |query: &str| format!("{}&lastEventID=earliest{query}", hub_path(&[USER]));
    for (case, query, cookie, header, sees) in [
        (
            "access_token",
            format!("&access_token={reader}"),
            None,
            None,
            true,
        ),
        (
            "the query over the cookie",
            format!("&authorization={reader}"),
            Some(&stranger),
            None,
            true,
        ),
        ("the cookie alone", String::new(), Some(&reader), None, true),
        (
            "the header over the query",
            format!("&access_token={reader}"),
            None,
            Some(&stranger),
            false,
        ),
    ] {
        let mut request = app.client.get(app.url(&replay(&query)));
        if let Some(cookie) = cookie {
            request = request.header("cookie", format!("mercureAuthorization={cookie}"));
        }
        if let Some(header) = header {
            request = request.bearer_auth(header);
        }
        use eventsource_stream::Eventsource;
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{case}");
        let mut sub = Subscriber::from_events(Box::pin(response.bytes_stream().eventsource()));
        let ids: Vec<String> = got(&mut sub).await.into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids.contains(&"q-1".to_string()), sees, "{case}: {ids:?}");
    }
}

/// A pattern selects only what its subscriber may read: topics of `auth.private_topics` reach a `*`
/// stream only with a token listing them, live and replayed.
#[tokio::test]
async fn a_pattern_does_not_open_private_topics() {
    let app = spawn_app_with(|s| {
        s.auth.anonymous_publish = false;
        s.auth.hs_secret = SECRET.into();
        s.auth.private_topics = vec!["private.*".into()];
    })
    .await;
    let publisher = token(&["*"], &[]);
    let reader = token(&[], &["private.*"]);
    let mut anonymous = mercure_sub(&app, &["*"]).await;
    let mut allowed = mercure_sub_with(
        &app,
        &hub_path(&["*"]),
        ("authorization", format!("Bearer {reader}")),
    )
    .await;
    publish_ok(&app, Some(&publisher), "topic=private.a&data=secret&id=pp-1").await;
    publish_ok(&app, Some(&publisher), "topic=public.a&data=hello&id=pp-2").await;
    let ids = |events: Vec<(String, String)>| events.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(ids(got(&mut anonymous).await), ["pp-2"]);
    assert_eq!(ids(got(&mut allowed).await), ["pp-1", "pp-2"]);
    let replay = format!("{}&lastEventID=earliest", hub_path(&["*"]));
    let mut anonymous = app.subscribe_at(&replay, None).await;
    assert_eq!(ids(got(&mut anonymous).await), ["pp-2"]);
    let mut allowed = mercure_sub_with(&app, &replay, ("authorization", format!("Bearer {reader}"))).await;
    let mut replayed = ids(got(&mut allowed).await);
    replayed.sort();
    assert_eq!(replayed, ["pp-1", "pp-2"]);
}

/// On Redis a Mercure update's id lives in its topic's id hash for as long as the stream holds the
/// update: trimming drops both, so ids cannot pile up past the history, and a resume from a trimmed id
/// gets what is retained after the gap notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_ids_are_trimmed_with_the_history_they_point_into() {
    let redis = RedisServer::start();
    let url = redis.url();
    let app = spawn_app_with(move |s| {
        s.redis.url = url;
        s.redis.startup_wait_secs = Duration::from_secs(5);
        s.history.max_len = 5;
    })
    .await;
    for n in 0..130 {
        publish_ok(&app, None, &format!("topic=trim&data=d{n}&id=t-{n}")).await;
    }
    let len: usize = redis
        .cli(&["XLEN", "herald:{trim}"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let ids: usize = redis
        .cli(&["HLEN", "herald:{trim}:ids"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(ids, len, "the id hash holds what the stream holds");
    assert!(len < 110, "trimmed to max_len plus its slack: {len}");
    assert_eq!(redis.cli(&["HEXISTS", "herald:{trim}:ids", "t-0"]).unwrap(), "0");
    assert_eq!(
        redis.cli(&["HEXISTS", "herald:{trim}:ids", "t-129"]).unwrap(),
        "1"
    );
    assert_eq!(
        redis.cli(&["TYPE", "herald:{trim}:idem:t-0"]).unwrap().trim(),
        "none"
    );
    // From a retained id: exactly what followed; from a trimmed one: the gap, then what is retained.
    let mut exact = app
        .subscribe_at(&format!("{}&lastEventID=t-127", hub_path(&["trim"])), None)
        .await;
    assert_eq!(
        got(&mut exact)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>(),
        ["t-128", "t-129"]
    );
    let response = app
        .client
        .get(app.url(&format!("{}&lastEventID=t-0", hub_path(&["trim"]))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["last-event-id"], "earliest");
    use eventsource_stream::Eventsource;
    let mut gapped = Subscriber::from_events(Box::pin(response.bytes_stream().eventsource()));
    assert_eq!(gapped.next().await.event, "herald.gap");
    let rest = got(&mut gapped).await;
    assert_eq!(rest.len(), len);
    assert_eq!(rest.last().map(|(id, _)| id.as_str()), Some("t-129"));
}

/// A pattern resume names at most the stream's topic limit: past it, the stream says its patterns are
/// not all replayed (`herald.gap`, `Last-Event-ID: earliest`) instead of replaying some silently.
#[tokio::test]
async fn a_pattern_resume_past_the_topic_limit_says_so() {
    let app = spawn_app_with(|s| s.limits.max_topics_per_connection = 4).await;
    for n in 0..6 {
        publish_ok(&app, None, &format!("topic=many.{n}&data=d{n}")).await;
    }
    let path = format!("{}&lastEventID=earliest", hub_path(&["*"]));
    let response = app.client.get(app.url(&path)).send().await.unwrap();
    assert_eq!(response.headers()["last-event-id"], "earliest");
    use eventsource_stream::Eventsource;
    let mut sub = Subscriber::from_events(Box::pin(response.bytes_stream().eventsource()));
    let notice = sub.next().await;
    assert_eq!(notice.event, "herald.gap");
    assert!(notice.data.contains("pattern"), "{}", notice.data);
}
