//! The Mercure project's browser conformance suite (`conformance-tests/mercure.spec.ts` in its
//! repository), case by case, in headless Chromium. Its own runner is Playwright from npm, which this
//! project cannot reach, so the cases are written again here with the suite's inputs, procedure and
//! checks: load the hub's `/`, open a native `EventSource` on `/.well-known/mercure` with the case's
//! selectors, wait until it is open, `fetch`-POST the update as a form with the suite's token, then expect
//! the event (type `message`, the publisher's id as `lastEventId`, the data byte for byte) within 2 s, or
//! expect it not to come; a received update's reply must be `200 text/plain` whose body is the id.
//!
//! The suite's own cases run as it runs them (the 0.x token shape: `mercure.publish`/`subscribe`, no
//! `exp`, no `aud`). The 1.0 set runs the same procedure with the 1.0 dialect: an `at+jwt` token with its
//! `aud` and `iss`, and `match=` / `matchURLPattern=` selectors. Cases marked "(Herald)" are ours: a
//! private update with an id of its own is held back from an anonymous subscriber and reaches one whose
//! token allows it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::helpers::{spawn_app_with, spawn_redis_node_with, TestApp, PATIENCE};
use crate::redis_server::RedisServer;

/// The key, audience and issuer the suite's hub is configured with.
const KEY: &str = "!ChangeThisMercureHubJWTSecretKey!";
const AUD: &str = "https://localhost/.well-known/mercure";
const ISS: &str = "https://localhost";

struct Case {
    name: &'static str,
    update_topics: Vec<String>,
    /// Query parameters: (`topic` | `match` | `matchURLPattern`, selector).
    selectors: Vec<(&'static str, String)>,
    must_be_received: bool,
    private: bool,
    /// A token for the subscriber (sent as the `authorization` query parameter); the suite's are anonymous.
    subscriber: Option<String>,
}

fn case(
    name: &'static str,
    must_be_received: bool,
    update_topics: &[String],
    selectors: &[(&'static str, String)],
) -> Case {
    Case {
        name,
        update_topics: update_topics.to_vec(),
        selectors: selectors.to_vec(),
        must_be_received,
        private: false,
        subscriber: None,
    }
}

fn private(mut case: Case) -> Case {
    case.private = true;
    case
}

fn random() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The suite's dataset, with its random strings made here; `key` is the selector parameter it uses.
fn dataset(key: &'static str, template: (&'static str, String)) -> Vec<Case> {
    let r: Vec<String> = (0..6).map(|_| random()).collect();
    let s = |v: &str| (key, v.to_string());
    let uri = |v: &str| format!("https://example.net/foo/{v}");
    vec![
        case("raw string", true, &[r[0].clone()], &[s(&r[0])]),
        case("multiple topics", true, &[random(), r[1].clone()], &[s(&r[1])]),
        case(
            "multiple topic selectors",
            true,
            &[r[2].clone()],
            &[s("foo"), s(&r[2])],
        ),
        case("URI", true, &[uri(&r[3])], &[s(&uri(&r[3]))]),
        case(
            "URI template",
            true,
            &[uri(&r[4])],
            std::slice::from_ref(&template),
        ),
        case(
            "nonmatching raw string",
            false,
            &["will-not-match}".into()],
            &[s("another-name")],
        ),
        case(
            "nonmatching URI",
            false,
            &[uri("will-not-match}")],
            &[s(&uri("another-name"))],
        ),
        case(
            "nonmatching URI template",
            false,
            &[uri("will-not-match}")],
            &[(
                template.0,
                format!("https://example.net/bar/{}", placeholder(template.0)),
            )],
        ),
        private(case("private raw string", false, &[r[0].clone()], &[s(&r[0])])),
        private(case("private URI", false, &[uri(&r[3])], &[s(&uri(&r[3]))])),
        private(case("private URI template", false, &[uri(&r[4])], &[template])),
    ]
}

/// A variable in the template dialect of `key`: RFC 6570 for `topic`, URL Pattern for `matchURLPattern`.
fn placeholder(key: &str) -> String {
    if key == "matchURLPattern" {
        ":var".into()
    } else {
        "{var}".into()
    }
}

/// Runs one case in a fresh page and returns what the page saw.
async fn run(browser: &Browser, hub: &TestApp, publisher: &str, case: &Case) -> Value {
    // The suite's beforeEach: a fresh page on the hub's origin (which also closes the last case's stream).
    browser.client.goto(&hub.url("/")).await.expect("page loads");
    let mut selectors = case.selectors.clone();
    if let Some(token) = &case.subscriber {
        selectors.push(("authorization", token.clone()));
    }
    let data = json!({
        "name": case.name,
        "updateTopics": case.update_topics,
        "selectors": selectors,
        "updateID": format!("id-{}", serde_json::to_string(&case.update_topics).unwrap()),
        "private": case.private,
        "token": publisher,
    });
    browser
        .client
        .execute(
            "const data = arguments[0];
             window.result = null;
             (async () => {
               let resolveReady;
               const ready = new Promise((resolve) => { resolveReady = () => resolve(true); });
               let resolveReceived;
               const received = new Promise((resolve) => { resolveReceived = () => resolve(true); });
               const timeout = new Promise((resolve) => setTimeout(resolve, 2000, false));
               const url = new window.URL('/.well-known/mercure', window.origin);
               data.selectors.forEach(([key, value]) => url.searchParams.append(key, value));
               const event = new window.URLSearchParams();
               data.updateTopics.forEach((topic) => event.append('topic', topic));
               event.set('id', data.updateID);
               event.set('data', `data for\n\n        ${data.name}`);
               if (data.private) event.set('private', 'on');
               const es = new EventSource(url);
               es.onopen = () => resolveReady();
               es.onmessage = (e) => {
                 if (e.type === 'message' && e.lastEventId === event.get('id') && e.data === event.get('data')) {
                   es.close();
                   resolveReceived();
                 }
               };
               await ready;
               const resp = await fetch('/.well-known/mercure', {
                 method: 'POST',
                 headers: { Authorization: 'Bearer ' + data.token },
                 body: event,
               });
               const body = await resp.text();
               const got = await Promise.race([received, timeout]);
               es.close();
               window.result = {
                 received: got,
                 contentType: resp.headers.get('Content-Type'),
                 status: resp.status,
                 body,
                 id: data.updateID,
               };
             })().catch((e) => { window.result = { error: String(e) }; });",
            vec![data],
        )
        .await
        .expect("the case starts");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let result = browser.js("return window.result").await;
        if !result.is_null() {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the page never finished",
            case.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn check(browser: &Browser, hub: &TestApp, publisher: &str, dialect: &str, cases: &[Case]) {
    for case in cases {
        let result = run(browser, hub, publisher, case).await;
        let name = format!("{dialect} / {}", case.name);
        assert!(result.get("error").is_none(), "{name}: {result}");
        assert_eq!(
            result["received"],
            json!(case.must_be_received),
            "{name}: received is not {}: {result}",
            case.must_be_received
        );
        // Beyond the suite: a case that must not arrive was still accepted, so it proves the selector.
        assert_eq!(result["status"], json!(200), "{name}: {result}");
        if case.must_be_received {
            let content_type = result["contentType"].as_str().unwrap_or("");
            assert!(
                content_type == "text/plain" || content_type.starts_with("text/plain;"),
                "{name}: Content-Type {content_type}"
            );
            assert_eq!(result["body"], result["id"], "{name}: the reply is not the id");
        }
        eprintln!("conformance {name}: ok");
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn sign(header: jsonwebtoken::Header, claims: &Value) -> String {
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()),
    )
    .unwrap()
}

/// A 1.0 access token for `actions` on every topic, with the suite's audience and issuer.
fn access_token(actions: &[&str], topics: Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    sign(
        header,
        &json!({
            "aud": AUD, "iss": ISS, "exp": now() + 600,
            "authorization_details": [{
                "type": "https://mercure.rocks/authorization-detail",
                "actions": actions,
                "topics": topics,
            }],
        }),
    )
}

/// Private updates on a topic of their own. The suite's private cases reuse an earlier case's topics,
/// and so its update id, which a hub that stores a repeated id once would hold back for that reason alone.
fn held_back_and_allowed(template: (&'static str, &'static str), token: String) -> [Case; 2] {
    let fresh = |name, subscriber: Option<String>| Case {
        name,
        update_topics: vec![format!("https://example.net/foo/{}", random())],
        selectors: vec![(template.0, template.1.to_string())],
        must_be_received: subscriber.is_some(),
        private: true,
        subscriber,
    };
    [
        fresh("private, a new id, anonymous subscriber (Herald)", None),
        fresh("private, subscriber allowed by its token (Herald)", Some(token)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mercure_conformance_cases_pass_on_the_memory_and_redis_engines() {
    let browser = Browser::start().await;

    // The suite as it is: the 0.x token (what its hub's key signs: publish and subscribe `*`, no exp).
    let memory = spawn_app_with(|s| {
        s.auth.anonymous_publish = false;
        s.auth.hs_secret = KEY.into();
    })
    .await;
    let legacy = sign(
        jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "mercure": { "publish": ["*"], "subscribe": ["*"] } }),
    );
    let mut cases = dataset("topic", ("topic", "https://example.net/foo/{random}".into()));
    cases.extend(held_back_and_allowed(
        ("topic", "https://example.net/foo/{random}"),
        legacy.clone(),
    ));
    check(&browser, &memory, &legacy, "0.x on memory", &cases).await;

    // The 1.0 dialect on Redis: at+jwt with the suite's audience and issuer, 1.0 selectors.
    let redis = RedisServer::start();
    let node = spawn_redis_node_with(&redis, |s| {
        s.auth.anonymous_publish = false;
        s.auth.hs_secret = KEY.into();
        s.auth.audience = AUD.into();
        s.auth.issuer = ISS.into();
    })
    .await;
    let publisher = access_token(&["publish", "subscribe"], json!([{ "match": "*" }]));
    let mut cases = dataset(
        "match",
        ("matchURLPattern", "https://example.net/foo/:random".into()),
    );
    cases.extend(held_back_and_allowed(
        ("matchURLPattern", "https://example.net/foo/:random"),
        access_token(
            &["subscribe"],
            json!([{ "match_urlpattern": "https://example.net/foo/:id" }]),
        ),
    ));
    check(&browser, &node, &publisher, "1.0 on Redis", &cases).await;
    // The legacy token has no `aud`: a hub that requires one refuses it.
    let refused = run(&browser, &node, &legacy, &cases[0]).await;
    assert_eq!(refused["status"], json!(401), "{refused}");
    browser.close().await;
}
