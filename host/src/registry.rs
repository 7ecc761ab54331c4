//! The live component set: name → loaded component, swappable as a whole
//! entry. Loading (compile, link, resolve exports) happens outside the lock;
//! callers clone the `Arc` and keep using that version until they finish.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, InstancePre, Linker};

use crate::bindings::{event_handler, http_handler, stock_export};
use crate::config::ComponentConfig;
use crate::state::HostState;

/// The exports a component turned out to have, resolved once at load.
pub struct Exports {
    pub http: Option<http_handler::GuestIndices>,
    pub events: Option<event_handler::GuestIndices>,
    pub stock: Option<stock_export::GuestIndices>,
}

/// One compiled, linked component version.
pub struct Loaded {
    /// Manifest name; also the namespace of its state.
    pub name: String,
    /// sha256 of the `.wasm` bytes: the version's identity.
    pub digest: String,
    pub config: ComponentConfig,
    pub pre: InstancePre<HostState>,
    pub exports: Exports,
}

impl Loaded {
    /// Compile and link `bytes` for `name`; fails with the reason when the
    /// component does not fit the host's world.
    pub fn build(
        engine: &Engine,
        linker: &Linker<HostState>,
        name: &str,
        config: ComponentConfig,
        bytes: &[u8],
    ) -> Result<Self> {
        let digest = hex::encode(Sha256::digest(bytes));
        let component = Component::new(engine, bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("failed to compile component {name:?}"))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("component {name:?} imports something the host does not provide")
            })?;
        let exports = Exports {
            http: http_handler::GuestIndices::new(&pre).ok(),
            events: event_handler::GuestIndices::new(&pre).ok(),
            stock: stock_export::GuestIndices::new(&pre).ok(),
        };
        if exports.http.is_none() && exports.events.is_none() && exports.stock.is_none() {
            bail!("component {name:?} exports none of http-handler, event-handler, stock");
        }
        if !config.routes.is_empty() && exports.http.is_none() {
            bail!("component {name:?} has routes but does not export http-handler");
        }
        Ok(Self {
            name: name.to_owned(),
            digest,
            config,
            pre,
            exports,
        })
    }

    /// Read the file named by the manifest and build it.
    pub fn from_file(
        engine: &Engine,
        linker: &Linker<HostState>,
        name: &str,
        config: ComponentConfig,
    ) -> Result<Self> {
        let bytes = read_wasm(&config.path)?;
        Self::build(engine, linker, name, config, &bytes)
    }

    /// Short form of the digest for logs.
    pub fn short_digest(&self) -> &str {
        self.digest.get(..12).unwrap_or(&self.digest)
    }
}

fn read_wasm(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "failed to read {} (run `cargo xtask build` to build the components)",
            path.display()
        )
    })
}

/// Name → current version of every component.
#[derive(Default)]
pub struct Registry {
    live: RwLock<HashMap<String, Arc<Loaded>>>,
}

impl Registry {
    /// The current version of `name`, if loaded.
    pub fn get(&self, name: &str) -> Option<Arc<Loaded>> {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Make `loaded` the current version; returns the one it replaced.
    pub fn install(&self, loaded: Arc<Loaded>) -> Option<Arc<Loaded>> {
        self.live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(loaded.name.clone(), loaded)
    }

    /// Every loaded component, sorted by name.
    pub fn all(&self) -> Vec<Arc<Loaded>> {
        let mut all: Vec<_> = self
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
