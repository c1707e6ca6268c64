//! Hostile input, each with the status and problem a client sees: forged and malformed tokens, private
//! topics, limits, injection attempts, slow clients.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use herald::auth::{self, Claims, MercureClaim};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{assert_problem, read_until, spawn_app_with, TestApp, PATIENCE};

const SECRET: &str = "test-secret-test-secret-test-secret-42";
const AUDIENCE: &str = "herald-test";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A hub that requires tokens to publish, has private `private.*` topics, and accepts HS256, RS256 and
/// ES256 with an audience and no leeway.
async fn secured() -> TestApp {
    spawn_app_with(|s| {
        let a = &mut s.auth;
        a.anonymous_publish = false;
        a.private_topics = vec!["private.*".into()];
        a.hs_secret = SECRET.into();
        a.rsa_public_key_file = fixture("rsa_public.pem");
        a.ec_public_key_file = fixture("ec_public.pem");
        a.audience = AUDIENCE.into();
        a.leeway_secs = std::time::Duration::ZERO;
        s.presence.enabled = true;
    })
    .await
}

fn claims(publish: &[&str], subscribe: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "mercure": { "publish": publish, "subscribe": subscribe },
        "exp": now() + 600,
        "aud": AUDIENCE,
    })
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs(claims: &serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn alg_none(claims: &serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

enum Via {
    Header,
    Cookie,
    Query,
    None,
}

/// One open stream per topic, read with `token`, held until the answer is dropped; the node counts them.
async fn hold_streams(app: &TestApp, topics: &[&str], token: &str) -> Vec<reqwest::Response> {
    let mut held = Vec::new();
    for topic in topics {
        let stream = app
            .client
            .get(app.url(&format!("/events?topic={topic}")))
            .bearer_auth(token);
        held.push(stream.send().await.unwrap());
    }
    app.wait_metric("herald_connections", topics.len() as u64).await;
    held
}

async fn publish_with(app: &TestApp, topic: &str, token: &str, via: Via) -> reqwest::Response {
    let mut url = app.url(&format!("/topics/{topic}"));
    let mut request = app.client.post(&url).body("payload");
    match via {
        Via::Header => request = request.bearer_auth(token),
        // A page of the hub's own origin: a cookie token counts only with an Origin the hub trusts.
        Via::Cookie => {
            request = request
                .header("Cookie", format!("other=1; herald_authorization={token}"))
                .header("Origin", app.address.as_str())
        }
        Via::Query => {
            url.push_str(&format!("?authorization={token}"));
            request = app.client.post(&url).body("payload");
        }
        Via::None => {}
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn hostile_tokens_are_refused_with_the_right_status() {
    let app = secured().await;
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa_private.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec_private.pem")).unwrap()).unwrap();
    let rsa_public = std::fs::read(fixture("rsa_public.pem")).unwrap();
    let ok = claims(&["news"], &[]);
    let mut expired = ok.clone();
    expired["exp"] = (now() - 100).into();
    let mut early = ok.clone();
    early["nbf"] = (now() + 1000).into();
    let mut wrong_aud = ok.clone();
    wrong_aud["aud"] = "someone-else".into();

    let cases: Vec<(&str, String, Via, u16, &str)> = vec![
        ("valid HS256 by header", hs(&ok), Via::Header, 200, ""),
        ("valid HS256 by cookie", hs(&ok), Via::Cookie, 200, ""),
        ("valid HS256 by query", hs(&ok), Via::Query, 200, ""),
        (
            "valid RS256",
            sign(Algorithm::RS256, &rsa, &ok),
            Via::Header,
            200,
            "",
        ),
        (
            "valid ES256",
            sign(Algorithm::ES256, &ec, &ok),
            Via::Header,
            200,
            "",
        ),
        (
            "forged signature",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-another-secret-1234"),
                &ok,
            ),
            Via::Header,
            401,
            "token-invalid",
        ),
        (
            "algorithm not allowed (HS512)",
            sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                &ok,
            ),
            Via::Header,
            401,
            "token-invalid",
        ),
        (
            "algorithm confusion: HS256 keyed with the RSA public key",
            sign(Algorithm::HS256, &EncodingKey::from_secret(&rsa_public), &ok),
            Via::Header,
            401,
            "token-invalid",
        ),
        ("alg: none", alg_none(&ok), Via::Header, 401, "token-invalid"),
        ("expired", hs(&expired), Via::Header, 401, "token-invalid"),
        ("not yet valid", hs(&early), Via::Header, 401, "token-invalid"),
        (
            "wrong audience",
            hs(&wrong_aud),
            Via::Header,
            401,
            "token-invalid",
        ),
        (
            "token for another topic",
            hs(&claims(&["other"], &[])),
            Via::Header,
            403,
            "forbidden",
        ),
        (
            "subscribe-only token",
            hs(&claims(&[], &["*"])),
            Via::Header,
            403,
            "forbidden",
        ),
        ("garbage", "not.a.jwt".into(), Via::Header, 401, "token-invalid"),
        ("no token", String::new(), Via::None, 401, "token-missing"),
    ];
    for (name, token, via, status, code) in cases {
        let response = publish_with(&app, "news", &token, via).await;
        if status == 200 {
            assert_eq!(response.status(), 200, "{name}: {:?}", response.text().await);
        } else {
            let www = response.headers().get("www-authenticate").cloned();
            let body = assert_problem(response, status, code).await;
            eprintln!("{name}: {status} {}", body["detail"]);
            if status == 401 {
                assert!(www.is_some(), "{name}: 401 names the Bearer scheme");
            }
        }
    }
    // Not a Bearer credential at all.
    let basic = app
        .client
        .post(app.url("/topics/news"))
        .basic_auth("u", Some("p"))
        .body("x")
        .send()
        .await;
    assert_problem(basic.unwrap(), 401, "token-invalid").await;
}

#[tokio::test]
async fn private_topics_need_a_token_listing_them() {
    let app = secured().await;
    let get = |query: String| app.client.get(app.url(&format!("/events?{query}"))).send();
    assert_problem(
        get("topic=private.alice".into()).await.unwrap(),
        401,
        "token-missing",
    )
    .await;
    let bob = hs(&claims(&[], &["private.bob"]));
    assert_problem(
        get(format!("topic=private.alice&authorization={bob}"))
            .await
            .unwrap(),
        403,
        "forbidden",
    )
    .await;
    let alice = hs(&claims(&[], &["private.alice"]));
    let ok = get(format!("topic=private.alice&topic=public&authorization={alice}"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Public topics need nothing, but a bad token is never ignored.
    assert_eq!(get("topic=public".into()).await.unwrap().status(), 200);
    assert_problem(
        get("topic=public&authorization=junk".into()).await.unwrap(),
        401,
        "token-invalid",
    )
    .await;
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let app = secured().await;
    let mut short = claims(&[], &["private.x"]);
    short["exp"] = (now() + 2).into();
    let response = app
        .client
        .get(app.url("/events?topic=private.x"))
        .bearer_auth(hs(&short))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(PATIENCE, response.text())
        .await
        .expect("the stream ends")
        .unwrap();
    assert!(
        body.ends_with(": herald: the token expired; reconnect with a fresh one\n\n"),
        "{body}"
    );
}

#[tokio::test]
async fn the_token_command_mints_what_the_hub_accepts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "--publish", "news", "--ttl", "60"])
        .env("HERALD__AUTH__HS_SECRET", SECRET)
        .env("HERALD__AUTH__AUDIENCE", AUDIENCE)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let app = secured().await;
    assert_eq!(
        publish_with(&app, "news", &token, Via::Header).await.status(),
        200
    );
    assert_eq!(
        publish_with(&app, "other", &token, Via::Header).await.status(),
        403
    );
    // The library's own helpers agree.
    let minted = auth::mint(
        SECRET,
        &Claims {
            mercure: MercureClaim::default(),
            exp: None,
            aud: None,
        },
    )
    .unwrap();
    assert!(auth::Auth::from_settings(&herald::config::Settings::defaults().unwrap().auth).is_ok());
    assert_eq!(minted.split('.').count(), 3);
}

#[tokio::test]
async fn publishing_is_rate_limited_per_client_ip() {
    let app = spawn_app_with(|s| {
        s.limits.publish_rate_per_ip = 2;
        s.limits.publish_burst_per_ip = 3;
        s.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let post = |ip: &'static str| {
        app.client
            .post(app.url("/topics/t"))
            .header("X-Forwarded-For", ip)
            .body("x")
            .send()
    };
    for _ in 0..3 {
        assert_eq!(post("198.51.100.1").await.unwrap().status(), 200);
    }
    let limited = post("198.51.100.1").await.unwrap();
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_problem(limited, 429, "rate-limited").await;
    // Another client behind the same trusted proxy has its own budget.
    assert_eq!(post("198.51.100.2").await.unwrap().status(), 200);
}

#[tokio::test]
async fn streams_are_capped_per_client_ip() {
    let app = spawn_app_with(|s| s.limits.max_connections_per_ip = 2).await;
    let _a = app.subscribe(&["t"], None).await;
    let _b = app.subscribe(&["t"], None).await;
    let third = app.client.get(app.url("/events?topic=t")).send().await.unwrap();
    assert_eq!(third.headers()["retry-after"], "5");
    assert_problem(third, 429, "too-many-streams").await;
}

#[tokio::test]
async fn oversized_and_malformed_requests() {
    let app = spawn_app_with(|s| s.limits.max_topics_per_connection = 32).await;
    // Thousands of topics in one subscription.
    let many: Vec<String> = (0..2000).map(|n| format!("topic=t{n}")).collect();
    let response = app
        .client
        .get(app.url(&format!("/events?{}", many.join("&"))))
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "bad-request").await;
    // A topic name of 100 KB: the request head is over the 32 KiB limit, so the front door refuses it
    // before routing, with 431 problem+json (and reads what the client still sends, so the answer is not
    // lost to a reset).
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    let head = format!(
        "POST /topics/{} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
        "a".repeat(100 * 1024)
    );
    let _ = raw.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, raw.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n")
            && answer.contains("content-type: application/problem+json")
            && answer.contains("\"code\":\"headers-too-large\""),
        "{answer}"
    );
    // A long topic name that fits the head is refused by the topic rules.
    assert_problem(
        app.post(&"a".repeat(2000), "text/plain", "x").await,
        400,
        "invalid-topic",
    )
    .await;
    // Invalid UTF-8 in the topic, in the body, and control characters in the event name.
    assert_problem(app.post("%FF%FE", "text/plain", "x").await, 400, "invalid-topic").await;
    assert_problem(
        app.post("t", "text/plain", vec![0xC3, 0x28]).await,
        400,
        "body-not-utf8",
    )
    .await;
    for event in ["a%0D%0Aid:%201", "a%00", "%0A"] {
        let response = app
            .client
            .post(app.url(&format!("/topics/t?event={event}")))
            .body("x")
            .send()
            .await;
        assert_problem(response.unwrap(), 400, "invalid-event-name").await;
    }
    // Bytes that are not UTF-8, or a broken escape, in a query are refused, never replaced or kept as
    // text (either would quietly name another topic).
    for query in ["topic=%FF%FE", "topic=a%ZZ", "topic=a%2", "topic=t&event=%C3"] {
        let response = app.client.get(app.url(&format!("/events?{query}"))).send().await;
        let problem = assert_problem(response.unwrap(), 400, "bad-request").await;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("the query string ")),
            "{problem}"
        );
    }
    assert_problem(app.post("a%ZZ", "text/plain", "x").await, 400, "invalid-topic").await;
    let history = app
        .client
        .get(app.url("/topics/%FF/history"))
        .send()
        .await
        .unwrap();
    assert_problem(history, 400, "invalid-topic").await;
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_cut_off() {
    let app = spawn_app_with(|s| s.server.request_head_timeout_ms = Duration::from_millis(1000)).await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let trickle = async {
        for _ in 0..20 {
            if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    tokio::time::timeout(PATIENCE, trickle).await.expect("bounded");
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "cut off near the 1 s limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_under_load_do_not_lose_acknowledged_messages() {
    let app = secured().await;
    let token = hs(&claims(&["*"], &["*"]));
    let mut sub = app.subscribe(&["load"], None).await;
    let honest = async {
        let mut ids = Vec::new();
        for n in 0..300 {
            let response = app
                .client
                .post(app.url("/topics/load"))
                .bearer_auth(&token)
                .body(format!("m{n}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            ids.push(
                response.json::<serde_json::Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        ids
    };
    let hostile = async {
        let mut refused = 0;
        for n in 0..600 {
            let request = match n % 6 {
                0 => app
                    .client
                    .post(app.url("/topics/load"))
                    .bearer_auth("forged.token.here")
                    .body("x"),
                1 => app.client.post(app.url("/topics/load")).body("no token"),
                2 => app
                    .client
                    .post(app.url("/topics/load"))
                    .bearer_auth(&token)
                    .body(vec![b'x'; 70_000]),
                3 => app
                    .client
                    .post(app.url("/topics/load?event=a%0Ab"))
                    .bearer_auth(&token)
                    .body("x"),
                4 => app
                    .client
                    .post(app.url("/topics/lo%00ad"))
                    .bearer_auth(&token)
                    .body("x"),
                _ => app
                    .client
                    .post(app.url("/topics/load"))
                    .bearer_auth(hs(&claims(&["x"], &[])))
                    .body("x"),
            };
            let status = request.send().await.unwrap().status();
            assert!(status.is_client_error(), "hostile request {n} got {status}");
            refused += 1;
        }
        refused
    };
    let (ids, refused) = tokio::join!(honest, hostile);
    assert_eq!(refused, 600);
    let got: Vec<String> = sub.take(300).await.into_iter().map(|e| e.id).collect();
    assert_eq!(got, ids, "every acknowledged message exactly once, in order");
    sub.assert_silent(Duration::from_millis(300)).await;
}

/// The one access rule, walked over every route that reads or writes a topic: each route × {no token,
/// a valid token for other topics, a token for the topic} × {public, private topic}. Reads (stream and
/// history) need a token only for private topics; writes always do here (anonymous publishing is off).
#[tokio::test]
async fn every_route_applies_the_one_access_rule() {
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Route {
        Publish,
        Stream,
        History,
        /// Mercure's dialect of the same two (`/.well-known/mercure`).
        MercurePublish,
        MercureStream,
        /// `/status.json` names the busiest topics: only those the token could subscribe to.
        Status,
        /// `/topics/{topic}/presence`: counts, under the read rule.
        Presence,
        /// `/.well-known/mercure/subscriptions/{topic}`: who is subscribed, for tokens allowed its path.
        Subscriptions,
    }
    #[derive(Clone, Copy, Debug)]
    enum Token {
        None,
        WrongClaim,
        RightClaim,
    }
    let app = secured().await;
    // A subscriber on each topic, so that the status page has both to name (or to hide).
    let reader = hs(&claims(&[], &["*"]));
    let _held = hold_streams(&app, &["public.t", "private.t"], &reader).await;
    for topic in ["public.t", "private.t"] {
        // Something private to leak, stored with a token that may publish it.
        let writer = hs(&claims(&["*"], &[]));
        assert_eq!(
            publish_with(&app, topic, &writer, Via::Header).await.status(),
            200
        );
        let routes = [
            Route::Publish,
            Route::Stream,
            Route::History,
            Route::Status,
            Route::MercurePublish,
            Route::MercureStream,
            Route::Presence,
            Route::Subscriptions,
        ];
        for route in routes {
            for token in [Token::None, Token::WrongClaim, Token::RightClaim] {
                let bearer = match token {
                    Token::None => None,
                    Token::WrongClaim => Some(hs(&claims(&["other"], &["other"]))),
                    // The subscriptions API's rule is Mercure's: the token must allow the request's path.
                    Token::RightClaim if route == Route::Subscriptions => Some(hs(&claims(
                        &[topic],
                        &[&format!("/.well-known/mercure/subscriptions/{topic}")],
                    ))),
                    Token::RightClaim => Some(hs(&claims(&[topic], &[topic]))),
                };
                let mut request = match route {
                    Route::Publish => app.client.post(app.url(&format!("/topics/{topic}"))).body("x"),
                    Route::Stream => app.client.get(app.url(&format!("/events?topic={topic}"))),
                    Route::History => app.client.get(app.url(&format!("/topics/{topic}/history"))),
                    Route::Status => app.client.get(app.url("/status.json")),
                    Route::MercurePublish => app
                        .client
                        .post(app.url("/.well-known/mercure"))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(format!("topic={topic}&data=x")),
                    Route::MercureStream => app
                        .client
                        .get(app.url(&format!("/.well-known/mercure?topic={topic}"))),
                    Route::Presence => app.client.get(app.url(&format!("/topics/{topic}/presence"))),
                    Route::Subscriptions => app
                        .client
                        .get(app.url(&format!("/.well-known/mercure/subscriptions/{topic}"))),
                };
                if let Some(bearer) = &bearer {
                    request = request.bearer_auth(bearer);
                }
                let private = topic.starts_with("private.");
                let (status, code) = match (route, token) {
                    (Route::Status, Token::None) => (401, "token-missing"),
                    (Route::Status, _) => (200, ""),
                    (Route::Subscriptions, Token::None) => (401, "token-missing"),
                    (Route::Subscriptions, Token::WrongClaim) => (403, "forbidden"),
                    (_, Token::RightClaim) => (200, ""),
                    (Route::Publish | Route::MercurePublish, Token::None) => (401, "token-missing"),
                    (Route::Publish | Route::MercurePublish, Token::WrongClaim) => (403, "forbidden"),
                    (_, _) if !private => (200, ""),
                    (_, Token::None) => (401, "token-missing"),
                    (_, Token::WrongClaim) => (403, "forbidden"),
                };
                let response = request.send().await.unwrap();
                let case = format!("{route:?} {topic} with {token:?}");
                if status == 200 {
                    assert_eq!(response.status(), 200, "{case}");
                    if route == Route::Subscriptions || route == Route::Presence {
                        // Both see the reader's stream of the topic, public or private.
                        let body: serde_json::Value = response.json().await.unwrap();
                        let n = body["subscriptions"]
                            .as_array()
                            .map_or(body["subscribers"].as_u64(), |l| Some(l.len() as u64));
                        assert!(n >= Some(1), "{case}: {body}");
                    } else if route == Route::History {
                        let body: serde_json::Value = response.json().await.unwrap();
                        assert!(!body["events"].as_array().unwrap().is_empty(), "{case}: {body}");
                    } else if route == Route::Status {
                        let body: serde_json::Value = response.json().await.unwrap();
                        let named: Vec<&str> = body["busiest_topics"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter_map(|t| t["topic"].as_str())
                            .collect();
                        let may_see = !private || matches!(token, Token::RightClaim);
                        assert_eq!(named.contains(&topic), may_see, "{case}: {body}");
                        // Of the two topics, only a token listing `private.t` sees both.
                        let hidden = usize::from(!(private && matches!(token, Token::RightClaim)));
                        assert_eq!(body["topics_not_shown"], hidden, "{case}: {body}");
                        assert_eq!(body["topics"], 2, "{case}: counts are not hidden");
                    }
                } else {
                    let body = assert_problem(response, status, code).await;
                    assert!(body.get("events").is_none(), "{case} leaks: {body}");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_configured_audience_must_be_in_the_token() {
    let app = secured().await;
    let mut none = claims(&["news"], &[]);
    none.as_object_mut().unwrap().remove("aud");
    let mut listed = claims(&["news"], &[]);
    listed["aud"] = serde_json::json!(["someone-else", AUDIENCE]);
    let mut unlisted = claims(&["news"], &[]);
    unlisted["aud"] = serde_json::json!(["someone-else"]);
    let body = assert_problem(
        publish_with(&app, "news", &hs(&none), Via::Header).await,
        401,
        "token-invalid",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("audience"), "{body}");
    assert_eq!(
        publish_with(&app, "news", &hs(&listed), Via::Header)
            .await
            .status(),
        200
    );
    assert_problem(
        publish_with(&app, "news", &hs(&unlisted), Via::Header).await,
        401,
        "token-invalid",
    )
    .await;
    // The same rule guards private subscriptions.
    let mut reader = claims(&[], &["private.a"]);
    reader.as_object_mut().unwrap().remove("aud");
    let response = app
        .client
        .get(app.url("/events?topic=private.a"))
        .bearer_auth(hs(&reader))
        .send()
        .await
        .unwrap();
    assert_problem(response, 401, "token-invalid").await;
}

#[tokio::test]
async fn the_auth_cookie_counts_only_from_a_trusted_page() {
    let app = spawn_app_with(|s| {
        s.auth.anonymous_publish = false;
        s.auth.hs_secret = SECRET.into();
        s.auth.audience = AUDIENCE.into();
        s.cors.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let token = hs(&claims(&["news"], &[]));
    let cookie = format!("herald_authorization={token}");
    let post = |headers: &[(&str, &str)]| {
        let mut request = app
            .client
            .post(app.url("/topics/news"))
            .header("Content-Type", "text/plain")
            .header("Cookie", cookie.as_str())
            .body("csrf?");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    // A form or fetch from another site: a simple request that needs no preflight.
    let evil = post(&[("Origin", "http://evil.example")]).await.unwrap();
    let body = assert_problem(evil, 403, "origin-not-allowed").await;
    assert!(
        body["detail"].as_str().unwrap().contains("evil.example"),
        "{body}"
    );
    let evil_referer = post(&[("Referer", "http://evil.example/page")]).await.unwrap();
    assert_problem(evil_referer, 403, "origin-not-allowed").await;
    assert_problem(post(&[]).await.unwrap(), 403, "origin-not-allowed").await;
    // The hub's own pages and the configured origins may.
    let own = app.address.clone();
    assert_eq!(post(&[("Origin", own.as_str())]).await.unwrap().status(), 200);
    let own_page = format!("{own}/demo?x=1");
    assert_eq!(
        post(&[("Referer", own_page.as_str())]).await.unwrap().status(),
        200
    );
    assert_eq!(
        post(&[("Origin", "https://app.example")]).await.unwrap().status(),
        200
    );
    // A token in the Authorization header is no ambient credential: the origin does not matter.
    let header = app
        .client
        .post(app.url("/topics/news"))
        .header("Origin", "http://evil.example")
        .bearer_auth(&token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(header.status(), 200);
}

#[tokio::test]
async fn odd_tokens_are_refused_or_read_without_panics_or_leaks() {
    let app = secured().await;
    // exp = 2^64-1 once panicked a stream (an Instant overflow); it is a token that never expires.
    let mut forever = claims(&[], &["private.f"]);
    forever["exp"] = u64::MAX.into();
    let response = app
        .client
        .get(app.url("/events?topic=private.f"))
        .bearer_auth(hs(&forever))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    assert_eq!(
        app.client.get(app.url("/healthz")).send().await.unwrap().status(),
        200
    );
    // An unknown critical header extension must be refused (RFC 7515 § 4.1.11).
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp-critical".into()]);
    let crit = jsonwebtoken::encode(
        &header,
        &claims(&["news"], &[]),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let body = assert_problem(
        publish_with(&app, "news", &crit, Via::Header).await,
        401,
        "token-invalid",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("crit"), "{body}");
    // Refusals speak of the token, not of the library that read it.
    for token in [alg_none(&claims(&["news"], &[])), "a.b.c".into(), "x".into()] {
        let body = assert_problem(
            publish_with(&app, "news", &token, Via::Header).await,
            401,
            "token-invalid",
        )
        .await;
        let detail = body["detail"].as_str().unwrap();
        for internal in ["variant", "Error", "Json", "Base64", "line ", "column"] {
            assert!(!detail.contains(internal), "{token}: {detail}");
        }
    }
}

/// A history page is bounded in bytes as well as in events: 40 events of 64 KiB of control bytes (six
/// times that as JSON escapes) once made one anonymous request build a body of tens of MB. Pages now
/// stay within `history.max_page_bytes` (at least one event each), and paging with `next_after` reads
/// every event once, in order, on both engines.
#[tokio::test]
async fn history_pages_are_bounded_in_bytes_and_page_through_everything() {
    let redis = crate::redis_server::RedisServer::start();
    let url = redis.url();
    for on_redis in [false, true] {
        let url = url.clone();
        let app = spawn_app_with(move |s| {
            if on_redis {
                s.redis.url = url;
            }
        })
        .await;
        let heavy = "\u{1}".repeat(64 * 1024);
        let mut ids = Vec::new();
        for _ in 0..40 {
            ids.push(app.publish("heavy", &heavy).await);
        }
        let mut after = "0-0".to_string();
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let response = app
                .client
                .get(app.url(&format!("/topics/heavy/history?after={after}&limit=500")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body = response.bytes().await.unwrap();
            assert!(
                body.len() <= 1024 * 1024 + 1024,
                "a page of {} bytes (redis: {on_redis})",
                body.len()
            );
            let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let events = page["events"].as_array().unwrap();
            assert!(!events.is_empty(), "every page holds at least one event");
            for e in events {
                assert_eq!(e["data"].as_str().unwrap().len(), heavy.len());
                seen.push(e["id"].as_str().unwrap().to_string());
            }
            pages += 1;
            match page["next_after"].as_str() {
                Some(next) => after = next.to_string(),
                None => break,
            }
        }
        assert_eq!(seen, ids, "redis: {on_redis}");
        assert!(pages >= 14, "{pages} pages (redis: {on_redis})");
    }
}

/// `/status.json` names topics: with auth on, it needs a publisher's token (the same gate as every
/// route, `Access::Status`); a subscriber's token or none is refused with problem+json.
#[tokio::test]
async fn the_status_json_is_for_publishers_when_auth_is_on() {
    let app = secured().await;
    let get = |token: Option<String>| {
        let mut request = app.client.get(app.url("/status.json"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_problem(get(None).await.unwrap(), 401, "token-missing").await;
    assert_problem(
        get(Some(hs(&claims(&[], &["*"])))).await.unwrap(),
        403,
        "not-a-publisher",
    )
    .await;
    assert_problem(
        get(Some(hs(&claims(&["*"], &[]))[1..].to_string()))
            .await
            .unwrap(),
        401,
        "token-invalid",
    )
    .await;
    // A publish list that can match no topic makes no publisher.
    for nothing in [vec![""], vec!["", "a\u{1}b"]] {
        assert_problem(
            get(Some(hs(&claims(&nothing, &["*"])))).await.unwrap(),
            403,
            "not-a-publisher",
        )
        .await;
    }
    let ok = get(Some(hs(&claims(&["news"], &[])))).await.unwrap();
    assert_eq!(ok.status(), 200);
    let status: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(status["engine"], "memory");
    // The page itself holds no data: it is served to anyone, and asks for a token when it needs one.
    let page = app.client.get(app.url("/status")).send().await.unwrap();
    assert_eq!(page.status(), 200);
}

/// With anonymous publishing on (the shipped default), anyone may read `/status.json`: it then names
/// public topics only, and counts the private ones it leaves out.
#[tokio::test]
async fn anonymous_callers_see_no_private_topic_names_on_the_status_json() {
    let app = spawn_app_with(|s| {
        s.auth.private_topics = vec!["secret-*".into()];
        s.auth.hs_secret = SECRET.into();
    })
    .await;
    let reader = hs(
        &serde_json::json!({ "mercure": { "publish": ["news"], "subscribe": ["*"] }, "exp": now() + 600 }),
    );
    let held = hold_streams(&app, &["news", "secret-user-42", "secret-user-43"], &reader).await;
    let status_json = |token: Option<&str>| {
        let mut request = app.client.get(app.url("/status.json"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            request
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let status = status_json(None).await;
    assert_eq!(
        status["busiest_topics"],
        serde_json::json!([{ "topic": "news", "subscribers": 1 }])
    );
    assert_eq!(status["topics_not_shown"], 2);
    assert_eq!(status["topics"], 3);
    assert!(!status.to_string().contains("secret-user"), "{status}");
    // A token that may subscribe to them sees them named.
    let named = status_json(Some(&reader)).await;
    assert_eq!(
        named["busiest_topics"].as_array().map(Vec::len),
        Some(3),
        "{named}"
    );
    assert_eq!(named["topics_not_shown"], 0);
    drop(held);
}

/// `Expect: 100-continue`: a publish that will be refused is refused before the client is told to send
/// its body (401/403 for the token, 413 for a declared length over the limit); an allowed one gets
/// `100 Continue`, then its answer.
#[tokio::test]
async fn a_publish_is_authorized_before_100_continue() {
    use tokio::io::AsyncWriteExt;
    let app = secured().await;
    let first_line = |auth: Option<String>, length: usize| {
        let port = app.port;
        async move {
            let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let auth = auth
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            let head = format!(
                "POST /topics/news HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            read_until(&mut socket, &mut answer, "\r\n\r\n").await;
            (socket, answer)
        }
    };
    let (mut socket, mut none) = first_line(None, 5).await;
    assert!(
        none.starts_with(b"HTTP/1.1 401 "),
        "{:?}",
        String::from_utf8_lossy(&none)
    );
    read_until(&mut socket, &mut none, "token-missing").await;
    let (_, wrong) = first_line(Some(hs(&claims(&["other"], &[]))), 5).await;
    assert!(
        wrong.starts_with(b"HTTP/1.1 403 "),
        "{:?}",
        String::from_utf8_lossy(&wrong)
    );
    let (_, big) = first_line(Some(hs(&claims(&["news"], &[]))), 10_000_000).await;
    assert!(
        big.starts_with(b"HTTP/1.1 413 "),
        "{:?}",
        String::from_utf8_lossy(&big)
    );
    let (mut socket, allowed) = first_line(Some(hs(&claims(&["news"], &[]))), 5).await;
    assert!(
        allowed.starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&allowed)
    );
    socket.write_all(b"hello").await.unwrap();
    let mut rest = allowed;
    read_until(&mut socket, &mut rest, "\"id\"").await;
    assert!(String::from_utf8_lossy(&rest).contains("HTTP/1.1 200 OK"));
    assert_eq!(app.metric("herald_published_total").await, 1);
}
