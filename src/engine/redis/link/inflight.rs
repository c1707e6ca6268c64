//! Subscribe commands and idle topics. On one Redis the loop makes each call itself (a failure means the
//! connection is gone, and ends the link's life). On a Cluster each call runs beside the loop
//! (`PubSub::detached`), so a topic whose shard is failing over waits alone while the other shards keep
//! delivering; one call a topic at a time, so an unsubscribe and a subscribe of one topic never cross.

use std::collections::HashMap;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::oneshot;

use super::{Link, LinkError};
use crate::domain::TopicName;
use crate::engine::redis::pubsub::{Detached, PubSub};
use crate::engine::{Cause, EngineError};

pub(super) type Reply = oneshot::Sender<Result<(), EngineError>>;

type Landed = (TopicName, bool, Result<(), LinkError>);

/// The detached calls of one life of the link.
#[derive(Default)]
pub(super) struct InFlight {
    calls: FuturesUnordered<futures_util::future::BoxFuture<'static, Landed>>,
    /// Per topic with a call in flight, the subscribers waiting for its answer.
    waiting: HashMap<TopicName, Vec<Reply>>,
}

impl InFlight {
    fn start(&mut self, topic: TopicName, subscribe: bool, call: Detached, waiting: Vec<Reply>) {
        self.waiting.insert(topic.clone(), waiting);
        self.calls
            .push(Box::pin(async move { (topic, subscribe, call.await) }));
    }

    /// The next call that came back; never, while none is in flight.
    pub(super) async fn next(&mut self) -> Landed {
        match self.calls.next().await {
            Some(landed) => landed,
            None => std::future::pending().await,
        }
    }
}

impl Link {
    /// A local subscriber needs the topic: answered once Redis confirmed it. `Some` ends this life.
    pub(super) async fn on_subscribe<P: PubSub>(
        &mut self,
        pubsub: &mut P,
        flight: &mut InFlight,
        topic: TopicName,
        reply: Reply,
    ) -> Option<LinkError> {
        if let Some(waiting) = flight.waiting.get_mut(&topic) {
            waiting.push(reply);
            return None;
        }
        if self.subscribed.contains(&topic) || !self.node.has_subscribers(&topic) {
            let _ = reply.send(Ok(()));
            return None;
        }
        if let Some(call) = pubsub.detached(&self.keys, &topic, true) {
            flight.start(topic, true, call, vec![reply]);
            return None;
        }
        let result = self.ensure_subscribed(pubsub, &topic).await;
        let _ = reply.send(result.as_ref().map_err(refusal).copied());
        result.err()
    }

    /// The topic's last local subscriber left: unsubscribed, unless one came back meanwhile.
    pub(super) async fn on_idle<P: PubSub>(
        &mut self,
        pubsub: &mut P,
        flight: &mut InFlight,
        topic: TopicName,
    ) -> Result<(), LinkError> {
        // A call in flight for the topic checks for subscribers when it lands.
        if flight.waiting.contains_key(&topic) || !self.release(&topic) {
            return Ok(());
        }
        match pubsub.detached(&self.keys, &topic, false) {
            Some(call) => {
                flight.start(topic, false, call, Vec::new());
                Ok(())
            }
            None => self.call(pubsub.unsubscribe(&self.keys, &topic)).await,
        }
    }

    /// A detached call came back: its subscribers are answered (a failure refuses them, with 503, and
    /// nothing else), and what changed meanwhile is followed up.
    pub(super) async fn landed<P: PubSub>(&mut self, pubsub: &mut P, flight: &mut InFlight, landed: Landed) {
        let (topic, subscribe, result) = landed;
        let waiting = flight.waiting.remove(&topic).unwrap_or_default();
        if !subscribe {
            if let Err(e) = result {
                // Its shard is failing over: the subscription went with the old primary.
                tracing::debug!(%topic, "unsubscribing an idle topic failed: {e}");
            }
            // Subscribers that came during the unsubscribe get a subscription of their own.
            if !waiting.is_empty() {
                match pubsub.detached(&self.keys, &topic, true) {
                    Some(call) => flight.start(topic, true, call, waiting),
                    None => refuse_all(waiting, &LinkError::Closed),
                }
            }
            return;
        }
        let result = match result {
            Ok(()) => {
                self.subscribed.insert(topic.clone());
                let anchored = self.start_at_newest(&topic).await;
                if anchored.is_err() {
                    self.subscribed.remove(&topic);
                }
                anchored
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(()) => {
                for reply in waiting {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => refuse_all(waiting, e),
        }
        // Its subscribers left while Redis was confirming it.
        if result.is_ok() && self.release(&topic) {
            if let Some(call) = pubsub.detached(&self.keys, &topic, false) {
                flight.start(topic, false, call, Vec::new());
            }
        }
    }
}

fn refuse_all(waiting: Vec<Reply>, e: &LinkError) {
    for reply in waiting {
        let _ = reply.send(Err(refusal(e)));
    }
}

/// What a subscriber is told when the link could not subscribe its topic (it retries).
fn refusal(e: &LinkError) -> EngineError {
    EngineError::Unavailable(Cause::with_raw("the Redis link failed", e.to_string()))
}
