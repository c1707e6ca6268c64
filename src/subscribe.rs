//! Opening a stream, whatever HTTP path carries it: topics, `Last-Event-ID`, the access gate, per-IP
//! slots, joining the hub, the engine's subscriptions and the replay bound.
//!
//! Order matters: join the hub (and confirm the engine's subscription) before reading the engine's newest
//! id of each topic, so every event is either in the replay (id <= that) or queued live (id > that): no
//! gap, no duplicate.

use crate::auth::Access;
use crate::connection::Connection;
use crate::cursor::LastEventId;
use crate::domain::{now_ms, EventId, TopicName};
use crate::error::ApiError;
use crate::node::{query_value, Node, RequestHead};

/// What a subscribe request asks for.
pub(crate) enum Open {
    /// Open the stream.
    Stream,
    /// Check it could be opened, and open nothing (`HEAD`).
    Check,
}

/// The stream's body, or `None` when only a check was asked for; an error says why it was refused.
pub(crate) async fn open(
    node: &Node,
    head: &RequestHead<'_>,
    open: Open,
) -> Result<Option<Connection>, ApiError> {
    let limits = &node.settings.limits;
    let mut topics: Vec<TopicName> = Vec::new();
    for (key, value) in head.query {
        if key == "topic" {
            let topic = TopicName::parse(value, limits.max_topic_len)?;
            if !topics.contains(&topic) {
                topics.push(topic);
            }
            if topics.len() > limits.max_topics_per_connection {
                return Err(ApiError::BadRequest(format!(
                    "one connection may subscribe to at most {} topics",
                    limits.max_topics_per_connection
                )));
            }
        }
    }
    if topics.is_empty() {
        return Err(ApiError::BadRequest(
            "name at least one topic, as in /events?topic=news (repeat topic= for more)".into(),
        ));
    }
    let last_event_id = match last_event_id(head)? {
        Some(id) => Some(id),
        None => since(head)?.map(LastEventId::Single),
    };
    let poll =
        match query_value(head.query, "poll") {
            None | Some("") | Some("0") => false,
            Some("1") if last_event_id.is_some() => true,
            Some("1") => return Err(ApiError::BadRequest(
                "poll=1 replays and ends: say from where, with lastEventId=<id> or since=10m (or since=all)"
                    .into(),
            )),
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "poll={other}: use poll=1 to get the replay and end the stream, or leave it out"
                )))
            }
        };
    let envelope = match query_value(head.query, "envelope") {
        None | Some("") | Some("none") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "envelope={other} is not a known envelope; use envelope=json to get each event's data as \
                 {{\"topic\": …, \"id\": …, \"data\": …}}, or leave it out"
            )))
        }
    };
    let grant = node.authorize(head, Access::Read, &topics)?;
    if let Open::Check = open {
        return Ok(None);
    }
    let slot = node
        .per_ip
        .connect(node.client_ip(head))
        .ok_or(ApiError::TooManyStreams(limits.max_connections_per_ip))?;

    let membership = node.hub.join(topics.clone())?;
    for topic in &topics {
        node.engine.subscribe(topic).await?;
    }
    // A resuming stream's replay stops at each topic's newest id; a multi-topic stream's composite ids
    // start from them.
    let newest = if last_event_id.is_some() || topics.len() > 1 {
        node.engine.last_ids(&topics).await?
    } else {
        Vec::new()
    };
    let mut connection = Connection::new(
        &node.streams,
        membership,
        last_event_id.map(|id| id.after_for(&topics)),
        newest,
        slot,
        grant.and_then(|g| g.expires_at()),
        envelope,
    );
    if poll {
        connection.poll_only();
    }
    Ok(Some(connection))
}

/// `since=30s|10m|2h|1d|all` (as ntfy has it): where to resume when no event id is given, as the id just
/// before that moment. Ids are milliseconds since the epoch, so a time maps onto them directly.
fn since(head: &RequestHead<'_>) -> Result<Option<EventId>, ApiError> {
    let raw = match query_value(head.query, "since") {
        None | Some("") => return Ok(None),
        Some("all") => return Ok(Some(EventId::ZERO)),
        Some(raw) => raw,
    };
    let bad = || {
        ApiError::BadRequest(format!(
            "since={raw}: use a number and a unit (30s, 10m, 2h, 7d), or all"
        ))
    };
    let split = raw.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let back = number.checked_mul(unit_ms).ok_or_else(bad)?;
    Ok(Some(
        match now_ms().checked_sub(back).and_then(|t| t.checked_sub(1)) {
            Some(before) => EventId {
                ms: before,
                seq: u64::MAX,
            },
            None => EventId::ZERO,
        },
    ))
}

/// The `Last-Event-ID` header (what a browser sends when it reconnects) wins over the `lastEventId` query
/// parameter (what a page sets on first connect, and keeps in its URL). Empty means none. A malformed id
/// is refused with 400 rather than silently replaying nothing or everything.
fn last_event_id(head: &RequestHead<'_>) -> Result<Option<LastEventId>, ApiError> {
    let raw = match head.last_event_id {
        Some(value) => Some(value.ok_or_else(|| {
            ApiError::BadRequest(
                "the Last-Event-ID header is not visible ASCII; send an id this hub gave you".into(),
            )
        })?),
        None => query_value(head.query, "lastEventId"),
    };
    match raw {
        None | Some("") => Ok(None),
        Some(raw) => Ok(Some(raw.parse()?)),
    }
}
