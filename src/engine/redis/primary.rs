//! Where the primary is: one fixed Redis (`redis.url`), or whichever the sentinels name now
//! (`redis.sentinels`), asked afresh for every new connection so a failover is followed; or, on a Redis
//! Cluster (`redis.cluster_nodes`), whichever node holds each key's slot (the cluster client follows the
//! slot map, MOVED and ASK). What it opens there is a [`Conn`]; `connection` shares it between calls.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, IntoConnectionInfo, Pipeline, RedisConnectionInfo,
    RedisError, RedisFuture, RedisResult, TlsCertificates, Value,
};
use tokio::sync::watch;
use tokio::time::timeout;

use super::error::RedisStartError;
use crate::config::{redact_url, RedisSettings};

/// A command connection: to one Redis (standalone, or the primary Sentinel names), or to a Cluster (each
/// call goes to the node holding its keys; MOVED and ASK are followed there). Cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub(super) enum Primary {
    Fixed(redis::Client),
    Sentinel(Sentinels),
    Cluster(Seeds),
}

/// How to reach a Redis Cluster: its seed nodes, credentials and TLS.
pub(super) struct Seeds {
    nodes: Vec<redis::ConnectionInfo>,
    credentials: RedisConnectionInfo,
    tls: Option<TlsCertificates>,
    connect_timeout: Duration,
    /// For messages: the seed nodes, redacted.
    pub(super) shown: String,
}

impl Seeds {
    /// A cluster client whose calls wait up to `response_timeout`; with `push`, one that speaks RESP3 and
    /// hands every pub/sub message and (re)subscription notice to it (the link's); with `retries`, one
    /// that retries a call at most that often (0 for writes: see `Lane::Publishes`).
    pub(super) fn client(
        &self,
        response_timeout: Duration,
        push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
        retries: Option<u32>,
    ) -> RedisResult<ClusterClient> {
        let mut builder = ClusterClientBuilder::new(self.nodes.clone())
            .connection_timeout(self.connect_timeout)
            .response_timeout(response_timeout);
        if let Some(retries) = retries {
            builder = builder.retries(retries);
        }
        if let Some(username) = self.credentials.username() {
            builder = builder.username(username);
        }
        if let Some(password) = self.credentials.password() {
            builder = builder.password(password);
        }
        if let Some(tls) = &self.tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
            builder = builder.certs(tls.clone());
        }
        if let Some(push) = push {
            builder = builder
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push);
        }
        builder.build()
    }
}

pub(super) struct Sentinels {
    /// One client per sentinel, asked in order until one answers.
    sentinels: Vec<redis::Client>,
    master: String,
    /// How data nodes are reached: credentials, and TLS certificates when they speak TLS.
    credentials: RedisConnectionInfo,
    tls: Option<TlsCertificates>,
    config: AsyncConnectionConfig,
    /// Where the primary was last found, so a change is logged once.
    last: std::sync::Mutex<Option<(String, u16)>>,
    /// For messages: the master's name and the sentinels, redacted.
    pub(super) shown: String,
}

fn failure(message: String) -> RedisError {
    std::io::Error::other(message).into()
}

impl Primary {
    pub(super) fn new(
        settings: &RedisSettings,
        config: AsyncConnectionConfig,
    ) -> Result<Self, RedisStartError> {
        let tls = if settings.tls() {
            Some(tls_certificates(settings)?)
        } else {
            None
        };
        if !settings.cluster_nodes.is_empty() {
            let mut nodes = Vec::new();
            let mut credentials = RedisConnectionInfo::default();
            for url in &settings.cluster_nodes {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|source| RedisStartError::BadUrl {
                        url: redact_url(url),
                        source,
                    })?;
                credentials = with_credentials(info.redis_settings().clone(), settings);
                nodes.push(info);
            }
            let shown = format!("the Redis Cluster of {}", redacted(&settings.cluster_nodes));
            return Ok(Primary::Cluster(Seeds {
                nodes,
                credentials,
                tls,
                connect_timeout: settings.connect_timeout_ms,
                shown,
            }));
        }
        if settings.sentinels.is_empty() {
            let url = redact_url(&settings.url);
            let bad_url = |source| RedisStartError::BadUrl {
                url: url.clone(),
                source,
            };
            let info = settings.url.as_str().into_connection_info().map_err(bad_url)?;
            let credentials = with_credentials(info.redis_settings().clone(), settings);
            let info = info.set_redis_settings(credentials);
            return Ok(Primary::Fixed(open(info, tls.as_ref()).map_err(bad_url)?));
        }
        let mut sentinels = Vec::new();
        for url in &settings.sentinels {
            let bad_url = |source| RedisStartError::BadUrl {
                url: redact_url(url),
                source,
            };
            let info = url.as_str().into_connection_info().map_err(bad_url)?;
            let mut auth = info.redis_settings().clone();
            if !settings.sentinel_password.is_empty() {
                auth = auth.set_password(settings.sentinel_password.expose());
            }
            sentinels.push(open(info.set_redis_settings(auth), tls.as_ref()).map_err(bad_url)?);
        }
        let shown = format!(
            "the primary of sentinel master `{}` (sentinels {})",
            settings.sentinel_master,
            redacted(&settings.sentinels)
        );
        Ok(Primary::Sentinel(Sentinels {
            sentinels,
            master: settings.sentinel_master.clone(),
            // Data nodes come from the sentinels' answers, so only the settings give credentials.
            credentials: with_credentials(RedisConnectionInfo::default(), settings),
            tls,
            config,
            last: std::sync::Mutex::new(None),
            shown,
        }))
    }

    /// A client for the primary as of now (one Redis, or behind Sentinel; a Cluster has no one primary).
    pub(super) async fn client(&self) -> RedisResult<redis::Client> {
        match self {
            Primary::Fixed(client) => Ok(client.clone()),
            Primary::Sentinel(s) => s.current().await,
            Primary::Cluster(_) => Err(failure("a Redis Cluster has no single primary".into())),
        }
    }

    /// A command connection to the primary; behind Sentinel, one whose `ROLE` says it is the primary (a
    /// demoted node, or a replica not yet promoted, is refused as unreachable: the caller retries). On a
    /// Cluster, a connection to all its primaries, each call sent to the one holding its keys.
    pub(super) async fn connect(
        &self,
        config: &AsyncConnectionConfig,
        response_timeout: Duration,
        retries: Option<u32>,
    ) -> RedisResult<Conn> {
        if let Primary::Cluster(seeds) = self {
            let client = seeds.client(response_timeout, None, retries)?;
            return Ok(Conn::Cluster(client.get_async_connection().await?));
        }
        let client = self.client().await?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        if let Primary::Sentinel(s) = self {
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
            let role = match role.first() {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(redis::Value::SimpleString(s)) => s.clone(),
                _ => String::new(),
            };
            if role != "master" {
                return Err(failure(format!(
                    "{} named a node whose role is `{role}`, not master (a failover is under way)",
                    s.shown
                )));
            }
        }
        Ok(Conn::Plain(conn))
    }

    /// Until the engine stops: bumps `failovers` whenever a sentinel announces `+switch-master` for our
    /// master, so the link and the command connection move to the new primary at once.
    pub(super) async fn watch_switches(self: Arc<Self>, failovers: watch::Sender<u64>) {
        let Primary::Sentinel(s) = &*self else {
            return;
        };
        let mut turn = 0usize;
        loop {
            let sentinel = &s.sentinels[turn % s.sentinels.len()];
            turn = turn.wrapping_add(1);
            if let Ok(Ok(mut pubsub)) = timeout(Duration::from_secs(2), sentinel.get_async_pubsub()).await {
                if pubsub.subscribe("+switch-master").await.is_ok() {
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        let payload = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
                        // "<master> <old ip> <old port> <new ip> <new port>"
                        if payload.split(' ').next() == Some(s.master.as_str()) {
                            tracing::warn!("Sentinel: +switch-master {payload}; following the failover");
                            failovers.send_modify(|n| *n = n.wrapping_add(1));
                        }
                    }
                }
            }
            if failovers.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// For messages: the URL (redacted), or the master and its sentinels.
    pub(super) fn shown(&self, url: &str) -> String {
        match self {
            Primary::Fixed(_) => redact_url(url),
            Primary::Sentinel(s) => s.shown.clone(),
            Primary::Cluster(c) => c.shown.clone(),
        }
    }
}

impl Sentinels {
    async fn current(&self) -> RedisResult<redis::Client> {
        let mut last_error = None;
        for sentinel in &self.sentinels {
            match self.ask(sentinel).await {
                Ok(Some((host, port))) => {
                    let mut last = self
                        .last
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if last.as_ref() != Some(&(host.clone(), port)) {
                        tracing::info!("Sentinel: the primary of `{}` is {host}:{port}", self.master);
                        *last = Some((host.clone(), port));
                    }
                    drop(last);
                    return self.data_node(&host, port);
                }
                Ok(None) => {
                    last_error = Some(format!("a sentinel does not know master `{}`", self.master));
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        Err(failure(format!(
            "no sentinel named the primary of `{}`: {}",
            self.master,
            last_error.unwrap_or_default()
        )))
    }

    async fn ask(&self, sentinel: &redis::Client) -> RedisResult<Option<(String, u16)>> {
        let mut conn = sentinel
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut conn)
            .await?;
        Ok(addr.and_then(|(host, port)| Some((host, port.parse().ok()?))))
    }

    fn data_node(&self, host: &str, port: u16) -> RedisResult<redis::Client> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        let info = format!("{scheme}://{host}:{port}").into_connection_info()?;
        open(
            info.set_redis_settings(self.credentials.clone()),
            self.tls.as_ref(),
        )
    }
}

/// URLs as they may be shown in messages, passwords redacted.
fn redacted(urls: &[String]) -> String {
    urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(", ")
}

/// `redis.username` / `redis.password`, each winning over what the URL gave.
fn with_credentials(mut credentials: RedisConnectionInfo, settings: &RedisSettings) -> RedisConnectionInfo {
    if !settings.username.is_empty() {
        credentials = credentials.set_username(&settings.username);
    }
    if !settings.password.is_empty() {
        credentials = credentials.set_password(settings.password.expose());
    }
    credentials
}

/// A client, with TLS when certificates are given: the server's name is checked against the host.
fn open(info: redis::ConnectionInfo, tls: Option<&TlsCertificates>) -> RedisResult<redis::Client> {
    match tls {
        None => redis::Client::open(info),
        Some(tls) => {
            // One crypto provider for the process (ring); a second install attempt is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            redis::Client::build_with_tls(info, tls.clone())
        }
    }
}

/// The configured CAs (else the system's roots) and, for mutual TLS, the client certificate and key.
fn tls_certificates(settings: &RedisSettings) -> Result<TlsCertificates, RedisStartError> {
    let read = |key: &'static str, path: &str| {
        std::fs::read(path).map_err(|source| RedisStartError::TlsFile {
            key,
            path: path.to_string(),
            source,
        })
    };
    let root_cert = match settings.tls_ca_file.as_str() {
        "" => None,
        path => Some(read("redis.tls_ca_file", path)?),
    };
    let client_tls = match (settings.tls_cert_file.as_str(), settings.tls_key_file.as_str()) {
        ("", _) | (_, "") => None,
        (cert, key) => Some(ClientTlsConfig {
            client_cert: read("redis.tls_cert_file", cert)?,
            client_key: read("redis.tls_key_file", key)?,
        }),
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// `INFO server` of the Redis (on a Cluster, of any one node: they all run one version).
pub(super) async fn server_info(conn: &mut Conn) -> Result<String, RedisError> {
    let mut cmd = redis::cmd("INFO");
    cmd.arg("server");
    match conn {
        Conn::Plain(conn) => cmd.query_async(conn).await,
        Conn::Cluster(conn) => {
            let value = conn
                .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                .await?;
            Ok(redis::from_redis_value(value)?)
        }
    }
}

/// The version `INFO server` names, and its major number (0 when unreadable).
pub(super) fn redis_version(info: &str) -> (String, u32) {
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    (version, major)
}
