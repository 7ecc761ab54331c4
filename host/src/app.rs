//! Wiring for `sktarbucks serve`: backend, runtime, dispatchers, HTTP.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::SharedBackend;
use crate::backend::redis::RedisBackend;
use crate::backend::sqlite::SqliteBackend;
use crate::config::Config;
use crate::runtime::Runtime;

/// Open the backend the configuration asks for.
pub async fn open_backend(config: &Config) -> Result<SharedBackend> {
    if let Some(url) = &config.redis {
        let claim_idle = std::time::Duration::from_millis(config.events.claim_idle_ms);
        let retain = std::time::Duration::from_millis(config.events.retain_ms);
        let backend = RedisBackend::connect(url, &config.redis_prefix, claim_idle, retain).await?;
        tracing::info!(consumer = %backend.consumer(), "using redis at {url}");
        return Ok(Arc::new(backend));
    }
    let retain = std::time::Duration::from_millis(config.events.retain_ms);
    let backend =
        SqliteBackend::open(&config.data, config.sqlite.synchronous)?.with_retention(retain);
    Ok(Arc::new(backend))
}

/// Every minute: prune/trim the event log (see `Backend::maintain`).
async fn maintain(rt: Arc<Runtime>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        match rt.backend.maintain().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "event log trimmed"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "event log maintenance failed"),
        }
    }
}

/// Run the whole host on `listener` until `shutdown` resolves; then stop
/// accepting, drain requests, let dispatchers finish their current event.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let backend = open_backend(&config).await?;
    // Compiling components takes seconds: keep it off the async workers.
    let rt = tokio::task::spawn_blocking(move || Runtime::start(config, backend))
        .await
        .context("runtime start task failed")?
        .context("failed to start the runtime")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut dispatchers = crate::events::dispatcher::spawn_all(&rt, stop_rx.clone()).await?;
    dispatchers.push(tokio::spawn(maintain(Arc::clone(&rt), stop_rx)));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    // One machine-readable line on stdout: scripts and tests read the port
    // from it when they asked for port 0.
    println!("sktarbucks listening on http://{addr}");
    let served = crate::http::serve(listener, Arc::clone(&rt), shutdown).await;
    let _ = stop_tx.send(true);
    for handle in dispatchers {
        if let Err(e) = handle.await {
            tracing::error!(error = %e, "a dispatcher task panicked");
        }
    }
    tracing::info!("stopped");
    served
}
