//! `[server]`, `[sse]` and `[cors]`: how the node listens and how its streams behave.

use std::time::Duration;

use serde::Deserialize;

use super::{check, millis, seconds, ConfigError};

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    #[serde(deserialize_with = "seconds")]
    pub shutdown_grace_secs: Duration,
    #[serde(deserialize_with = "millis")]
    pub request_head_timeout_ms: Duration,
    /// An idle keep-alive connection is closed after this (and says so in `Keep-Alive: timeout=`).
    #[serde(deserialize_with = "seconds")]
    pub keep_alive_secs: Duration,
    /// Data written to a client must be taken within this, or the kernel drops the connection.
    #[serde(deserialize_with = "seconds")]
    pub write_timeout_secs: Duration,
    pub trusted_proxies: Vec<String>,
    /// HTTPS (with HTTP/2): a PEM certificate chain and its private key, read again on SIGHUP.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// Plain HTTP: serve SSE streams on the lean path (`http::front`) instead of through actix-web.
    pub lean_streams: bool,
    /// Plain HTTP: connections of one client address still sending their first head (0 = no limit).
    pub max_pending_heads_per_ip: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SseSettings {
    pub retry_ms: u64,
    #[serde(deserialize_with = "seconds")]
    pub heartbeat_secs: Duration,
    pub queue_capacity: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CorsSettings {
    pub allowed_origins: Vec<String>,
}

impl ServerSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check(
            self.tls_cert_file.is_empty() == self.tls_key_file.is_empty(),
            "server.tls_cert_file",
            &self.tls_cert_file,
            "give server.tls_cert_file and server.tls_key_file together (HTTPS), or neither (plain HTTP)",
        )?;
        check(
            !self.host.is_empty(),
            "server.host",
            "\"\"",
            "give an address such as 127.0.0.1 or 0.0.0.0",
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.shutdown_grace_secs),
            "server.shutdown_grace_secs",
            self.shutdown_grace_secs.as_secs(),
            "use 1 to 3600 seconds",
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.keep_alive_secs),
            "server.keep_alive_secs",
            self.keep_alive_secs.as_secs(),
            "use 1 to 3600 seconds",
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.write_timeout_secs),
            "server.write_timeout_secs",
            self.write_timeout_secs.as_secs(),
            "use 1 to 600 seconds",
        )?;
        check(
            (Duration::from_millis(100)..=Duration::from_millis(600_000))
                .contains(&self.request_head_timeout_ms),
            "server.request_head_timeout_ms",
            self.request_head_timeout_ms.as_millis(),
            "use 100 to 600000 ms",
        )?;
        for proxy in &self.trusted_proxies {
            check(
                proxy.parse::<std::net::IpAddr>().is_ok(),
                "server.trusted_proxies",
                proxy,
                "list IP addresses such as 127.0.0.1 or ::1",
            )?;
        }
        Ok(())
    }
}

impl SseSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check(
            (1..=3_600_000).contains(&self.retry_ms),
            "sse.retry_ms",
            self.retry_ms,
            "use 1 to 3600000 ms",
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.heartbeat_secs),
            "sse.heartbeat_secs",
            self.heartbeat_secs.as_secs(),
            "use 1 to 3600 seconds",
        )?;
        check(
            (1..=1_000_000).contains(&self.queue_capacity),
            "sse.queue_capacity",
            self.queue_capacity,
            "use 1 to 1000000 events",
        )?;
        Ok(())
    }
}

impl CorsSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for origin in &self.allowed_origins {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && origin
                        .split("://")
                        .nth(1)
                        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/')));
            check(
                ok,
                "cors.allowed_origins",
                origin,
                "list origins as scheme://host[:port] with no path, or \"*\"",
            )?;
        }
        Ok(())
    }
}
