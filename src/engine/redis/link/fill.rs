//! Gap-filling: after a (re)subscription, each topic's missed events are read from its stream and handed
//! over page by page, its cursor moving with each page.

use std::sync::atomic::Ordering;

use futures_util::future::try_join_all;

use super::{Link, LinkError};
use crate::domain::{EventId, TopicName};
use crate::engine::redis::functions::{raise_floor, read_history};
use crate::engine::redis::primary::Conn;

impl Link {
    /// Once the topics' channels are subscribed (again): hands the hub what it missed of each, from the
    /// topic's stream, after the last id it delivered up to Redis' newest (which the topic's floor then
    /// holds, so live copies of those events are skipped). A topic the link never received before (its
    /// first life) needs nothing filled.
    pub(super) async fn fill(&mut self, conn: &mut Conn, topics: &[TopicName]) -> Result<(), LinkError> {
        let mut filled = 0usize;
        // Everything above a topic's `until` arrives on the new subscription; up to it comes from the
        // stream. Each topic's clock is first raised to what this node has seen, in case Redis lost
        // writes: all topics at once (one pipelined round trip on one Redis, one per shard on a Cluster).
        let raised = {
            let (keys, seen, settings) = (&self.keys, &self.shared.seen, &self.function_settings);
            try_join_all(topics.iter().map(|topic| {
                let mut conn = conn.clone();
                async move { raise_floor(&mut conn, keys, topic, seen, settings).await }
            }))
            .await?
        };
        for (topic, raised) in topics.iter().zip(raised) {
            filled += self.fill_raised(conn, topic, raised).await?;
        }
        if filled > 0 {
            tracing::info!("gap-filled {filled} events missed while the link was down");
        }
        Ok(())
    }

    /// One topic's fill once its floor was raised (`until`: Redis' newest then; `lost`: Redis had lost
    /// writes): hands the hub what it missed, page by page; answers how many.
    pub(super) async fn fill_raised(
        &mut self,
        conn: &mut Conn,
        topic: &TopicName,
        (until, lost): (EventId, bool),
    ) -> Result<usize, LinkError> {
        let mut filled = 0usize;
        if lost {
            self.shared.report_loss(topic, until);
        }
        // The topic's own cursor, unless it is beyond what Redis has (a bad message moved it).
        let floor = self.floors.get(topic).copied();
        let mut after = match (self.cursors.get(topic).copied(), floor) {
            (Some(cursor), floor) if cursor <= until => cursor.max(floor.unwrap_or(EventId::ZERO)),
            (_, Some(floor)) => floor,
            (_, None) => until,
        };
        if after >= until {
            // Nothing missed (or never received before: the link's first life).
            self.floors.insert(topic.clone(), until);
            self.cursors.remove(topic);
            return Ok(0);
        }
        loop {
            let page = read_history(
                conn,
                &self.keys,
                topic,
                after,
                self.gap_fill_bound,
                &self.function_settings,
            )
            .await?;
            let mut done = !page.more;
            let mut run = Vec::with_capacity(page.events.len());
            for event in page.events {
                if event.id > until {
                    done = true;
                    break;
                }
                after = event.id;
                run.push(event.event);
            }
            // Handed over page by page, the cursor with it: if a later read fails, the next
            // resume goes on from here (nothing read is dropped, nothing handed over twice).
            filled += run.len();
            self.metrics
                .gap_filled
                .fetch_add(run.len() as u64, Ordering::Relaxed);
            self.node.dispatch_all(&run);
            self.cursors.insert(topic.clone(), after);
            if done {
                break;
            }
        }
        self.floors.insert(topic.clone(), until);
        self.cursors.remove(topic);
        Ok(filled)
    }
}
