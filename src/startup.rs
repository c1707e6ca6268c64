//! Builds a node: settings → metrics, hub, engine, HTTP server bound to its listener.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::rc::Rc;

use actix_http::HttpService;
use actix_service::{fn_factory, fn_service, map_config, ServiceFactory};
use actix_web::dev::{AppConfig, Server, ServerHandle, Service};
use actix_web::http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE};
use actix_web::http::{ConnectionType, Version};
use actix_web::rt::net::TcpStream;
use actix_web::{web, App, ResponseError};

use crate::auth::{Auth, AuthConfigError};
use crate::config::Settings;
use crate::connection::Streams;
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::{RedisEngine, RedisStartError};
use crate::engine::{Engine, EngineEvents};
use crate::http;
use crate::http::front::{self, Front, OpenConnection};
use crate::http::publish;
use crate::hub::Hub;
use crate::limits::{PerIp, Slots};
use crate::node::Node;
use crate::presence::Presence;
use crate::telemetry::{Metrics, Recent};
use crate::tls::{Certificates, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source}; pick another port with --port or HERALD__SERVER__PORT")]
    Bind { addr: String, source: std::io::Error },
    #[error(transparent)]
    Redis(#[from] RedisStartError),
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Authorization (and the body limit) before `100 Continue`, not after: actix-http's expect service,
/// on plain HTTP and HTTPS alike.
fn continue_check(
    node: web::Data<Node>,
) -> impl ServiceFactory<
    actix_http::Request,
    Config = (),
    Response = actix_http::Request,
    Error = actix_http::Response<actix_http::body::BoxBody>,
    InitError = (),
> {
    fn_service(move |req: actix_http::Request| {
        let checked = publish::before_continue(&node, &req);
        async move {
            match checked {
                Ok(()) => Ok(req),
                Err(e) => Err(actix_http::Response::from(e.error_response())),
            }
        }
    })
}

/// `herald migrate --check`: what the configured Redis holds (its version, the functions library, the
/// key layout) and whether this binary can serve it; changes nothing. `Ok((report, can_serve))`.
pub async fn check_store(settings: &Settings) -> Result<(String, bool), StartupError> {
    if !settings.redis.enabled() {
        return Ok((
            "engine: memory (nothing is stored across restarts, so nothing to migrate)".into(),
            true,
        ));
    }
    let check = crate::engine::redis::check(&settings.redis).await?;
    Ok((check.to_string(), check.refusal.is_none()))
}

/// Connections the kernel completes and queues before the node accepts them.
const LISTEN_BACKLOG: i32 = 2048;

/// A built node, listening but not yet serving until [`Application::run_until_stopped`].
pub struct Application {
    port: u16,
    server: Server,
    shutdown: Shutdown,
    engine_name: &'static str,
    /// With HTTPS: the certificate pair, to read again on SIGHUP.
    certificates: Option<Arc<Certificates>>,
}

/// Ends a node gracefully: stop accepting, end every SSE stream, wait for in-flight requests (bounded by
/// `server.shutdown_grace_secs`).
#[derive(Clone)]
pub struct Shutdown {
    hub: Arc<Hub>,
    server: ServerHandle,
    /// The listening socket (a second handle to it): shut down first, so new connections are refused.
    listener: Arc<TcpListener>,
    /// Connections open now (see `OpenConnection`).
    open: Arc<AtomicUsize>,
    grace: Duration,
    /// Removed at once on a graceful shutdown, not left to expire.
    presence: Option<Arc<Presence>>,
}

impl Shutdown {
    /// Stops accepting (new connections are refused, so a client knows nothing was sent), then answers
    /// every request with `Connection: close` and ends every stream, waits until every connection has
    /// closed (an idle keep-alive one closes at actix's keep-alive timeout, 5 s) or the grace period ends,
    /// and only then stops the workers.
    pub async fn run(&self) {
        let started = tokio::time::Instant::now();
        self.server.pause().await;
        // The accept thread takes the pause asynchronously; shut the socket after it has let go of it, or
        // it would log a failed accept.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if let Err(e) = socket2::SockRef::from(&*self.listener).shutdown(std::net::Shutdown::Read) {
            tracing::warn!("cannot close the listening socket early ({e}); it closes when the workers stop");
        }
        self.hub.shutdown();
        let deadline = started + self.grace;
        while self.open.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(presence) = &self.presence {
            presence.depart(Duration::from_secs(5)).await;
        }
        let left = self.open.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!("{left} connections still open after the grace period; closing them");
        }
        self.server.stop(true).await;
    }
}

/// HTTP worker threads: as configured, or one per core, less one with Redis. The Redis engine runs its
/// link and connections on a thread of its own, which decodes every event and fills the connections'
/// queues; a worker per core then leaves that thread competing for a core, and the fan-out costs more CPU
/// per delivery, not less (BENCHMARKS.md, run 8).
fn worker_count(configured: usize, redis: bool) -> usize {
    if configured > 0 {
        return configured;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if redis {
        cores.saturating_sub(1).max(1)
    } else {
        cores
    }
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(
            settings.sse.queue_capacity,
            settings.limits.max_connections,
            Arc::clone(&metrics),
        );
        // The engines see the hub only as `EngineEvents`, and learn of idle topics through a channel.
        let (hub, idle) = if !settings.redis.enabled() {
            (Arc::new(hub), None)
        } else {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (Arc::new(hub.with_idle_reports(tx)), Some(rx))
        };
        let node: Arc<dyn EngineEvents> = hub.clone();
        let engine: Arc<dyn Engine> = match idle {
            None => {
                let memory = Arc::new(
                    MemoryEngine::new(
                        node,
                        settings.history.max_len,
                        settings.history.max_age_secs,
                        settings.limits.idempotency_window_secs,
                    )
                    .with_max_total_bytes(settings.history.max_total_bytes),
                );
                // Often enough that expired history goes within a quarter of its age, at most once a second.
                memory.start_sweeper(
                    (settings.history.max_age_secs / 4)
                        .clamp(Duration::from_secs(1), Duration::from_secs(60)),
                );
                memory
            }
            Some(idle) => RedisEngine::start(&settings, node, idle, Arc::clone(&metrics)).await?,
        };
        let addr = format!("{}:{}", settings.server.host, settings.server.port);
        let bind = |source| StartupError::Bind {
            addr: addr.clone(),
            source,
        };
        let listener = TcpListener::bind(&addr).map_err(bind)?;
        let port = listener.local_addr().map_err(bind)?.port();
        // std listens with a backlog of 128: a storm of reconnecting browsers (a node restart behind a
        // load balancer) overflows it, and every dropped SYN costs its client a 1 s, then 3 s, retry.
        // 2048 as actix-web and nginx's own listeners (the kernel caps it at net.core.somaxconn).
        socket2::SockRef::from(&listener)
            .listen(LISTEN_BACKLOG)
            .map_err(bind)?;
        // The write deadline, kept by the kernel (it also covers zero-window probing); accepted sockets
        // inherit it from the listener, over plain TCP and TLS alike.
        socket2::SockRef::from(&listener)
            .set_tcp_user_timeout(Some(settings.server.write_timeout_secs))
            .map_err(bind)?;
        let certificates = match (&settings.server.tls_cert_file, &settings.server.tls_key_file) {
            (cert, key) if !cert.is_empty() && !key.is_empty() => Some(Certificates::load(cert, key)?),
            _ => None,
        };
        let listening = Arc::new(listener.try_clone().map_err(bind)?);
        let open = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&open);
        let engine_name = engine.name();
        let limits = &settings.limits;
        let auth = Arc::new(Auth::from_settings(&settings.auth)?);
        let node_id = format!(
            "{}/{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "herald".into()),
            std::process::id()
        );
        // Presence names this run of the node: two nodes of one process (tests) or a restarted one with
        // the same pid (a container) are never taken for each other.
        let presence = settings.presence.enabled.then(|| {
            let run = uuid::Uuid::new_v4().simple().to_string();
            Presence::start(
                Arc::clone(&engine),
                format!("{node_id}/{}", &run[..8]),
                &settings.presence,
            )
        });
        let state = web::Data::new(Node {
            streams: Streams::new(
                Arc::clone(&engine),
                Arc::clone(&metrics),
                Arc::clone(&auth),
                &settings,
            ),
            engine,
            hub: Arc::clone(&hub),
            auth,
            per_ip: PerIp::new(
                limits.publish_rate_per_ip,
                limits.publish_burst_per_ip,
                limits.max_connections_per_ip,
            ),
            trusted_proxies: settings
                .server
                .trusted_proxies
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect(),
            settings: Arc::new(settings.clone()),
            recent: {
                let recent = Arc::new(Recent::new());
                Recent::start(&recent, Arc::clone(&metrics));
                recent
            },
            node_id,
            presence: presence.clone(),
            metrics,
        });
        let settings_grace = settings.server.shutdown_grace_secs;
        let closing = Arc::clone(&hub);
        let app_state = state.clone();
        let keep_alive = settings.server.keep_alive_secs;
        // Digits only: always a valid header value.
        let keep_alive_hint = HeaderValue::from_str(&format!("timeout={}", keep_alive.as_secs())).ok();
        let app = move || {
            let closing = Arc::clone(&closing);
            let keep_alive_hint = keep_alive_hint.clone();
            App::new()
                .app_data(app_state.clone())
                // Once the node is stopping, every answer closes its connection: a client looping over
                // a keep-alive connection then opens a new one (refused: the listener is closed, so it
                // knows nothing was sent) instead of sending a request the node would cut at the end of
                // the grace period. Otherwise an HTTP/1.1 answer says how long the connection may idle,
                // so a client that heeds it closes first (HTTP/2 has no such header).
                .wrap_fn(move |req, service| {
                    // The request decides whether its connection stays open (`Connection: close`);
                    // read from its own header (actix's parsed flag is not reliable for a pipelined
                    // request: measured).
                    let kept = req.version() == Version::HTTP_11
                        && !req.headers().get_all(CONNECTION).any(|v| {
                            v.to_str()
                                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
                        });
                    let answer = service.call(req);
                    let closing = Arc::clone(&closing);
                    let keep_alive_hint = keep_alive_hint.clone();
                    async move {
                        let mut answer = answer.await?;
                        let head = answer.response_mut().head_mut();
                        if closing.is_shutting_down() {
                            head.set_connection_type(ConnectionType::Close);
                        } else if let Some(hint) = keep_alive_hint.filter(|_| {
                            // Not the response head's own connection type: actix reuses pooled
                            // heads, and one came back marked HTTP/1.0 `close` (measured). Streams
                            // close after their answer, so they are not told a timeout.
                            kept && !head
                                .headers()
                                .get(CONTENT_TYPE)
                                .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"))
                        }) {
                            head.headers_mut()
                                .insert(HeaderName::from_static("keep-alive"), hint);
                        }
                        Ok(answer)
                    }
                })
                .configure(http::configure)
        };
        let head_timeout = settings.server.request_head_timeout_ms;
        let workers = worker_count(settings.server.workers, settings.redis.enabled());
        let server = match &certificates {
            Some(certificates) => {
                // HTTPS (HTTP/1.1 and HTTP/2 by ALPN) through actix-http's service, as plain HTTP is
                // (minus the front door): so the same expect hook runs before `100 Continue`.
                let tls = certificates.server_config()?;
                let node = state.clone();
                actix_server::Server::build()
                    // Signals are ours to handle (see `main`), so tests can run many nodes in one process.
                    .disable_signals()
                    .shutdown_timeout(1) // `Shutdown::run` has already waited for connections
                    .workers(workers)
                    .listen("herald-https", listener, move || {
                        let counted = Arc::clone(&counted);
                        HttpService::build()
                            .expect(continue_check(node.clone()))
                            // Slow-header clients are answered 408 and dropped.
                            .client_request_timeout(head_timeout)
                            .keep_alive(keep_alive)
                            .client_disconnect_timeout(Duration::from_secs(1))
                            // Each event goes out as soon as it is written: Nagle's algorithm would hold
                            // a frame until the previous one is acknowledged (events are already
                            // coalesced per write).
                            .tcp_nodelay(true)
                            // As on the lean path: a client that closes (FIN) or resets its connection is
                            // dropped at once, freeing its stream's slot, queue and Redis interest,
                            // instead of at the next heartbeat write. A client must not half-close its
                            // side while waiting for an answer (no browser or common HTTP client does).
                            .h1_allow_half_closed(false)
                            .on_connect_ext(move |_, data| {
                                data.insert(OpenConnection::new(&counted));
                            })
                            .finish(map_config(app(), |_| AppConfig::default()))
                            .rustls_0_23(tls.clone())
                    })
                    .map_err(bind)?
                    .run()
            }
            None => {
                // Plain HTTP: every connection passes the front door first (`http::front`), which serves
                // streams itself and hands the rest to actix-web's HTTP/1 service, configured as above.
                let front = Arc::new(Front {
                    lean: settings.server.lean_streams,
                    head_timeout,
                    open: counted,
                    pending: Slots::new(settings.server.max_pending_heads_per_ip),
                    trusted_proxies: state.trusted_proxies.clone(),
                    node: state,
                });
                actix_server::Server::build()
                    .disable_signals()
                    .shutdown_timeout(1)
                    .workers(workers)
                    .listen("herald", listener, move || {
                        let http = HttpService::build()
                            .expect(continue_check(front.node.clone()))
                            .client_request_timeout(head_timeout)
                            .keep_alive(keep_alive)
                            .client_disconnect_timeout(Duration::from_secs(1))
                            .h1_allow_half_closed(false)
                            .finish(map_config(app(), |_| AppConfig::default()));
                        let front = Arc::clone(&front);
                        fn_factory(move || {
                            let handler = http.new_service(());
                            let front = Arc::clone(&front);
                            async move {
                                let handler = Rc::new(handler.await.map_err(|_| ())?);
                                // Boxed: actix-server spawns each connection in a future that holds
                                // the service's future twice (once captured, once awaited); boxed,
                                // that is two pointers instead of two copies (BENCHMARKS.md, run 7).
                                Ok::<_, ()>(fn_service(move |io: TcpStream| {
                                    Box::pin(front::serve(io, Rc::clone(&handler), Arc::clone(&front)))
                                }))
                            }
                        })
                    })
                    .map_err(bind)?
                    .run()
            }
        };
        let shutdown = Shutdown {
            hub,
            server: server.handle(),
            listener: listening,
            open,
            grace: settings_grace,
            presence,
        };
        Ok(Application {
            port,
            server,
            shutdown,
            engine_name,
            certificates,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// With HTTPS, the certificate pair (its `reload` reads the files again).
    pub fn certificates(&self) -> Option<Arc<Certificates>> {
        self.certificates.clone()
    }

    pub fn engine_name(&self) -> &'static str {
        self.engine_name
    }

    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

#[cfg(test)]
mod tests {
    use super::worker_count;

    #[test]
    fn workers_are_as_configured_or_one_per_core_less_one_with_redis() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(worker_count(3, true), 3);
        assert_eq!(worker_count(3, false), 3);
        assert_eq!(worker_count(0, false), cores);
        assert_eq!(worker_count(0, true), (cores - 1).max(1));
    }
}
