//! The link's side on a Redis Cluster: one cluster connection in RESP3 whose per-shard connections carry
//! the topics' sharded channels (`SSUBSCRIBE`), so each node reads only the shards of the topics it serves.
//!
//! Redis tells a subscriber when its channel's slot moved to another shard (`sunsubscribe`): the link
//! then subscribes again, which the cluster client sends to the new owner. When one shard's connection
//! drops (a primary died), the other shards' subscriptions stand and keep delivering: the client
//! reconnects that shard, and a background task subscribes every topic again until each is confirmed
//! (the topics of the lost shard once the Cluster has promoted a replica and the client has found it;
//! the others at once). Every (re)subscription of a topic's stored channel is followed by a gap-fill of
//! that topic, so events published while it was not subscribed anywhere (on the replica that took over,
//! or on the shard importing the slot) are handed over exactly once. Only a Cluster gone whole (no
//! primary answers a ping) ends the link's life.

use std::time::Duration;

use futures_util::future::{join_all, try_join_all};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::connection::Shared;
use super::keys::Keys;
use super::link::{backoff, LinkError};
use super::primary::{Conn, Seeds};
use super::pubsub::{Detached, Message, PubSub, Push};
use crate::domain::TopicName;

/// A Cluster's sharded pub/sub: what its connection pushes arrives on `pushes`.
pub(super) struct Sharded {
    conn: ClusterConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    keys: Keys,
    max_topic_len: usize,
    command_timeout: Duration,
    /// Subscribing every topic again after a shard was lost; a newer loss starts it over.
    resubscribing: Option<JoinHandle<()>>,
}

impl Drop for Sharded {
    fn drop(&mut self) {
        if let Some(task) = self.resubscribing.take() {
            task.abort();
        }
    }
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
            command_timeout,
            resubscribing: None,
        })
    }

    fn classify(&self, push: PushInfo) -> Push<(String, Vec<u8>)> {
        if push.kind == PushKind::Disconnection {
            return Push::ShardLost;
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
        // The cluster client reconnects shards by itself; one primary answering is enough, so this
        // notices only a Cluster gone whole (a plain PING must reach every primary, and one dead shard
        // would end the link's life for all).
        let any_primary = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::OneSucceeded),
        ));
        self.conn
            .route_command(redis::cmd("PING"), any_primary)
            .await
            .map(drop)
    }

    fn detached(&self, keys: &Keys, topic: &TopicName, subscribe: bool) -> Option<Detached> {
        let (mut conn, channels, deadline) = (
            self.conn.clone(),
            keys.channels(topic).to_vec(),
            self.command_timeout,
        );
        Some(Box::pin(async move {
            let call = async {
                if subscribe {
                    conn.ssubscribe(channels).await
                } else {
                    conn.sunsubscribe(channels).await
                }
            };
            match timeout(deadline, call).await {
                Ok(answer) => answer.map_err(LinkError::from),
                Err(_) => Err(LinkError::Timeout),
            }
        }))
    }

    fn resubscribe(&mut self, keys: &Keys, topics: Vec<TopicName>) {
        if let Some(task) = self.resubscribing.take() {
            task.abort();
        }
        let (conn, keys, deadline) = (self.conn.clone(), keys.clone(), self.command_timeout);
        self.resubscribing = Some(tokio::spawn(async move {
            let mut pending = topics;
            let mut failures = 0u32;
            // A topic of the lost shard fails (its primary is gone) until the client finds the one the
            // Cluster promoted; each failure sends the client looking (reconnect, slot map refresh).
            while !pending.is_empty() {
                let tries = pending.into_iter().map(|topic| {
                    let mut conn = conn.clone();
                    let channels = keys.channels(&topic).to_vec();
                    async move {
                        let done = matches!(timeout(deadline, conn.ssubscribe(channels)).await, Ok(Ok(())));
                        (!done).then_some(topic)
                    }
                });
                pending = join_all(tries).await.into_iter().flatten().collect();
                if !pending.is_empty() {
                    tokio::time::sleep(backoff(failures)).await;
                    failures = failures.saturating_add(1);
                }
            }
        }));
    }

    async fn commands(&mut self, _: &Shared) -> Result<Conn, LinkError> {
        Ok(Conn::Cluster(self.conn.clone()))
    }
}
