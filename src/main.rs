//! The `herald` binary: parse flags, load settings, run one node until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::Context;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald::config::{Settings, Sources};
use herald::startup::Application;
use herald::{auth, telemetry};

/// A pub/sub hub that pushes live updates to browsers over Server-Sent Events.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Folder with default.toml and $HERALD_ENV.toml (default: ./config).
    #[arg(long, value_name = "DIR", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (server.host).
    #[arg(long, global = true)]
    host: Option<String>,
    /// Port to listen on; 0 picks a free one (server.port).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Run on Redis at this URL instead of the memory engine (redis.url).
    #[arg(long, value_name = "URL", global = true)]
    redis_url: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exit 0 when a node answers its URL with 200 (for container health checks; no curl needed).
    Check {
        #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
        url: String,
    },
    /// Say what the configured Redis holds (its version, the functions library, the key layout of
    /// `migrations/`) and whether this binary can serve it; exit 1 if not. Upgrades run when a node
    /// starts; `--check` changes nothing.
    Migrate {
        #[arg(long, required = true)]
        check: bool,
    },
    /// Print an HS256 token signed with the configured auth.hs_secret (for tests and scripts).
    Token {
        /// Topic selectors it may publish to (a topic, `prefix*`, or `*`); repeatable.
        #[arg(long)]
        publish: Vec<String>,
        /// Topic selectors it may subscribe to (needed for private topics); repeatable.
        #[arg(long)]
        subscribe: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { url }) => {
            let status = herald::probe::status(&url, Duration::from_secs(3))?;
            anyhow::ensure!(status == 200, "{url} answered {status}");
            Ok(())
        }
        Some(Command::Migrate { check: _ }) => {
            let settings = Settings::load(&sources(&cli.config, &cli.host, cli.port, &cli.redis_url))
                .context("invalid configuration")?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a runtime")?;
            let (report, can_serve) = runtime.block_on(herald::startup::check_store(&settings))?;
            println!("{report}");
            anyhow::ensure!(can_serve, "this binary cannot serve this Redis");
            Ok(())
        }
        Some(Command::Token {
            publish,
            subscribe,
            ttl,
        }) => {
            let settings = Settings::load(&sources(&cli.config, &cli.host, cli.port, &cli.redis_url))?;
            let secret = settings.auth.hs_secret.expose();
            anyhow::ensure!(
                !secret.is_empty(),
                "set auth.hs_secret (e.g. HERALD__AUTH__HS_SECRET) first"
            );
            let audience = Some(settings.auth.audience.clone()).filter(|a| !a.is_empty());
            println!(
                "{}",
                auth::mint(secret, &auth::claims(publish, subscribe, ttl, audience))?
            );
            Ok(())
        }
        None => serve(cli),
    }
}

/// Where settings come from: files, `HERALD_ENV`, env vars, and these flags on top.
fn sources(
    config: &Option<PathBuf>,
    host: &Option<String>,
    port: Option<u16>,
    redis_url: &Option<String>,
) -> Sources {
    let mut overrides = Vec::new();
    if let Some(host) = host {
        overrides.push(("server.host".to_string(), host.clone()));
    }
    if let Some(port) = port {
        overrides.push(("server.port".to_string(), port.to_string()));
    }
    if let Some(url) = redis_url {
        overrides.push(("redis.url".to_string(), url.clone()));
    }
    Sources {
        dir: config.clone(),
        env: std::env::var("HERALD_ENV").ok(),
        overrides,
    }
}

#[actix_web::main]
async fn serve(cli: Cli) -> anyhow::Result<()> {
    let sources = sources(&cli.config, &cli.host, cli.port, &cli.redis_url);
    let settings = Settings::load(&sources).context("invalid configuration")?;
    telemetry::init_logs(settings.log.format == "json");
    let host = settings.server.host.clone();
    let app = Application::build(settings).await.context("could not start")?;
    // Registered before the node says it listens, so a SIGTERM right after that line stops it cleanly.
    let stop_signals = StopSignals::register().context("cannot listen for SIGTERM and SIGINT")?;
    let reload_signal = match app.certificates() {
        Some(_) => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot listen for SIGHUP (certificate reloads)")?,
        ),
        None => None,
    };
    let scheme = if app.certificates().is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{}:{}", host, app.port());
    tracing::info!("herald listening on {url} (demo page at {url}/)");
    if app.engine_name() == "memory" {
        tracing::info!(
            "engine: memory (one node, history kept in this process only); to run several nodes on \
             Redis, set HERALD__REDIS__URL=redis://127.0.0.1:6379 or pass --redis-url"
        );
    } else {
        tracing::info!("engine: redis (nodes sharing this Redis serve the same topics)");
    }
    if let (Some(certificates), Some(mut hup)) = (app.certificates(), reload_signal) {
        tracing::info!("serving HTTPS with HTTP/2; SIGHUP reads the certificate and key again");
        actix_rt::spawn(async move {
            while hup.recv().await.is_some() {
                match certificates.reload() {
                    Ok(()) => tracing::info!("SIGHUP: certificate reloaded; new connections use it"),
                    Err(e) => tracing::error!("SIGHUP: {e}; still using the previous certificate"),
                }
            }
        });
    }
    let shutdown = app.shutdown_handle();
    actix_rt::spawn(async move {
        let name = stop_signals.recv().await;
        tracing::info!("{name} received: closing streams and shutting down");
        shutdown.run().await;
    });
    app.run_until_stopped().await.context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, both of which stop the node gracefully.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
