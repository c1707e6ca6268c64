//! Pattern subscriptions on the link: while some local stream selects topics by pattern, the link also
//! receives every topic's stored events (`PSUBSCRIBE P:{*}:stored`), and stops once none does.
//!
//! A topic the link also subscribes by name then arrives twice, as `message` and right behind it as
//! `pmessage` (Redis writes both in the same publish): the pattern copy of the message just taken is
//! dropped. Topics received through the pattern only are handed on without a cursor (no per-topic
//! state for every topic of the Redis) and without a gap-fill: after a lost link their streams are
//! ended, and their clients come back with `Last-Event-ID` to a replay of the topics `P:topics` lists.

use tokio::sync::oneshot;

use super::{Link, LinkError};
use crate::engine::redis::pubsub::PubSub;
use crate::engine::EngineError;

impl Link {
    /// Makes the link receive every topic; answered once Redis confirmed it.
    pub(super) async fn on_subscribe_all<P: PubSub>(
        &mut self,
        pubsub: &mut P,
        reply: oneshot::Sender<Result<(), EngineError>>,
    ) -> Option<LinkError> {
        if self.everything {
            let _ = reply.send(Ok(()));
            return None;
        }
        let Some(call) = pubsub.everything(&self.keys, true) else {
            let _ = reply.send(Err(EngineError::Failed(
                "a Redis Cluster's sharded channels have no patterns: on a Cluster, subscribe to topics by \
                 name (Mercure's exact match)"
                    .into(),
            )));
            return None;
        };
        match self.call(call).await {
            Ok(()) => {
                self.everything = true;
                let _ = reply.send(Ok(()));
                None
            }
            Err(e) => {
                let _ = reply.send(Err(EngineError::Unavailable(
                    "Redis did not confirm the subscription".into(),
                )));
                Some(e)
            }
        }
    }

    /// On every ping: stop receiving every topic once no local stream selects by pattern.
    pub(super) async fn release_everything<P: PubSub>(&mut self, pubsub: &mut P) -> Result<(), LinkError> {
        if !self.everything || self.node.has_patterns() {
            return Ok(());
        }
        if let Some(call) = pubsub.everything(&self.keys, false) {
            self.call(call).await?;
        }
        self.everything = false;
        Ok(())
    }

    /// After (re)connecting: pattern streams missed what was published while the link was down, and
    /// no gap-fill reaches topics they never named: they are ended, to resume by replay.
    pub(super) async fn resume_everything<P: PubSub>(&mut self, pubsub: &mut P) -> Result<(), LinkError> {
        self.everything = false;
        if !self.node.has_patterns() {
            return Ok(());
        }
        self.node.patterns_interrupted();
        if let Some(call) = pubsub.everything(&self.keys, true) {
            self.call(call).await?;
            self.everything = true;
        }
        Ok(())
    }
}
