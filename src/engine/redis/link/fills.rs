//! A Cluster's gap-fills, each waiting alone. A (re)subscription confirmed on a shard that is failing
//! over may take seconds to answer the fill's first read (its floor: the cluster client waits out MOVED
//! and TRYAGAIN itself); read inline, it held the loop, and so every other shard's delivery, for that
//! long (1.3 s in issue 33's run). So the floor is read beside the loop, and that topic's messages are
//! held, undecoded and in arrival order, until it lands: then the fill's pages go out, then what was held,
//! exactly as if the loop had waited for that topic alone.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::RedisError;

use super::{Link, LinkError};
use crate::domain::{EventId, TopicName};
use crate::engine::redis::functions::raise_floor;
use crate::engine::redis::primary::Conn;
use crate::engine::redis::pubsub::PubSub;

/// A topic whose floor read came back.
pub(super) type Raised = (TopicName, Result<(EventId, bool), RedisError>);

/// Messages held per topic at most while its floor is out; past it they are dropped and the fill reads
/// them from the stream instead (a second fill, up to Redis' newest), so memory stays bounded.
const MAX_HELD: usize = 16_384;

/// The fills of one life of the link whose floor read is still out, and what arrived for their topics.
#[derive(Default)]
pub(super) struct Filling {
    calls: FuturesUnordered<BoxFuture<'static, Raised>>,
    held: HashMap<TopicName, Held>,
}

#[derive(Default)]
struct Held {
    /// (channel, payload, by pattern), in arrival order.
    messages: Vec<(String, Vec<u8>, bool)>,
    overflowed: bool,
}

impl Filling {
    /// The next floor read that came back; never, while none is out.
    pub(super) async fn next(&mut self) -> Raised {
        match self.calls.next().await {
            Some(raised) => raised,
            None => std::future::pending().await,
        }
    }

    /// Holds a message of a topic whose fill is out; false (the caller takes it) for any other topic.
    pub(super) fn hold(
        &mut self,
        topic: &TopicName,
        channel: &str,
        payload: &[u8],
        by_pattern: bool,
    ) -> bool {
        let Some(held) = self.held.get_mut(topic) else {
            return false;
        };
        if held.messages.len() < MAX_HELD {
            held.messages
                .push((channel.to_string(), payload.to_vec(), by_pattern));
        } else {
            held.overflowed = true;
        }
        true
    }

    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

impl Link {
    /// A (re)subscription of `topic` was confirmed: its floor is read beside the loop. A second
    /// confirmation while one is out needs nothing more: what follows the first read is held.
    pub(super) fn start_fill(&self, filling: &mut Filling, mut conn: Conn, topic: TopicName) {
        if filling.held.contains_key(&topic) {
            return;
        }
        filling.held.insert(topic.clone(), Held::default());
        let (shared, keys, settings) = (
            Arc::clone(&self.shared),
            self.keys.clone(),
            self.function_settings.clone(),
        );
        filling.calls.push(Box::pin(async move {
            let raised = raise_floor(&mut conn, &keys, &topic, &shared.seen, &settings).await;
            (topic, raised)
        }));
    }

    /// A floor read landed: the rest of the fill (its pages, on the loop), then what was held, in order.
    /// A failed read ends the link's life, as a failed inline fill did.
    pub(super) async fn finish_fill<P: PubSub>(
        &mut self,
        pubsub: &mut P,
        filling: &mut Filling,
        (topic, raised): Raised,
    ) -> Result<(), LinkError> {
        let held = filling.held.remove(&topic).unwrap_or_default();
        let raised = raised?;
        let mut conn = pubsub.commands(&self.shared).await?;
        let filled = self.fill_raised(&mut conn, &topic, raised).await?;
        if filled > 0 {
            tracing::info!(%topic, "gap-filled {filled} events missed while the topic was not subscribed");
        }
        if held.overflowed {
            self.fill(&mut conn, std::slice::from_ref(&topic)).await?;
        }
        let mut batch = Vec::new();
        for (channel, payload, by_pattern) in held.messages {
            self.take(&mut batch, &channel, &payload, by_pattern).await?;
        }
        self.node.dispatch_all(&batch);
        Ok(())
    }
}
