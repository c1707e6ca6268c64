//! Mercure's subscriptions API (`[presence]` on): `GET /.well-known/mercure/subscriptions`,
//! `…/subscriptions/{topic}` and `…/subscriptions/{topic}/{subscriber}` (0.x), and
//! `…/subscriptions/{matchType}/{match}[/{subscriber}]` (1.0), each part percent-encoded, as JSON-LD in
//! each subscription's own dialect, across every node. A token whose subscribe selectors match the
//! request's path may read it (`Access::Presence`); anonymous callers may not. Lists come in pages of
//! `presence.page_size`, each pointing at the next (`Link: <…?cursor=…>; rel="next"` and `next`), so no
//! request makes a node gather a large topic's list whole.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::auth::Access;
use crate::domain::TopicName;
use crate::error::ApiError;
use crate::http::request::{head, percent_decode, query_pairs, query_value};
use crate::node::Node;
use crate::presence::{document, segment, MAX_EVENT_TOPIC_LEN, SUBSCRIPTIONS_PATH};

const CONTEXT: &str = "https://mercure.rocks/";
/// Mercure 1.0's matcher types, as its subscription paths name them.
const MATCH_TYPES: [&str; 2] = ["Exact", "URLPattern"];

pub async fn subscriptions(req: HttpRequest, state: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let path = req.uri().path();
    let pairs = query_pairs(req.query_string())?;
    // The path itself is what the token must allow, as Mercure matches it (its segments encoded).
    let name = TopicName::parse(path, MAX_EVENT_TOPIC_LEN)?;
    state.authorize(&head(&req, &pairs), Access::Presence, std::slice::from_ref(&name))?;
    let presence = state.presence.as_ref().ok_or_else(crate::http::presence::off)?;
    let rest = path.strip_prefix(SUBSCRIPTIONS_PATH).unwrap_or_default();
    let parts = rest
        .split('/')
        .skip(1)
        .map(|raw| percent_decode(raw, false).map_err(|e| ApiError::BadRequest(format!("the path: {e}"))))
        .collect::<Result<Vec<String>, ApiError>>()?;
    let store = &presence.store;
    let ld = |body: Value| {
        HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/ld+json"))
            .body(body.to_string())
    };
    // 1.0 paths name the matcher type first (`Exact`, `URLPattern`); 0.x paths do not.
    let (kind, rest): (Option<&str>, &[String]) = match parts.as_slice() {
        [kind, rest @ ..] if !rest.is_empty() && MATCH_TYPES.contains(&kind.as_str()) => {
            (Some(kind.as_str()), rest)
        }
        all => (None, all),
    };
    if let [topic, subscriber] = rest {
        let entry = store
            .get(topic, subscriber)
            .await?
            .filter(|e| e.match_type.as_deref() == kind)
            .ok_or_else(|| {
                ApiError::NotFound(format!("no subscription of {subscriber} to {topic} is active"))
            })?;
        let mut body = document(&entry, true);
        body["@context"] = json!(CONTEXT);
        body["lastEventID"] = json!("earliest");
        return Ok(ld(body));
    }
    let topic = match rest {
        [] => None,
        [topic] if !topic.is_empty() => Some(topic.as_str()),
        _ => {
            return Err(ApiError::NotFound(format!(
                "{path} names no subscriptions: use {SUBSCRIPTIONS_PATH}[/{{topic}}[/{{subscriber}}]] or \
                 {SUBSCRIPTIONS_PATH}/{{matchType}}/{{match}}[/{{subscriber}}]"
            )))
        }
    };
    let cursor = query_value(&pairs, "cursor").unwrap_or_default();
    let (entries, next) = store
        .list(topic, cursor, state.settings.presence.page_size)
        .await?;
    // A selector's list holds its dialect's subscriptions only (the list of all holds both).
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| topic.is_none() || e.match_type.as_deref() == kind)
        .map(|e| document(e, true))
        .collect();
    let mut body = json!({
        "@context": CONTEXT,
        "id": path,
        "type": "Subscriptions",
        // Subscription events replayed from the start of their history bring a list up to date.
        "lastEventID": "earliest",
        "subscriptions": list,
    });
    let mut link = None;
    if let Some(next) = next {
        let url = format!("{path}?cursor={}", segment(&next));
        link = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")).ok();
        body["next"] = json!(url);
    }
    let mut response = ld(body);
    if let Some(link) = link {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}
