//! The Redis backend: state in hashes, events in Redis Streams with one
//! consumer group per subscribing component and one consumer per host
//! process, so several hosts share the load and the stream.
//!
//! Every commit is one Lua script (atomic on a single Redis): it checks the
//! versions the unit read, writes documents stamped with a new version,
//! `XADD`s the published events and — for an event handler — `XACK`s the
//! delivery, all or nothing. A handler's commit applies only while the
//! entry is still pending with this host's consumer (`XPENDING` in the same
//! script): once another host has claimed it (after a stall) or it was
//! acknowledged, the commit is dropped, so each delivery's effect commits
//! at most once without a per-delivery marker key.
//!
//! Failover: every consuming process keeps a heartbeat key with a TTL
//! ([`HEARTBEAT_TTL`], refreshed every [`HEARTBEAT_EVERY`]; deleted by a
//! clean stop). At its polls (at most every 250 ms per subscriber) a host
//! looks at its groups' consumers and takes over at once every entry held
//! by one whose heartbeat is gone (one script: heartbeat checked, entries
//! chosen by owner, `XCLAIM`ed, the emptied consumer deleted), counting an
//! attempt. `XAUTOCLAIM` after `events.claim_idle_ms` stays as the fallback
//! for a consumer that looks alive but holds an entry that long.
//!
//! Key layout (prefix `sk` by default):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `sk:doc:{ns}:{collection}` | hash | key → 20-digit version, `1`/`0` (live/deleted), value |
//! | `sk:keys:{ns}:{collection}` | sorted set | live keys, score 0 (lexicographic ranges) |
//! | `sk:version` | string | global commit counter |
//! | `sk:seq:{ns}` | hash | sequence name → last id |
//! | `sk:stream:{topic}` | stream | events (`topic`, `key`, `payload`, `source`; `request_id` and `traceparent` when known) |
//! | `sk:replay:{component}` | stream | dead letters replayed to one subscriber (same fields, plus `event_id`) |
//! | `sk:attempts:{component}` | hash | delivery id → failed attempts |
//! | `sk:alive:{consumer}` | string | heartbeat of a consuming process (TTL 3 s, refreshed every second, deleted on a clean stop) |
//! | `sk:dead` | stream | dead letters with their error |
//! | `sk:wasm:{sha256}` | string | component bytes, content-addressed |
//! | `sk:deploy` | hash | component → active deployment (JSON: digest, activated_ms, history) |
//! | `sk:deploy:gen` | string | generation, incremented with every deployment (hosts poll it) |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script, Value};

use super::{
    Backend, Commit, Cursor, DeadLetter, Delivery, Deployment, Range, RangeLimit, Read,
    Subscription,
};
use crate::uow::{Changes, DocKey};

mod commit;
mod consumer;
mod scripts;
mod stream_reply;

use consumer::{StreamPos, infos, lost_group, optional_text, text};
use scripts::{
    ADVANCE_SEQUENCE_LUA, CLAIM_DEAD_LUA, COMMIT_LUA, DEAD_LETTER_LUA, RANGE_LUA, REPLAY_LUA,
};

/// Width of the version prefix of every stored document.
const VERSION_WIDTH: usize = 20;
/// How often a consuming process refreshes its heartbeat key.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Lifetime of a heartbeat key: a process that missed this long of
/// refreshes (killed, frozen, cut off from Redis) is presumed dead and its
/// pending entries are taken over at once. Three refresh periods, so one
/// late refresh is not a death.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(3);
/// How often one subscriber looks for dead consumers in its groups (at its
/// next poll once due; an idle dispatcher polls every 500 ms).
const DEAD_SCAN_EVERY: Duration = Duration::from_millis(250);
/// Most entries taken over from one dead consumer per stream and scan.
const DEAD_CLAIM_BATCH: usize = 100;

/// The Redis backend. One shared multiplexed connection for commands; one
/// dedicated connection per subscriber for blocking reads (a blocked
/// `XREADGROUP` would stall every command pipelined behind it).
pub struct RedisBackend {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    /// This process's consumer name in every group.
    consumer: String,
    /// Entries idle longer than this in a dead consumer's list are taken over.
    claim_idle: Duration,
    /// Acknowledged entries older than this are trimmed from the streams.
    retain: Duration,
    blocking: tokio::sync::Mutex<HashMap<String, ConnectionManager>>,
    last_claim: Mutex<HashMap<String, Instant>>,
    last_dead_scan: Mutex<HashMap<String, Instant>>,
    /// Per subscriber: what this process may hold in its pending lists, so
    /// a poll reads them (`XREADGROUP … 0`) only when something can be there.
    held: Mutex<HashMap<String, Held>>,
    /// This process's heartbeat, started by the first `subscribe`.
    heartbeat: Arc<Heartbeat>,
    commit: Script,
    dead_letter: Script,
    replay: Script,
    range: Script,
    advance_sequence: Script,
    claim_dead: Script,
}

/// What one subscriber of this process may have pending in its groups.
/// Entries handed out by a read of new entries are tracked until their
/// commit or dead-lettering acknowledged them; anything else that can put
/// entries in the pending list (a start, a takeover, a read of the list
/// that still found some) makes the next poll read the list again.
struct Held {
    /// The pending list may hold entries not tracked in `handed_out`.
    unknown: bool,
    /// Entries read as new and not yet known to be acknowledged: `(stream, entry)`.
    handed_out: std::collections::HashSet<(String, String)>,
}

impl Default for Held {
    fn default() -> Self {
        Self {
            unknown: true,
            handed_out: Default::default(),
        }
    }
}

/// The heartbeat of one process: `{prefix}:alive:{consumer}`, set with a
/// TTL of [`HEARTBEAT_TTL`] and refreshed every [`HEARTBEAT_EVERY`] by a
/// task, from the first subscription until [`Backend::close`] (which
/// deletes it) or until the backend is dropped (it then expires).
#[derive(Default)]
struct Heartbeat {
    /// Serialises refreshes with `close`, so a refresh in flight cannot
    /// put the key back after it was deleted.
    lock: tokio::sync::Mutex<HeartbeatState>,
}

#[derive(Default)]
struct HeartbeatState {
    task: Option<tokio::task::JoinHandle<()>>,
    closed: bool,
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        // The task holds only a weak reference and stops by itself at its
        // next tick; stop it now when nobody is using the state.
        if let Ok(mut state) = self.heartbeat.lock.try_lock()
            && let Some(task) = state.task.take()
        {
            task.abort();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

/// Split a stored document into (version, live value).
fn decode(raw: &[u8]) -> Result<(u64, Option<Vec<u8>>)> {
    if raw.len() < VERSION_WIDTH + 1 {
        bail!("corrupt document: {} bytes", raw.len());
    }
    let version = std::str::from_utf8(&raw[..VERSION_WIDTH])?
        .parse::<u64>()
        .context("corrupt document version")?;
    let value = match raw[VERSION_WIDTH] {
        b'1' => Some(raw[VERSION_WIDTH + 1..].to_vec()),
        _ => None,
    };
    Ok((version, value))
}

/// Set (or refresh) a heartbeat key with its TTL.
async fn beat(conn: &mut ConnectionManager, key: &str) -> redis::RedisResult<()> {
    redis::cmd("SET")
        .arg(key)
        .arg(now_ms())
        .arg("PX")
        .arg(u64::try_from(HEARTBEAT_TTL.as_millis()).unwrap_or(u64::MAX))
        .query_async(conn)
        .await
}

impl RedisBackend {
    /// Connect to `url`; `prefix` namespaces every key (several deployments
    /// or test runs can share one Redis).
    pub async fn connect(
        url: &str,
        prefix: &str,
        claim_idle: Duration,
        retain: Duration,
    ) -> Result<Self> {
        let client =
            redis::Client::open(url).with_context(|| format!("invalid redis url {url:?}"))?;
        let conn = ConnectionManager::new_with_config(
            client.clone(),
            manager_config(Duration::from_secs(2)),
        )
        .await
        .with_context(|| format!("failed to connect to redis at {url}"))?;
        let consumer = format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
            std::process::id(),
            rand::random::<u32>()
        );
        Ok(Self {
            client,
            conn,
            prefix: prefix.to_owned(),
            consumer,
            claim_idle,
            retain,
            blocking: tokio::sync::Mutex::default(),
            last_claim: Mutex::default(),
            last_dead_scan: Mutex::default(),
            held: Mutex::default(),
            heartbeat: Arc::default(),
            commit: Script::new(COMMIT_LUA),
            dead_letter: Script::new(DEAD_LETTER_LUA),
            replay: Script::new(REPLAY_LUA),
            range: Script::new(RANGE_LUA),
            advance_sequence: Script::new(ADVANCE_SEQUENCE_LUA),
            claim_dead: Script::new(CLAIM_DEAD_LUA),
        })
    }

    /// This process's consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The heartbeat key of `consumer`.
    fn alive_key(&self, consumer: &str) -> String {
        format!("{}:alive:{consumer}", self.prefix)
    }

    /// Mark this process alive and keep it so (idempotent). Called by
    /// `subscribe`, before this process first reads as a consumer, so no
    /// other host ever sees its consumer without a heartbeat.
    async fn start_heartbeat(&self) -> Result<()> {
        let mut state = self.heartbeat.lock.lock().await;
        if state.closed || state.task.is_some() {
            return Ok(());
        }
        let key = self.alive_key(&self.consumer);
        let mut conn = self.conn.clone();
        beat(&mut conn, &key)
            .await
            .context("redis heartbeat SET failed")?;
        let weak = Arc::downgrade(&self.heartbeat);
        state.task = Some(tokio::spawn(async move {
            let mut every = tokio::time::interval(HEARTBEAT_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await; // the first tick is immediate: just beaten
            loop {
                every.tick().await;
                // The backend was dropped: stop (the key expires).
                let Some(heartbeat) = weak.upgrade() else {
                    return;
                };
                let state = heartbeat.lock.lock().await;
                if state.closed {
                    return;
                }
                if let Err(e) = beat(&mut conn, &key).await {
                    tracing::warn!(error = %e, "redis heartbeat refresh failed; retrying");
                }
            }
        }));
        Ok(())
    }

    fn doc_hash(&self, ns: &str, collection: &str) -> String {
        format!("{}:doc:{ns}:{collection}", self.prefix)
    }

    /// Sorted set of the live keys of a collection (ranged reads).
    fn key_index(&self, ns: &str, collection: &str) -> String {
        format!("{}:keys:{ns}:{collection}", self.prefix)
    }

    fn sequence_hash(&self, ns: &str) -> String {
        format!("{}:seq:{ns}", self.prefix)
    }

    fn deploy_key(&self) -> String {
        format!("{}:deploy", self.prefix)
    }

    fn stream(&self, topic: &str) -> String {
        format!("{}:stream:{topic}", self.prefix)
    }

    fn replay_stream(&self, component: &str) -> String {
        format!("{}:replay:{component}", self.prefix)
    }

    fn streams_of(&self, sub: &Subscription) -> Vec<String> {
        let mut streams: Vec<String> = sub.topics.iter().map(|t| self.stream(t)).collect();
        streams.push(self.replay_stream(&sub.component));
        streams
    }

    fn attempts_key(&self, group: &str) -> String {
        format!("{}:attempts:{group}", self.prefix)
    }

    fn dead_key(&self) -> String {
        format!("{}:dead", self.prefix)
    }
}

/// A document as read from its hash field (absent: never written).
fn read_of(raw: Option<Vec<u8>>) -> Result<Read> {
    match raw {
        None => Ok(Read::default()),
        Some(raw) => {
            let (version, value) = decode(&raw)?;
            Ok(Read { value, version })
        }
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ready(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let pong: String = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("PING").query_async(&mut conn),
        )
        .await
        .map_err(|_| anyhow!("redis did not answer PING within 1 s"))?
        .context("redis is unreachable")?;
        if pong != "PONG" {
            bail!("unexpected PING reply {pong:?}");
        }
        Ok(())
    }

    async fn get(&self, key: &DocKey) -> Result<Read> {
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = conn
            .hget(self.doc_hash(&key.ns, &key.collection), &key.key)
            .await
            .context("redis HGET failed")?;
        read_of(raw)
    }

    async fn get_many(&self, keys: &[DocKey]) -> Result<Vec<Read>> {
        if keys.is_empty() {
            // An empty pipeline is no valid request.
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.hget(self.doc_hash(&key.ns, &key.collection), &key.key);
        }
        let mut conn = self.conn.clone();
        let raws: Vec<Option<Vec<u8>>> = pipe
            .query_async(&mut conn)
            .await
            .context("redis HGET pipeline failed")?;
        raws.into_iter().map(read_of).collect()
    }

    async fn range(
        &self,
        ns: &str,
        collection: &str,
        after: Option<&str>,
        limit: RangeLimit,
    ) -> Result<Range> {
        let mut invocation = self.range.prepare_invoke();
        invocation
            .arg(self.key_index(ns, collection))
            .arg(self.doc_hash(ns, collection))
            .arg(after.unwrap_or(""))
            .arg(limit.entries)
            .arg(limit.bytes);
        let mut conn = self.conn.clone();
        let (more, flat): (i64, Vec<Vec<u8>>) = invocation
            .invoke_async(&mut conn)
            .await
            .context("redis range script failed")?;
        let mut out = Range {
            entries: Vec::with_capacity(flat.len() / 2),
            more: more == 1,
        };
        let mut pairs = flat.into_iter();
        while let (Some(key), Some(raw)) = (pairs.next(), pairs.next()) {
            let (version, value) = decode(&raw)?;
            if let Some(value) = value {
                let key = String::from_utf8(key).context("a stored key is not UTF-8")?;
                out.entries.push((key, value, version));
            }
        }
        Ok(out)
    }

    async fn next_id(&self, ns: &str, sequence: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let id: u64 = conn
            .hincr(self.sequence_hash(ns), sequence, 1)
            .await
            .context("redis HINCRBY failed")?;
        Ok(id)
    }

    async fn advance_sequence(&self, ns: &str, sequence: &str, value: u64) -> Result<()> {
        // HINCRBY works on i64: an id beyond that cannot be handed out anyway.
        let value = value.min(i64::MAX as u64);
        let mut invocation = self.advance_sequence.prepare_invoke();
        invocation
            .arg(self.sequence_hash(ns))
            .arg(sequence)
            .arg(value.to_string());
        let mut conn = self.conn.clone();
        let _: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .context("redis advance-sequence script failed")?;
        Ok(())
    }

    async fn commit(&self, changes: Changes) -> Result<Commit> {
        self.run_commit(&changes, None).await
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<()> {
        self.start_heartbeat().await?;
        self.ensure_groups(sub).await
    }

    async fn close(&self) -> Result<()> {
        let mut state = self.heartbeat.lock.lock().await;
        state.closed = true;
        if let Some(task) = state.task.take() {
            task.abort();
            let mut conn = self.conn.clone();
            let _: i64 = conn
                .del(self.alive_key(&self.consumer))
                .await
                .context("redis DEL of the heartbeat failed")?;
        }
        Ok(())
    }

    async fn poll(&self, sub: &Subscription, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        match self.poll_once(sub, max, wait).await {
            Err(e) if lost_group(&e) => {
                // Redis lost its data (restart without persistence): recreate and go on.
                tracing::warn!(component = %sub.component, "consumer group missing; recreating it");
                self.ensure_groups(sub).await?;
                Ok(Vec::new())
            }
            other => other,
        }
    }

    fn reads_ahead(&self) -> bool {
        // Only new entries (`>`) are read ahead: they were never handed
        // out, so none of them can be one still in flight.
        true
    }

    async fn poll_ahead(&self, sub: &Subscription, max: usize) -> Result<Vec<Delivery>> {
        match self.poll_new(sub, max).await {
            // Left to the next ordinary poll, which recreates the group.
            Err(e) if lost_group(&e) => Ok(Vec::new()),
            other => other,
        }
    }

    async fn touch(&self, sub: &Subscription, delivery: &Delivery) -> Result<bool> {
        let Cursor::Stream { stream, entry } = &delivery.cursor else {
            bail!("not a redis delivery");
        };
        // XCLAIM with min-idle 0 and JUSTID resets the idle time without
        // bumping the delivery counter; an empty reply means it was acked.
        let mut conn = self.conn.clone();
        let claimed: Vec<String> = redis::cmd("XCLAIM")
            .arg(stream)
            .arg(&sub.component)
            .arg(&self.consumer)
            .arg(0)
            .arg(entry)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await
            .context("redis XCLAIM failed")?;
        Ok(!claimed.is_empty())
    }

    async fn ack(
        &self,
        sub: &Subscription,
        delivery: &Delivery,
        changes: Changes,
    ) -> Result<Commit> {
        self.run_commit(&changes, Some((sub, delivery))).await
    }

    async fn ack_batch(
        &self,
        sub: &Subscription,
        acks: Vec<(Delivery, Changes)>,
    ) -> Result<Vec<Commit>> {
        // Each delivery is acknowledged on its own entry (no shared offset),
        // so all go at once: the multiplexed connection pipelines the scripts.
        let commits = acks
            .iter()
            .map(|(delivery, changes)| self.run_commit(changes, Some((sub, delivery))));
        futures::future::join_all(commits)
            .await
            .into_iter()
            .collect()
    }

    async fn fail(
        &self,
        sub: &Subscription,
        delivery: &Delivery,
        error: &str,
        dead: bool,
    ) -> Result<()> {
        let Cursor::Stream { stream, entry } = &delivery.cursor else {
            bail!("not a redis delivery");
        };
        let mut conn = self.conn.clone();
        if !dead {
            let _: i64 = conn
                .hincr(self.attempts_key(&sub.component), &delivery.id, 1)
                .await
                .context("redis HINCRBY failed")?;
            return Ok(());
        }
        crate::crash::point(crate::crash::DEAD_LETTER);
        let _: i64 = self
            .dead_letter
            .arg(stream)
            .arg(&sub.component)
            .arg(entry)
            .arg(&self.consumer)
            .arg(self.attempts_key(&sub.component))
            .arg(&delivery.id)
            .arg(self.dead_key())
            .arg(&delivery.id)
            .arg(&delivery.topic)
            .arg(&delivery.key)
            .arg(&delivery.payload)
            .arg(&delivery.source)
            .arg(delivery.attempt)
            .arg(error)
            .arg(now_ms())
            .arg(delivery.trace.request_id.as_deref().unwrap_or(""))
            .arg(delivery.trace.traceparent.as_deref().unwrap_or(""))
            .invoke_async(&mut conn)
            .await
            .context("redis dead-letter script failed")?;
        // Dead-lettered and acknowledged, or no longer ours.
        self.settled(sub, delivery);
        Ok(())
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = conn
            .xrange_all(self.dead_key())
            .await
            .context("redis XRANGE failed")?;
        Ok(reply
            .ids
            .iter()
            .map(|e| DeadLetter {
                id: e.id.clone(),
                subscriber: text(e, "subscriber"),
                event_id: text(e, "event_id"),
                topic: text(e, "topic"),
                key: text(e, "key"),
                payload: text(e, "payload"),
                source: text(e, "source"),
                attempts: text(e, "attempts").parse().unwrap_or(0),
                error: text(e, "error"),
                dead_at_ms: text(e, "dead_ms").parse().unwrap_or(0),
                request_id: optional_text(e, "request_id"),
            })
            .collect())
    }

    async fn replay(&self, dead_letter_id: &str) -> Result<bool> {
        if StreamPos::parse(dead_letter_id).is_none() {
            return Ok(false);
        }
        let mut conn = self.conn.clone();
        let moved: i64 = self
            .replay
            .arg(self.dead_key())
            .arg(dead_letter_id)
            .arg(&self.prefix)
            .invoke_async(&mut conn)
            .await
            .context("redis replay script failed")?;
        Ok(moved == 1)
    }

    async fn maintain(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let mut streams = Vec::new();
        for pattern in [
            format!("{}:stream:*", self.prefix),
            format!("{}:replay:*", self.prefix),
        ] {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(200)
                    .arg("TYPE")
                    .arg("stream")
                    .query_async(&mut conn)
                    .await
                    .context("redis SCAN failed")?;
                streams.extend(keys);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let mut trimmed = 0u64;
        for stream in &streams {
            if let Err(e) = self.forget_idle_consumers(stream).await {
                tracing::warn!(stream = %stream, error = %format!("{e:#}"), "consumer cleanup failed");
            }
        }
        for stream in streams {
            let before: u64 = conn.xlen(&stream).await.unwrap_or(0);
            if self.trim(&stream).await?.is_some() {
                let after: u64 = conn.xlen(&stream).await.unwrap_or(0);
                trimmed += before.saturating_sub(after);
            }
        }
        Ok(trimmed)
    }

    async fn lag(&self, sub: &Subscription) -> Result<u64> {
        let mut conn = self.conn.clone();
        let mut total = 0u64;
        for stream in self.streams_of(sub) {
            // A stream that does not exist yet has no backlog.
            let groups: Value = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async(&mut conn)
                .await
                .unwrap_or(Value::Nil);
            if let Some(ours) = infos(&groups)
                .into_iter()
                .find(|g| g.text("name").as_deref() == Some(sub.component.as_str()))
            {
                total += ours.num("pending").unwrap_or(0) + ours.num("lag").unwrap_or(0);
            }
        }
        Ok(total)
    }

    async fn store_wasm(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .set(format!("{}:wasm:{digest}", self.prefix), bytes)
            .await
            .context("redis SET of component bytes failed")?;
        Ok(())
    }

    async fn load_wasm(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let mut conn = self.conn.clone();
        let bytes: Option<Vec<u8>> = conn
            .get(format!("{}:wasm:{digest}", self.prefix))
            .await
            .context("redis GET of component bytes failed")?;
        Ok(bytes)
    }

    async fn set_deployment(&self, d: &Deployment) -> Result<()> {
        let json = serde_json::to_string(d)?;
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .hset(self.deploy_key(), &d.component, json)
            .ignore()
            .incr(format!("{}:gen", self.deploy_key()), 1)
            .ignore()
            .query_async(&mut conn)
            .await
            .context("redis deployment record failed")?;
        Ok(())
    }

    async fn deployments(&self) -> Result<Vec<Deployment>> {
        let mut conn = self.conn.clone();
        let all: HashMap<String, String> = conn
            .hgetall(self.deploy_key())
            .await
            .context("redis HGETALL of deployments failed")?;
        let mut out = all
            .values()
            .map(|json| {
                serde_json::from_str(json).context("a stored deployment is not the expected JSON")
            })
            .collect::<Result<Vec<Deployment>>>()?;
        out.sort_by(|a, b| a.component.cmp(&b.component));
        Ok(out)
    }

    async fn deployment_generation(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let generation: Option<u64> = conn
            .get(format!("{}:gen", self.deploy_key()))
            .await
            .context("redis GET of the deployment generation failed")?;
        Ok(generation.unwrap_or(0))
    }
}
