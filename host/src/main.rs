//! The `sktarbucks` binary: thin CLI over `sktarbucks::app`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sktarbucks::config::Config;

/// mimalloc instead of glibc malloc: request bodies are large, short-lived
/// buffers allocated on several threads, and glibc kept them (its mmap
/// threshold rises after the first frees, and per-thread arenas only shrink
/// from the top), while mimalloc returns freed pages to the OS (measured in
/// `edge::buffered_bodies_stay_within_the_budget_and_memory_returns`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sktarbucks",
    version,
    about = "Hosts the sktarbucks cafe as WebAssembly components"
)]
struct Cli {
    /// The manifest listing components, routes and subscriptions.
    #[arg(
        long,
        global = true,
        env = "SKTARBUCKS_CONFIG",
        default_value = "sktarbucks.toml"
    )]
    config: PathBuf,
    /// Data directory of the embedded backend (overrides the manifest).
    #[arg(long, global = true, env = "SKTARBUCKS_DATA")]
    data: Option<PathBuf>,
    /// Use Redis for state and events (overrides the manifest).
    #[arg(long, global = true, env = "SKTARBUCKS_REDIS")]
    redis: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP and deliver events until SIGINT/SIGTERM (SIGHUP reloads the manifest).
    #[command(after_help = "Examples:\n  \
        sktarbucks serve\n  \
        sktarbucks serve --listen 0.0.0.0:8080 --redis redis://127.0.0.1:6379/0\n  \
        SKTARBUCKS_ADMIN_TOKEN=secret sktarbucks serve --admin 127.0.0.1:9090 --watch")]
    Serve {
        /// Address of the public listener.
        #[arg(long, env = "SKTARBUCKS_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        /// Address of the admin listener (needs SKTARBUCKS_ADMIN_TOKEN or admin_token_file).
        #[arg(long, env = "SKTARBUCKS_ADMIN")]
        admin: Option<std::net::SocketAddr>,
        /// Redeploy a component when its manifest file changes (development).
        #[arg(long)]
        watch: bool,
    },
    /// List components with their active versions (admin API).
    #[command(
        after_help = "Example:\n  SKTARBUCKS_ADMIN_TOKEN=secret sktarbucks components --admin 127.0.0.1:9090"
    )]
    Components {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Validate and activate a new version of a component on every host (admin API).
    #[command(
        after_help = "Example:\n  sktarbucks deploy cafe components/target/wasm32-wasip2/release/cafe.wasm --admin 127.0.0.1:9090"
    )]
    Deploy {
        /// The component's name in the manifest.
        name: String,
        /// The new version's `.wasm` file.
        file: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Return a component to its previous version (admin API).
    #[command(after_help = "Example:\n  sktarbucks rollback cafe --admin 127.0.0.1:9090")]
    Rollback {
        /// The component's name in the manifest.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// One screen about a running host: versions, breakers, in-flight, lag (admin API).
    #[command(
        after_help = "Example:\n  SKTARBUCKS_ADMIN_TOKEN=secret sktarbucks status --admin 127.0.0.1:9090"
    )]
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Re-read the manifest on a running host; all of it applies or none (admin API).
    #[command(after_help = "Example:\n  sktarbucks reload --admin 127.0.0.1:9090")]
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List events that exhausted their delivery attempts (reads the backend).
    #[command(after_help = "Example:\n  sktarbucks dead-letters --redis redis://127.0.0.1:6379/0")]
    DeadLetters,
    /// Deliver a dead letter again (after fixing its cause).
    #[command(
        after_help = "Examples:\n  sktarbucks replay 7\n  sktarbucks replay --all                 # every dead letter, with progress"
    )]
    Replay {
        /// The dead letter's id, as listed by `dead-letters`.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Replay every dead letter (one progress line each on stderr).
        #[arg(long)]
        all: bool,
    },
}

/// Where the admin API of a running host is, and its token.
#[derive(clap::Args)]
struct AdminArgs {
    /// The admin listener of a running host.
    #[arg(long, env = "SKTARBUCKS_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
    /// The admin bearer token.
    #[arg(long, env = "SKTARBUCKS_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
}

impl AdminArgs {
    fn url(&self, path: &str) -> String {
        let base = if self.admin.starts_with("http://") || self.admin.starts_with("https://") {
            self.admin.clone()
        } else {
            format!("http://{}", self.admin)
        };
        format!("{}{path}", base.trim_end_matches('/'))
    }

    /// `status`: the component listing as a table.
    async fn status(&self) -> Result<()> {
        let resp = reqwest::Client::new()
            .get(self.url("/admin/components"))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.url("")))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!("{status}: {body}");
        }
        println!(
            "{:<12} {:<14} {:<9} {:<10} {:>8} {:>11} {:>6}  routes",
            "component", "version", "source", "breaker", "in-flight", "invocations", "lag"
        );
        for c in body["components"].as_array().into_iter().flatten() {
            let text = |k: &str| c[k].as_str().unwrap_or("-").to_owned();
            let num = |k: &str| c[k].as_u64().map_or("-".to_owned(), |n| n.to_string());
            let digest = text("digest");
            let routes: Vec<&str> = c["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
                .collect();
            println!(
                "{:<12} {:<14} {:<9} {:<10} {:>8} {:>11} {:>6}  {}",
                text("name"),
                digest.get(..12).unwrap_or(&digest),
                text("source"),
                text("breaker"),
                num("inFlight"),
                num("invocations"),
                num("lag"),
                routes.join(" ")
            );
            if let Some(why) = c["diverged"].as_str() {
                println!("  ! {why}");
            }
        }
        Ok(())
    }

    /// Send one admin request; print the JSON answer; fail on an error status.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Result<()> {
        let client = reqwest::Client::new();
        let mut req = client
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.header("content-type", "application/wasm").body(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.url("")))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let pretty = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or(text);
        if status.is_success() {
            println!("{pretty}");
            Ok(())
        } else {
            anyhow::bail!("{status}: {pretty}")
        }
    }
}

/// The manifest with the CLI's overrides applied.
fn load_config(config: &Path, data: Option<&Path>, redis: Option<&str>) -> Result<Config> {
    let mut loaded = Config::load(config)?;
    if let Some(data) = data {
        loaded.data = std::path::absolute(data)
            .with_context(|| format!("invalid data directory {}", data.display()))?;
    }
    if let Some(redis) = redis {
        loaded.redis = Some(redis.to_owned());
    }
    Ok(loaded)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}

/// Replay every dead letter, with a progress line per letter on stderr and
/// a summary on stdout. One that vanished meanwhile (replayed elsewhere) is
/// counted, not an error.
async fn replay_all(backend: &dyn sktarbucks::backend::Backend) -> Result<()> {
    let letters = backend
        .dead_letters()
        .await
        .context("could not list the dead letters")?;
    let total = letters.len();
    let started = std::time::Instant::now();
    let mut replayed = 0usize;
    for (i, letter) in letters.iter().enumerate() {
        let done = backend
            .replay(&letter.id)
            .await
            .with_context(|| format!("replaying dead letter {}", letter.id))?;
        replayed += usize::from(done);
        eprintln!(
            "[{}/{total}] {} {} → {} ({})",
            i + 1,
            letter.id,
            letter.topic,
            letter.subscriber,
            if done { "queued" } else { "already gone" }
        );
    }
    println!(
        "{replayed} of {total} dead letters queued for redelivery in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let (path, data, redis) = (cli.config.clone(), cli.data.clone(), cli.redis.clone());
    let reload = move || load_config(&path, data.as_deref(), redis.as_deref());
    if !matches!(cli.command, Command::Serve { .. }) {
        // One-shot commands log, but export no spans.
        let _no_export = sktarbucks::trace::init(&Default::default(), false)?;
    }
    match cli.command {
        Command::Serve {
            listen,
            admin,
            watch,
        } => {
            // A reload re-reads the manifest with the same overrides.
            let reload = move || {
                let mut config = reload()?;
                if let Some(listen) = listen {
                    config.listen = listen;
                }
                if let Some(admin) = admin {
                    config.admin = Some(admin);
                }
                Ok(config)
            };
            let config = reload()?;
            // Logs (and span export, when configured) start once the
            // manifest is read: its `[tracing]` section says where to.
            let telemetry = sktarbucks::trace::init(&config.tracing, true)?;
            let options = sktarbucks::app::Options {
                load_config: Some(Box::new(reload)),
                admin_token: std::env::var("SKTARBUCKS_ADMIN_TOKEN").ok(),
                backend: None,
                watch,
            };
            let served = sktarbucks::app::run(config, options, shutdown_signal()).await;
            // Every span has ended: send the last batch before exiting.
            telemetry.shutdown().await;
            served
        }
        Command::DeadLetters => {
            let backend = sktarbucks::app::open_backend(&reload()?).await?;
            let letters = backend.dead_letters().await?;
            println!("{}", serde_json::to_string_pretty(&letters)?);
            Ok(())
        }
        Command::Replay { id, all } => {
            let backend = sktarbucks::app::open_backend(&reload()?).await?;
            match id {
                Some(id) if !all => {
                    if backend.replay(&id).await? {
                        println!("dead letter {id} queued for redelivery");
                        Ok(())
                    } else {
                        anyhow::bail!(
                            "no dead letter with id {id:?} (see `sktarbucks dead-letters`)"
                        )
                    }
                }
                _ => replay_all(backend.as_ref()).await,
            }
        }
        Command::Components { admin } => {
            admin
                .call(reqwest::Method::GET, "/admin/components", None)
                .await
        }
        Command::Deploy { name, file, admin } => {
            let bytes = std::fs::read(&file)
                .with_context(|| format!("failed to read {}", file.display()))?;
            admin
                .call(
                    reqwest::Method::PUT,
                    &format!("/admin/components/{name}"),
                    Some(bytes),
                )
                .await
        }
        Command::Rollback { name, admin } => {
            admin
                .call(
                    reqwest::Method::POST,
                    &format!("/admin/components/{name}/rollback"),
                    None,
                )
                .await
        }
        Command::Status { admin } => admin.status().await,
        Command::Reload { admin } => {
            admin
                .call(reqwest::Method::POST, "/admin/reload", None)
                .await
        }
    }
}
