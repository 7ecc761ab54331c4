//! Consuming the streams: consumer groups, polls (new entries, and this
//! host's own pending list only when something can be there), takeovers
//! from dead or stalled consumers, and trimming.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use redis::aio::ConnectionManager;
use redis::streams::StreamId;
use redis::{AsyncCommands, Value};

use super::stream_reply;
use super::{DEAD_CLAIM_BATCH, DEAD_SCAN_EVERY, Held, RedisBackend, manager_config, now_ms};
use crate::backend::{Cursor, Delivery, Subscription};

/// A field of a stream entry as bytes (empty when absent).
fn field(entry: &StreamId, name: &str) -> Vec<u8> {
    entry
        .map
        .get(name)
        .cloned()
        .and_then(stream_reply::bytes)
        .unwrap_or_default()
}

/// A field of a stream entry as text (lossy; empty when absent).
pub(super) fn text(entry: &StreamId, name: &str) -> String {
    stream_reply::text(field(entry, name))
}

/// A field that may be absent (entries written before it existed): `None`
/// when missing or empty.
pub(super) fn optional_text(entry: &StreamId, name: &str) -> Option<String> {
    stream_reply::non_empty(text(entry, name))
}

/// The stream or its consumer group is gone (Redis lost its data).
fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

/// [`is_nogroup`] for a poll's error.
pub(super) fn lost_group(e: &anyhow::Error) -> bool {
    e.downcast_ref::<redis::RedisError>()
        .is_some_and(is_nogroup)
}

impl RedisBackend {
    /// Create the group on every stream of `sub` (from the start of the log).
    pub(super) async fn ensure_groups(&self, sub: &Subscription) -> Result<()> {
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

    /// The consumer groups of `stream`, as `XINFO GROUPS` describes them.
    async fn groups(conn: &mut ConnectionManager, stream: &str) -> Result<Vec<Info>> {
        Ok(infos(
            &redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(conn)
                .await?,
        ))
    }

    /// Trim `stream` below the oldest entry some group still needs (pending,
    /// or not yet delivered) and below the retention window; a stream no
    /// group reads is trimmed by retention alone. Returns the MINID used.
    pub async fn trim(&self, stream: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        let groups = Self::groups(&mut conn, stream).await?;
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
    pub(super) async fn forget_idle_consumers(&self, stream: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let groups = Self::groups(&mut conn, stream).await?;
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
        self.delivery_id_of(stream, &entry.id, text(entry, "event_id"))
    }

    /// A delivery's id: the `event_id` a replayed entry carries (`original`),
    /// else `{topic}@{entry id}`.
    fn delivery_id_of(&self, stream: &str, entry_id: &str, original: String) -> String {
        if !original.is_empty() {
            return original;
        }
        let topic = stream
            .strip_prefix(&format!("{}:stream:", self.prefix))
            .unwrap_or(stream);
        format!("{topic}@{entry_id}")
    }

    /// The deliveries of a read. `new` entries (read with `>`) were never
    /// handed to any consumer, so no failed attempt can be on record for
    /// them; entries read back from the pending list get theirs.
    async fn to_deliveries(
        &self,
        sub: &Subscription,
        reply: Value,
        new: bool,
    ) -> Result<Vec<Delivery>> {
        let mut conn = self.conn.clone();
        let mut live = Vec::new();
        for (stream, entries) in stream_reply::parse(reply)? {
            for mut entry in entries {
                if entry.fields.as_ref().is_none_or(Vec::is_empty) {
                    // Deleted while pending (trimmed): acknowledge and skip.
                    let _: i64 = conn.xack(&stream, &sub.component, &[&entry.id]).await?;
                    continue;
                }
                let original = entry.take_text("event_id");
                let id = self.delivery_id_of(&stream, &entry.id, original);
                live.push((stream.clone(), entry, id));
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
        for ((stream, mut entry, id), failures) in live.into_iter().zip(failures) {
            out.push(Delivery {
                id,
                topic: entry.take_text("topic"),
                key: entry.take_text("key"),
                payload: entry.take("payload"),
                source: entry.take_text("source"),
                attempt: failures.unwrap_or(0).saturating_add(1),
                trace: crate::trace::TraceContext {
                    request_id: entry.take_optional("request_id"),
                    traceparent: entry.take_optional("traceparent"),
                },
                // An entry id's first part is the server's clock at XADD.
                appended_ms: StreamPos::parse(&entry.id).map_or(0, |p| p.0),
                cursor: Cursor::Stream {
                    stream,
                    entry: entry.id,
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
    ) -> redis::RedisResult<Value> {
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
        cmd.query_async(conn).await
    }

    /// Run `f` on `sub`'s [`Held`] record.
    fn held<T>(&self, sub: &str, f: impl FnOnce(&mut Held) -> T) -> T {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        f(held.entry(sub.to_owned()).or_default())
    }

    /// A delivery handed out by a read of new entries was acknowledged.
    pub(super) fn settled(&self, sub: &Subscription, delivery: &Delivery) {
        if let Cursor::Stream { stream, entry } = &delivery.cursor {
            self.held(&sub.component, |h| {
                h.handed_out.remove(&(stream.clone(), entry.clone()))
            });
        }
    }

    pub(super) async fn poll_once(
        &self,
        sub: &Subscription,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>> {
        let polled = self.poll_tracked(sub, max, wait).await;
        self.unknown_after_error(sub, polled)
    }

    /// A read that failed may have taken entries whose reply was lost: the
    /// next poll looks at this consumer's own pending list.
    fn unknown_after_error<T>(&self, sub: &Subscription, read: Result<T>) -> Result<T> {
        if read.is_err() {
            self.held(&sub.component, |h| h.unknown = true);
        }
        read
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
        self.handed_out(sub, reply).await
    }

    /// Entries never handed out, without waiting, recorded as handed out:
    /// read while earlier ones are committed (`Backend::poll_ahead`). No
    /// takeovers and no look at our own pending list: the ordinary poll
    /// that follows an unacknowledged delivery does those.
    pub(super) async fn poll_new(&self, sub: &Subscription, max: usize) -> Result<Vec<Delivery>> {
        let mut conn = self.conn.clone();
        let read = match self.read_group(&mut conn, sub, ">", max, None).await {
            Ok(reply) => self.handed_out(sub, reply).await,
            Err(e) => Err(e.into()),
        };
        self.unknown_after_error(sub, read)
    }

    /// The deliveries of a read of new entries, recorded as handed out
    /// until acknowledged (while any is, polls look at our pending list).
    async fn handed_out(&self, sub: &Subscription, reply: Value) -> Result<Vec<Delivery>> {
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

/// A stream entry id, ordered like Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct StreamPos(u64, u64);

impl StreamPos {
    pub(super) fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    pub(super) fn next(self) -> Self {
        Self(self.0, self.1.saturating_add(1))
    }
}

/// One entry of an `XINFO GROUPS` / `XINFO CONSUMERS` reply (RESP2 flat
/// list or RESP3 map), read by field name.
pub(super) struct Info(Vec<(String, Value)>);

impl Info {
    pub(super) fn get(&self, name: &str) -> Option<Value> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    pub(super) fn text(&self, name: &str) -> Option<String> {
        redis::from_redis_value(self.get(name)?).ok()
    }

    pub(super) fn num(&self, name: &str) -> Option<u64> {
        redis::from_redis_value(self.get(name)?).ok()
    }
}

/// Every entry of an `XINFO` reply.
pub(super) fn infos(reply: &Value) -> Vec<Info> {
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
