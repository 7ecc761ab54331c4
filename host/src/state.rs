//! Per-`Store` host state and the `store`/`events` imports that read and
//! buffer into the invocation's unit of work.
//!
//! A `HostState` lives as long as its `Store`: one invocation for a fresh
//! instance, several in a row for a reused one (`pool`). What belongs to one
//! invocation (unit of work, deadline, span, trace, budget, stderr) is set by
//! [`HostState::begin`] and wiped by [`HostState::end`]; what belongs to the
//! instance (identity, WASI context, resource table, limits) is built once.
//!
//! It carries only what an invocation needs: who it runs as ([`Identity`]),
//! the backend, its unit of work and limits, and a [`Links`] handle for
//! synchronous calls to other components (implemented by `linking`, above
//! this module, so state never depends on the registry or the runtime).

use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::backend::{BackendUnavailable, RangeLimit, Read, SharedBackend};
use crate::bindings::sktarbucks::platform::{events, stock, store, types};
use crate::bindings::{Reservation, StockError};
use crate::uow::{DocKey, NewEvent, UnitOfWork, counter_bytes, counter_value};

/// Largest document or event payload a component may write.
const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Longest collection, key, sequence or topic name.
const MAX_NAME_BYTES: usize = 256;
/// Most entries one `store.range` call returns, whatever the guest asks.
pub const MAX_RANGE_ENTRIES: usize = 1000;
/// Most keys one `store.get-many` may ask for.
pub const MAX_GET_MANY: usize = 100;
/// Most value bytes one `store.range` call returns (beyond its first entry).
pub const MAX_RANGE_BYTES: usize = 4 * 1024 * 1024;
/// Most writes plus events one unit of work may buffer.
const MAX_BUFFERED: usize = 10_000;
/// Most bytes (values + payloads) one unit of work may buffer: the host's
/// memory is not bounded by the guest's `StoreLimits`.
const MAX_BUFFERED_BYTES: usize = 16 * 1024 * 1024;
/// Guest stderr kept per invocation (for the log line of a trap); the rest
/// is dropped, never refused: a chatty guest must not trap on its logging.
const STDERR_BYTES: usize = 4096;

/// Who an invocation runs as: one component version, as far as its host
/// state needs to know (built once per version).
#[derive(Debug, Clone)]
pub struct Identity {
    /// Manifest name; also the namespace of its state.
    pub name: String,
    /// sha256 of the version's bytes.
    pub digest: String,
    /// Linear-memory ceiling of one instance.
    pub memory_bytes: usize,
    /// Imported interface → providing component (`stock` → `cafe`).
    pub links: std::collections::BTreeMap<String, String>,
    /// Topics it may publish: exact names or `prefix.*`.
    pub publishes: Vec<String>,
}

impl Identity {
    /// Whether this component may publish `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publishes.iter().any(|p| match p.strip_suffix(".*") {
            Some(prefix) => topic
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
            None => p == topic,
        })
    }
}

/// Synchronous calls from one component into another, served by the host
/// inside the caller's unit of work (order's `stock` import → cafe).
#[async_trait::async_trait]
pub trait Links: Send + Sync {
    /// `stock.reserve` on the caller's linked provider.
    async fn reserve(
        self: Arc<Self>,
        caller: &mut HostState,
        order_id: String,
        cafe_id: u64,
        qty: u32,
    ) -> Result<Reservation, StockError>;
    /// `stock.release` on the caller's linked provider.
    async fn release(
        self: Arc<Self>,
        caller: &mut HostState,
        order_id: String,
    ) -> Result<bool, StockError>;
}

/// Everything the host needs while one component instance runs.
pub struct HostState {
    /// The component version being run; its name is the state namespace.
    pub identity: Arc<Identity>,
    pub backend: SharedBackend,
    /// Where synchronous calls to linked components go. Weak: an idle
    /// reused instance sits in the registry, which the links reach, and a
    /// strong handle would keep the whole runtime alive in a cycle.
    pub links: Weak<dyn Links>,
    /// Where its linked calls are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Buffered effects; handed to the backend only when the invocation succeeds.
    pub uow: UnitOfWork,
    /// Wall-clock deadline shared with nested calls (they get no more time).
    pub deadline: Instant,
    /// Nesting depth of synchronous component→component calls.
    pub depth: u8,
    /// The invocation's span: a linked call's span is its child.
    pub span: tracing::Span,
    /// What its published events carry: the originating request id, and
    /// this invocation's span as their parent when spans are exported.
    pub trace: crate::trace::TraceContext,
    /// Which run of its unit of work (or delivery attempt) this is.
    pub attempt: u32,
    pub limits: StoreLimits,
    /// Guest stderr (panic messages) of the current invocation, kept for the
    /// error log of a trap.
    pub stderr: Stderr,
    budget: Budget,
    /// Built once per instance (a reused one keeps it): the guest holds
    /// handles into it (wasi-libc caches its stdio streams in the table).
    wasi: WasiCtx,
    table: ResourceTable,
}

/// Writes and bytes a unit of work has buffered so far; shared along a
/// synchronous call chain, reset for every invocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Store writes plus published events.
    pub writes: usize,
    /// Their value, key and payload bytes.
    pub bytes: usize,
}

impl HostState {
    /// State for one instance, between invocations (see [`begin`](Self::begin)):
    /// no filesystem, network, environment or args.
    pub fn new(
        identity: Arc<Identity>,
        backend: SharedBackend,
        links: Weak<dyn Links>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let stderr = Stderr::default();
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .build();
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(identity.memory_bytes)
            .build();
        Self {
            identity,
            backend,
            links,
            metrics,
            uow: UnitOfWork::default(),
            deadline: Instant::now(),
            depth: 0,
            span: tracing::Span::none(),
            trace: crate::trace::TraceContext::default(),
            attempt: 0,
            limits,
            stderr,
            budget: Budget::default(),
            wasi,
            table: ResourceTable::new(),
        }
    }

    /// Start an invocation on this instance: everything a previous one
    /// left (unit of work, budget, stderr, span, trace) is replaced.
    pub fn begin(&mut self, uow: UnitOfWork, deadline: Instant, origin: crate::invoke::Origin) {
        self.trace = origin.trace.under(&origin.span);
        self.uow = uow;
        self.deadline = deadline;
        self.depth = origin.depth;
        self.span = origin.span;
        self.attempt = origin.attempt;
        self.budget = Budget::default();
        self.stderr.clear();
    }

    /// End the invocation: hand over its unit of work and budget, and keep
    /// nothing of it (an idle reused instance holds no request's data).
    pub fn end(&mut self) -> (UnitOfWork, Budget) {
        let uow = std::mem::take(&mut self.uow);
        let budget = std::mem::take(&mut self.budget);
        self.span = tracing::Span::none();
        self.trace = crate::trace::TraceContext::default();
        self.deadline = Instant::now();
        self.depth = 0;
        self.attempt = 0;
        self.stderr.clear();
        (uow, budget)
    }

    fn ns(&self) -> &str {
        &self.identity.name
    }

    /// What the guest wrote to stderr in this invocation, for logs (panic messages).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_owned()
    }

    /// What this invocation has buffered so far.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Continue counting from `budget` (a caller's, or a callee's that
    /// succeeded), so a synchronous call chain shares one unit-of-work budget.
    pub fn inherit_budget(&mut self, budget: Budget) {
        self.budget = budget;
    }

    fn charge(&mut self, what: &str, bytes: usize) -> wasmtime::Result<()> {
        self.budget.writes += 1;
        self.budget.bytes = self.budget.bytes.saturating_add(bytes);
        if self.budget.writes > MAX_BUFFERED {
            wasmtime::bail!(
                "{what}: more than {MAX_BUFFERED} writes and events in one unit of work"
            );
        }
        if self.budget.bytes > MAX_BUFFERED_BYTES {
            wasmtime::bail!(
                "{what}: more than {MAX_BUFFERED_BYTES} bytes buffered in one unit of work"
            );
        }
        Ok(())
    }
}

/// Guest stderr: a bounded buffer cleared between invocations (unlike
/// `MemoryOutputPipe`, which cannot be cleared and traps the guest once full).
#[derive(Clone, Default)]
pub struct Stderr(Arc<Mutex<Vec<u8>>>);

impl Stderr {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bytes written since the last [`clear`](Self::clear).
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// Forget what was written.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn append(&self, bytes: &[u8]) {
        let mut buf = self.lock();
        let room = STDERR_BYTES.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

impl IsTerminal for Stderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Stderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for Stderr {
    async fn ready(&mut self) {}
}

#[async_trait::async_trait]
impl OutputStream for Stderr {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready; what does not fit is dropped by `append`.
        Ok(STDERR_BYTES)
    }
}

impl tokio::io::AsyncWrite for Stderr {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

fn check_name(what: &str, name: &str) -> wasmtime::Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        wasmtime::bail!(
            "{what} must be 1..={MAX_NAME_BYTES} bytes, got {} bytes",
            name.len()
        );
    }
    Ok(())
}

fn check_value(what: &str, value: &[u8]) -> wasmtime::Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        wasmtime::bail!(
            "{what}: value of {} bytes exceeds {MAX_VALUE_BYTES}",
            value.len()
        );
    }
    Ok(())
}

impl HostState {
    /// What a read of `doc` (not written by this unit) answers: the stored
    /// value with the unit's pending addition applied, its version recorded.
    fn observed(&mut self, doc: DocKey, read: Read) -> wasmtime::Result<Option<Vec<u8>>> {
        let pending = self.uow.pending_add(&doc);
        self.uow.record_read(doc, read.version);
        match pending {
            None => Ok(read.value),
            Some(add) => Ok(Some(counter_plus(read.value.as_deref(), add.delta)?)),
        }
    }
}

/// A counter document's bytes after this unit's pending addition.
fn counter_plus(value: Option<&[u8]>, delta: i64) -> wasmtime::Result<Vec<u8>> {
    let now = counter_value(value).map_err(|e| wasmtime::format_err!("store counter: {e}"))?;
    let next = now
        .checked_add(delta)
        .ok_or_else(|| wasmtime::format_err!("store counter: {now} + {delta} overflows"))?;
    Ok(counter_bytes(next))
}

fn backend_error(e: anyhow::Error) -> wasmtime::Error {
    wasmtime::Error::new(BackendUnavailable(format!("{e:#}")))
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl store::Host for HostState {
    async fn get(&mut self, collection: String, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        check_name("collection", &collection)?;
        check_name("key", &key)?;
        let doc = DocKey::new(self.ns(), &collection, &key);
        if let Some(buffered) = self.uow.buffered(&doc) {
            return Ok(buffered.map(<[u8]>::to_vec));
        }
        tracing::trace!(ns = %doc.ns, collection = %doc.collection, key = %doc.key, "store.get");
        let read = self.backend.get(&doc).await.map_err(backend_error)?;
        self.observed(doc, read)
    }

    async fn get_many(
        &mut self,
        keys: Vec<(String, String)>,
    ) -> wasmtime::Result<Vec<Option<Vec<u8>>>> {
        if keys.len() > MAX_GET_MANY {
            wasmtime::bail!(
                "store.get-many: {} keys, at most {MAX_GET_MANY} per call",
                keys.len()
            );
        }
        let mut docs = Vec::with_capacity(keys.len());
        for (collection, key) in &keys {
            check_name("collection", collection)?;
            check_name("key", key)?;
            docs.push(DocKey::new(self.ns(), collection, key));
        }
        // Only what the unit has not written itself goes to the backend.
        let unbuffered: Vec<DocKey> = docs
            .iter()
            .filter(|d| self.uow.buffered(d).is_none())
            .cloned()
            .collect();
        tracing::trace!(keys = ?unbuffered, "store.get-many");
        let mut reads = if unbuffered.is_empty() {
            Vec::new()
        } else {
            self.backend
                .get_many(&unbuffered)
                .await
                .map_err(backend_error)?
        }
        .into_iter();
        let mut out = Vec::with_capacity(docs.len());
        for doc in docs {
            if let Some(buffered) = self.uow.buffered(&doc) {
                out.push(buffered.map(<[u8]>::to_vec));
                continue;
            }
            let read = reads.next().ok_or_else(|| {
                wasmtime::format_err!("store.get-many: the backend answered too few")
            })?;
            out.push(self.observed(doc, read)?);
        }
        Ok(out)
    }

    async fn put(
        &mut self,
        collection: String,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<()> {
        check_name("collection", &collection)?;
        check_name("key", &key)?;
        check_value("store.put", &value)?;
        self.charge("store.put", value.len() + key.len())?;
        let doc = DocKey::new(self.ns(), &collection, &key);
        self.uow.put(doc, value);
        Ok(())
    }

    async fn delete(&mut self, collection: String, key: String) -> wasmtime::Result<()> {
        check_name("collection", &collection)?;
        check_name("key", &key)?;
        self.charge("store.delete", key.len())?;
        let doc = DocKey::new(self.ns(), &collection, &key);
        self.uow.delete(doc);
        Ok(())
    }

    async fn range(
        &mut self,
        collection: String,
        after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<store::RangePage> {
        check_name("collection", &collection)?;
        if let Some(after) = &after {
            check_name("after", after)?;
        }
        if limit == 0 {
            return Ok(store::RangePage {
                entries: Vec::new(),
                more: true,
            });
        }
        let ns = self.ns().to_owned();
        let cap = RangeLimit {
            entries: usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .min(MAX_RANGE_ENTRIES),
            bytes: MAX_RANGE_BYTES,
        };
        let stored = self
            .backend
            .range(&ns, &collection, after.as_deref(), cap)
            .await
            .map_err(backend_error)?;
        // Buffered writes are merged in only up to the last stored key when
        // the backend stopped early: beyond it, the next call's `after`
        // would skip stored documents.
        let upper = if stored.more {
            stored.entries.last().map(|(k, _, _)| k.clone())
        } else {
            None
        };
        let mut merged = std::collections::BTreeMap::new();
        for (key, value, version) in stored.entries {
            self.uow
                .record_read(DocKey::new(&ns, &collection, &key), version);
            merged.insert(key, value);
        }
        for (key, value) in self.uow.writes_in(&ns, &collection) {
            let after_start = after.as_deref().is_none_or(|a| key > a);
            let before_end = upper.as_deref().is_none_or(|u| key <= u);
            if !(after_start && before_end) {
                continue;
            }
            match value {
                Some(value) => merged.insert(key.to_owned(), value.to_vec()),
                None => merged.remove(key),
            };
        }
        for (key, add) in self.uow.adds_in(&ns, &collection) {
            let after_start = after.as_deref().is_none_or(|a| key > a);
            let before_end = upper.as_deref().is_none_or(|u| key <= u);
            if after_start && before_end {
                let value = counter_plus(merged.get(key).map(Vec::as_slice), add.delta)?;
                merged.insert(key.to_owned(), value);
            }
        }
        let mut more = stored.more;
        if merged.len() > cap.entries {
            more = true;
        }
        let entries: Vec<(String, Vec<u8>)> = merged.into_iter().take(cap.entries).collect();
        Ok(store::RangePage { entries, more })
    }

    async fn add(
        &mut self,
        collection: String,
        key: String,
        delta: i64,
        floor: i64,
    ) -> wasmtime::Result<Result<i64, i64>> {
        check_name("collection", &collection)?;
        check_name("key", &key)?;
        self.charge("store.add", key.len() + 16)?;
        let doc = DocKey::new(self.ns(), &collection, &key);
        // The committed value is read without recording its version: the
        // addition applies to whatever the counter holds at commit.
        let committed = if self.uow.buffered(&doc).is_some() {
            0
        } else {
            let read = self.backend.get(&doc).await.map_err(backend_error)?;
            counter_value(read.value.as_deref())
                .map_err(|e| wasmtime::format_err!("store.add on {collection}/{key}: {e}"))?
        };
        self.uow
            .add(doc, committed, delta, floor)
            .map_err(|e| wasmtime::format_err!("store.add on {collection}/{key}: {e}"))
    }

    async fn next_id(&mut self, sequence: String) -> wasmtime::Result<u64> {
        check_name("sequence", &sequence)?;
        let ns = self.ns().to_owned();
        self.backend
            .next_id(&ns, &sequence)
            .await
            .map_err(backend_error)
    }

    async fn advance_sequence(&mut self, sequence: String, value: u64) -> wasmtime::Result<()> {
        check_name("sequence", &sequence)?;
        let ns = self.ns().to_owned();
        self.backend
            .advance_sequence(&ns, &sequence, value)
            .await
            .map_err(backend_error)
    }
}

impl events::Host for HostState {
    async fn publish(
        &mut self,
        topic: String,
        key: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<()> {
        check_name("topic", &topic)?;
        if !self.identity.may_publish(&topic) {
            wasmtime::bail!(
                "component {:?} may not publish {topic:?} (it may publish: {})",
                self.identity.name,
                self.identity.publishes.join(", ")
            );
        }
        if key.len() > MAX_NAME_BYTES {
            wasmtime::bail!("event key of {} bytes exceeds {MAX_NAME_BYTES}", key.len());
        }
        check_value("events.publish", &payload)?;
        self.charge("events.publish", payload.len() + topic.len() + key.len())?;
        let source = self.ns().to_owned();
        self.uow.publish(NewEvent {
            topic,
            key,
            payload,
            source,
            trace: self.trace.clone(),
        });
        Ok(())
    }
}

impl stock::Host for HostState {
    async fn reserve(
        &mut self,
        order_id: String,
        cafe_id: u64,
        qty: u32,
    ) -> wasmtime::Result<Result<Reservation, StockError>> {
        let Some(links) = self.links.upgrade() else {
            return Ok(Err(shutting_down()));
        };
        Ok(links.reserve(self, order_id, cafe_id, qty).await)
    }

    async fn release(&mut self, order_id: String) -> wasmtime::Result<Result<bool, StockError>> {
        let Some(links) = self.links.upgrade() else {
            return Ok(Err(shutting_down()));
        };
        Ok(links.release(self, order_id).await)
    }
}

fn shutting_down() -> StockError {
    StockError::Unavailable("the host is shutting down".into())
}
