//! Presence on Redis. Every command names one key, so the layout holds on a Cluster too (a topic's
//! subscriptions live on the topic's shard):
//! - `P:{S}:who`: hash, subscriber → its entry (JSON), per selector S: lists and counts of one topic;
//! - `P:{S}:nodes`: hash, node → how many of S's subscribers it holds (the count's `nodes`);
//! - `P:presence:all`: hash, `S\nsubscriber` → entry: the list of every subscription;
//! - `P:presence:node:<node>`: set of `S\nsubscriber`, what one node holds (what its reaper removes);
//! - `P:presence:nodes`: sorted set, node → when its heartbeat runs out (ms, Redis' clock).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::{Cmd, Value};

use super::connection::Shared;
use super::keys::escape;
use crate::engine::presence::{Entry, Page, PresenceStore};
use crate::engine::EngineError;

pub(super) struct RedisPresence {
    pub(super) shared: Arc<Shared>,
    pub(super) prefix: Arc<str>,
    /// On a Cluster the commands of one call go one by one (their keys are on several shards).
    pub(super) sharded: bool,
}

/// Sets a node's heartbeat to Redis' clock plus the ttl (one clock for every node); 0 when it is new.
const BEAT: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return 1 - redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])";

/// Leases the first node whose heartbeat ran out (its score becomes now + the lease), if any.
const CLAIM: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)[1]
if not dead then return false end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), dead)
return dead";

impl RedisPresence {
    fn who(&self, topic: &str) -> String {
        format!("{}:{{{}}}:who", self.prefix, escape(topic))
    }

    fn nodes_of(&self, topic: &str) -> String {
        format!("{}:{{{}}}:nodes", self.prefix, escape(topic))
    }

    /// Moves `node`'s count of `entry`'s topic by `by` (`P:{S}:nodes`).
    fn count_by(&self, entry: &Entry, node: &str, by: i64) -> Cmd {
        redis::cmd("HINCRBY")
            .arg(self.nodes_of(&entry.topic))
            .arg(node)
            .arg(by)
            .clone()
    }

    fn all(&self) -> String {
        format!("{}:presence:all", self.prefix)
    }

    fn node_set(&self, node: &str) -> String {
        format!("{}:presence:node:{node}", self.prefix)
    }

    fn nodes(&self) -> String {
        format!("{}:presence:nodes", self.prefix)
    }

    /// Runs `cmds` and answers their replies in order: one pipeline on one Redis, one by one on a Cluster.
    async fn each(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, EngineError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let sharded = self.sharded;
        self.shared
            .run(|mut conn| async move {
                if !sharded {
                    let mut pipe = redis::pipe();
                    for cmd in cmds {
                        pipe.add_command(cmd);
                    }
                    return pipe.query_async::<Vec<Value>>(&mut conn).await;
                }
                let mut replies = Vec::with_capacity(cmds.len());
                for cmd in cmds {
                    replies.push(cmd.query_async::<Value>(&mut conn).await?);
                }
                Ok(replies)
            })
            .await
    }
}

fn member(entry: &Entry) -> String {
    format!("{}\n{}", entry.topic, entry.subscriber)
}

fn int(value: &Value) -> i64 {
    redis::from_redis_value_ref::<i64>(value).unwrap_or(0)
}

fn decode(value: &Value) -> Option<Entry> {
    let text: String = redis::from_redis_value_ref(value).ok()?;
    serde_json::from_str(&text).ok()
}

fn encode(entry: &Entry) -> Result<String, EngineError> {
    serde_json::to_string(entry)
        .map_err(|e| EngineError::Failed(format!("a subscription cannot be written: {e}").into()))
}

impl PresenceStore for RedisPresence {
    fn join<'a>(
        &'a self,
        node: &'a str,
        entries: &'a [Entry],
    ) -> BoxFuture<'a, Result<Vec<bool>, EngineError>> {
        async move {
            let mut cmds = Vec::with_capacity(entries.len() * 4);
            for e in entries {
                let doc = encode(e)?;
                cmds.push(
                    redis::cmd("HSET")
                        .arg(self.who(&e.topic))
                        .arg(&*e.subscriber)
                        .arg(&doc)
                        .clone(),
                );
                cmds.push(self.count_by(e, node, 1));
                cmds.push(
                    redis::cmd("HSET")
                        .arg(self.all())
                        .arg(member(e))
                        .arg(&doc)
                        .clone(),
                );
                cmds.push(redis::cmd("SADD").arg(self.node_set(node)).arg(member(e)).clone());
            }
            let replies = self.each(cmds).await?;
            let new: Vec<bool> = replies.chunks(4).map(|r| int(&r[0]) == 1).collect();
            // A repeat (a node recording its entries again) counted its node twice: take that back.
            let undo: Vec<Cmd> = entries
                .iter()
                .zip(&new)
                .filter(|(_, new)| !**new)
                .map(|(e, _)| self.count_by(e, node, -1))
                .collect();
            self.each(undo).await?;
            Ok(new)
        }
        .boxed()
    }

    fn leave<'a>(
        &'a self,
        node: &'a str,
        entries: &'a [Entry],
    ) -> BoxFuture<'a, Result<Vec<bool>, EngineError>> {
        async move {
            let mut cmds = Vec::with_capacity(entries.len() * 3);
            for e in entries {
                cmds.push(
                    redis::cmd("HDEL")
                        .arg(self.who(&e.topic))
                        .arg(&*e.subscriber)
                        .clone(),
                );
                cmds.push(redis::cmd("HDEL").arg(self.all()).arg(member(e)).clone());
                cmds.push(redis::cmd("SREM").arg(self.node_set(node)).arg(member(e)).clone());
            }
            let replies = self.each(cmds).await?;
            let removed: Vec<bool> = replies.chunks(3).map(|r| int(&r[0]) == 1).collect();
            let counts: Vec<Cmd> = entries
                .iter()
                .zip(&removed)
                .filter(|(_, removed)| **removed)
                .map(|(e, _)| self.count_by(e, node, -1))
                .collect();
            // Counts that reach 0 are dropped, so `nodes` counts holders only.
            let after = self.each(counts).await?;
            let drop: Vec<Cmd> = entries
                .iter()
                .zip(&removed)
                .filter(|(_, removed)| **removed)
                .zip(&after)
                .filter(|(_, n)| int(n) <= 0)
                .map(|((e, _), _)| redis::cmd("HDEL").arg(self.nodes_of(&e.topic)).arg(node).clone())
                .collect();
            self.each(drop).await?;
            Ok(removed)
        }
        .boxed()
    }

    fn beat<'a>(&'a self, node: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool, EngineError>> {
        async move {
            let key = self.nodes();
            let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            let known: i64 = self
                .shared
                .run(|mut conn| async move {
                    // EVAL, not the functions library: two lines a heartbeat, on a key no publish touches.
                    redis::cmd("EVAL")
                        .arg(BEAT)
                        .arg(1)
                        .arg(key)
                        .arg(node)
                        .arg(ttl)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            Ok(known == 1)
        }
        .boxed()
    }

    fn claim_dead(&self, lease: Duration) -> BoxFuture<'_, Result<Option<String>, EngineError>> {
        async move {
            let key = self.nodes();
            let lease = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
            self.shared
                .run(|mut conn| async move {
                    redis::cmd("EVAL")
                        .arg(CLAIM)
                        .arg(1)
                        .arg(key)
                        .arg(lease)
                        .query_async(&mut conn)
                        .await
                })
                .await
        }
        .boxed()
    }

    fn held<'a>(&'a self, node: &'a str, n: usize) -> BoxFuture<'a, Result<Vec<Entry>, EngineError>> {
        async move {
            let set = self.node_set(node);
            let members: Vec<String> = self
                .shared
                .run(|mut conn| async move {
                    redis::cmd("SRANDMEMBER")
                        .arg(set)
                        .arg(n)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            let cmds = members
                .iter()
                .filter_map(|m| m.split_once('\n'))
                .map(|(topic, subscriber)| redis::cmd("HGET").arg(self.who(topic)).arg(subscriber).clone())
                .collect();
            let docs = self.each(cmds).await?;
            let mut held = Vec::with_capacity(members.len());
            let mut stale = Vec::new();
            for (m, doc) in members.iter().filter(|m| m.contains('\n')).zip(&docs) {
                match decode(doc) {
                    Some(entry) => held.push(entry),
                    // Gone already (another claimer removed it): only the node's set still names it.
                    None => stale.push(redis::cmd("SREM").arg(self.node_set(node)).arg(m).clone()),
                }
            }
            self.each(stale).await?;
            Ok(held)
        }
        .boxed()
    }

    fn forget<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), EngineError>> {
        async move {
            let cmds = vec![
                redis::cmd("DEL").arg(self.node_set(node)).clone(),
                redis::cmd("ZREM").arg(self.nodes()).arg(node).clone(),
            ];
            self.each(cmds).await.map(drop)
        }
        .boxed()
    }

    fn list<'a>(
        &'a self,
        topic: Option<&'a str>,
        cursor: &'a str,
        n: usize,
    ) -> BoxFuture<'a, Result<Page, EngineError>> {
        async move {
            let key = topic.map_or_else(|| self.all(), |t| self.who(t));
            let from = if cursor.is_empty() { "0" } else { cursor }.to_string();
            let (next, pairs): (String, Vec<Value>) = self
                .shared
                .run(|mut conn| async move {
                    redis::cmd("HSCAN")
                        .arg(key)
                        .arg(from)
                        .arg("COUNT")
                        .arg(n)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            // HSCAN answers field, value, field, value…; a page may hold a few more than `n`.
            let entries = pairs
                .chunks(2)
                .filter_map(|pair| pair.get(1).and_then(decode))
                .collect();
            Ok((entries, (next != "0").then_some(next)))
        }
        .boxed()
    }

    fn get<'a>(
        &'a self,
        topic: &'a str,
        subscriber: &'a str,
    ) -> BoxFuture<'a, Result<Option<Entry>, EngineError>> {
        async move {
            let key = self.who(topic);
            let doc: Value = self
                .shared
                .run(|mut conn| async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg(subscriber)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            Ok(decode(&doc))
        }
        .boxed()
    }

    fn count<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(u64, u64), EngineError>> {
        async move {
            let cmds = vec![
                redis::cmd("HLEN").arg(self.who(topic)).clone(),
                redis::cmd("HLEN").arg(self.nodes_of(topic)).clone(),
            ];
            let replies = self.each(cmds).await?;
            let n = |i: usize| replies.get(i).map_or(0, |v| u64::try_from(int(v)).unwrap_or(0));
            Ok((n(0), n(1)))
        }
        .boxed()
    }
}
