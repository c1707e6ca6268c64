//! The hub's own tests: full queues, the connection limit, idle reports.
use super::*;
use crate::domain::EventId;

fn event(seq: u64, topic: &TopicName) -> Arc<Event> {
    crate::event::Stored::new(EventId { ms: 1, seq }, topic.clone(), None, "x").event
}

#[test]
fn full_queue_closes_only_that_connection() {
    let hub = Arc::new(Hub::new(2, 10, Arc::default()));
    let t = TopicName::parse("t", 8).unwrap();
    let slow = hub.join(vec![t.clone()], Vec::new()).unwrap();
    let fast = hub.join(vec![t.clone()], Vec::new()).unwrap();
    for seq in 0..3 {
        hub.dispatch_all(&[event(seq, &t)]);
        if let Take::Events(events) = fast.conn().take(&hub.metrics) {
            assert_eq!(events.len(), 1);
        }
    }
    assert!(matches!(
        slow.conn().take(&hub.metrics),
        Take::Closed(CloseReason::Lagged)
    ));
    assert_eq!(hub.metrics.closed_for_lag.load(Ordering::Relaxed), 1);
    assert_eq!(hub.gauges(true).subscriptions, 1);
    assert_eq!(hub.metrics.queued.load(Ordering::Relaxed), 0);
    drop((slow, fast));
    assert_eq!(hub.gauges(true).connections, 0);
    assert!(!hub.has_subscribers(&t));
}

#[test]
fn connection_limit_and_idle_report() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let hub = Arc::new(Hub::new(8, 1, Arc::default()).with_idle_reports(tx));
    let t = TopicName::parse("t", 8).unwrap();
    let one = hub.join(vec![t.clone()], Vec::new()).unwrap();
    assert_eq!(
        hub.join(vec![t.clone()], Vec::new()).err(),
        Some(JoinError::Full(1))
    );
    drop(one);
    assert_eq!(rx.try_recv().ok(), Some(t.clone()));
    hub.shutdown();
    assert_eq!(hub.join(vec![t], Vec::new()).err(), Some(JoinError::ShuttingDown));
}
