//! Opening a stream, whatever protocol and HTTP path carry it: from a parsed [`StreamRequest`], the access
//! gate, per-IP slots, joining the hub, the engine's subscriptions and the replay bound.
//!
//! Order matters: join the hub (and confirm the engine's subscription) before reading the engine's newest
//! id of each topic, so every event is either in the replay (id <= that) or queued live (id > that): no
//! gap, no duplicate.

use crate::auth::Access;
use crate::connection::Connection;
use crate::cursor::LastEventId;
use crate::domain::TopicName;
use crate::error::ApiError;
use crate::node::{Node, RequestHead};

/// What a subscribe request asks for.
pub(crate) enum Open {
    /// Open the stream.
    Stream,
    /// Check it could be opened, and open nothing (`HEAD`).
    Check,
}

/// What a stream asks for, as a protocol's parser (`http::subscribe` for the native API) read it from
/// the request: the topics, where to resume, and how the stream is shaped.
pub(crate) struct StreamRequest {
    /// Distinct, in the order asked, at most `limits.max_topics_per_connection`.
    pub topics: Vec<TopicName>,
    pub last_event_id: Option<LastEventId>,
    /// End the stream once the replay is sent.
    pub poll: bool,
    /// Wrap each event's data with its topic (`Event::frame_for`).
    pub envelope: bool,
}

/// The stream's body, or `None` when only a check was asked for; an error says why it was refused.
/// `head` is what the gate reads (token, origin, client address).
pub(crate) async fn open(
    node: &Node,
    head: &RequestHead<'_>,
    request: StreamRequest,
    open: Open,
) -> Result<Option<Connection>, ApiError> {
    let StreamRequest {
        topics,
        last_event_id,
        poll,
        envelope,
    } = request;
    let limits = &node.settings.limits;
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
