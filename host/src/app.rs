//! The one start-up path: `start(config)` opens the backend, loads the
//! components, applies recorded deployments, starts dispatchers,
//! maintenance and deployment sync, and binds the public and admin
//! listeners. `sktarbucks serve`, the tests and the bench all use it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::SharedBackend;
use crate::backend::redis::RedisBackend;
use crate::backend::sqlite::SqliteBackend;
use crate::config::Config;
use crate::data_lock::DataLock;
use crate::deploy::{ConfigLoader, Deployer, SYNC_EVERY, store_manifest_versions};
use crate::http::admin::{self, Admin};
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

/// How to start, beyond the manifest.
#[derive(Default)]
pub struct Options {
    /// Re-reads the manifest for `POST /admin/reload` and SIGHUP.
    pub load_config: Option<ConfigLoader>,
    /// The admin bearer token (`SKTARBUCKS_ADMIN_TOKEN`); else the
    /// manifest's `admin_token_file` is read.
    pub admin_token: Option<String>,
    /// An already opened backend (tests that inspect it directly).
    pub backend: Option<SharedBackend>,
    /// Redeploy components whose files change (development).
    pub watch: bool,
}

/// A host that is serving: its addresses, its runtime, and the way to stop it.
pub struct RunningHost {
    /// The public listener's address.
    pub addr: SocketAddr,
    /// The admin listener's address, when one was configured.
    pub admin_addr: Option<SocketAddr>,
    pub rt: Arc<Runtime>,
    pub deployer: Arc<Deployer>,
    stop: watch::Sender<bool>,
    served: JoinHandle<Result<()>>,
    background: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// The SQLite data directory, held until the host has stopped.
    _data_lock: Option<DataLock>,
}

impl RunningHost {
    /// `http://addr` of the public listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting, drain in-flight requests, let dispatchers finish
    /// their current event, then close the backend (on Redis: delete this
    /// process's heartbeat).
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Wait until the host has stopped (after `stop`, or a shutdown signal
    /// passed to [`run`]).
    async fn wait(self) -> Result<()> {
        let served = self.served.await.context("the HTTP server task failed")?;
        let handles =
            std::mem::take(&mut *self.background.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in handles {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "a background task panicked");
            }
        }
        // Dispatchers are done: whatever this host still holds is taken
        // over by the other hosts at once, not after an idle time.
        if let Err(e) = self.rt.backend.close().await {
            tracing::warn!(error = %format!("{e:#}"), "closing the backend failed");
        }
        tracing::info!("stopped");
        served
    }
}

fn admin_token(config: &Config, given: Option<String>) -> Result<Option<String>> {
    if let Some(token) = given.filter(|t| !t.trim().is_empty()) {
        return Ok(Some(token));
    }
    match &config.admin_token_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("failed to read admin_token_file {}", file.display()))?;
            let token = text.lines().next().unwrap_or("").trim().to_owned();
            anyhow::ensure!(
                !token.is_empty(),
                "admin_token_file {} is empty",
                file.display()
            );
            Ok(Some(token))
        }
        None => Ok(None),
    }
}

/// Start a host for `config` (see the module doc).
pub async fn start(config: Config, options: Options) -> Result<RunningHost> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to bind {}", config.listen))?;
    let admin = match config.admin {
        Some(addr) => {
            let token = admin_token(&config, options.admin_token)?.context(
                "the admin listener needs a token: set SKTARBUCKS_ADMIN_TOKEN or admin_token_file",
            )?;
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("failed to bind the admin listener {addr}"))?;
            Some((listener, token))
        }
        None => None,
    };
    // One serving host per SQLite directory (see `data_lock`). A backend
    // handed in (tests inspecting it) is the caller's to share.
    let data_lock = match (&options.backend, &config.redis) {
        (None, None) => Some(DataLock::acquire(&config.data)?),
        _ => None,
    };
    let backend = match options.backend {
        Some(b) => b,
        None => open_backend(&config).await?,
    };
    // Compiling components takes seconds: keep it off the async workers.
    let rt = tokio::task::spawn_blocking(move || Runtime::start(config, backend))
        .await
        .context("runtime start task failed")?
        .context("failed to start the runtime")?;
    store_manifest_versions(&rt).await?;
    let deployer = Arc::new(Deployer::new(Arc::clone(&rt), options.load_config));
    // Come back with what was deployed, not the manifest's files.
    deployer
        .sync()
        .await
        .context("failed to apply the recorded deployments")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let background = Arc::new(Mutex::new(
        crate::events::dispatcher::spawn_all(&rt, stop_rx.clone()).await?,
    ));
    {
        let mut tasks = background.lock().unwrap_or_else(|p| p.into_inner());
        tasks.push(tokio::spawn(maintain(Arc::clone(&rt), stop_rx.clone())));
        tasks.push(tokio::spawn(follow_deployments(
            Arc::clone(&deployer),
            stop_rx.clone(),
        )));
    }
    let addr = listener.local_addr()?;
    let after_reload: admin::AfterReload = {
        let (rt, bg, rx) = (Arc::clone(&rt), Arc::clone(&background), stop_rx.clone());
        Arc::new(move || {
            let (rt, bg, rx) = (Arc::clone(&rt), Arc::clone(&bg), rx.clone());
            tokio::spawn(async move {
                match crate::events::dispatcher::spawn_all(&rt, rx).await {
                    Ok(handles) => bg.lock().unwrap_or_else(|p| p.into_inner()).extend(handles),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "starting dispatchers after a reload failed")
                    }
                }
            });
        })
    };
    #[cfg(unix)]
    background
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(tokio::spawn(reload_on_sighup(
            Arc::clone(&deployer),
            Arc::clone(&after_reload),
            stop_rx.clone(),
        )));
    if options.watch {
        let task = crate::watch::spawn(Arc::clone(&deployer), stop_rx.clone())?;
        background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }
    let mut admin_addr = None;
    if let Some((listener, token)) = admin {
        admin_addr = Some(listener.local_addr()?);
        let admin = Arc::new(Admin::new(
            Arc::clone(&rt),
            Arc::clone(&deployer),
            token,
            Arc::clone(&after_reload),
        )?);
        let mut rx = stop_rx.clone();
        background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tokio::spawn(async move {
                let stopped = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = admin::serve(listener, admin, stopped).await {
                    tracing::error!(error = %format!("{e:#}"), "admin listener failed");
                }
            }));
        tracing::info!(addr = %admin_addr.unwrap_or(addr), "admin listening");
        println!("sktarbucks admin on http://{}", admin_addr.unwrap_or(addr));
    }
    tracing::info!(%addr, "listening");
    // One machine-readable line on stdout: scripts and tests read the port
    // from it when they asked for port 0.
    println!("sktarbucks listening on http://{addr}");
    let mut rx = stop_rx;
    let served_rt = Arc::clone(&rt);
    let served = tokio::spawn(async move {
        crate::http::serve(listener, served_rt, async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await
    });
    Ok(RunningHost {
        addr,
        admin_addr,
        rt,
        deployer,
        stop: stop_tx,
        served,
        background,
        _data_lock: data_lock,
    })
}

/// `start`, then serve until `shutdown` resolves; then stop cleanly.
pub async fn run(
    config: Config,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let host = start(config, options).await?;
    shutdown.await;
    host.stop().await
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

/// Follow deployments made on other hosts (or by the CLI on this backend).
async fn follow_deployments(deployer: Arc<Deployer>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(SYNC_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = deployer.sync().await {
            tracing::debug!(error = %format!("{e:#}"), "deployment sync failed; retrying");
        }
    }
}

/// SIGHUP re-reads the manifest, like `POST /admin/reload`.
#[cfg(unix)]
async fn reload_on_sighup(
    deployer: Arc<Deployer>,
    after_reload: admin::AfterReload,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload through the admin API only");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = stop.changed() => return,
        }
        tracing::info!("SIGHUP: reloading the manifest");
        match deployer.reload().await {
            Ok(_) => after_reload(),
            Err(e) => tracing::error!(error = %e, "manifest reload refused; nothing changed"),
        }
    }
}
