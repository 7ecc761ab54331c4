//! The wasmtime `Engine`: pooling allocator, epoch interruption and a compile
//! cache, configured once per process. One ticker thread advances the epoch
//! for every store; no timer per request.

use std::path::Path;
use std::time::Duration;

use crate::background::Background;
use anyhow::{Context, Result};
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig,
};

/// How often the epoch advances: the granularity of deadlines and of the
/// yields that keep a busy guest from starving its tokio worker.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Instances that may be alive at once (concurrent invocations, nested calls
/// and idle reused instances included). Pooling reserves address space for
/// each slot up front.
pub const POOL_SLOTS: u32 = 1_000;

/// Bytes of a linear memory reset with `memset` (guided by `pagemap_scan`,
/// which finds the pages actually dirtied) instead of `madvise` when its
/// slot is freed: the next instance in that slot takes no page faults on
/// them. A Rust guest touches a few hundred KiB per request (its stack,
/// heap and data), so 2 MiB covers it; larger memories are still decommitted.
const MEMORY_KEEP_RESIDENT: usize = 2 << 20;

/// Same for tables (a guest's function table is a few KiB).
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Build the engine. `max_memory` is the largest memory any component may get;
/// `cache_dir` keeps compiled artifacts across restarts, keyed by content hash.
pub fn build(max_memory: u64, cache_dir: Option<&Path>) -> Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(POOL_SLOTS)
        .total_core_instances(POOL_SLOTS * 4)
        .total_memories(POOL_SLOTS * 2)
        .total_tables(POOL_SLOTS * 4)
        // Async calls run on fibers; each live invocation needs a stack slot.
        .total_stacks(POOL_SLOTS)
        .max_memory_size(usize::try_from(max_memory).context("memory limit too large")?)
        .max_core_instances_per_component(16)
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        // Linux >= 6.7: reset only the pages a guest really touched. `Auto`
        // falls back to plain keep-resident on older kernels.
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .wasm_component_model(true)
        // The guests are WASIp2 (no component-model async): without the
        // data structures for concurrent calls every `Store` is cheaper to
        // create and every `call_async` shorter (wasmtime #11209, #12836).
        .concurrency_support(false);
    if let Some(dir) = cache_dir {
        let mut cache = CacheConfig::new();
        cache.with_directory(dir);
        config.cache(Some(
            Cache::new(cache)
                .map_err(anyhow::Error::from)
                .context("failed to set up the compile cache")?,
        ));
    }
    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("failed to create the wasmtime engine")
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub struct EpochTicker {
    _thread: Background,
}

impl EpochTicker {
    /// Start the one ticker of `engine`.
    pub fn start(engine: &Engine) -> Result<Self> {
        let engine = engine.clone();
        let thread = Background::start("epoch-ticker", EPOCH_TICK, move || {
            engine.increment_epoch();
            EPOCH_TICK
        })?;
        Ok(Self { _thread: thread })
    }
}
