//! A unit of work's commit, as one run of the commit script.

use anyhow::{Context, Result, bail};
use redis::{ErrorKind, ServerErrorKind};

use super::RedisBackend;
use crate::backend::{Commit, Cursor, Delivery, Subscription};
use crate::uow::Changes;

impl RedisBackend {
    pub(super) async fn run_commit(
        &self,
        changes: &Changes,
        ack: Option<(&Subscription, &Delivery)>,
    ) -> Result<Commit> {
        // `EVALSHA` built as one command: its arguments go into a single
        // buffer (a `ScriptInvocation` allocates one per argument, then
        // copies them all into the command).
        let mut invocation = redis::cmd("EVALSHA");
        invocation.arg(self.commit.get_hash()).arg(0);
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
                    // A first attempt has no failed-attempt record to delete.
                    .arg(if delivery.attempt > 1 {
                        self.attempts_key(&sub.component)
                    } else {
                        String::new()
                    })
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
        let outcome: String = match invocation.query_async(&mut conn).await {
            // A Redis restarted (or flushed) since the script was loaded.
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.commit
                    .load_async(&mut conn)
                    .await
                    .context("redis SCRIPT LOAD of the commit script failed")?;
                invocation.query_async(&mut conn).await
            }
            answered => answered,
        }
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
