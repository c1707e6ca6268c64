//! Herald: a pub/sub hub that pushes live updates to browsers over Server-Sent Events.
//!
//! Publishers POST to a topic; subscribers hold an SSE stream of one or more topics. Every event gets an
//! id ordered within its topic; a multi-topic stream's `id:` is a composite of one position per topic
//! ([`cursor`]), so a client reconnecting with `Last-Event-ID` receives exactly what it missed, then the
//! live events.
//!
//! # Layout
//! Dependencies point one way, with no cycle: `http` → `subscribe` → `node` → `connection` → `hub` /
//! `engine` → `event` → `sse`, `domain`. Engines never see the hub: they report through
//! `engine::EngineEvents`. Only `http` knows actix.
//! - `http` (crate-private): the routes (one file each), CORS, and the mapping of every error to
//!   problem+json; it turns actix requests into `node::RequestHead`s and answers into responses.
//!   `http::front` is the front door of plain-HTTP listeners: it answers bad request heads itself, serves
//!   SSE streams on a lean path (no buffers per idle connection) and hands everything else to actix-web.
//! - `subscribe`: opening a stream (topics, `Last-Event-ID`, the gate, per-IP slots, hub, replay bound),
//!   free of HTTP-stack types, so another HTTP path can drive it.
//! - `node`: what a node's requests share (`Node`), `RequestHead`, and the one gate every topic route
//!   passes (token, cookie origin, access rule).
//! - `error`: `ApiError`, the errors a request can end with.
//! - `connection`: one SSE response body — retry, replay across topics, live events, heartbeats — built
//!   from what streams share (`Streams`), not from the HTTP state.
//! - `hub`: per-node fan-out of pre-encoded frames into bounded per-connection queues; implements
//!   `EngineEvents`.
//! - `engine`: the `Engine` trait (stores history, carries events to every node) and `EngineEvents`;
//!   `memory`, and `redis/` split by concern (start-up, `connection`, `keys`, `functions` with
//!   `herald.lua`, the pub/sub `link`, `primary`: one URL or Sentinel, `replicas`: the primary's
//!   replicas, for `min_replicas`).
//! - [`event`]: `Event` (an SSE frame encoded once; `id: None` for live-only) and `Stored` (in history).
//! - `sse`: WHATWG event-stream framing.
//! - [`auth`]: JWT verification in Mercure's claim shape; the one access rule (`Auth::authorize`).
//! - [`config`]: layered settings (built-in defaults, files, `HERALD__…` env vars, flags); each section
//!   validates itself; secrets stay out of `Debug`.
//! - [`cursor`]: a stream's position as its `id:` lines carry it (one id, or a composite per topic).
//! - [`domain`]: validated values — [`domain::TopicName`], [`domain::EventName`], [`domain::EventId`].
//! - [`telemetry`]: logs and the counters behind `/metrics`.
//! - `limits`: per-client-IP publish rate and connection caps, and who the client is behind proxies.
//! - [`probe`]: the tiny HTTP client behind `herald check` (container health checks).
//! - [`startup`]: [`startup::Application`] builds a node on a listener and runs it until shut down.
//! - [`tls`]: HTTPS with HTTP/2: the certificate pair, read again on SIGHUP.

pub mod auth;
pub mod config;
pub(crate) mod connection;
pub mod cursor;
pub mod domain;
pub(crate) mod engine;
pub(crate) mod error;
pub mod event;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod limits;
pub(crate) mod node;
pub mod probe;
pub(crate) mod publish;
pub(crate) mod sse;
pub mod startup;
pub(crate) mod subscribe;
pub mod telemetry;
pub mod tls;
