//! Opening a stream, whatever protocol and HTTP path carry it: from a parsed [`StreamRequest`], the access
//! gate, per-IP slots, joining the hub, the engine's subscriptions and the replay bound.
//!
//! Order matters: join the hub (and confirm the engine's subscription) before reading the engine's newest
//! id of each topic, so every event is either in the replay (id <= that) or queued live (id > that): no
//! gap, no duplicate.

use crate::auth::{Access, Grant};
use crate::connection::Connection;
use crate::cursor::LastEventId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::domain::{EventId, IdempotencyKey, TopicName};
use crate::engine::EngineError;
use crate::error::ApiError;
use crate::event::{mercure_key, Shape};
use crate::node::{Node, RequestHead};
use crate::selector::Pattern;

/// What a subscribe request asks for.
pub(crate) enum Open {
    /// Open the stream.
    Stream,
    /// Check it could be opened, and open nothing (`HEAD`).
    Check,
}

/// Where a stream resumes.
pub(crate) enum Resume {
    /// A native `Last-Event-ID`: Herald's id or composite.
    Native(LastEventId),
    /// A Mercure update's id (as its publisher gave it), or `earliest` for all retained history;
    /// `found` is set once the id is found in one of the topics (the response then names it).
    Update { id: String, found: Arc<AtomicBool> },
}

/// Where a stream resuming from a Mercure update's id started, for the response's `Last-Event-ID` and
/// `Mercure-Last-Event-ID` headers, once `open` has looked for it.
pub(crate) struct StartsAt {
    id: String,
    found: Arc<AtomicBool>,
}

impl StartsAt {
    /// The id asked for (in visible ASCII, as a header needs: `event::mercure_key`) when it was found
    /// and everything after it is replayed (a pattern's topics too), else `earliest`: the spec's sign
    /// that events may be missing.
    pub(crate) fn header_value(&self) -> String {
        if self.found.load(Ordering::Relaxed) {
            mercure_key(&self.id)
        } else {
            "earliest".to_string()
        }
    }
}

impl StreamRequest {
    /// Where it will say it started, when it resumes from a Mercure update's id.
    pub(crate) fn starts_at(&self) -> Option<StartsAt> {
        match &self.last_event_id {
            Some(Resume::Update { id, found }) => Some(StartsAt {
                id: id.clone(),
                found: Arc::clone(found),
            }),
            _ => None,
        }
    }
}

/// What a stream asks for, as a protocol's parser (`http::subscribe` for the native API) read it from
/// the request: the topics, where to resume, and how the stream is shaped.
pub(crate) struct StreamRequest {
    /// Distinct, in the order asked, at most `limits.max_topics_per_connection`.
    pub topics: Vec<TopicName>,
    /// Patterns topics are selected by too (Mercure's `*`, URI templates, URL patterns), each with its
    /// text; within the same limit.
    pub patterns: Vec<(Arc<str>, Arc<Pattern>)>,
    pub last_event_id: Option<Resume>,
    /// End the stream once the replay is sent.
    pub poll: bool,
    /// What the stream sends of each event (native, maybe enveloped, or Mercure's frames).
    pub shape: Shape,
    /// Its selectors as written, each with its Mercure 1.0 matcher type (`Exact`, `URLPattern`; none
    /// for 0.x's `topic=`), when presence is on; empty: its topics, as the native API names them.
    pub presence: Vec<(String, Option<&'static str>)>,
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
        mut topics,
        patterns,
        last_event_id,
        poll,
        shape,
        presence: written,
    } = request;
    let limits = &node.settings.limits;
    let grant = node.authorize(head, Access::Read, &topics)?;
    // Its subscriptions as the client wrote them (before a resume names the topics patterns select).
    let selectors: Vec<(String, Option<&'static str>)> = match (&node.presence, poll) {
        (Some(_), false) if !written.is_empty() => written,
        (Some(_), false) => topics.iter().map(|t| (t.as_str().to_string(), None)).collect(),
        _ => Vec::new(),
    };
    // Each with the token's payload for it.
    let selectors: Vec<_> = selectors
        .into_iter()
        .map(|(text, kind)| {
            let payload = grant.as_ref().and_then(|g| g.payload_for(&text)).cloned();
            (text, kind, payload)
        })
        .collect();
    if let Open::Check = open {
        return Ok(None);
    }
    let slot = node
        .per_ip
        .connect(node.client_ip(head))
        .ok_or(ApiError::TooManyStreams(limits.max_connections_per_ip))?;

    let selects_patterns = !patterns.is_empty();
    // A resuming pattern stream names the topics its patterns select, where the engine can list them,
    // so they are replayed (and deduplicated) like named ones.
    let mut replays_patterns = selects_patterns
        && last_event_id.is_some()
        && name_selected_topics(node, grant.as_ref(), &patterns, &mut topics).await?;
    let membership = node.hub.join(topics.clone(), patterns.clone())?;
    for topic in &topics {
        node.engine.subscribe(topic).await?;
    }
    if selects_patterns {
        node.engine.subscribe_all().await.map_err(|e| match e {
            // The engine cannot hand over every topic (a Cluster): the request has to change.
            EngineError::Failed(cause) => ApiError::BadRequest(cause.said),
            e => e.into(),
        })?;
    }
    if replays_patterns {
        // A topic first published between the listing and the join is neither named nor live from its
        // start: the replay is then not exact, and the stream says so.
        let mut now_selected = topics.clone();
        replays_patterns = name_selected_topics(node, grant.as_ref(), &patterns, &mut now_selected).await?
            && now_selected.len() == topics.len();
    }
    // A resuming stream's replay stops at each topic's newest id; a multi-topic stream's composite ids
    // start from them.
    let newest = if last_event_id.is_some() || topics.len() > 1 {
        node.engine.last_ids(&topics).await?
    } else {
        Vec::new()
    };
    let after = match last_event_id {
        None => None,
        Some(Resume::Native(id)) => Some(id.after_for(&topics)),
        Some(Resume::Update { id, found }) => {
            let (after, known) = after_update(node, &topics, &id).await?;
            found.store(
                known && (!selects_patterns || replays_patterns),
                Ordering::Relaxed,
            );
            Some(after)
        }
    };
    let mut connection = Connection::new(&node.streams, membership, after, newest, slot, grant, shape);
    if replays_patterns {
        connection.patterns_replayed();
    }
    if poll {
        connection.poll_only();
    }
    if let Some(presence) = node.presence.as_ref().filter(|_| !selectors.is_empty()) {
        connection.hold_presence(presence.hold(selectors));
    }
    Ok(Some(connection))
}

/// Adds to `topics` the topics with history that `patterns` select and the bearer of `grant` may read,
/// up to the stream's topic limit; whether that named them all (false where the engine cannot list
/// its topics).
async fn name_selected_topics(
    node: &Node,
    grant: Option<&Grant>,
    patterns: &[(Arc<str>, Arc<Pattern>)],
    topics: &mut Vec<TopicName>,
) -> Result<bool, ApiError> {
    let limit = node.settings.limits.max_topics_per_connection;
    let mut all = true;
    for (_, pattern) in patterns {
        let room = limit.saturating_sub(topics.len());
        let Some((found, complete)) = node.engine.topics_selected(pattern, room).await? else {
            return Ok(false);
        };
        all &= complete;
        for topic in found {
            if !topics.contains(&topic) && node.auth.may_read(grant, &topic) {
                if topics.len() == limit {
                    return Ok(false);
                }
                topics.push(topic);
            }
        }
    }
    Ok(all)
}

/// Where each of `topics` resumes after the Mercure update `id`: right after its copy in the topics it
/// was published to (found by `Engine::find` while the history holds it); in the
/// others, from the millisecond it was stored in (each topic has its own clock, so an event of another
/// topic in that same millisecond may come twice, never be skipped). An id Herald made itself
/// (`<ms>-<seq>`) counts as that position. An id found nowhere replays everything retained, with the gap
/// notice where history was trimmed.
async fn after_update(node: &Node, topics: &[TopicName], id: &str) -> Result<(Vec<EventId>, bool), ApiError> {
    if id == "earliest" {
        return Ok((vec![EventId::ZERO; topics.len()], false));
    }
    let mut found = Vec::with_capacity(topics.len());
    match IdempotencyKey::parse(&mercure_key(id)) {
        Ok(key) => {
            for topic in topics {
                found.push(node.engine.find(topic, &key).await?);
            }
        }
        Err(_) => found.resize(topics.len(), None),
    }
    let own: Option<EventId> = id.parse().ok();
    let earliest = found.iter().flatten().min().copied();
    let known = earliest.is_some();
    let after = found
        .into_iter()
        .map(|at| {
            at.or(own)
                .or_else(|| {
                    earliest.map(|e| EventId {
                        ms: e.ms.saturating_sub(1),
                        seq: u64::MAX,
                    })
                })
                .unwrap_or(EventId::ZERO)
        })
        .collect();
    Ok((after, known))
}
