//! The Redis I/O thread and the one multiplexed connection every command shares.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::engine::EngineError;

/// A thread of its own for every Redis socket (the shared connection, the pub/sub link and their
/// readers): on an HTTP worker they would wait behind hundreds of SSE writes for each reply, which
/// slowed every publish and, under load, broke fan-out into one write per delivery (BENCHMARKS.md).
pub(super) struct IoThread {
    pub(super) handle: Handle,
    pub(super) _stop: oneshot::Sender<()>,
}

impl IoThread {
    pub(super) fn start() -> Result<Self, std::io::Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("herald-redis".into())
            .spawn(move || {
                // Runs until the engine drops its sender; dropping the runtime then ends the link.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(IoThread { handle, _stop: stop })
    }
}

/// The one connection every command shares. Redis runs commands one at a time, so one pipelined
/// (multiplexed) socket serves any number of concurrent publishes and reads without a pool, and with no
/// health-check round trip per call; a connection that failed is dropped and the next call reconnects.
pub(super) struct Shared {
    pub(super) client: redis::Client,
    pub(super) config: AsyncConnectionConfig,
    pub(super) io: Handle,
    pub(super) current: std::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Held while connecting, so concurrent callers wait for one attempt instead of each making one.
    pub(super) connecting: tokio::sync::Mutex<Attempts>,
}

#[derive(Default)]
pub(super) struct Attempts {
    /// Connections made so far; numbers them, so a failure retires only the one it happened on.
    pub(super) made: u64,
    /// When the last attempt failed, and why: callers that waited for it fail with it, instead of
    /// queueing one connect timeout each behind an unreachable Redis.
    pub(super) failed: Option<(Instant, String)>,
}

impl Shared {
    pub(super) fn new(client: redis::Client, config: AsyncConnectionConfig, io: Handle) -> Self {
        Shared {
            client,
            config,
            io,
            current: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(Attempts::default()),
        }
    }

    pub(super) fn slot(&self) -> std::sync::MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) async fn get(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        if let Some(current) = self.slot().clone() {
            return Ok(current);
        }
        let asked = Instant::now();
        let mut attempts = self.connecting.lock().await;
        if let Some(current) = self.slot().clone() {
            return Ok(current);
        }
        if let Some((at, why)) = &attempts.failed {
            if *at >= asked {
                return Err(std::io::Error::other(why.clone()).into());
            }
        }
        let (client, config) = (self.client.clone(), self.config.clone());
        // Made on the I/O thread, so the connection's reader task lives there too.
        let made = self
            .io
            .spawn(async move { client.get_multiplexed_async_connection_with_config(&config).await })
            .await
            .map_err(|e| std::io::Error::other(format!("the Redis I/O thread stopped: {e}")).into())
            .and_then(|made| made);
        let conn = match made {
            Ok(conn) => conn,
            Err(e) => {
                attempts.failed = Some((Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        attempts.made += 1;
        attempts.failed = None;
        let current = (attempts.made, conn);
        *self.slot() = Some(current.clone());
        Ok(current)
    }

    /// Runs `f` on the shared connection; a broken connection is retired at once. A timeout alone keeps
    /// it (Redis may be slow, or holding writes, and may still run the call): a connection that went
    /// silent is retired when the link's ping notices (`Link::run`).
    pub(super) async fn run<T, F, Fut>(&self, f: F) -> Result<T, EngineError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let (generation, conn) = self
            .get()
            .await
            .map_err(|e| EngineError::Unavailable(format!("no Redis connection: {e}")))?;
        let result = f(conn).await;
        if let Err(e) = &result {
            // A timeout reads as an I/O error too, but it leaves the connection usable.
            let broken = e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error();
            if broken && !e.is_timeout() {
                self.retire(Some(generation));
            }
        }
        result.map_err(classify)
    }

    /// Drops connection `generation` (any, if `None`) if it is still the current one; the next call
    /// makes a new one.
    pub(super) fn retire(&self, generation: Option<u64>) {
        let mut current = self.slot();
        if current
            .as_ref()
            .is_some_and(|(g, _)| generation.is_none_or(|want| *g == want))
        {
            *current = None;
        }
    }
}

/// `UNAVAILABLE` when the call surely did not run; `UNKNOWN` when Redis may have run it.
pub(super) fn classify(e: RedisError) -> EngineError {
    if e.is_timeout() || e.is_connection_dropped() || e.is_io_error() {
        EngineError::Unknown(e.to_string())
    } else {
        EngineError::Unavailable(e.to_string())
    }
}
