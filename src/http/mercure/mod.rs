//! Mercure's dialect at `/.well-known/mercure`: publish (a form) and subscribe (an SSE stream), on the
//! same topics, engines and access rule as the native API. Parsing only: the logic is `crate::publish`
//! and `crate::subscribe`, so an update published here reaches `/events` subscribers and the other way
//! round.

pub(super) mod publish;
pub(crate) mod subscribe;
pub(super) mod subscriptions;

/// Where the hub answers, and the namespace of its own topics (subscription events): no publisher may
/// write there.
pub(crate) const HUB_PATH: &str = "/.well-known/mercure";

use crate::node::Node;

/// The discovery header of native answers about a topic (RFC 8288, as Mercure's discovery asks):
/// `Link: <hub>; rel="mercure"`, the hub being `mercure.public_url` or this origin's hub path.
pub(crate) fn discovery_link(node: &Node) -> (&'static str, String) {
    let url = &node.settings.mercure.public_url;
    let hub = if url.is_empty() { HUB_PATH } else { url.as_str() };
    ("Link", format!("<{hub}>; rel=\"mercure\""))
}
