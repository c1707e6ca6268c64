//! HTTPS with HTTP/2: ten `EventSource`s of one page over one origin in real Chromium (HTTP/1.1 would
//! allow six), the demo page over HTTPS, ALPN, and a certificate read again on SIGHUP while a stream
//! stays open. Certificates come from a CA the test makes with `openssl`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::browser::Browser;
use crate::helpers::{spawn_app_with, PATIENCE};
use crate::redis_server::make_certificates;

/// The base64 SHA-256 of a certificate's public key: what Chromium's
/// `--ignore-certificate-errors-spki-list` trusts.
fn spki_hash(cert: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | \
             openssl dgst -sha256 -binary | base64",
            cert.display()
        ))
        .output()
        .expect("openssl runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A node on HTTPS with a certificate from a CA made for the test (kept in the returned folder), and
/// `more` settings.
async fn https_app(
    more: impl FnOnce(&mut herald::config::Settings) + Send + 'static,
) -> (tempfile::TempDir, crate::helpers::TestApp) {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certificates(dir.path());
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let (cert_file, key_file) = (cert.display().to_string(), key.display().to_string());
    let app = spawn_app_with(move |s| {
        s.server.tls_cert_file = cert_file;
        s.server.tls_key_file = key_file;
        more(s);
    })
    .await;
    (dir, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_event_sources_share_one_https_origin_over_http2() {
    let (dir, app) = https_app(|_| {}).await;
    let cert = dir.path().join("server.crt");
    let origin = format!("https://localhost:{}", app.port);
    let browser = Browser::start_with(&[format!(
        "--ignore-certificate-errors-spki-list={}",
        spki_hash(&cert)
    )])
    .await;

    // The demo page over HTTPS, fetched over HTTP/2.
    browser
        .client
        .goto(&format!("{origin}/?topics=news"))
        .await
        .expect("page loads");
    browser
        .wait_for(
            "an open stream",
            "return document.getElementById('state').textContent === 'open'",
        )
        .await;
    let protocol = browser
        .js("return performance.getEntriesByType('navigation')[0].nextHopProtocol")
        .await;
    assert_eq!(protocol, serde_json::json!("h2"));

    // Ten more streams from the same page: over HTTP/1.1 the seventh would wait for a free connection.
    browser
        .js("window.got = Array(10).fill(0); window.opened = 0;
             for (let i = 0; i < 10; i++) {
               const es = new EventSource('/events?topic=t' + i + '&topic=all');
               es.onopen = () => window.opened++;
               es.onmessage = () => window.got[i]++;
             }
             return 1;")
        .await;
    browser
        .wait_for("ten open streams", "return window.opened === 10")
        .await;
    // Publishing from the page itself (fetch over the same HTTP/2 connection).
    browser
        .js("fetch('/topics/all', {method: 'POST', body: 'to all ten'}); return 1;")
        .await;
    browser
        .wait_for(
            "an event on every stream",
            "return window.got.every((n) => n === 1)",
        )
        .await;
    let shown = browser
        .js("return fetch('/topics/news', {method: 'POST', body: 'on the demo page'}).then(r => r.status)")
        .await;
    assert_eq!(shown, serde_json::json!(200));
    browser
        .wait_for(
            "the event on the demo page",
            "return Array.from(document.querySelectorAll('#log li.event pre')).some(p => p.textContent === 'on the demo page')",
        )
        .await;
    browser.close().await;
}

/// `openssl s_client` against `port`, offering `alpn`: its output (the handshake summary and whatever
/// the node sent).
fn s_client(port: u16, alpn: &str, request: &str) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .args(["-alpn", alpn, "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.as_bytes())
        .expect("request written");
    let out = child.wait_with_output().expect("s_client ends");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process killed when the test ends, also when it fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary on HTTPS: ALPN offers h2; SIGHUP makes new handshakes use a renewed certificate (here
/// from another CA) while a stream opened before it keeps delivering.
#[test]
fn sighup_reloads_the_certificate_without_dropping_streams() {
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    make_certificates(first.path());
    make_certificates(second.path());
    let live = tempfile::tempdir().unwrap();
    let (cert, key) = (live.path().join("server.crt"), live.path().join("server.key"));
    std::fs::copy(first.path().join("server.crt"), &cert).unwrap();
    std::fs::copy(first.path().join("server.key"), &key).unwrap();
    let mut node = Killed(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--port", "0"])
            .env("HERALD__SERVER__TLS_CERT_FILE", &cert)
            .env("HERALD__SERVER__TLS_KEY_FILE", &key)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the herald binary runs"),
    );
    let mut log = BufReader::new(node.0.stderr.take().unwrap()).lines();
    let port: u16 = loop {
        let line = log.next().expect("a log line").expect("UTF-8");
        if let Some(rest) = line.split("listening on https://").nth(1) {
            break rest
                .split([':', ' '])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .expect("a port");
        }
    };
    // The first PEM certificate in some text (the handshake summary, or a file), without whitespace.
    let first_certificate = |text: &str| {
        let start = text.find("-----BEGIN CERTIFICATE-----").expect("a certificate");
        let end = text[start..].find("-----END CERTIFICATE-----").expect("its end") + start;
        text[start..end].split_whitespace().collect::<String>()
    };
    let file = |dir: &Path| first_certificate(&std::fs::read_to_string(dir.join("server.crt")).unwrap());
    let before = s_client(port, "h2,http/1.1", "");
    assert!(before.contains("ALPN protocol: h2"), "{before}");
    assert_eq!(
        first_certificate(&before),
        file(first.path()),
        "the first certificate"
    );

    // A stream opened before the reload (HTTP/1.1 over TLS through s_client).
    let mut stream = Killed(
        Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "localhost",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl runs"),
    );
    let mut stream_in = stream.0.stdin.take().unwrap();
    stream_in
        .write_all(b"GET /events?topic=t HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stream_out = BufReader::new(stream.0.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stream_out.lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for = |want: &str| {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(100)) {
                if line.contains(want) {
                    return;
                }
            }
        }
        panic!("the open stream never showed {want}");
    };
    wait_for("retry:");
    let publish = |data: &str| {
        let out = s_client(
            port,
            "http/1.1",
            &format!(
                "POST /topics/t HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{data}",
                data.len()
            ),
        );
        assert!(out.contains("HTTP/1.1 200"), "{out}");
    };
    publish("before the reload");
    wait_for("data: before the reload");

    std::fs::copy(second.path().join("server.crt"), &cert).unwrap();
    std::fs::copy(second.path().join("server.key"), &key).unwrap();
    let pid = i32::try_from(node.0.id()).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let line = log.next().expect("a log line").expect("UTF-8");
        if line.contains("certificate reloaded") {
            break;
        }
        assert!(Instant::now() < deadline, "no reload logged");
    }
    let after = s_client(port, "h2,http/1.1", "");
    assert_eq!(
        first_certificate(&after),
        file(second.path()),
        "new handshakes use the new certificate"
    );
    publish("after the reload");
    wait_for("data: after the reload");

    drop(stream);
    drop(node);
}

/// A certificate file that is not PEM, or a key that does not match it, stops start-up naming the file.
#[tokio::test]
async fn a_bad_certificate_or_key_stops_start_up_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certificates(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(dir.path().join("junk.crt"), "not a certificate").unwrap();
    for (cert, key, want) in [
        (file("junk.crt"), file("server.key"), "junk.crt"),
        (file("server.crt"), file("missing.key"), "missing.key"),
        (file("server.crt"), file("client.key"), "do not go together"),
    ] {
        let mut settings = herald::config::Settings::defaults().expect("defaults");
        settings.server.port = 0;
        settings.server.tls_cert_file = cert;
        settings.server.tls_key_file = key;
        let Err(error) = herald::startup::Application::build(settings).await else {
            panic!("started with a bad certificate pair");
        };
        assert!(error.to_string().contains(want), "`{want}` missing from: {error}");
    }
}

/// Over HTTPS as over plain HTTP: a publish that will be refused is refused before `100 Continue`, and
/// an allowed one gets `100 Continue`, then its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_a_publish_is_authorized_before_100_continue() {
    const SECRET: &str = "an-https-test-secret-of-32-bytes-or-more";
    let (_dir, app) = https_app(|s| {
        s.auth.anonymous_publish = false;
        s.auth.hs_secret = SECRET.into();
    })
    .await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "mercure": { "publish": ["news"] }, "exp": 4_000_000_000u64 }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token");
    let port = app.port;
    let send = move |auth: String| {
        tokio::task::spawn_blocking(move || {
            s_client(
                port,
                "http/1.1",
                &format!(
                    "POST /topics/news HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\
                     Content-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"
                ),
            )
        })
    };
    let refused = send(String::new()).await.expect("s_client");
    assert!(refused.contains("HTTP/1.1 401 "), "{refused}");
    assert!(!refused.contains("100 Continue"), "{refused}");
    assert!(refused.contains("application/problem+json"), "{refused}");
    let allowed = send(format!("Authorization: Bearer {token}\r\n"))
        .await
        .expect("s_client");
    let continued = allowed.find("HTTP/1.1 100 Continue").expect("100 Continue");
    let answered = allowed.find("HTTP/1.1 200 OK").expect("200 OK");
    assert!(continued < answered, "{allowed}");
    assert!(allowed.contains(r#""topic":"news""#), "{allowed}");
}
