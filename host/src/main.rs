//! The `sktarbucks` binary: thin CLI over `sktarbucks::app`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sktarbucks::config::Config;

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
    /// Serve HTTP and deliver events until SIGINT/SIGTERM.
    Serve {
        /// Address of the public listener.
        #[arg(long, env = "SKTARBUCKS_LISTEN")]
        listen: Option<std::net::SocketAddr>,
    },
    /// List events that exhausted their delivery attempts.
    DeadLetters,
    /// Deliver a dead letter again (after fixing its cause).
    Replay {
        /// The dead letter's id, as listed by `dead-letters`.
        id: String,
    },
}

fn load_config(cli: &Cli) -> Result<Config> {
    let mut config = Config::load(&cli.config)?;
    if let Some(data) = &cli.data {
        config.data = std::path::absolute(data)
            .with_context(|| format!("invalid data directory {}", data.display()))?;
    }
    if let Some(redis) = &cli.redis {
        config.redis = Some(redis.clone());
    }
    Ok(config)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn")
    });
    let json = std::env::var("SKTARBUCKS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
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

#[tokio::main]
async fn main() -> Result<()> {
    init_tracing();
    let cli = Cli::parse();
    let mut config = load_config(&cli)?;
    match cli.command {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                config.listen = listen;
            }
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("failed to bind {}", config.listen))?;
            sktarbucks::app::run(listener, config, shutdown_signal()).await
        }
        Command::DeadLetters => {
            let backend = sktarbucks::app::open_backend(&config).await?;
            let letters = backend.dead_letters().await?;
            println!("{}", serde_json::to_string_pretty(&letters)?);
            Ok(())
        }
        Command::Replay { id } => {
            let backend = sktarbucks::app::open_backend(&config).await?;
            if backend.replay(&id).await? {
                println!("dead letter {id} queued for redelivery");
                Ok(())
            } else {
                anyhow::bail!("no dead letter with id {id:?} (see `sktarbucks dead-letters`)")
            }
        }
    }
}
