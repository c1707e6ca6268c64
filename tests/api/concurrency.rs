use std::collections::HashMap;

use futures_util::future::join_all;

use crate::helpers::{id_key, spawn_app};

const SUBSCRIBERS: usize = 50;
const MESSAGES: usize = 1000;
const PUBLISHERS: usize = 4;
const TOPICS: [&str; 3] = ["alpha", "beta", "gamma"];

/// Which topics subscriber `i` listens to: singles and pairs, and every fifth one takes all three.
fn topics_of(i: usize) -> Vec<&'static str> {
    match i % 5 {
        0 => TOPICS.to_vec(),
        1 | 2 => vec![TOPICS[i % 3]],
        _ => vec![TOPICS[i % 3], TOPICS[(i + 1) % 3]],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_of_its_topics_once_in_order() {
    let app = spawn_app().await;
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        subscribers.push(app.subscribe(&topics_of(i), None).await);
    }

    // Subscribers read while 4 publishers send their shares of the 1,000 messages over the topics.
    let publishers = join_all((0..PUBLISHERS).map(|p| {
        let app = &app;
        async move {
            let mut sent = Vec::new();
            for n in (p..MESSAGES).step_by(PUBLISHERS) {
                let topic = TOPICS[n % 3];
                let data = format!("p{p}-m{n}");
                let id = app.publish(topic, &data).await;
                sent.push((id, topic, data));
            }
            sent
        }
    }));
    let readers = join_all(
        subscribers
            .into_iter()
            .enumerate()
            .map(|(i, mut sub)| async move {
                let expected = (0..MESSAGES)
                    .filter(|n| topics_of(i).contains(&TOPICS[n % 3]))
                    .count();
                let events = sub.take(expected).await;
                sub.assert_silent(std::time::Duration::from_millis(300)).await;
                events
            }),
    );
    let (published, received) = tokio::join!(publishers, readers);
    let mut all: Vec<(String, &str, String)> = published.into_iter().flatten().collect();
    assert_eq!(all.len(), MESSAGES);
    all.sort_by_key(|(id, _, _)| id_key(id));
    let received = received.into_iter().enumerate().map(|(i, events)| {
        let mine = all
            .iter()
            .filter(|(_, t, _)| topics_of(i).contains(t))
            .cloned()
            .collect::<Vec<_>>();
        (i, mine, events)
    });

    for (i, expected, events) in received {
        let got: Vec<(&str, &str)> = events.iter().map(|e| (e.id.as_str(), e.data.as_str())).collect();
        let want: Vec<(&str, &str)> = expected
            .iter()
            .map(|(id, _, d)| (id.as_str(), d.as_str()))
            .collect();
        assert_eq!(got.len(), want.len(), "subscriber {i}");
        assert!(
            got == want,
            "subscriber {i} did not get exactly its topics' messages in id order"
        );
    }
    let ids: HashMap<&str, ()> = all.iter().map(|(id, _, _)| (id.as_str(), ())).collect();
    assert_eq!(ids.len(), MESSAGES, "ids are unique");
}
