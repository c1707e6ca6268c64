use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::helpers::PATIENCE;

const GRACE_SECS: u64 = 5;

#[tokio::test]
async fn the_binary_ends_streams_cleanly_on_sigterm_within_the_grace_period() {
    let (mut child, address, log_task) = start_binary().await;

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

/// Starts the binary on a free port with the shutdown grace of these tests.
async fn start_binary() -> (
    tokio::process::Child,
    String,
    tokio::task::JoinHandle<Vec<String>>,
) {
    crate::helpers::start_binary(&[("HERALD__SERVER__SHUTDOWN_GRACE_SECS", GRACE_SECS.to_string())]).await
}

/// Publishers in a tight loop over keep-alive connections while the node gets SIGTERM: every publish
/// the node received is answered; the loops end only when connecting is refused (nothing sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publish_in_flight_is_answered_when_the_node_stops() {
    let (mut child, address, log) = start_binary().await;
    let loops: Vec<_> = (0..4)
        .map(|n| {
            let address = address.clone();
            tokio::spawn(async move {
                // One client each: its pool keeps one keep-alive connection busy.
                let client = reqwest::Client::new();
                let mut answered = 0u32;
                loop {
                    let sent = client
                        .post(format!("{address}/topics/t{n}"))
                        .body(format!("m{answered}"))
                        .send()
                        .await;
                    match sent {
                        Ok(response) => {
                            assert_eq!(response.status(), 200, "a publish was refused");
                            // Read to the end, so the connection is kept alive for the next publish.
                            response.text().await.expect("the whole answer");
                            answered += 1;
                        }
                        // The listener is gone: this request never reached the node.
                        Err(e) if e.is_connect() => return answered,
                        Err(e) => panic!("publish {answered} of loop {n} was cut: {e:?}"),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = i32::try_from(child.id().expect("running")).expect("pid");
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
    let mut total = 0;
    for l in loops {
        let answered = tokio::time::timeout(Duration::from_secs(GRACE_SECS + 5), l)
            .await
            .expect("the loop ends once the node is gone")
            .expect("every publish in flight was answered");
        assert!(answered > 0);
        total += answered;
    }
    let status = tokio::time::timeout(Duration::from_secs(GRACE_SECS + 2), child.wait())
        .await
        .expect("the process exits")
        .expect("exit status");
    assert!(status.success(), "exit status {status}");
    let log = log.await.expect("log lines");
    assert!(
        !log.iter().any(|l| l.contains("ERROR") || l.contains("WARN")),
        "a clean stop logs no error or warning: {log:?}"
    );
    println!("{total} publishes answered, none cut");
}
