//! Herald: a pub/sub hub that pushes live updates to browsers over Server-Sent Events.
//!
//! Publishers POST to a topic; subscribers hold an SSE stream of one or more topics. Every event gets an
//! id ordered within its topic; a multi-topic stream's `id:` is a composite of one position per topic
//! ([`cursor`]), so a client reconnecting with `Last-Event-ID` receives exactly what it missed, then the
//! live events.
//!
//! # Layout
//! Dependencies point one way (checked over every `crate::` path when the structure issue landed; no
//! module reaches back up): `startup` → `http` → `subscribe` / `publish` → `node` → `connection` → `hub`
//! → `engine` → `event` → `sse` → `domain`; `cursor`, `selector`, `auth`, `config`, `limits`,
//! `telemetry` are leaves the layers above use, and `error` (below `node`) names what a request can end
//! with. Engines never see the hub: they report through `engine::EngineEvents`. Only `http` (and
//! `startup`, which builds the servers) knows actix.
//! - `http` (crate-private): one room per protocol's routes — the native API (`subscribe`,
//!   `publish`, `history`, `status`, `health`, `demo`), and Mercure's dialect at `/.well-known/mercure`
//!   (`http/mercure/`: its publish form and subscription selectors) — plus `request` (what every route
//!   reads of a request: query, path topic, the gate's head), `cors`, and `error` (every error mapped once to problem+json). Plain-HTTP listeners start at
//!   `front` (the front door: reads the first head, refuses bad ones itself), which uses `framing` (what
//!   a complete head says) and `lean` (SSE streams served with no buffers, for the routes in its table).
//! - `subscribe`: opening a stream from a parsed `StreamRequest` (topics, cursor, shape) and the gate's
//!   head: the gate, per-IP slots, hub, engine subscriptions, replay bound. No protocol parsing here.
//! - `publish`: admitting a publish (rate, the access rule) into a `Permit`, the only way to the engine.
//! - `node`: what a node's requests share (`Node`), `RequestHead`, and the one gate every topic route
//!   passes (token, cookie origin, access rule).
//! - `error`: `ApiError`, the errors a request can end with.
//! - `connection`: one SSE response body — retry, replay across topics, live events, heartbeats — built
//!   from what streams share (`Streams`), not from the HTTP state. It holds its stream's presence guard.
//! - `presence`: who is subscribed (`[presence]`): a guard per stream, one task per node that writes
//!   joins and leaves to the engine's presence store, heartbeats, removes dead nodes' subscriptions and
//!   announces each start and end as a private Mercure update.
//! - `hub`: per-node fan-out of pre-encoded frames into bounded per-connection queues, by topic name
//!   and by pattern (`hub::patterns`: grouped by text, matches cached per topic); implements
//!   `EngineEvents`.
//! - `engine`: the `Engine` trait (stores history, carries events to every node) and `EngineEvents`;
//!   `memory`, and `redis/` split by concern (start-up, `error`, `connection`, `keys`, `functions`,
//!   `migrate`, the pub/sub `link` (one loop) over `pubsub` / `sharded`, `primary`: one URL, Sentinel or
//!   Cluster, and the `Conn` it opens; `replicas`, for `min_replicas`). `presence`: the presence seam
//!   (`PresenceStore`), beside the broker as centrifuge keeps `presence.go`, with memory and Redis sides.
//! - [`event`]: `Event` (an SSE frame encoded once; `id: None` for live-only; a Mercure `Update` with
//!   its own frame) and `Stored` (in history).
//! - `sse`: WHATWG event-stream framing.
//! - [`selector`]: topic selectors (exact, `prefix*`, `*`, RFC 6570 URI templates; for subscriptions
//!   also WHATWG URL patterns), the one matcher of token claims, private topics and subscriptions.
//! - [`auth`]: JWT verification in Mercure's claim shape; the one access rule (`Auth::authorize`).
//! - [`config`]: layered settings (built-in defaults, files, `HERALD__…` env vars, flags); each section
//!   validates itself in its own file; unknown keys are refused; secrets stay out of `Debug`.
//! - [`cursor`]: a stream's position as its `id:` lines carry it (one id, or a composite per topic), and
//!   a multi-topic stream's per-topic positions.
//! - [`domain`]: validated values — [`domain::TopicName`], [`domain::EventName`], [`domain::EventId`].
//! - [`telemetry`]: logs and the counters behind `/metrics`.
//! - `limits`: per-client-IP publish rate and connection caps, and who the client is behind proxies.
//! - [`probe`]: the tiny HTTP client behind `herald check` (container health checks).
//! - [`startup`]: [`startup::Application`] builds a node on a listener and runs it until shut down;
//!   [`startup::check_store`] is `herald migrate --check`.
//! - [`tls`]: HTTPS with HTTP/2: the certificate pair, read again on SIGHUP.
//!
//! Outside `src/`: `migrations/` holds the Redis functions library and the key-layout history.

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
pub(crate) mod presence;
pub mod probe;
pub(crate) mod publish;
pub mod selector;
pub(crate) mod sse;
pub mod startup;
pub(crate) mod subscribe;
pub mod telemetry;
pub mod tls;
