//! The link's side on a Redis Cluster: one cluster connection in RESP3 whose per-shard connections carry
//! the topics' sharded channels (`SSUBSCRIBE`), so each node reads only the shards of the topics it serves.
//!
//! Redis tells a subscriber when its channel's slot moved to another shard (`sunsubscribe`): the link
//! then subscribes again, which the cluster client sends to the new owner. When a shard's connection
//! drops (a primary died), the link starts over with a fresh slot map, as it does on one Redis, until
//! the Cluster has promoted a replica. Every (re)subscription of a topic's stored channel is followed by
//! a gap-fill of that topic, so events published while it was not subscribed anywhere (on the replica
//! that took over, or on the shard importing the slot) are handed over exactly once.

use std::time::Duration;

use futures_util::future::try_join_all;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::connection::Shared;
use super::keys::Keys;
use super::link::LinkError;
use super::primary::{Conn, Seeds};
use super::pubsub::{Message, PubSub, Push};
use crate::domain::TopicName;

/// A Cluster's sharded pub/sub: what its connection pushes arrives on `pushes`.
pub(super) struct Sharded {
    conn: ClusterConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    keys: Keys,
    max_topic_len: usize,
}

impl Sharded {
    pub(super) async fn connect(
        seeds: &Seeds,
        command_timeout: Duration,
        connect_timeout: Duration,
        keys: Keys,
        max_topic_len: usize,
    ) -> Result<Self, LinkError> {
        let (push_tx, pushes) = mpsc::unbounded_channel::<PushInfo>();
        let client = seeds.client(command_timeout, Some(push_tx), None)?;
        // Connecting reaches every shard: a few connect timeouts' worth.
        let conn = match timeout(connect_timeout.saturating_mul(3), client.get_async_connection()).await {
            Ok(conn) => conn?,
            Err(_) => return Err(LinkError::ConnectTimeout),
        };
        Ok(Sharded {
            conn,
            pushes,
            keys,
            max_topic_len,
        })
    }

    fn classify(&self, push: PushInfo) -> Push<(String, Vec<u8>)> {
        if push.kind == PushKind::Disconnection {
            return Push::Disconnected;
        }
        let mut data = push.data.into_iter();
        let channel = match data.next() {
            Some(Value::BulkString(b)) => String::from_utf8(b).unwrap_or_default(),
            _ => return Push::Other,
        };
        let topic = |channel: &str| {
            self.keys
                .topic_of_channel(channel, self.max_topic_len)
                .filter(|(_, stored)| *stored)
                .map(|(topic, _)| topic)
        };
        match push.kind {
            PushKind::SMessage | PushKind::Message => match data.next() {
                Some(Value::BulkString(payload)) => Push::Message((channel, payload)),
                _ => Push::Other,
            },
            PushKind::SSubscribe => topic(&channel).map_or(Push::Other, Push::Subscribed),
            PushKind::SUnsubscribe => topic(&channel).map_or(Push::Other, Push::Dropped),
            _ => Push::Other,
        }
    }
}

impl Message for (String, Vec<u8>) {
    fn channel(&self) -> &str {
        &self.0
    }

    fn payload(&self) -> &[u8] {
        &self.1
    }
}

impl PubSub for Sharded {
    type Message = (String, Vec<u8>);
    /// A Cluster never held an older layout (`migrations/README.md`).
    const UPGRADES_LAYOUT: bool = false;

    async fn next(&mut self) -> Push<Self::Message> {
        match self.pushes.recv().await {
            Some(push) => self.classify(push),
            None => Push::Disconnected,
        }
    }

    fn ready(&mut self) -> Option<Push<Self::Message>> {
        let push = self.pushes.try_recv().ok()?;
        Some(self.classify(push))
    }

    async fn subscribe(&mut self, keys: &Keys, topics: &[TopicName]) -> RedisResult<()> {
        // One SSUBSCRIBE per topic: a call may only name channels of one slot.
        let subscribes = topics.iter().map(|topic| {
            let mut conn = self.conn.clone();
            let channels = keys.channels(topic).to_vec();
            async move { conn.ssubscribe(channels).await }
        });
        try_join_all(subscribes).await.map(drop)
    }

    async fn unsubscribe(&mut self, keys: &Keys, topic: &TopicName) -> RedisResult<()> {
        self.conn.sunsubscribe(keys.channels(topic).to_vec()).await
    }

    async fn ping(&mut self) -> RedisResult<()> {
        // The cluster client reconnects shards by itself; this notices a Cluster gone whole.
        redis::cmd("PING")
            .query_async::<Value>(&mut self.conn)
            .await
            .map(drop)
    }

    async fn commands(&mut self, _: &Shared) -> Result<Conn, LinkError> {
        Ok(Conn::Cluster(self.conn.clone()))
    }
}
