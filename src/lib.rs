//! Herald: a pub/sub hub that pushes live updates to browsers over Server-Sent Events.
//!
//! Publishers POST to a topic; subscribers hold an SSE stream of one or more topics. Every event gets an
//! id that is ordered across all topics, so a client reconnecting with `Last-Event-ID` receives exactly
//! what it missed, then the live events.
//!
//! # Layout
//! - [`auth`]: JWT verification in Mercure's claim shape; who may publish and read private topics.
//! - [`config`]: layered settings (built-in defaults, files, `HERALD__…` env vars, flags), validated once.
//! - [`domain`]: validated values — [`domain::TopicName`], [`domain::EventName`], [`domain::EventId`].
//! - [`engine`]: the [`engine::Engine`] trait (stores history, carries events to hubs) and its `memory`
//!   and `redis` implementations (Redis sockets live on a thread of their own, off the HTTP workers).
//! - [`hub`]: per-node fan-out of pre-encoded frames into bounded per-connection queues.
//! - [`sse`]: WHATWG event-stream framing.
//! - [`connection`]: one SSE response body — retry, replay across topics, live events, heartbeats.
//! - [`http`]: the routes (one file each), CORS, and the mapping of every error to problem+json.
//! - [`telemetry`]: logs and the counters behind `/metrics`.
//! - [`limits`]: per-client-IP publish rate and connection caps, and who the client is behind proxies.
//! - [`probe`]: the tiny HTTP client behind `herald check` (container health checks).
//! - [`startup`]: [`startup::Application`] builds a node on a listener and runs it until shut down.

pub mod auth;
pub mod config;
pub mod connection;
pub mod domain;
pub mod engine;
pub mod event;
pub mod http;
pub mod hub;
pub mod limits;
pub mod probe;
pub mod sse;
pub mod startup;
pub mod telemetry;
