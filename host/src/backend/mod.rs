//! Where state and events live. The host talks only to [`Backend`]; the
//! embedded SQLite backend and the Redis backend implement it with the same
//! guarantees, and the behavioural tests run against both.

mod checkpointer;
mod group_commit;
mod id_blocks;
mod read_anchor;
pub mod redis;
pub mod sqlite;
#[cfg(test)]
mod test_db;
mod wakeups;
mod wal_sync;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use serde::Serialize;

use crate::uow::{Changes, DocKey};

/// A document as read: its value (`None` = absent or deleted) and the version
/// of the commit that last wrote it (0 = never written). Deletes keep their
/// version, so "absent" can be version-checked without ABA surprises.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    pub value: Option<Vec<u8>>,
    pub version: u64,
}

/// How much one ranged read may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeLimit {
    /// Most entries.
    pub entries: usize,
    /// Most value bytes in all; the first entry is returned whatever its size.
    pub bytes: usize,
}

/// One ranged read: `(key, value, version)` in key order, and whether live
/// documents after the last one may exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Range {
    pub entries: Vec<(String, Vec<u8>, u64)>,
    pub more: bool,
}

/// The outcome of an optimistic commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Applied,
    /// Something the unit read changed meanwhile; nothing was written.
    Conflict,
}

/// A subscriber: one consuming component and the topics it takes.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub component: String,
    pub topics: Vec<String>,
}

/// One event handed to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Stable across redeliveries and hosts.
    pub id: String,
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub source: String,
    /// 1 on the first delivery.
    pub attempt: u32,
    /// Where the event's chain started (stored with it); handed on to the
    /// events its handler publishes.
    pub trace: crate::trace::TraceContext,
    /// When the event was appended to the log (ms since the epoch, by the
    /// clock of the backend that appended it: the host's on SQLite, the
    /// Redis server's on Redis), so its age at acknowledgement is the
    /// pipeline's latency to this subscriber (a replayed dead letter's
    /// counts from its first append). 0: not known.
    pub appended_ms: u64,
    /// Backend bookkeeping needed to acknowledge this delivery.
    pub(crate) cursor: Cursor,
}

/// Backend-specific position of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// SQLite: the log sequence number; `replay` when it came from a dead-letter replay.
    Seq { seq: i64, replay: bool },
    /// Redis: the stream key and entry id.
    Stream { stream: String, entry: String },
}

/// An event that exhausted its attempts, kept with its last error.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub subscriber: String,
    pub event_id: String,
    pub topic: String,
    pub key: String,
    pub payload: String,
    pub source: String,
    pub attempts: u32,
    pub error: String,
    pub dead_at_ms: i64,
    /// The originating request's id, to find the rest of its path in the logs.
    pub request_id: Option<String>,
}

/// The durable record of what version a component runs, shared by every
/// host on the backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Deployment {
    pub component: String,
    /// sha256 of the active version's bytes (stored with `store_wasm`).
    pub digest: String,
    /// When it was activated (ms since the epoch).
    pub activated_ms: i64,
    /// Versions it can roll back to, most recent last.
    pub history: Vec<String>,
}

/// State, event log, offsets and dead letters behind one interface.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Short name for logs and `/health/ready`.
    fn name(&self) -> &'static str;

    /// Can the backend serve requests right now?
    async fn ready(&self) -> Result<()>;

    /// Current value and version of one document.
    async fn get(&self, key: &DocKey) -> Result<Read>;

    /// [`get`](Backend::get) of several documents, in order; backends
    /// override it to read them in one round trip or one transaction.
    async fn get_many(&self, keys: &[DocKey]) -> Result<Vec<Read>> {
        let mut reads = Vec::with_capacity(keys.len());
        for key in keys {
            reads.push(self.get(key).await?);
        }
        Ok(reads)
    }

    /// Live documents of a collection with keys after `after`, ascending
    /// (bytewise), with versions: at most `limit` of them and, beyond the
    /// first, at most `max_bytes` of values in all.
    async fn range(
        &self,
        ns: &str,
        collection: &str,
        after: Option<&str>,
        limit: RangeLimit,
    ) -> Result<Range>;

    /// Next number of a sequence, never handed out before (not even across
    /// a crash), outside any unit. Ids increase within a process; a crash
    /// may leave a gap (SQLite reserves blocks of them ahead).
    async fn next_id(&self, ns: &str, sequence: &str) -> Result<u64>;

    /// Make sure the sequence never hands out `value` or less again;
    /// committed immediately, outside any unit. O(1) whatever the gap.
    async fn advance_sequence(&self, ns: &str, sequence: &str, value: u64) -> Result<()>;

    /// Apply a unit of work atomically iff every read version still holds.
    async fn commit(&self, changes: Changes) -> Result<Commit>;

    /// Prepare the subscriber's cursor/consumer group (idempotent).
    async fn subscribe(&self, sub: &Subscription) -> Result<()>;

    /// The subscriber's dispatcher stopped cleanly (see the SQLite backend's
    /// crash detection). Default: nothing to do.
    async fn unsubscribe(&self, _sub: &Subscription) -> Result<()> {
        Ok(())
    }

    /// The host stopped cleanly (its dispatchers are done): release what
    /// marks this process as alive, so other hosts take over what it still
    /// held at once. Default: nothing to do.
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// Up to `max` deliveries for `sub`, waiting at most `wait` for the first.
    async fn poll(&self, sub: &Subscription, max: usize, wait: Duration) -> Result<Vec<Delivery>>;

    /// Whether [`Backend::poll_ahead`] can read past deliveries still in
    /// flight. Not so where an offset per topic moves only when a delivery
    /// is acknowledged (the SQLite log): its dispatcher polls after each
    /// commit.
    fn reads_ahead(&self) -> bool {
        false
    }

    /// Up to `max` deliveries never handed out before, without waiting,
    /// read while deliveries handed out by earlier polls are still being
    /// committed, so a dispatcher draining a backlog handles its next wave
    /// during the last one's commit. Only where [`Backend::reads_ahead`].
    async fn poll_ahead(&self, _sub: &Subscription, _max: usize) -> Result<Vec<Delivery>> {
        anyhow::bail!("this backend does not read ahead")
    }

    /// Called right before a delivery is handled: restarts its idle clock so
    /// it is not taken over while it waited behind others. False if it is no
    /// longer ours to handle (already acknowledged).
    async fn touch(&self, sub: &Subscription, delivery: &Delivery) -> Result<bool>;

    /// Apply the handler's unit and acknowledge the delivery, atomically.
    /// `Conflict` means nothing happened and the delivery should be retried.
    async fn ack(
        &self,
        sub: &Subscription,
        delivery: &Delivery,
        changes: Changes,
    ) -> Result<Commit>;

    /// Apply several handlers' units and acknowledge their deliveries, in
    /// the given order, as if `ack` were called on each in turn (SQLite:
    /// in one transaction). It may stop at the first conflict, leaving the
    /// rest unacknowledged: one outcome per delivery it attempted.
    async fn ack_batch(
        &self,
        sub: &Subscription,
        acks: Vec<(Delivery, Changes)>,
    ) -> Result<Vec<Commit>> {
        let mut outcomes = Vec::with_capacity(acks.len());
        for (delivery, changes) in acks {
            let outcome = self.ack(sub, &delivery, changes).await?;
            outcomes.push(outcome);
            if outcome == Commit::Conflict {
                break;
            }
        }
        Ok(outcomes)
    }

    /// Record a failed attempt. With `dead = true`, move the event to the
    /// dead letters and acknowledge it in the same step.
    async fn fail(
        &self,
        sub: &Subscription,
        delivery: &Delivery,
        error: &str,
        dead: bool,
    ) -> Result<()>;

    /// Dead letters, newest last.
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>>;

    /// Put a dead letter back in front of its subscriber; returns false if unknown.
    async fn replay(&self, dead_letter_id: &str) -> Result<bool>;

    /// Housekeeping, run periodically: drop log entries every subscriber has
    /// acknowledged and that are older than the retention. Returns how many.
    async fn maintain(&self) -> Result<u64>;

    /// Events published but not yet acknowledged, per subscriber (the lag).
    async fn lag(&self, sub: &Subscription) -> Result<u64>;

    /// Keep component bytes under their sha256 digest (content-addressed).
    async fn store_wasm(&self, digest: &str, bytes: &[u8]) -> Result<()>;

    /// Component bytes stored under `digest`.
    async fn load_wasm(&self, digest: &str) -> Result<Option<Vec<u8>>>;

    /// Record `deployment` as the component's active version and announce
    /// the change to every host (the generation moves).
    async fn set_deployment(&self, deployment: &Deployment) -> Result<()>;

    /// Every recorded deployment.
    async fn deployments(&self) -> Result<Vec<Deployment>>;

    /// A number that changes whenever a deployment is recorded: hosts poll
    /// it (cheap) and re-read `deployments` when it moved.
    async fn deployment_generation(&self) -> Result<u64>;
}

/// Raised by a host import when the state backend fails underneath it, so
/// the invocation is classified as backend trouble (503, retried without
/// counting an attempt), not as a guest bug.
#[derive(Debug, thiserror::Error)]
#[error("state backend failed: {0}")]
pub struct BackendUnavailable(pub String);

/// Shared handle used across the host.
pub type SharedBackend = Arc<dyn Backend>;
