//! Typed access to a component's `store` and `events` imports.
//!
//! Each component implements [`Platform`] for a unit struct over its own
//! generated bindings with [`impl_platform!`](crate::impl_platform), writes
//! its logic against `&impl Platform`, and tests that logic natively with
//! [`MemPlatform`]. [`export_handlers!`](crate::export_handlers) writes its
//! `http-handler` and `event-handler` exports (and `api-description`, for
//! the worlds that export it).

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http::ApiError;

/// The component's view of the platform: its own namespaced documents and
/// the event outbox, both committed with the unit of work.
pub trait Platform {
    /// The document under `key` in `collection`, if any.
    fn get(&self, collection: &str, key: &str) -> Option<Vec<u8>>;
    /// Several documents (collection, key) at once, in order: one round
    /// trip to the backend instead of one per document. At most
    /// [`MAX_GET_MANY`] keys.
    fn get_many(&self, keys: &[(&str, &str)]) -> Vec<Option<Vec<u8>>>;
    /// Create or replace a document.
    fn put(&self, collection: &str, key: &str, value: &[u8]);
    /// Remove a document (no-op when absent).
    fn delete(&self, collection: &str, key: &str);
    /// Up to `limit` documents with keys after `after`, in key order (bytes),
    /// and whether more may follow. The host may return fewer than `limit`
    /// (it caps entries and bytes per call) with `more = true`.
    fn range(&self, collection: &str, after: Option<&str>, limit: u32) -> RangePage;
    /// A fresh number from a sequence (outside the unit of work; gaps allowed).
    fn next_id(&self, sequence: &str) -> u64;
    /// Make sure `sequence` never hands out `value` or less (outside the unit
    /// of work, one step whatever the gap).
    fn advance_sequence(&self, sequence: &str, value: u64);
    /// Publish an event (committed with the unit of work).
    fn publish(&self, topic: &str, key: &str, payload: &[u8]);
    /// Add `delta` to the integer document under `key` (absent = 0),
    /// applied to whatever it holds at commit and not version-checked, so
    /// concurrent units adding to one counter never conflict; the backend
    /// re-runs the unit if the result would then be below `floor`. `Ok`
    /// with the value after the addition as this unit sees it, `Err` with
    /// the current value when the addition would already pass the floor.
    fn add(&self, collection: &str, key: &str, delta: i64, floor: i64) -> Result<i64, i64>;

    /// The document decoded as `T`; a document that does not decode is a
    /// [`StoreError`] (corrupt state), never a trap.
    fn get_json<T: DeserializeOwned>(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        self.get(collection, key)
            .map(|bytes| decode(collection, key, &bytes))
            .transpose()
    }

    /// Store `value` as JSON.
    fn put_json<T: Serialize + ?Sized>(
        &self,
        collection: &str,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError {
            collection: collection.to_owned(),
            key: key.to_owned(),
            reason: format!("could not encode: {e}"),
        })?;
        self.put(collection, key, &bytes);
        Ok(())
    }

    /// [`range`](Platform::range) with every value decoded as `T`.
    fn range_json<T: DeserializeOwned>(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<(String, T)>, bool), StoreError> {
        let page = self.range(collection, after, limit);
        let entries = page
            .entries
            .into_iter()
            .map(|(key, bytes)| decode(collection, &key, &bytes).map(|v| (key, v)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((entries, page.more))
    }

    /// Publish `value` as a JSON payload.
    fn publish_json<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError {
            collection: format!("event {topic}"),
            key: key.to_owned(),
            reason: format!("could not encode: {e}"),
        })?;
        self.publish(topic, key, &bytes);
        Ok(())
    }
}

/// A stored document (`bytes` read from `collection`/`key`) decoded as `T`,
/// or a [`StoreError`] naming it: for the values a [`range`](Platform::range)
/// or a [`page::scan`](crate::page::scan) hands over.
pub fn decode<T: DeserializeOwned>(
    collection: &str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError {
        collection: collection.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// One slice of a collection (WIT `store.range-page`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangePage {
    /// Documents in ascending key order.
    pub entries: Vec<(String, Vec<u8>)>,
    /// Documents after the last entry may exist.
    pub more: bool,
}

/// A stored document that cannot be read or written as its type: corrupt
/// state or a bug, never the caller's fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    pub collection: String,
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stored document {}/{} is unusable: {}",
            self.collection, self.key, self.reason
        )
    }
}

impl std::error::Error for StoreError {}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

/// Mirror of the WIT `types.error` variant, for event handlers; each
/// component converts it into its generated type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    NotFound(String),
    Invalid(String),
    Conflict(String),
    Unavailable(String),
}

impl From<StoreError> for EventError {
    fn from(e: StoreError) -> EventError {
        EventError::Invalid(e.to_string())
    }
}

impl From<ApiError> for EventError {
    fn from(e: ApiError) -> EventError {
        EventError::Invalid(e.message)
    }
}

/// Refuse an event whose source is not the context that owns its topic:
/// `order.canceled` may only come from `order` (the host's default publish
/// capability is the same namespace rule). A hostile or misconfigured
/// component that was allowed to publish it still cannot make this
/// consumer act on it; the event is retried and then dead-lettered.
pub fn from_owner(topic: &str, source: &str) -> Result<(), EventError> {
    let owner = topic.split('.').next().unwrap_or("");
    if owner == source {
        Ok(())
    } else {
        Err(EventError::Invalid(format!(
            "event {topic} from {source:?} refused: only {owner:?} may send {owner}.* events"
        )))
    }
}

/// An event payload decoded as `T`, or `invalid` naming the topic.
pub fn payload<T: DeserializeOwned>(topic: &str, bytes: &[u8]) -> Result<T, EventError> {
    serde_json::from_slice(bytes).map_err(|e| {
        EventError::Invalid(format!(
            "payload of {topic} is not the expected JSON object: {e}"
        ))
    })
}

/// `impl kit::Platform for $ty` over the generated `store` and `events`
/// imports found under the module path given (e.g. `sktarbucks::platform`).
///
/// ```ignore
/// wit_bindgen::generate!({ world: "cafe", path: "../../wit" });
/// struct Host;
/// kit::impl_platform!(Host, sktarbucks::platform);
/// ```
#[macro_export]
macro_rules! impl_platform {
    ($ty:ty, $($ns:ident)::+) => {
        impl $crate::Platform for $ty {
            fn get(&self, collection: &str, key: &str) -> Option<Vec<u8>> {
                $($ns)::+::store::get(collection, key)
            }
            fn get_many(&self, keys: &[(&str, &str)]) -> Vec<Option<Vec<u8>>> {
                let owned: Vec<(String, String)> = keys
                    .iter()
                    .map(|(c, k)| ((*c).to_owned(), (*k).to_owned()))
                    .collect();
                $($ns)::+::store::get_many(&owned)
            }
            fn put(&self, collection: &str, key: &str, value: &[u8]) {
                $($ns)::+::store::put(collection, key, value)
            }
            fn delete(&self, collection: &str, key: &str) {
                $($ns)::+::store::delete(collection, key)
            }
            fn range(
                &self,
                collection: &str,
                after: Option<&str>,
                limit: u32,
            ) -> $crate::platform::RangePage {
                let page = $($ns)::+::store::range(collection, after, limit);
                $crate::platform::RangePage {
                    entries: page.entries,
                    more: page.more,
                }
            }
            fn next_id(&self, sequence: &str) -> u64 {
                $($ns)::+::store::next_id(sequence)
            }
            fn advance_sequence(&self, sequence: &str, value: u64) {
                $($ns)::+::store::advance_sequence(sequence, value)
            }
            fn publish(&self, topic: &str, key: &str, payload: &[u8]) {
                $($ns)::+::events::publish(topic, key, payload)
            }
            fn add(&self, collection: &str, key: &str, delta: i64, floor: i64) -> Result<i64, i64> {
                $($ns)::+::store::add(collection, key, delta, floor)
            }
        }
    };
}

/// `impl http_handler::Guest` and `impl event_handler::Guest` (and, given
/// `openapi`, `impl api_description::Guest`) for the component type given,
/// over the caller's generated bindings.
///
/// Exists because those impls are the same glue in every component (kit
/// [`Response`](crate::Response) → generated `response`, topics → `Vec<String>`,
/// [`EventError`] → generated `error`, the `&'static str` fragment → `String`)
/// and kit cannot name the generated types itself. The paths in the expansion
/// (`exports::sktarbucks::platform::..`, `sktarbucks::platform::types::..`)
/// resolve at the call site, so invoke it in the module holding
/// `wit_bindgen::generate!`.
///
/// - `http: |req| ..`: the kit response for `req` (a generated `request`).
/// - `subscriptions: ..`: the topics, any iterable of `AsRef<str>`.
/// - `event: |ev| ..`: `Result<(), kit::EventError>` for `ev` (a generated `event`).
/// - `openapi: ..` (optional, last): a `&'static str` holding the component's
///   OpenAPI 3.1 fragment, the `api-description.openapi` export. Only for
///   worlds that export `api-description` (cafe, order, production, mypage);
///   without it no such impl is written (worlds `platform`, `hostile`).
///
/// ```ignore
/// kit::export_handlers! {
///     Component,
///     http: |req| api::handle(&Host, &req.method, &req.path, &req.body),
///     subscriptions: events::SUBSCRIPTIONS,
///     event: |ev| events::handle(&Host, &ev.topic, &ev.payload),
///     openapi: OPENAPI,
/// }
/// ```
#[macro_export]
macro_rules! export_handlers {
    (
        $component:ty,
        http: |$req:ident| $http:expr,
        subscriptions: $subscriptions:expr,
        event: |$ev:ident| $event:expr,
        openapi: $openapi:expr $(,)?
    ) => {
        $crate::export_handlers! {
            $component,
            http: |$req| $http,
            subscriptions: $subscriptions,
            event: |$ev| $event,
        }

        impl exports::sktarbucks::platform::api_description::Guest for $component {
            fn openapi() -> ::std::string::String {
                let fragment: &'static str = $openapi;
                ::std::borrow::ToOwned::to_owned(fragment)
            }
        }
    };
    (
        $component:ty,
        http: |$req:ident| $http:expr,
        subscriptions: $subscriptions:expr,
        event: |$ev:ident| $event:expr $(,)?
    ) => {
        impl exports::sktarbucks::platform::http_handler::Guest for $component {
            fn handle(
                $req: sktarbucks::platform::types::Request,
            ) -> sktarbucks::platform::types::Response {
                let r: $crate::Response = $http;
                sktarbucks::platform::types::Response {
                    status: r.status,
                    headers: r.headers,
                    body: r.body,
                }
            }
        }

        impl exports::sktarbucks::platform::event_handler::Guest for $component {
            fn subscriptions() -> ::std::vec::Vec<::std::string::String> {
                ::std::iter::IntoIterator::into_iter($subscriptions)
                    .map(|t| ::std::convert::AsRef::<str>::as_ref(&t).to_owned())
                    .collect()
            }

            fn handle(
                $ev: sktarbucks::platform::types::Event,
            ) -> ::std::result::Result<(), sktarbucks::platform::types::Error> {
                let result: ::std::result::Result<(), $crate::EventError> = $event;
                result.map_err(|e| match e {
                    $crate::EventError::NotFound(m) => {
                        sktarbucks::platform::types::Error::NotFound(m)
                    }
                    $crate::EventError::Invalid(m) => {
                        sktarbucks::platform::types::Error::Invalid(m)
                    }
                    $crate::EventError::Conflict(m) => {
                        sktarbucks::platform::types::Error::Conflict(m)
                    }
                    $crate::EventError::Unavailable(m) => {
                        sktarbucks::platform::types::Error::Unavailable(m)
                    }
                })
            }
        }
    };
}

type Key = (String, String);

/// Entries one `range` call of [`MemPlatform`] returns at most, as the host.
pub const DEFAULT_RANGE_CAP: u32 = 1000;

/// Longest collection, key, `after`, sequence or topic name (each also
/// non-empty) and longest event key the host accepts; anything else traps
/// the invocation.
pub const MAX_NAME_BYTES: usize = 256;
/// Largest document or event payload the host accepts (a larger one traps).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most keys one [`Platform::get_many`] may ask for (more traps).
pub const MAX_GET_MANY: usize = 100;
/// Highest value of a sequence: both host backends keep sequences as
/// `i64`, clamp `advance-sequence` there, and fail `next-id` beyond it.
pub const MAX_SEQUENCE: u64 = i64::MAX as u64;

/// What the host would refuse by trapping (or, for an exhausted sequence,
/// by failing the invocation): [`MemPlatform`] panics instead, so a native
/// test fails where the component would fail on the host.
#[allow(clippy::panic)]
fn host_refuses(why: std::fmt::Arguments<'_>) -> ! {
    panic!("the host would fail this invocation: {why}")
}

fn check_name(what: &str, name: &str) {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        host_refuses(format_args!(
            "{what} must be 1..={MAX_NAME_BYTES} bytes, got {} bytes",
            name.len()
        ));
    }
}

fn check_value(what: &str, value: &[u8]) {
    if value.len() > MAX_VALUE_BYTES {
        host_refuses(format_args!(
            "{what}: value of {} bytes exceeds {MAX_VALUE_BYTES}",
            value.len()
        ));
    }
}

/// An in-memory [`Platform`] with the host's unit-of-work semantics, for
/// native tests of component logic: writes and events are pending until
/// [`finish`](MemPlatform::finish) commits or discards them; reads see
/// pending writes. It also enforces the host's limits on names
/// ([`MAX_NAME_BYTES`]), values ([`MAX_VALUE_BYTES`]) and sequences
/// ([`MAX_SEQUENCE`]) by panicking where the host would fail the invocation.
#[derive(Debug, Default, Clone)]
pub struct MemPlatform {
    committed: RefCell<BTreeMap<Key, Vec<u8>>>,
    /// `None` marks a pending delete.
    pending: RefCell<BTreeMap<Key, Option<Vec<u8>>>>,
    pending_events: RefCell<Vec<Published>>,
    events: RefCell<Vec<Published>>,
    sequences: RefCell<BTreeMap<String, u64>>,
    /// Most entries one `range` call returns, like the host's cap.
    range_cap: std::cell::Cell<u32>,
}

/// One committed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
}

impl Published {
    /// The payload as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_default()
    }
}

impl MemPlatform {
    pub fn new() -> MemPlatform {
        MemPlatform::default()
    }

    /// End the unit of work: commit pending writes and events, or drop them.
    pub fn finish(&self, commit: bool) {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        let events = std::mem::take(&mut *self.pending_events.borrow_mut());
        if commit {
            let mut committed = self.committed.borrow_mut();
            for (k, v) in pending {
                match v {
                    Some(v) => committed.insert(k, v),
                    None => committed.remove(&k),
                };
            }
            self.events.borrow_mut().extend(events);
        }
    }

    /// Every committed event so far, oldest first.
    pub fn published(&self) -> Vec<Published> {
        self.events.borrow().clone()
    }

    /// Committed events, removing them (so a test sees only what comes next).
    pub fn take_published(&self) -> Vec<Published> {
        std::mem::take(&mut *self.events.borrow_mut())
    }

    /// Cap what one `range` call returns (default [`DEFAULT_RANGE_CAP`]), to
    /// test that callers follow `more` instead of trusting `limit`.
    pub fn set_range_cap(&self, cap: u32) {
        self.range_cap.set(cap);
    }

    /// Make the next [`Platform::next_id`] of `sequence` return `next`.
    pub fn set_sequence(&self, sequence: &str, next: u64) {
        self.sequences
            .borrow_mut()
            .insert(sequence.to_owned(), next.saturating_sub(1));
    }

    /// Every document of `collection` in key order, pending writes merged,
    /// whatever its size: for test assertions only (a component pages with
    /// [`Platform::range`]).
    pub fn entries(&self, collection: &str) -> Vec<(String, Vec<u8>)> {
        self.merged(collection, None).into_iter().collect()
    }

    /// The keys of [`entries`](MemPlatform::entries).
    pub fn keys(&self, collection: &str) -> Vec<String> {
        self.merged(collection, None).into_keys().collect()
    }

    /// The committed state (documents and sequences), comparable and
    /// hashable: a test exploring interleavings memoizes states with it.
    /// Pending writes and events are not part of it.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            documents: self.committed.borrow().clone(),
            sequences: self.sequences.borrow().clone(),
        }
    }

    fn merged(&self, collection: &str, after: Option<&str>) -> BTreeMap<String, Vec<u8>> {
        let mut merged: BTreeMap<String, Vec<u8>> = self
            .committed
            .borrow()
            .iter()
            .filter(|((c, k), _)| c == collection && after.is_none_or(|a| k.as_str() > a))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        for ((c, k), v) in self.pending.borrow().iter() {
            if c == collection && after.is_none_or(|a| k.as_str() > a) {
                match v {
                    Some(v) => merged.insert(k.clone(), v.clone()),
                    None => merged.remove(k),
                };
            }
        }
        merged
    }
}

/// The committed state of a [`MemPlatform`] (see [`MemPlatform::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Snapshot {
    pub documents: BTreeMap<(String, String), Vec<u8>>,
    pub sequences: BTreeMap<String, u64>,
}

impl Platform for MemPlatform {
    fn get(&self, collection: &str, key: &str) -> Option<Vec<u8>> {
        check_name("collection", collection);
        check_name("key", key);
        let k = (collection.to_owned(), key.to_owned());
        match self.pending.borrow().get(&k) {
            Some(v) => v.clone(),
            None => self.committed.borrow().get(&k).cloned(),
        }
    }

    fn get_many(&self, keys: &[(&str, &str)]) -> Vec<Option<Vec<u8>>> {
        if keys.len() > MAX_GET_MANY {
            host_refuses(format_args!(
                "store.get-many: {} keys, at most {MAX_GET_MANY} per call",
                keys.len()
            ));
        }
        keys.iter().map(|(c, k)| self.get(c, k)).collect()
    }

    fn put(&self, collection: &str, key: &str, value: &[u8]) {
        check_name("collection", collection);
        check_name("key", key);
        check_value("store.put", value);
        self.pending.borrow_mut().insert(
            (collection.to_owned(), key.to_owned()),
            Some(value.to_vec()),
        );
    }

    fn delete(&self, collection: &str, key: &str) {
        check_name("collection", collection);
        check_name("key", key);
        self.pending
            .borrow_mut()
            .insert((collection.to_owned(), key.to_owned()), None);
    }

    fn range(&self, collection: &str, after: Option<&str>, limit: u32) -> RangePage {
        check_name("collection", collection);
        if let Some(after) = after {
            check_name("after", after);
        }
        let cap = match self.range_cap.get() {
            0 => DEFAULT_RANGE_CAP,
            n => n,
        };
        let take = limit.min(cap) as usize;
        let merged = self.merged(collection, after);
        let more = merged.len() > take;
        RangePage {
            entries: merged.into_iter().take(take).collect(),
            more,
        }
    }

    fn next_id(&self, sequence: &str) -> u64 {
        check_name("sequence", sequence);
        let mut seqs = self.sequences.borrow_mut();
        let n = seqs.entry(sequence.to_owned()).or_insert(0);
        if *n >= MAX_SEQUENCE {
            host_refuses(format_args!(
                "sequence {sequence:?} is exhausted at {MAX_SEQUENCE}"
            ));
        }
        *n += 1;
        *n
    }

    fn advance_sequence(&self, sequence: &str, value: u64) {
        check_name("sequence", sequence);
        let mut seqs = self.sequences.borrow_mut();
        let n = seqs.entry(sequence.to_owned()).or_insert(0);
        *n = (*n).max(value.min(MAX_SEQUENCE));
    }

    /// Sequential units never run concurrently here, so the addition is
    /// simply a pending write of the new value.
    fn add(&self, collection: &str, key: &str, delta: i64, floor: i64) -> Result<i64, i64> {
        check_name("collection", collection);
        check_name("key", key);
        let now = match self.get(collection, key) {
            None => 0,
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .unwrap_or_else(|| {
                    host_refuses(format_args!(
                        "store.add on {collection}/{key}: the document is not an integer"
                    ))
                }),
        };
        let next = now
            .checked_add(delta)
            .unwrap_or_else(|| host_refuses(format_args!("store.add: {now} + {delta} overflows")));
        if next < floor {
            return Err(now);
        }
        self.pending.borrow_mut().insert(
            (collection.to_owned(), key.to_owned()),
            Some(next.to_string().into_bytes()),
        );
        Ok(next)
    }

    fn publish(&self, topic: &str, key: &str, payload: &[u8]) {
        check_name("topic", topic);
        if key.len() > MAX_NAME_BYTES {
            host_refuses(format_args!(
                "event key of {} bytes exceeds {MAX_NAME_BYTES}",
                key.len()
            ));
        }
        check_value("events.publish", payload);
        self.pending_events.borrow_mut().push(Published {
            topic: topic.to_owned(),
            key: key.to_owned(),
            payload: payload.to_vec(),
        });
    }
}

/// One read a [`Traced`] platform saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Read {
    /// A `get` of `key` in `collection`.
    Get { collection: String, key: String },
    /// A `range` over `collection` that returned `entries` documents.
    Range { collection: String, entries: usize },
}

/// A [`Platform`] passing every call to `inner` and recording the reads, for
/// tests: the host version-checks exactly the documents a unit of work read,
/// and what a component reads bounds its memory.
#[derive(Debug)]
pub struct Traced<'a, P: Platform> {
    inner: &'a P,
    reads: RefCell<Vec<Read>>,
    writes: std::cell::Cell<usize>,
}

impl<'a, P: Platform> Traced<'a, P> {
    pub fn new(inner: &'a P) -> Traced<'a, P> {
        Traced {
            inner,
            reads: RefCell::new(Vec::new()),
            writes: std::cell::Cell::new(0),
        }
    }

    /// Puts, deletes and publishes so far: what the host counts against a
    /// unit of work's cap.
    pub fn writes(&self) -> usize {
        self.writes.get()
    }

    /// Every read so far, in call order.
    pub fn reads(&self) -> Vec<Read> {
        self.reads.borrow().clone()
    }

    /// The collections read (by `get` or `range`), sorted.
    pub fn collections(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .reads
            .borrow()
            .iter()
            .map(|r| match r {
                Read::Get { collection, .. } | Read::Range { collection, .. } => collection.clone(),
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Documents `range` returned in total plus keys `get` asked for.
    pub fn documents_read(&self) -> usize {
        self.reads
            .borrow()
            .iter()
            .map(|r| match r {
                Read::Get { .. } => 1,
                Read::Range { entries, .. } => *entries,
            })
            .sum()
    }

    /// The keys of `collection` read with `get`, in call order.
    pub fn gets_in(&self, collection: &str) -> Vec<String> {
        self.reads
            .borrow()
            .iter()
            .filter_map(|r| match r {
                Read::Get { collection: c, key } if c == collection => Some(key.clone()),
                _ => None,
            })
            .collect()
    }
}

impl<P: Platform> Traced<'_, P> {
    fn wrote(&self) {
        self.writes.set(self.writes.get() + 1);
    }
}

impl<P: Platform> Platform for Traced<'_, P> {
    fn get(&self, collection: &str, key: &str) -> Option<Vec<u8>> {
        self.reads.borrow_mut().push(Read::Get {
            collection: collection.to_owned(),
            key: key.to_owned(),
        });
        self.inner.get(collection, key)
    }
    fn get_many(&self, keys: &[(&str, &str)]) -> Vec<Option<Vec<u8>>> {
        self.reads
            .borrow_mut()
            .extend(keys.iter().map(|(collection, key)| Read::Get {
                collection: (*collection).to_owned(),
                key: (*key).to_owned(),
            }));
        self.inner.get_many(keys)
    }
    fn put(&self, collection: &str, key: &str, value: &[u8]) {
        self.wrote();
        self.inner.put(collection, key, value)
    }
    fn delete(&self, collection: &str, key: &str) {
        self.wrote();
        self.inner.delete(collection, key)
    }
    /// Counted as a write; not as a read (the host records no version).
    fn add(&self, collection: &str, key: &str, delta: i64, floor: i64) -> Result<i64, i64> {
        self.wrote();
        self.inner.add(collection, key, delta, floor)
    }
    fn range(&self, collection: &str, after: Option<&str>, limit: u32) -> RangePage {
        let page = self.inner.range(collection, after, limit);
        self.reads.borrow_mut().push(Read::Range {
            collection: collection.to_owned(),
            entries: page.entries.len(),
        });
        page
    }
    fn next_id(&self, sequence: &str) -> u64 {
        self.inner.next_id(sequence)
    }
    fn advance_sequence(&self, sequence: &str, value: u64) {
        self.inner.advance_sequence(sequence, value)
    }
    fn publish(&self, topic: &str, key: &str, payload: &[u8]) {
        self.wrote();
        self.inner.publish(topic, key, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_see_own_writes_and_discard_drops_them() {
        let p = MemPlatform::new();
        p.put_json("c", "1", &json!({"a": 1})).unwrap();
        p.publish("t", "1", b"x");
        assert_eq!(
            p.get_json::<serde_json::Value>("c", "1").unwrap(),
            Some(json!({"a": 1}))
        );
        p.finish(false);
        assert_eq!(p.get("c", "1"), None);
        assert!(p.published().is_empty());
    }

    #[test]
    fn commit_keeps_writes_deletes_and_events() {
        let p = MemPlatform::new();
        p.put("c", "1", b"1");
        p.put("c", "2", b"2");
        p.finish(true);
        p.delete("c", "1");
        p.put("c", "10", b"10");
        p.publish("t", "k", b"{}");
        assert_eq!(
            p.range("c", None, 10).entries,
            vec![("10".into(), b"10".to_vec()), ("2".into(), b"2".to_vec())]
        );
        p.finish(true);
        assert_eq!(p.get("c", "1"), None);
        assert_eq!(p.range("c", None, 10).entries.len(), 2);
        assert_eq!(p.take_published()[0].topic, "t");
        assert!(p.published().is_empty());
    }

    #[test]
    fn corrupt_documents_are_errors_not_traps() {
        let p = MemPlatform::new();
        p.put("c", "1", b"not json");
        let e = p.get_json::<serde_json::Value>("c", "1").unwrap_err();
        assert_eq!((e.collection.as_str(), e.key.as_str()), ("c", "1"));
        assert!(p.range_json::<serde_json::Value>("c", None, 10).is_err());
        assert_eq!(ApiError::from(e).status, 500);
    }

    #[test]
    fn ranges_page_in_key_order_and_respect_the_cap() {
        let p = MemPlatform::new();
        for k in ["a", "b", "c", "d"] {
            p.put("c", k, k.as_bytes());
        }
        p.finish(true);
        p.delete("c", "b");
        let page = p.range("c", Some("a"), 2);
        assert_eq!(
            page.entries,
            vec![("c".into(), b"c".to_vec()), ("d".into(), b"d".to_vec())]
        );
        assert!(!page.more);
        p.set_range_cap(1);
        let page = p.range("c", None, 5);
        assert_eq!((page.entries.len(), page.more), (1, true));
        assert!(p.range("c", Some("d"), 5).entries.is_empty());
        assert!(p.range("c", None, 0).more);
    }

    #[test]
    fn advancing_a_sequence_skips_past_the_value_at_once() {
        let p = MemPlatform::new();
        p.advance_sequence("s", 30_000);
        assert_eq!(p.next_id("s"), 30_001);
        p.advance_sequence("s", 5);
        assert_eq!(p.next_id("s"), 30_002);
    }

    #[test]
    fn sequences_count_up_and_can_be_set() {
        let p = MemPlatform::new();
        assert_eq!(p.next_id("s"), 1);
        assert_eq!(p.next_id("s"), 2);
        p.set_sequence("s", 10);
        assert_eq!(p.next_id("s"), 10);
        assert_eq!(p.next_id("other"), 1);
    }

    #[test]
    fn entries_keys_and_snapshots_see_the_whole_state() {
        let p = MemPlatform::new();
        p.set_range_cap(1);
        for k in ["b", "a", "c"] {
            p.put("c", k, k.as_bytes());
        }
        p.put("other", "x", b"x");
        assert_eq!(p.keys("c"), vec!["a", "b", "c"]);
        let before = p.snapshot();
        assert!(
            before.documents.is_empty(),
            "pending writes are not committed state"
        );
        p.finish(true);
        p.next_id("s");
        let after = p.snapshot();
        assert_eq!(after.documents.len(), 4);
        assert_eq!(after.sequences.get("s"), Some(&1));
        assert_eq!(p.clone().snapshot(), after);
        p.delete("c", "b");
        assert_eq!(
            p.entries("c"),
            vec![("a".into(), b"a".to_vec()), ("c".into(), b"c".to_vec())]
        );
    }

    #[test]
    fn traced_records_reads_and_passes_everything_through() {
        let p = MemPlatform::new();
        p.put("c", "1", b"1");
        p.put("c", "2", b"2");
        p.finish(true);
        let t = Traced::new(&p);
        assert_eq!(t.get("c", "1"), Some(b"1".to_vec()));
        assert_eq!(t.get("d", "9"), None);
        assert_eq!(t.range("c", None, 10).entries.len(), 2);
        t.put("e", "1", b"x");
        t.publish("t", "k", b"{}");
        assert_eq!(t.next_id("s"), 1);
        t.advance_sequence("s", 5);
        assert_eq!(
            t.reads(),
            vec![
                Read::Get {
                    collection: "c".into(),
                    key: "1".into()
                },
                Read::Get {
                    collection: "d".into(),
                    key: "9".into()
                },
                Read::Range {
                    collection: "c".into(),
                    entries: 2
                },
            ]
        );
        assert_eq!(t.collections(), vec!["c", "d"]);
        assert_eq!(t.documents_read(), 4);
        assert_eq!(t.gets_in("c"), vec!["1"]);
        t.delete("e", "2");
        assert_eq!(t.writes(), 3);
        p.finish(true);
        assert_eq!(p.get("e", "1"), Some(b"x".to_vec()));
        assert_eq!(p.published().len(), 1);
        assert_eq!(p.next_id("s"), 6);
    }

    #[test]
    fn sequences_stop_where_the_hosts_do() {
        let p = MemPlatform::new();
        p.advance_sequence("s", u64::MAX);
        assert_eq!(p.snapshot().sequences.get("s"), Some(&MAX_SEQUENCE));
        let exhausted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.next_id("s")));
        assert!(
            exhausted.is_err(),
            "next-id beyond i64::MAX fails on the host"
        );
        p.set_sequence("t", MAX_SEQUENCE);
        assert_eq!(p.next_id("t"), MAX_SEQUENCE);
    }

    #[test]
    fn names_and_values_beyond_the_hosts_limits_panic() {
        let long = "k".repeat(MAX_NAME_BYTES + 1);
        let big = vec![b'x'; MAX_VALUE_BYTES + 1];
        let p = MemPlatform::new();
        let at_limit = "k".repeat(MAX_NAME_BYTES);
        p.put(&at_limit, &at_limit, &vec![b'x'; MAX_VALUE_BYTES]);
        p.publish(&at_limit, "", b"{}");
        type Call<'a> = Box<dyn Fn(&MemPlatform) + 'a>;
        let refused: [Call; 9] = [
            Box::new(|p| p.put("c", "", b"1")),
            Box::new(|p| p.put("", "k", b"1")),
            Box::new(|p| p.put("c", &long, b"1")),
            Box::new(|p| p.put("c", "k", &big)),
            Box::new(|p| drop(p.get(&long, "k"))),
            Box::new(|p| p.delete("c", &long)),
            Box::new(|p| drop(p.range("c", Some(""), 1))),
            Box::new(|p| p.publish("t", &long, b"{}")),
            Box::new(|p| p.publish("t", "k", &big)),
        ];
        for (i, f) in refused.iter().enumerate() {
            let p = MemPlatform::new();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&p)));
            assert!(r.is_err(), "case {i} should be refused");
        }
    }

    #[test]
    fn events_are_accepted_only_from_the_topics_owner() {
        assert_eq!(from_owner("order.canceled", "order"), Ok(()));
        let e = from_owner("order.canceled", "faulty").unwrap_err();
        assert!(
            matches!(e, EventError::Invalid(m) if m.contains("faulty") && m.contains("\"order\""))
        );
        assert!(from_owner("cafe.deleted", "cafeteria").is_err());
    }

    #[test]
    fn payload_errors_name_the_topic() {
        let e = payload::<serde_json::Value>("order.canceled", b"{").unwrap_err();
        assert!(matches!(e, EventError::Invalid(m) if m.contains("order.canceled")));
    }
}
