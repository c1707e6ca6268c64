//! The memory engine's tests: retention, idempotency, the byte bound and its accounting.

use super::*;

/// A node nobody subscribes on: the engine's own behaviour, without a hub.
struct NoSubscribers;

impl EngineEvents for NoSubscribers {
    fn dispatch_all(&self, _: &[Arc<crate::event::Event>]) {}
    fn has_subscribers(&self, _: &TopicName) -> bool {
        false
    }
    fn topics(&self) -> Vec<TopicName> {
        Vec::new()
    }
    fn has_patterns(&self) -> bool {
        false
    }
    fn patterns_interrupted(&self) {}
    fn store_lost(&self) {}
}

fn count(count: usize) -> PageBound {
    PageBound {
        count,
        bytes: usize::MAX,
    }
}

#[test]
fn a_page_stops_at_its_byte_bound_but_holds_at_least_one_event() {
    let hub = Arc::new(NoSubscribers);
    let engine = MemoryEngine::new(hub, 100, Duration::ZERO, Duration::from_secs(60));
    let t = TopicName::parse("t", 8).unwrap();
    let big = "x".repeat(1000);
    for _ in 0..10 {
        engine.publish_now(Publish {
            topic: &t,
            event: None,
            data: &big,
            idempotency_key: None,
        });
    }
    let page = engine.history_now(
        &t,
        EventId::ZERO,
        PageBound {
            count: 100,
            bytes: 3500,
        },
    );
    assert_eq!((page.events.len(), page.more), (3, true));
    let page = engine.history_now(
        &t,
        EventId::ZERO,
        PageBound {
            count: 100,
            bytes: 10,
        },
    );
    assert_eq!((page.events.len(), page.more), (1, true));
    let page = engine.history_now(
        &t,
        EventId::ZERO,
        PageBound {
            count: 10,
            bytes: usize::MAX,
        },
    );
    assert_eq!((page.events.len(), page.more), (10, false));
}

#[test]
fn retention_by_count_reports_truncation() {
    let hub = Arc::new(NoSubscribers);
    let engine = MemoryEngine::new(hub, 3, Duration::ZERO, Duration::from_secs(60));
    let t = TopicName::parse("t", 8).unwrap();
    let publish = |data: &str| {
        engine.publish_now(Publish {
            topic: &t,
            event: None,
            data,
            idempotency_key: None,
        })
    };
    let ids: Vec<_> = (0..5).map(|i| publish(&i.to_string())).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let page = engine.history_now(&t, ids[0], count(10));
    assert!(
        page.truncated,
        "ids[1] was trimmed, so a reader after ids[0] missed it"
    );
    assert_eq!(
        page.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[2..].to_vec()
    );
    let page = engine.history_now(&t, ids[1], count(10));
    assert!(!page.truncated);
    assert_eq!(page.first_retained, Some(ids[2]));
    assert_eq!(engine.history_now(&t, ids[2], count(1)).events.len(), 1);
}

#[test]
fn idempotency_key_answers_the_first_id_and_stores_once() {
    let hub = Arc::new(NoSubscribers);
    let engine = MemoryEngine::new(hub, 10, Duration::ZERO, Duration::from_secs(60));
    let (t, u) = (
        TopicName::parse("t", 8).unwrap(),
        TopicName::parse("u", 8).unwrap(),
    );
    let key = IdempotencyKey::parse("k-1").unwrap();
    let publish = |topic, data| {
        engine.publish_now(Publish {
            topic,
            event: None,
            data,
            idempotency_key: Some(&key),
        })
    };
    let first = publish(&t, "a");
    assert_eq!(publish(&t, "a again"), first);
    assert_ne!(publish(&u, "other topic"), first);
    assert_eq!(engine.history_now(&t, EventId::ZERO, count(10)).events.len(), 1);
}

#[test]
fn remembered_keys_count_in_the_byte_bound_and_the_oldest_go_first() {
    let hub = Arc::new(NoSubscribers);
    let bound = 64 * 1024;
    let engine =
        MemoryEngine::new(hub, 2, Duration::ZERO, Duration::from_secs(600)).with_max_total_bytes(bound);
    let t = TopicName::parse("t", 8).unwrap();
    let keys: Vec<IdempotencyKey> = (0..2000)
        .map(|n| IdempotencyKey::parse(&format!("key-{n:05}")).unwrap())
        .collect();
    let mut ids = Vec::new();
    for key in &keys {
        ids.push(engine.publish_now(Publish {
            topic: &t,
            event: None,
            data: "x",
            idempotency_key: Some(key),
        }));
        let (_, bytes) = engine.retained().unwrap();
        assert!(
            bytes as usize <= bound,
            "{bytes} bytes held past the {bound} bound"
        );
    }
    // Two events are retained; the keys are what fill the bound, and each is counted.
    let (topics, bytes) = engine.retained().unwrap();
    assert_eq!(topics, 1);
    let remembered = engine.lock().seen_keys.len();
    assert!((100..2000).contains(&remembered), "{remembered} keys remembered");
    assert!(
        bytes as usize >= remembered * KEY_OVERHEAD,
        "{bytes} bytes for {remembered} keys"
    );
    // The newest keys still answer their first id; the oldest were forgotten first.
    let retry = |n: usize| {
        engine.publish_now(Publish {
            topic: &t,
            event: None,
            data: "x",
            idempotency_key: Some(&keys[n]),
        })
    };
    assert_eq!(retry(1999), ids[1999]);
    assert_ne!(retry(0), ids[0]);
}

#[test]
fn a_topic_costs_its_log_and_gives_it_back_when_swept() {
    let hub = Arc::new(NoSubscribers);
    let engine = MemoryEngine::new(hub, 10, Duration::from_secs(60), Duration::from_secs(60));
    let key = IdempotencyKey::parse("k").unwrap();
    for n in 0..3 {
        let topic = TopicName::parse(&format!("t{n}"), 8).unwrap();
        engine.publish_now(Publish {
            topic: &topic,
            event: None,
            data: "x",
            idempotency_key: Some(&key),
        });
    }
    let (topics, bytes) = engine.retained().unwrap();
    assert_eq!(topics, 3);
    assert!(
        bytes as usize >= 3 * (TOPIC_OVERHEAD + KEY_OVERHEAD + EVENT_OVERHEAD),
        "{bytes}"
    );
    engine.sweep_at(now_ms() + 120_000);
    assert_eq!(engine.retained(), Some((0, 0)));
}
