//! What the link's one loop needs of a pub/sub connection ([`PubSub`]), and its side for one Redis (or
//! the primary Sentinel names): [`Plain`], a RESP2 pub/sub connection of its own. The Cluster's side is
//! `sharded::Sharded`.

use futures_util::{FutureExt, StreamExt};
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Msg, RedisResult};
use tokio::time::timeout;

use super::connection::Shared;
use super::keys::Keys;
use super::link::LinkError;
use super::primary::Conn;
use crate::domain::TopicName;

/// A (un)subscribe call that owns what it needs (`PubSub::detached`).
pub(super) type Detached = futures_util::future::BoxFuture<'static, Result<(), LinkError>>;

/// What one push from Redis asks of the link.
pub(super) enum Push<M> {
    Message(M),
    /// A topic's stored channel was (re)subscribed (on a Cluster, on some shard): fill its gap.
    Subscribed(TopicName),
    /// Redis dropped a topic's channels (on a Cluster, its slot moved): subscribe again.
    Dropped(TopicName),
    /// The connection dropped: its subscriptions are gone with it.
    Disconnected,
    /// One shard's connection dropped (a Cluster): the client reconnects it, the other shards go on, and
    /// the link subscribes its topics again.
    ShardLost,
    Other,
}

/// A message's channel and payload, borrowed from whatever the connection received (no copy).
pub(super) trait Message {
    fn channel(&self) -> &str;
    fn payload(&self) -> &[u8];
    /// Received through the pattern subscription (`PSUBSCRIBE`) rather than the channel's own.
    fn by_pattern(&self) -> bool {
        false
    }
}

/// A pub/sub connection the link serves from: where the two kinds differ, and nothing else.
pub(super) trait PubSub {
    type Message: Message;
    /// Whether an older key layout may be found (`migrate`): on one Redis, not on a Cluster.
    const UPGRADES_LAYOUT: bool;
    /// The next push; `Disconnected` once the connection is gone.
    async fn next(&mut self) -> Push<Self::Message>;
    /// A push already received, without waiting.
    fn ready(&mut self) -> Option<Push<Self::Message>>;
    /// Subscribes the topics' channels (nothing to do for none).
    async fn subscribe(&mut self, keys: &Keys, topics: &[TopicName]) -> RedisResult<()>;
    async fn unsubscribe(&mut self, keys: &Keys, topic: &TopicName) -> RedisResult<()>;
    /// Receives every topic's stored events too (pattern subscriptions), or stops; `None` where the
    /// connection cannot (a Cluster's sharded channels have no patterns).
    fn everything(
        &mut self,
        _keys: &Keys,
        _on: bool,
    ) -> Option<futures_util::future::BoxFuture<'_, RedisResult<()>>> {
        None
    }
    async fn ping(&mut self) -> RedisResult<()>;
    /// Subscribes the topics again in the background, until each is confirmed (after `ShardLost`); never
    /// needed where a lost connection ends the link's life.
    fn resubscribe(&mut self, _keys: &Keys, _topics: Vec<TopicName>) {}
    /// One topic's (un)subscribe as a call of its own that the loop does not wait for (a Cluster: a dead
    /// shard's topic waits out the command timeout, and the other shards' topics must not wait with it;
    /// its failure refuses that topic's subscriber and ends nothing). `None`: the loop makes the call.
    fn detached(&self, _keys: &Keys, _topic: &TopicName, _subscribe: bool) -> Option<Detached> {
        None
    }
    /// The connection the link's own reads and writes take (functions, floors, gap-fills).
    async fn commands(&mut self, shared: &Shared) -> Result<Conn, LinkError>;
}

/// One Redis's pub/sub: a connection of its own, split so messages are read while commands go out.
pub(super) struct Plain {
    sink: PubSubSink,
    stream: PubSubStream,
}

impl Plain {
    /// Connects to the primary as of now (asked of the sentinels behind Sentinel).
    pub(super) async fn connect(
        shared: &Shared,
        connect_timeout: std::time::Duration,
    ) -> Result<Self, LinkError> {
        let client = shared.primary.client().await?;
        let pubsub = match timeout(connect_timeout, client.get_async_pubsub()).await {
            Ok(pubsub) => pubsub?,
            Err(_) => return Err(LinkError::ConnectTimeout),
        };
        let (sink, stream) = pubsub.split();
        Ok(Plain { sink, stream })
    }
}

impl Message for Msg {
    fn channel(&self) -> &str {
        self.get_channel_name()
    }

    fn payload(&self) -> &[u8] {
        self.get_payload_bytes()
    }

    fn by_pattern(&self) -> bool {
        self.from_pattern()
    }
}

impl PubSub for Plain {
    type Message = Msg;
    const UPGRADES_LAYOUT: bool = true;

    async fn next(&mut self) -> Push<Msg> {
        self.stream.next().await.map_or(Push::Disconnected, Push::Message)
    }

    fn ready(&mut self) -> Option<Push<Msg>> {
        match self.stream.next().now_or_never() {
            Some(Some(message)) => Some(Push::Message(message)),
            Some(None) => Some(Push::Disconnected),
            None => None,
        }
    }

    async fn subscribe(&mut self, keys: &Keys, topics: &[TopicName]) -> RedisResult<()> {
        if topics.is_empty() {
            return Ok(());
        }
        // One SUBSCRIBE for them all: one round trip on a reconnect, however many topics.
        let channels: Vec<String> = topics.iter().flat_map(|t| keys.channels(t)).collect();
        self.sink.subscribe(channels).await
    }

    async fn unsubscribe(&mut self, keys: &Keys, topic: &TopicName) -> RedisResult<()> {
        self.sink.unsubscribe(keys.channels(topic).to_vec()).await
    }

    async fn ping(&mut self) -> RedisResult<()> {
        self.sink.ping::<redis::Value>().await.map(drop)
    }

    fn everything(
        &mut self,
        keys: &Keys,
        on: bool,
    ) -> Option<futures_util::future::BoxFuture<'_, RedisResult<()>>> {
        let pattern = keys.every_stored_channel();
        Some(if on {
            Box::pin(self.sink.psubscribe(pattern))
        } else {
            Box::pin(self.sink.punsubscribe(pattern))
        })
    }

    async fn commands(&mut self, shared: &Shared) -> Result<Conn, LinkError> {
        Ok(shared.get().await?.1)
    }
}
