//! Mercure's dialect at `/.well-known/mercure`: publish (a form) and subscribe (an SSE stream), on the
//! same topics, engines and access rule as the native API. Parsing only: the logic is `crate::publish`
//! and `crate::subscribe`, so an update published here reaches `/events` subscribers and the other way
//! round.

pub(super) mod publish;
pub(super) mod subscribe;
