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
use redis::streams::{StreamId, StreamReadReply};
use redis::{AsyncCommands, Script, Value};

use super::{
    Backend, Commit, Cursor, DeadLetter, Delivery, Deployment, Range, RangeLimit, Read,
    Subscription,
};
use crate::uow::{Changes, DocKey};

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

const COMMIT_LUA: &str = r#"
local i = 1
local function take() local v = ARGV[i]; i = i + 1; return v end
local nreads = tonumber(take())
for _ = 1, nreads do
  local h = take()
  local f = take()
  local want = tonumber(take())
  local cur = redis.call('HGET', h, f)
  local seen = 0
  if cur then seen = tonumber(string.sub(cur, 1, 20)) end
  if seen ~= want then return 'conflict' end
end
local ack = nil
if take() == '1' then
  ack = {}
  ack.stream = take()
  ack.group = take()
  ack.entry = take()
  ack.consumer = take()
  ack.attempts = take()
  ack.id = take()
  local mine = redis.call('XPENDING', ack.stream, ack.group, ack.entry, ack.entry, 1, ack.consumer)
  if #mine == 0 then return 'duplicate' end
end
local nadds = tonumber(take())
local adds = {}
for n = 1, nadds do
  local h = take()
  local z = take()
  local f = take()
  local delta = tonumber(take())
  local floor = tonumber(take())
  local cur = redis.call('HGET', h, f)
  local value = 0
  if cur and string.sub(cur, 21, 21) == '1' then
    value = tonumber(string.sub(cur, 22))
    if value == nil then return 'not-a-counter:' .. f end
  end
  local next = value + delta
  if next < floor then return 'conflict' end
  adds[n] = {h, z, f, next}
end
local version_key = take()
local nwrites = tonumber(take())
if nwrites > 0 or nadds > 0 then
  local version = redis.call('INCR', version_key)
  local stamp = string.format('%020d', version)
  for _, add in ipairs(adds) do
    redis.call('HSET', add[1], add[3], stamp .. '1' .. string.format('%d', add[4]))
    redis.call('ZADD', add[2], 0, add[3])
  end
  for _ = 1, nwrites do
    local h = take()
    local z = take()
    local f = take()
    local flag = take()
    local value = take()
    redis.call('HSET', h, f, stamp .. flag .. value)
    if flag == '1' then redis.call('ZADD', z, 0, f) else redis.call('ZREM', z, f) end
  end
end
local nevents = tonumber(take())
for _ = 1, nevents do
  local stream = take()
  local topic = take()
  local key = take()
  local payload = take()
  local source = take()
  local request_id = take()
  local traceparent = take()
  local fields = {'topic', topic, 'key', key, 'payload', payload, 'source', source}
  if request_id ~= '' then
    fields[#fields + 1] = 'request_id'
    fields[#fields + 1] = request_id
  end
  if traceparent ~= '' then
    fields[#fields + 1] = 'traceparent'
    fields[#fields + 1] = traceparent
  end
  redis.call('XADD', stream, '*', unpack(fields))
end
if ack then
  redis.call('XACK', ack.stream, ack.group, ack.entry)
  redis.call('HDEL', ack.attempts, ack.id)
end
return 'ok'
"#;

/// A ranged read in one snapshot: live keys after ARGV[3] from the key index
/// (a sorted set, lexicographic), their documents, capped by count and bytes.
/// Returns `{more, {key, raw, key, raw, ...}}`.
const RANGE_LUA: &str = r#"
local z, h, after, n, maxbytes = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local lo = '-'
if after ~= '' then lo = '(' .. after end
local keys = redis.call('ZRANGEBYLEX', z, lo, '+', 'LIMIT', 0, n + 1)
local out = {}
local bytes = 0
local more = 0
for idx, k in ipairs(keys) do
  if idx > n then more = 1; break end
  local raw = redis.call('HGET', h, k)
  if raw then
    -- the value alone: minus the 20-digit version and the live flag
    bytes = bytes + #raw - 21
    if #out > 0 and bytes > maxbytes then more = 1; break end
    out[#out + 1] = k
    out[#out + 1] = raw
  end
end
return {more, out}
"#;

/// Raise a sequence to at least ARGV[3] (ids as decimal strings compared
/// by width then digits, so values beyond 2^53 stay exact).
const ADVANCE_SEQUENCE_LUA: &str = r#"
local cur = redis.call('HGET', ARGV[1], ARGV[2]) or '0'
local v = ARGV[3]
if #v > #cur or (#v == #cur and v > cur) then redis.call('HSET', ARGV[1], ARGV[2], v) end
return 1
"#;

/// Move a delivery to the dead letters and acknowledge it, atomically, if
/// it is still pending with this consumer (ARGV[4]).
const DEAD_LETTER_LUA: &str = r#"
local stream, group, entry, consumer, attempts_key, delivery, dead = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if #redis.call('XPENDING', stream, group, entry, entry, 1, consumer) == 0 then return 0 end
local fields = {'subscriber', group, 'event_id', ARGV[8], 'topic', ARGV[9], 'key', ARGV[10],
  'payload', ARGV[11], 'source', ARGV[12], 'attempts', ARGV[13], 'error', ARGV[14], 'dead_ms', ARGV[15]}
if ARGV[16] ~= '' then
  fields[#fields + 1] = 'request_id'
  fields[#fields + 1] = ARGV[16]
end
if ARGV[17] ~= '' then
  fields[#fields + 1] = 'traceparent'
  fields[#fields + 1] = ARGV[17]
end
redis.call('XADD', dead, '*', unpack(fields))
redis.call('XACK', stream, group, entry)
redis.call('HDEL', attempts_key, delivery)
return 1
"#;

/// Take over every entry a dead consumer (ARGV[3], heartbeat key ARGV[5]
/// absent) holds on one stream, for consumer ARGV[4]; once it holds nothing,
/// remove it from the group. Atomic: the heartbeat is checked and the
/// entries are chosen by their owner in the same step, so a live consumer's
/// entry (one another host already took over included) is never taken.
/// Returns `{removed, {entry, ...}}` (entries as `XCLAIM` returns them;
/// ones trimmed meanwhile are dropped from the pending list, not returned).
const CLAIM_DEAD_LUA: &str = r#"
local stream, group, dead, me, alive, count = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
if redis.call('EXISTS', alive) == 1 then return {0, {}} end
local pending = redis.call('XPENDING', stream, group, '-', '+', count, dead)
local claimed = {}
if #pending > 0 then
  local ids = {}
  for j, p in ipairs(pending) do ids[j] = p[1] end
  for _, e in ipairs(redis.call('XCLAIM', stream, group, me, 0, unpack(ids))) do
    if type(e) == 'table' then claimed[#claimed + 1] = e end
  end
end
local removed = 0
if #pending < count then
  redis.call('XGROUP', 'DELCONSUMER', stream, group, dead)
  removed = 1
end
return {removed, claimed}
"#;

/// Put a dead letter on its subscriber's replay stream and remove it.
const REPLAY_LUA: &str = r#"
local dead, id, prefix = ARGV[1], ARGV[2], ARGV[3]
local found = redis.call('XRANGE', dead, id, id)
if #found == 0 then return 0 end
local fields = found[1][2]
local f = {}
for j = 1, #fields, 2 do f[fields[j]] = fields[j + 1] end
local fields = {'topic', f['topic'], 'key', f['key'], 'payload', f['payload'], 'source', f['source'], 'event_id', f['event_id']}
for _, name in ipairs({'request_id', 'traceparent'}) do
  if f[name] then
    fields[#fields + 1] = name
    fields[#fields + 1] = f[name]
  end
end
redis.call('XADD', prefix .. ':replay:' .. f['subscriber'], '*', unpack(fields))
redis.call('XDEL', dead, id)
return 1
"#;

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

fn field(entry: &StreamId, name: &str) -> Vec<u8> {
    match entry.map.get(name) {
        Some(Value::BulkString(bytes)) => bytes.clone(),
        Some(Value::SimpleString(s)) => s.clone().into_bytes(),
        _ => Vec::new(),
    }
}

fn text(entry: &StreamId, name: &str) -> String {
    String::from_utf8_lossy(&field(entry, name)).into_owned()
}

/// A field that may be absent (entries written before it existed): `None`
/// when missing or empty.
fn optional_text(entry: &StreamId, name: &str) -> Option<String> {
    Some(text(entry, name)).filter(|t| !t.is_empty())
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

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
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

    /// Create the group on every stream of `sub` (from the start of the log).
    async fn ensure_groups(&self, sub: &Subscription) -> Result<()> {
        let mut conn = self.conn.clone();
        for stream in self.streams_of(sub) {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(&sub.component)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => {
                    return Err(anyhow!(e).context(format!("failed to create group on {stream}")));
                }
            }
        }
        Ok(())
    }

    async fn blocking_conn(&self, component: &str, wait: Duration) -> Result<ConnectionManager> {
        let mut conns = self.blocking.lock().await;
        if let Some(conn) = conns.get(component) {
            return Ok(conn.clone());
        }
        let conn = ConnectionManager::new_with_config(
            self.client.clone(),
            manager_config(wait + Duration::from_secs(2)),
        )
        .await
        .context("failed to open a blocking redis connection")?;
        conns.insert(component.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Trim `stream` below the oldest entry some group still needs (pending,
    /// or not yet delivered) and below the retention window; a stream no
    /// group reads is trimmed by retention alone. Returns the MINID used.
    pub async fn trim(&self, stream: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        let groups = infos(
            &redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(&mut conn)
                .await?,
        );
        let retain_ms = u64::try_from(self.retain.as_millis()).unwrap_or(u64::MAX);
        let now = u64::try_from(now_ms()).unwrap_or(0);
        let mut floor = StreamPos(now.saturating_sub(retain_ms), 0);
        for group in groups {
            let (Some(name), Some(last_delivered)) =
                (group.text("name"), group.text("last-delivered-id"))
            else {
                continue;
            };
            let needed = if group.num("pending").unwrap_or(0) > 0 {
                let summary: Value = redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(&name)
                    .query_async(&mut conn)
                    .await?;
                match summary {
                    Value::Array(parts) => parts
                        .get(1)
                        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                        .and_then(|id| StreamPos::parse(&id))
                        .unwrap_or(StreamPos(0, 0)),
                    _ => StreamPos(0, 0),
                }
            } else {
                // Everything up to last-delivered is acknowledged; keep the
                // next one onward (MINID keeps ids >= floor).
                StreamPos::parse(&last_delivered).map_or(StreamPos(0, 0), StreamPos::next)
            };
            floor = floor.min(needed);
        }
        if floor == StreamPos(0, 0) {
            return Ok(None);
        }
        let minid = format!("{}-{}", floor.0, floor.1);
        let _: i64 = redis::cmd("XTRIM")
            .arg(stream)
            .arg("MINID")
            .arg(&minid)
            .query_async(&mut conn)
            .await?;
        Ok(Some(minid))
    }

    /// Remove consumers of stopped processes from every group of `stream`:
    /// only those holding nothing (pending 0) and idle for four claim
    /// periods. A live consumer removed by mistake is recreated by its next
    /// read, so this never loses anything.
    async fn forget_idle_consumers(&self, stream: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let groups = infos(
            &redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(&mut conn)
                .await?,
        );
        let idle_limit = u64::try_from((self.claim_idle * 4).as_millis()).unwrap_or(u64::MAX);
        for group in groups.iter().filter_map(|g| g.text("name")) {
            let consumers: Value = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(stream)
                .arg(&group)
                .query_async(&mut conn)
                .await?;
            for consumer in infos(&consumers) {
                let Some(name) = consumer.text("name") else {
                    continue;
                };
                // Unknown pending counts as holding something: never delete then.
                let pending = consumer.num("pending").unwrap_or(1);
                let idle = consumer.num("idle").unwrap_or(0);
                if name != self.consumer && pending == 0 && idle > idle_limit {
                    let _: i64 = redis::cmd("XGROUP")
                        .arg("DELCONSUMER")
                        .arg(stream)
                        .arg(&group)
                        .arg(&name)
                        .query_async(&mut conn)
                        .await?;
                    tracing::info!(stream = %stream, group = %group, consumer = %name, "removed an idle consumer");
                }
            }
        }
        Ok(())
    }

    /// Take over at once every entry held by a consumer of `sub`'s groups
    /// whose process is dead (its heartbeat key expired or was deleted by a
    /// clean stop), and remove such consumers once they hold nothing. Each
    /// entry taken over counts as a failed attempt, like the idle reclaim.
    async fn claim_from_dead(&self, sub: &Subscription) -> Result<usize> {
        {
            let mut last = self
                .last_dead_scan
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let due = last
                .get(&sub.component)
                .is_none_or(|t| t.elapsed() >= DEAD_SCAN_EVERY);
            if !due {
                return Ok(0);
            }
            last.insert(sub.component.clone(), Instant::now());
        }
        let mut conn = self.conn.clone();
        let mut taken = 0;
        let mut alive: HashMap<String, bool> = HashMap::new();
        for stream in self.streams_of(sub) {
            let consumers: redis::RedisResult<Value> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&stream)
                .arg(&sub.component)
                .query_async(&mut conn)
                .await;
            let consumers = match consumers {
                Ok(consumers) => consumers,
                // Stream or group lost with Redis's data: the read that
                // follows recreates them (see `poll`); nobody holds anything.
                Err(e) if is_nogroup(&e) || e.to_string().contains("no such key") => continue,
                Err(e) => return Err(e.into()),
            };
            for consumer in infos(&consumers) {
                let Some(name) = consumer.text("name") else {
                    continue;
                };
                if name == self.consumer {
                    continue;
                }
                let is_alive = match alive.get(&name) {
                    Some(known) => *known,
                    None => {
                        let exists: bool = conn.exists(self.alive_key(&name)).await?;
                        alive.insert(name.clone(), exists);
                        exists
                    }
                };
                if is_alive {
                    continue;
                }
                let (removed, claimed): (i64, redis::streams::StreamClaimReply) = self
                    .claim_dead
                    .arg(&stream)
                    .arg(&sub.component)
                    .arg(&name)
                    .arg(&self.consumer)
                    .arg(self.alive_key(&name))
                    .arg(DEAD_CLAIM_BATCH)
                    .invoke_async(&mut conn)
                    .await
                    .context("redis claim-from-dead script failed")?;
                taken += claimed.ids.len();
                for entry in claimed.ids {
                    let id = self.delivery_id(&stream, &entry);
                    tracing::warn!(component = %sub.component, event_id = %id, dead_consumer = %name, "took over an event from a dead consumer");
                    let _: i64 = conn
                        .hincr(self.attempts_key(&sub.component), &id, 1)
                        .await?;
                }
                if removed == 1 {
                    tracing::info!(stream = %stream, group = %sub.component, consumer = %name, "removed a dead consumer");
                }
            }
        }
        Ok(taken)
    }

    /// Take over entries that a stopped consumer left pending too long (the
    /// fallback for a consumer whose heartbeat is still there, e.g. a host
    /// that stalled without dying).
    async fn claim_stalled(&self, sub: &Subscription) -> Result<usize> {
        {
            let mut last = self.last_claim.lock().unwrap_or_else(|p| p.into_inner());
            let due = last
                .get(&sub.component)
                .is_none_or(|t| t.elapsed() >= self.claim_idle / 2);
            if !due {
                return Ok(0);
            }
            last.insert(sub.component.clone(), Instant::now());
        }
        let mut conn = self.conn.clone();
        let idle_ms = u64::try_from(self.claim_idle.as_millis()).unwrap_or(u64::MAX);
        let mut taken = 0;
        for stream in self.streams_of(sub) {
            let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(&sub.component)
                .arg(&self.consumer)
                .arg(idle_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(100)
                .query_async(&mut conn)
                .await?;
            taken += reply.claimed.len();
            for entry in reply.claimed {
                // A consumer died holding it: that counts as a failed attempt,
                // so an event that kills its host is dead-lettered eventually.
                let id = self.delivery_id(&stream, &entry);
                tracing::warn!(component = %sub.component, event_id = %id, "reclaimed an event from a stalled consumer");
                let _: i64 = conn
                    .hincr(self.attempts_key(&sub.component), &id, 1)
                    .await?;
            }
        }
        Ok(taken)
    }

    fn delivery_id(&self, stream: &str, entry: &StreamId) -> String {
        let original = text(entry, "event_id");
        if !original.is_empty() {
            return original;
        }
        let topic = stream
            .strip_prefix(&format!("{}:stream:", self.prefix))
            .unwrap_or(stream);
        format!("{topic}@{}", entry.id)
    }

    /// The deliveries of a read. `new` entries (read with `>`) were never
    /// handed to any consumer, so no failed attempt can be on record for
    /// them; entries read back from the pending list get theirs.
    async fn to_deliveries(
        &self,
        sub: &Subscription,
        reply: StreamReadReply,
        new: bool,
    ) -> Result<Vec<Delivery>> {
        let mut conn = self.conn.clone();
        let mut live = Vec::new();
        for key in reply.keys {
            for entry in key.ids {
                if entry.map.is_empty() {
                    // Deleted while pending (trimmed): acknowledge and skip.
                    let _: i64 = conn.xack(&key.key, &sub.component, &[&entry.id]).await?;
                    continue;
                }
                let id = self.delivery_id(&key.key, &entry);
                live.push((key.key.clone(), entry, id));
            }
        }
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let failures: Vec<Option<u32>> = if new {
            vec![None; live.len()]
        } else {
            // Every entry's failed attempts in one round trip.
            let ids: Vec<&str> = live.iter().map(|(_, _, id)| id.as_str()).collect();
            redis::cmd("HMGET")
                .arg(self.attempts_key(&sub.component))
                .arg(&ids)
                .query_async(&mut conn)
                .await
                .context("redis HMGET of attempts failed")?
        };
        let mut out = Vec::with_capacity(live.len());
        for ((stream, entry, id), failures) in live.into_iter().zip(failures) {
            out.push(Delivery {
                id,
                topic: text(&entry, "topic"),
                key: text(&entry, "key"),
                payload: field(&entry, "payload"),
                source: text(&entry, "source"),
                attempt: failures.unwrap_or(0).saturating_add(1),
                trace: crate::trace::TraceContext {
                    request_id: optional_text(&entry, "request_id"),
                    traceparent: optional_text(&entry, "traceparent"),
                },
                cursor: Cursor::Stream {
                    stream,
                    entry: entry.id.clone(),
                },
            });
        }
        Ok(out)
    }

    async fn read_group(
        &self,
        conn: &mut ConnectionManager,
        sub: &Subscription,
        from: &str,
        count: usize,
        block: Option<Duration>,
    ) -> redis::RedisResult<StreamReadReply> {
        let streams = self.streams_of(sub);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&sub.component)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK")
                .arg(u64::try_from(block.as_millis()).unwrap_or(1).max(1));
        }
        cmd.arg("STREAMS").arg(&streams);
        for _ in &streams {
            cmd.arg(from);
        }
        let reply: Option<StreamReadReply> = cmd.query_async(conn).await?;
        Ok(reply.unwrap_or_default())
    }

    /// Run `f` on `sub`'s [`Held`] record.
    fn held<T>(&self, sub: &str, f: impl FnOnce(&mut Held) -> T) -> T {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        f(held.entry(sub.to_owned()).or_default())
    }

    /// A delivery handed out by a read of new entries was acknowledged.
    fn settled(&self, sub: &Subscription, delivery: &Delivery) {
        if let Cursor::Stream { stream, entry } = &delivery.cursor {
            self.held(&sub.component, |h| {
                h.handed_out.remove(&(stream.clone(), entry.clone()))
            });
        }
    }

    async fn poll_once(
        &self,
        sub: &Subscription,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>> {
        let polled = self.poll_tracked(sub, max, wait).await;
        if polled.is_err() {
            // A read may have taken entries whose reply was lost.
            self.held(&sub.component, |h| h.unknown = true);
        }
        polled
    }

    async fn poll_tracked(
        &self,
        sub: &Subscription,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>> {
        let taken = self.claim_from_dead(sub).await? + self.claim_stalled(sub).await?;
        let mut conn = self.conn.clone();
        // Our own pending entries first (failed ones awaiting retry, claimed
        // ones), when there can be any: one round trip less per poll in the
        // common case, where every entry handed out was acknowledged.
        let look = self.held(&sub.component, |h| {
            h.unknown |= taken > 0;
            h.unknown || !h.handed_out.is_empty()
        });
        if look {
            let own = self.read_group(&mut conn, sub, "0", max, None).await?;
            let own = self.to_deliveries(sub, own, false).await?;
            if !own.is_empty() {
                // Read again next time, until the list is found empty.
                self.held(&sub.component, |h| h.unknown = true);
                return Ok(own);
            }
            self.held(&sub.component, |h| {
                h.unknown = false;
                h.handed_out.clear();
            });
        }
        // New entries, no more than the caller handles at once (`max`): an
        // entry held but not being worked on would sit idle in our list and
        // could be reclaimed meanwhile.
        let reply = if wait.is_zero() {
            self.read_group(&mut conn, sub, ">", max, None).await?
        } else {
            let mut blocking = self.blocking_conn(&sub.component, wait).await?;
            self.read_group(&mut blocking, sub, ">", max, Some(wait))
                .await?
        };
        let new = self.to_deliveries(sub, reply, true).await?;
        self.held(&sub.component, |h| {
            for d in &new {
                if let Cursor::Stream { stream, entry } = &d.cursor {
                    h.handed_out.insert((stream.clone(), entry.clone()));
                }
            }
        });
        Ok(new)
    }
}

/// A document as read from its hash field (absent: never written).
fn read_of(raw: Option<Vec<u8>>) -> Result<Read> {
    match raw {
        None => Ok(Read {
            value: None,
            version: 0,
        }),
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
            Err(e)
                if e.downcast_ref::<redis::RedisError>()
                    .is_some_and(is_nogroup) =>
            {
                // Redis lost its data (restart without persistence): recreate and go on.
                tracing::warn!(component = %sub.component, "consumer group missing; recreating it");
                self.ensure_groups(sub).await?;
                Ok(Vec::new())
            }
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

/// A stream entry id, ordered like Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct StreamPos(u64, u64);

impl StreamPos {
    fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    fn next(self) -> Self {
        Self(self.0, self.1.saturating_add(1))
    }
}

/// One entry of an `XINFO GROUPS` / `XINFO CONSUMERS` reply (RESP2 flat
/// list or RESP3 map), read by field name.
struct Info(Vec<(String, Value)>);

impl Info {
    fn get(&self, name: &str) -> Option<Value> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn text(&self, name: &str) -> Option<String> {
        redis::from_redis_value(self.get(name)?).ok()
    }

    fn num(&self, name: &str) -> Option<u64> {
        redis::from_redis_value(self.get(name)?).ok()
    }
}

/// Every entry of an `XINFO` reply.
fn infos(reply: &Value) -> Vec<Info> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|entry| {
            let key = |k: &Value| redis::from_redis_value::<String>(k.clone()).ok();
            Info(match entry {
                Value::Map(m) => m
                    .iter()
                    .filter_map(|(k, v)| Some((key(k)?, v.clone())))
                    .collect(),
                Value::Array(flat) => flat
                    .chunks(2)
                    .filter_map(|kv| Some((key(kv.first()?)?, kv.get(1)?.clone())))
                    .collect(),
                _ => Vec::new(),
            })
        })
        .collect()
}

impl RedisBackend {
    async fn run_commit(
        &self,
        changes: &Changes,
        ack: Option<(&Subscription, &Delivery)>,
    ) -> Result<Commit> {
        let mut invocation = self.commit.prepare_invoke();
        invocation.arg(changes.reads.len());
        for (key, version) in &changes.reads {
            invocation
                .arg(self.doc_hash(&key.ns, &key.collection))
                .arg(&key.key)
                .arg(*version);
        }
        match ack {
            Some((sub, delivery)) => {
                let Cursor::Stream { stream, entry } = &delivery.cursor else {
                    bail!("not a redis delivery");
                };
                invocation
                    .arg("1")
                    .arg(stream)
                    .arg(&sub.component)
                    .arg(entry)
                    .arg(&self.consumer)
                    .arg(self.attempts_key(&sub.component))
                    .arg(&delivery.id);
            }
            None => {
                invocation.arg("0");
            }
        }
        invocation.arg(changes.adds.len());
        for (key, add) in &changes.adds {
            invocation
                .arg(self.doc_hash(&key.ns, &key.collection))
                .arg(self.key_index(&key.ns, &key.collection))
                .arg(&key.key)
                .arg(add.delta)
                .arg(add.floor);
        }
        invocation.arg(format!("{}:version", self.prefix));
        invocation.arg(changes.writes.len());
        for (key, value) in &changes.writes {
            invocation
                .arg(self.doc_hash(&key.ns, &key.collection))
                .arg(self.key_index(&key.ns, &key.collection))
                .arg(&key.key);
            match value {
                Some(value) => invocation.arg("1").arg(value.as_slice()),
                None => invocation.arg("0").arg(""),
            };
        }
        invocation.arg(changes.events.len());
        for event in &changes.events {
            invocation
                .arg(self.stream(&event.topic))
                .arg(&event.topic)
                .arg(&event.key)
                .arg(event.payload.as_slice())
                .arg(&event.source)
                .arg(event.trace.request_id.as_deref().unwrap_or(""))
                .arg(event.trace.traceparent.as_deref().unwrap_or(""));
        }
        let mut conn = self.conn.clone();
        if ack.is_none() {
            crate::crash::point(crate::crash::BEFORE_COMMIT);
        }
        let outcome: String = invocation
            .invoke_async(&mut conn)
            .await
            .context("redis commit script failed")?;
        crate::crash::point(crate::crash::REDIS_REPLY);
        if let (Some((sub, delivery)), "ok" | "duplicate") = (ack, outcome.as_str()) {
            // Acknowledged, by this commit or already: no longer ours.
            self.settled(sub, delivery);
        }
        match outcome.as_str() {
            "ok" => Ok(Commit::Applied),
            // Another host already applied this delivery: nothing to do twice.
            "duplicate" => Ok(Commit::Applied),
            "conflict" => Ok(Commit::Conflict),
            other => match other.strip_prefix("not-a-counter:") {
                Some(key) => bail!("store.add: document {key:?} no longer holds an integer"),
                None => bail!("redis commit script answered {other:?}"),
            },
        }
    }
}
