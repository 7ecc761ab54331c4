//! `serve --watch`: redeploy a component when its manifest file changes
//! (a `cargo build` of the guest), through the same validation as the
//! admin API. A refused build is logged and the running version stays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::deploy::Deployer;
use crate::registry::read_wasm;

/// Quiet time after the last change before a file is read (a build writes
/// in several steps).
const SETTLE: Duration = Duration::from_millis(400);

/// Watch the directories of every component file of the manifest.
pub fn spawn(deployer: Arc<Deployer>, mut stop: watch::Receiver<bool>) -> Result<JoinHandle<()>> {
    let files: BTreeMap<PathBuf, String> = deployer
        .manifest_files()
        .into_iter()
        .map(|(name, path)| (path, name))
        .collect();
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })
    .context("failed to start the file watcher")?;
    let mut dirs: Vec<PathBuf> = files
        .keys()
        .filter_map(|p| p.parent().map(PathBuf::from))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("failed to watch {}", dir.display()))?;
    }
    tracing::info!(dirs = ?dirs, "watching component files for changes");
    Ok(tokio::spawn(async move {
        let _keep = watcher;
        let mut pending: BTreeMap<String, PathBuf> = BTreeMap::new();
        loop {
            let timeout = if pending.is_empty() {
                Duration::from_secs(3600)
            } else {
                SETTLE
            };
            tokio::select! {
                changed = rx.recv() => match changed {
                    Some(path) => {
                        if let Some(name) = files.get(&path) {
                            pending.insert(name.clone(), path);
                        }
                    }
                    None => return,
                },
                _ = tokio::time::sleep(timeout) => {
                    for (name, path) in std::mem::take(&mut pending) {
                        redeploy(&deployer, &name, &path).await;
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }))
}

async fn redeploy(deployer: &Deployer, name: &str, path: &std::path::Path) {
    let bytes = match read_wasm(path) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(component = %name, error = %format!("{e:#}"), "watch: cannot read the new build");
            return;
        }
    };
    match deployer.deploy(name, bytes).await {
        Ok(swap) if swap.changed => {
            tracing::info!(component = %name, digest = %swap.digest, "watch: redeployed")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(component = %name, error = %e, "watch: new build refused; the running version stays")
        }
    }
}
