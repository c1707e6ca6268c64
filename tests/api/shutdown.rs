use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::PATIENCE;

const GRACE_SECS: u64 = 5;

#[tokio::test]
async fn the_binary_ends_streams_cleanly_on_sigterm_within_the_grace_period() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--port", "0"])
        .env("HERALD__SERVER__SHUTDOWN_GRACE_SECS", GRACE_SECS.to_string())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the herald binary starts");
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = log.next_line().await.unwrap() {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("the binary exited without saying where it listens");
    })
    .await
    .expect("the binary logs its address");
    let log_task = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Ok(Some(line)) = log.next_line().await {
            lines.push(line);
        }
        lines
    });

    let client = reqwest::Client::new();
    let response = client
        .get(format!("{address}/events?topic=t"))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let publish = client
        .post(format!("{address}/topics/t"))
        .body("before shutdown")
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 200);

    let pid = i32::try_from(child.id().expect("running")).unwrap();
    let started = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();

    // The stream delivers what was published, then a closing comment, then ends cleanly (no error).
    let mut received = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(GRACE_SECS), async {
        while let Some(chunk) = body.next().await {
            received.extend_from_slice(&chunk.expect("the stream ends cleanly, not with an error"));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream was not ended within the grace period");
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("data: before shutdown\n"), "{text}");
    assert!(text.contains(": herald: this node is shutting down"), "{text}");

    let status = tokio::time::timeout(Duration::from_secs(GRACE_SECS + 2), child.wait())
        .await
        .expect("the process exits within the grace period")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(GRACE_SECS + 2));
    let lines = log_task.await.unwrap();
    assert!(lines.iter().any(|l| l.contains("SIGTERM received")), "{lines:?}");
}

#[tokio::test]
async fn shutdown_ends_every_stream_and_refuses_new_subscribers() {
    let app = crate::helpers::spawn_app().await;
    let response = app
        .client
        .get(app.url("/events?topic=a&topic=b"))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    app.shutdown.run().await;
    let mut received = Vec::new();
    while let Some(chunk) = tokio::time::timeout(PATIENCE, body.next())
        .await
        .expect("stream ends")
    {
        received.extend_from_slice(&chunk.expect("clean end"));
    }
    assert!(String::from_utf8_lossy(&received)
        .ends_with(": herald: this node is shutting down; reconnect to resume\n\n"));
    assert!(
        app.client.get(app.url("/events?topic=a")).send().await.is_err(),
        "the listener is closed"
    );
}
