//! The link on a Redis Cluster: one cluster connection in RESP3 whose per-shard connections carry the
//! topics' sharded channels (`SSUBSCRIBE`), so each node reads only the shards of the topics it serves.
//!
//! Redis tells a subscriber when its channel's slot moved to another shard (`sunsubscribe`): the link
//! then subscribes again, which the cluster client sends to the new owner. When a shard's connection
//! drops (a primary died), the link starts over with a fresh slot map, as it does on one Redis, until
//! the Cluster has promoted a replica. Every (re)subscription of a topic's stored channel is followed by
//! a gap-fill of that topic, so events published while it was not subscribed anywhere (on the replica
//! that took over, or on the shard importing the slot) are handed over exactly once.

use std::sync::Arc;

use futures_util::future::try_join_all;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::functions::load_functions;
use super::link::{answer, Command, Link, LinkError, MAX_BATCH};
use super::primary::Conn;
use super::primary::Seeds;
use crate::domain::TopicName;
use crate::event::Event;

/// What one push from the cluster connection asks of the link.
enum Push {
    Message(String, Vec<u8>),
    /// A topic's stored channel was (re)subscribed on some shard: fill its gap.
    Subscribed(TopicName),
    /// Redis dropped a topic's channels (its slot moved): subscribe again.
    Dropped(TopicName),
    /// A shard's connection dropped: its subscriptions are gone with it.
    Disconnected,
    Other,
}

impl Link {
    pub(super) async fn serve_sharded(&mut self, seeds: &Seeds) -> LinkError {
        let (push_tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
        let client = match seeds.client(self.command_timeout, Some(push_tx), None) {
            Ok(client) => client,
            Err(e) => return e.into(),
        };
        let mut conn = match timeout(
            self.connect_timeout.saturating_mul(3),
            client.get_async_connection(),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return e.into(),
            Err(_) => return LinkError::ConnectTimeout,
        };
        if let Err(e) = self.resume_sharded(&mut conn).await {
            return e;
        }
        self.ready.send_replace(true);
        tracing::info!("Redis Cluster pub/sub link to {} is up", self.url);
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                push = pushes.recv() => {
                    let Some(push) = push else { return LinkError::Closed };
                    // Take everything already received, and hand it to the hub as one run.
                    let mut batch = Vec::new();
                    let mut next = Some(push);
                    while let Some(push) = next.take() {
                        if let Err(e) = self.on_push(&mut conn, &mut batch, push).await {
                            self.node.dispatch_all(&batch);
                            return e;
                        }
                        if batch.len() >= MAX_BATCH {
                            break;
                        }
                        next = pushes.try_recv().ok();
                    }
                    self.node.dispatch_all(&batch);
                }
                Some(command) = self.commands.recv() => match command {
                    Command::Subscribe(topic, reply) => {
                        if let Some(e) = answer(reply, self.ensure_subscribed_sharded(&mut conn, &topic).await) {
                            return e;
                        }
                    }
                },
                Some(topic) = self.idle.recv() => {
                    if self.release(&topic) {
                        if let Err(e) = self.call(conn.sunsubscribe(self.keys.channels(&topic).to_vec())).await {
                            return e;
                        }
                    }
                }
                _ = ping.tick() => {
                    // The cluster client reconnects shards by itself; this notices a Cluster gone whole.
                    if let Err(e) = self.call(redis::cmd("PING").query_async::<Value>(&mut conn)).await {
                        return LinkError::Ping(Box::new(e));
                    }
                }
            }
        }
    }

    /// After connecting: load the functions on every primary, subscribe every topic with local
    /// subscribers on its shard, and fill what was missed.
    async fn resume_sharded(&mut self, conn: &mut ClusterConnection) -> Result<(), LinkError> {
        let mut commands = Conn::Cluster(conn.clone());
        load_functions(&mut commands, &self.function_settings).await?;
        let topics = self.node.topics();
        // One SSUBSCRIBE per topic: a call may only name channels of one slot.
        let subscribes = topics.iter().map(|topic| {
            let mut conn = conn.clone();
            let channels = self.keys.channels(topic).to_vec();
            async move { conn.ssubscribe(channels).await }
        });
        self.call(try_join_all(subscribes)).await?;
        self.resubscribed(&mut commands, topics).await
    }

    async fn ensure_subscribed_sharded(
        &mut self,
        conn: &mut ClusterConnection,
        topic: &TopicName,
    ) -> Result<(), LinkError> {
        if self.subscribed.contains(topic) || !self.node.has_subscribers(topic) {
            return Ok(());
        }
        self.call(conn.ssubscribe(self.keys.channels(topic).to_vec()))
            .await?;
        self.subscribed.insert(topic.clone());
        self.start_at_newest(topic).await
    }

    async fn on_push(
        &mut self,
        conn: &mut ClusterConnection,
        batch: &mut Vec<Arc<Event>>,
        push: PushInfo,
    ) -> Result<(), LinkError> {
        match self.classify(push) {
            Push::Message(channel, payload) => self.take(batch, &channel, &payload).await,
            Push::Subscribed(topic) if self.subscribed.contains(&topic) => {
                // What came before must reach the hub before what the fill hands over.
                self.node.dispatch_all(batch);
                batch.clear();
                let mut commands = Conn::Cluster(conn.clone());
                self.fill(&mut commands, std::slice::from_ref(&topic)).await
            }
            Push::Dropped(topic) if self.subscribed.contains(&topic) => {
                tracing::info!(%topic, "the topic's slot moved to another shard; subscribing there");
                // Answered once the new owner confirms; its confirmation push then fills the gap.
                self.call(conn.ssubscribe(self.keys.channels(&topic).to_vec()))
                    .await
            }
            Push::Disconnected => Err(LinkError::Closed),
            _ => Ok(()),
        }
    }

    fn classify(&self, push: PushInfo) -> Push {
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
                Some(Value::BulkString(payload)) => Push::Message(channel, payload),
                _ => Push::Other,
            },
            PushKind::SSubscribe => topic(&channel).map_or(Push::Other, Push::Subscribed),
            PushKind::SUnsubscribe => topic(&channel).map_or(Push::Other, Push::Dropped),
            _ => Push::Other,
        }
    }
}
