use std::time::Duration;

use futures_util::future::join_all;

use crate::helpers::{id_in, id_key, spawn_app, spawn_app_with};
use crate::redis_server::RedisServer;

#[tokio::test]
async fn reconnecting_with_last_event_id_gets_exactly_what_it_missed_then_live() {
    let app = spawn_app().await;
    let mut sub = app.subscribe(&["news"], None).await;
    app.publish("news", "seen-1").await;
    app.publish("news", "seen-2").await;
    let last = sub.take(2).await.pop().unwrap().id;
    drop(sub);

    let mut missed = Vec::new();
    for n in 0..25 {
        missed.push(app.publish("news", &format!("missed-{n}")).await);
    }
    app.publish("other", "not mine").await;

    let mut sub = app.subscribe(&["news"], Some(&last)).await;
    let replayed = sub.take(25).await;
    assert_eq!(replayed.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), missed);
    assert_eq!(replayed[0].data, "missed-0");
    let live = app.publish("news", "live").await;
    let event = sub.next().await;
    assert_eq!((event.id, event.data.as_str()), (live, "live"));
    sub.assert_silent(Duration::from_millis(200)).await;
    assert_eq!(app.metric("herald_replayed_total").await, 25);
}

#[tokio::test]
async fn query_parameter_resumes_and_the_header_wins_over_it() {
    let app = spawn_app().await;
    let first = app.publish("t", "1").await;
    let second = app.publish("t", "2").await;
    let third = app.publish("t", "3").await;

    let response = app
        .client
        .get(app.url(&format!("/events?topic=t&lastEventId={first}")))
        .send()
        .await
        .unwrap();
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let mut events = response.bytes_stream().eventsource();
    let got: Vec<String> = vec![
        events.next().await.unwrap().unwrap().id,
        events.next().await.unwrap().unwrap().id,
    ];
    assert_eq!(got, vec![second.clone(), third.clone()]);

    // A browser reconnecting keeps the page's URL but sends the newer id in the header.
    let response = app
        .client
        .get(app.url(&format!("/events?topic=t&lastEventId={first}")))
        .header("Last-Event-ID", &second)
        .send()
        .await
        .unwrap();
    let mut events = response.bytes_stream().eventsource();
    assert_eq!(events.next().await.unwrap().unwrap().id, third);
}

#[tokio::test]
async fn multi_topic_replay_is_exact_and_in_id_order() {
    let app = spawn_app().await;
    let start = app.publish("a", "before").await;
    let mut expected = Vec::new();
    for n in 0..60 {
        let topic = ["a", "b", "c"][n % 3];
        let id = app.publish(topic, &format!("{topic}{n}")).await;
        if topic != "c" {
            expected.push((id, format!("{topic}{n}")));
        }
    }
    let mut sub = app.subscribe(&["a", "b"], Some(&start)).await;
    let events = sub.take(expected.len()).await;
    let topic_of = |data: &str| if data.starts_with('a') { "a" } else { "b" };
    let got: Vec<(String, String)> = events
        .iter()
        .map(|e| (id_in(&e.id, &["a", "b"], topic_of(&e.data)), e.data.clone()))
        .collect();
    assert_eq!(got, expected);
    sub.assert_silent(Duration::from_millis(200)).await;

    // Resuming from any event's composite id gives exactly the events after it, whatever the order of
    // the topics in the query.
    for cut in [0, 7, 19, expected.len() - 1] {
        let mut resumed = app.subscribe(&["b", "a"], Some(&events[cut].id)).await;
        let rest: Vec<String> = resumed
            .take(expected.len() - cut - 1)
            .await
            .into_iter()
            .map(|e| e.data)
            .collect();
        let want: Vec<String> = expected[cut + 1..].iter().map(|(_, d)| d.clone()).collect();
        assert_eq!(rest, want, "resumed after event {cut}");
        resumed.assert_silent(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn replay_spanning_many_pages_while_publishing_continues_has_no_gap_or_duplicate() {
    // Small pages make the replay take several steps while live events keep arriving.
    let app = spawn_app_with(|s| {
        s.history.page_size = 7;
        s.history.max_len = 10_000;
    })
    .await;
    let start = app.publish("a", "start").await;
    for n in 0..200 {
        app.publish(if n % 2 == 0 { "a" } else { "b" }, &format!("old-{n}"))
            .await;
    }
    let publisher = async {
        let mut ids = Vec::new();
        for n in 0..200 {
            ids.push(
                app.publish(if n % 2 == 0 { "b" } else { "a" }, &format!("new-{n}"))
                    .await,
            );
        }
        ids
    };
    let subscriber = async {
        let mut sub = app.subscribe(&["a", "b"], Some(&start)).await;
        let events = sub.take(400).await;
        sub.assert_silent(Duration::from_millis(300)).await;
        events
    };
    let (_new_ids, events) = tokio::join!(publisher, subscriber);
    for topic in ["a", "b"] {
        // old-<even> and new-<odd> went to a; the others to b.
        let of_topic = |data: &str| {
            let (age, n) = data.split_once('-').expect("age-n");
            let even = n.parse::<u32>().expect("n") % 2 == 0;
            (age == "old") == even
        };
        let ids: Vec<(u64, u64)> = events
            .iter()
            .filter(|e| of_topic(&e.data) == (topic == "a"))
            .map(|e| id_key(&id_in(&e.id, &["a", "b"], topic)))
            .collect();
        assert_eq!(ids.len(), 200, "{topic}");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{topic}: strictly increasing ids: no duplicate, in order"
        );
    }
    let old = events.iter().filter(|e| e.data.starts_with("old-")).count();
    let new = events.iter().filter(|e| e.data.starts_with("new-")).count();
    assert_eq!((old, new), (200, 200));
}

#[tokio::test]
async fn an_id_older_than_retention_gets_the_gap_event_first() {
    let app = spawn_app_with(|s| s.history.max_len = 5).await;
    let first = app.publish("t", "will be trimmed").await;
    let ids = join_all((0..10).map(|n| {
        let app = &app;
        async move { (n, app.publish("t", &format!("n{n}")).await) }
    }))
    .await;
    let mut kept: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
    kept.sort_by_key(|id| id_key(id));
    let kept = kept.split_off(5);

    let mut sub = app.subscribe(&["t"], Some(&first)).await;
    let gap = sub.next().await;
    assert_eq!(gap.event, "herald.gap");
    let notice: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(notice["topic"], "t");
    assert_eq!(notice["last_event_id"], first.as_str());
    assert_eq!(notice["first_retained"], kept[0].as_str());
    let replayed: Vec<String> = sub.take(5).await.into_iter().map(|e| e.id).collect();
    assert_eq!(replayed, kept);
    assert_eq!(app.metric("herald_gaps_total").await, 1);

    // Resuming from a retained id is exact and has no gap notice.
    let mut sub = app.subscribe(&["t"], Some(&kept[2])).await;
    let replayed: Vec<String> = sub.take(2).await.into_iter().map(|e| e.id).collect();
    assert_eq!(replayed, kept[3..].to_vec());
}

/// Redis keeps at least `max_len` (it trims once 100 more have come): the gap notice must name the first
/// event Redis actually kept, and the replay must be exactly what it kept.
#[tokio::test]
async fn an_id_older_than_retention_gets_the_gap_event_first_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let app = spawn_app_with(move |s| {
        s.redis.url = url;
        s.history.max_len = 5;
    })
    .await;
    let first = app.publish("t", "will be trimmed").await;
    for n in 0..250 {
        app.publish("t", &format!("n{n}")).await;
    }
    let history: serde_json::Value = app
        .client
        .get(app.url("/topics/t/history"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kept: Vec<String> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        history["truncated"].as_bool().unwrap(),
        "Redis trimmed the stream"
    );
    assert!(kept.len() >= 5 && kept.len() < 251, "kept {}", kept.len());
    assert_eq!(history["first_retained"].as_str(), Some(kept[0].as_str()));

    let mut sub = app.subscribe(&["t"], Some(&first)).await;
    let gap = sub.next().await;
    assert_eq!(gap.event, "herald.gap");
    let notice: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(notice["last_event_id"], first.as_str());
    assert_eq!(notice["first_retained"], kept[0].as_str());
    let replayed: Vec<String> = sub.take(kept.len()).await.into_iter().map(|e| e.id).collect();
    assert_eq!(replayed, kept);
    sub.assert_silent(Duration::from_millis(200)).await;
    assert_eq!(app.metric("herald_gaps_total").await, 1);
}

#[tokio::test]
async fn zero_id_replays_all_retained_history() {
    let app = spawn_app().await;
    let a = app.publish("t", "a").await;
    let b = app.publish("t", "b").await;
    let mut sub = app.subscribe(&["t"], Some("0-0")).await;
    let got: Vec<String> = sub.take(2).await.into_iter().map(|e| e.id).collect();
    assert_eq!(got, vec![a, b]);
}

#[tokio::test]
async fn history_endpoint_pages_through_a_topic() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.publish("t", &format!("m{n}")).await);
    }
    let page = app
        .get_json(&format!("/topics/t/history?after={}&limit=2", ids[0]))
        .await;
    assert_eq!(page["events"][0]["id"], ids[1].as_str());
    assert_eq!(page["events"][1]["data"], "m2");
    assert_eq!(page["next_after"], ids[2].as_str());
    assert_eq!(page["truncated"], false);
    let rest = app.get_json(&format!("/topics/t/history?after={}", ids[2])).await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 2);
    assert_eq!(rest["next_after"], serde_json::Value::Null);
}

/// `since=10m|all` resumes from a moment when no event id is known, and `poll=1` ends the stream once
/// the replay is sent (for scripts catching up); on both engines. A `Last-Event-ID` wins over `since`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_and_poll_replay_from_a_moment_and_end_on_both_engines() {
    let redis = crate::redis_server::RedisServer::start();
    for app in [
        crate::helpers::spawn_app().await,
        crate::helpers::spawn_redis_node(&redis).await,
    ] {
        let ids = [
            app.publish("p", "one").await,
            app.publish("p", "two").await,
            app.publish("p", "three").await,
        ];
        for query in ["topic=p&since=all&poll=1", "topic=p&since=10m&poll=1"] {
            let got = app.subscribe_query(query, None).await.until_end().await;
            assert_eq!(
                got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
                ["one", "two", "three"],
                "{query}"
            );
        }
        let got = app
            .subscribe_query("topic=p&since=all&poll=1", Some(&ids[1]))
            .await
            .until_end()
            .await;
        assert_eq!(got.len(), 1, "Last-Event-ID wins over since");
        assert_eq!(got[0].id, ids[2]);
        // A moment in the future: nothing yet; without poll the stream stays open for live events.
        let mut live = app.subscribe_query("topic=p&since=0s", None).await;
        let four = app.publish("p", "four").await;
        assert_eq!(live.next().await.id, four);
        for (query, why) in [
            ("topic=p&since=10x", "since=10x"),
            ("topic=p&since=m", "since=m"),
            ("topic=p&poll=1", "poll=1 replays and ends"),
            ("topic=p&since=all&poll=yes", "poll=yes"),
        ] {
            let response = app
                .client
                .get(app.url(&format!("/events?{query}")))
                .send()
                .await
                .unwrap();
            let problem = crate::helpers::assert_problem(response, 400, "bad-request").await;
            assert!(
                problem["detail"].as_str().unwrap_or_default().contains(why),
                "{query}: {problem}"
            );
        }
    }
}
