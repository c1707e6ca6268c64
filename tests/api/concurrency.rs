use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;

use crate::helpers::{id_key, spawn_app, TestApp};

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
    let unique: HashSet<&str> = all.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(unique.len(), messages, "ids are unique");

    for (i, events) in received.into_iter().enumerate() {
        let want: Vec<(&str, &str)> = all
            .iter()
            .filter(|(_, t, _)| topics_of(i).contains(t))
            .map(|(id, _, d)| (id.as_str(), d.as_str()))
            .collect();
        let got: Vec<(&str, &str)> = events.iter().map(|e| (e.id.as_str(), e.data.as_str())).collect();
        assert!(
            got == want,
            "subscriber {i} did not get exactly its topics' messages in id order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_of_its_topics_once_in_order() {
    let app = spawn_app().await;
    fan_out_is_exact(&[&app], 50, 1000, 4).await;
}
