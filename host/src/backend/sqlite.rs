//! The embedded backend: one SQLite database (bundled, WAL) holding documents,
//! the event log, per-subscriber offsets, attempt counts and dead letters.
//!
//! Writes go through one writer connection on its own thread (SQLite has a
//! single writer anyway), which commits the units waiting for it together:
//! one transaction and one `fsync` per group (`group_commit`). Reads use a
//! small pool of reader connections, which WAL lets run beside the writer.
//! Every commit group bumps a global version counter and its units stamp
//! the documents they write with it: that is what optimistic reads are
//! checked against.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::id_blocks::IdBlocks;
use super::{
    Backend, Commit, Cursor, DeadLetter, Delivery, Deployment, Range, RangeLimit, Read,
    Subscription,
};
use crate::config::Synchronous;
use crate::uow::{Changes, DocKey, counter_bytes, counter_value};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS docs (
    ns TEXT NOT NULL, coll TEXT NOT NULL, key TEXT NOT NULL,
    value BLOB, version INTEGER NOT NULL,
    PRIMARY KEY (ns, coll, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('commit_version', 0);
CREATE TABLE IF NOT EXISTS sequences (
    ns TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (ns, name)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL, key TEXT NOT NULL, payload BLOB NOT NULL,
    source TEXT NOT NULL, created_ms INTEGER NOT NULL,
    request_id TEXT, traceparent TEXT
);
CREATE INDEX IF NOT EXISTS events_by_topic ON events (topic, seq);
CREATE TABLE IF NOT EXISTS topic_offsets (
    subscriber TEXT NOT NULL, topic TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (subscriber, topic)
);
CREATE TABLE IF NOT EXISTS attempts (
    subscriber TEXT NOT NULL, seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL, last_error TEXT NOT NULL,
    PRIMARY KEY (subscriber, seq)
);
CREATE TABLE IF NOT EXISTS running (subscriber TEXT PRIMARY KEY, run INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS replays (
    subscriber TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (subscriber, seq)
);
CREATE TABLE IF NOT EXISTS wasm (digest TEXT PRIMARY KEY, bytes BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deployments (
    component TEXT PRIMARY KEY, digest TEXT NOT NULL,
    activated_ms INTEGER NOT NULL, history TEXT NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('deploy_generation', 0);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber TEXT NOT NULL, seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL, error TEXT NOT NULL, dead_ms INTEGER NOT NULL,
    replayed INTEGER NOT NULL DEFAULT 0
);
";

/// Columns added to a table after it was first released (and written into
/// `SCHEMA` for new databases). `CREATE TABLE IF NOT EXISTS` leaves an
/// existing table as it was, so [`migrate`] adds each one missing, on every
/// open (a no-op once done). Nullable: rows written before have none.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // The trace context an event carries (see `trace::TraceContext`).
    ("events", "request_id", "TEXT"),
    ("events", "traceparent", "TEXT"),
];

/// Add the [`ADDED_COLUMNS`] an existing database lacks, in one IMMEDIATE
/// transaction (two processes opening one database do not both add one).
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (table, column, decl) in ADDED_COLUMNS {
        let present: i64 = tx.query_row(
            "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, column],
            |r| r.get(0),
        )?;
        if present == 0 {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
                .with_context(|| format!("failed to add column {table}.{column}"))?;
            tracing::info!(table, column, "sqlite schema migrated: column added");
        }
    }
    tx.commit().context("sqlite migration commit failed")?;
    Ok(())
}

/// The options the bundled SQLite was compiled with (`PRAGMA compile_options`).
fn compile_options(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA compile_options")?;
    let options = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(options)
}

/// What in `options` costs every connection a process-wide mutex: the
/// build `.cargo/config.toml` asks for has neither. Memory statistics take
/// one on every allocation and free; `SQLITE_ENABLE_MEMORY_MANAGEMENT`
/// (which `libsqlite3-sys` turns on) puts every connection's page cache
/// behind one, which the writer thread and the readers on the async
/// workers queued for on every page (8.5 % of the host's CPU in spread
/// orders; 4 200 -> 5 100 orders/s without it).
fn slow_build(options: &[String]) -> Vec<&'static str> {
    let mut slow = Vec::new();
    if options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT") {
        slow.push("SQLITE_ENABLE_MEMORY_MANAGEMENT (one page cache mutex for every connection)");
    }
    if !options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0") {
        slow.push("memory statistics (a mutex on every allocation)");
    }
    slow
}

/// How many reader connections serve `get`/`list`.
const READERS: usize = 4;

/// The embedded backend. Cheap to share behind an `Arc`.
pub struct SqliteBackend {
    /// The single writer: its own thread, committing waiting units together.
    writer: super::group_commit::GroupWriter,
    /// Readers are used inline: a read of cached pages takes microseconds,
    /// less than a hop to the blocking pool would.
    readers: Vec<Mutex<Connection>>,
    /// Wake the subscribers of what a commit appended, so dispatchers don't poll.
    wakeups: super::wakeups::Wakeups,
    /// Acknowledged events older than this are pruned by `maintain`.
    retain: Duration,
    /// Identifies this process in the `running` table.
    run: i64,
    /// Subscribers whose previous process died without stopping cleanly: the
    /// first delivery they see may be what killed it, so it is charged one
    /// attempt (a crash loop ends in the dead letters, not forever).
    suspects: Mutex<std::collections::HashSet<String>>,
    /// Blocks of sequence numbers reserved ahead (`store.next-id`).
    ids: IdBlocks,
    /// Syncs the WAL ahead of the checkpoints (`"normal"` only).
    _wal_sync: Option<super::wal_sync::WalSync>,
    /// Checkpoints the WAL off the writer's thread.
    _checkpointer: super::checkpointer::Checkpointer,
}

/// The topics `changes` append to: their subscribers are woken once it
/// commits.
fn appended_topics(changes: &Changes) -> Vec<String> {
    changes.events.iter().map(|e| e.topic.clone()).collect()
}

/// `v` as an SQLite integer (an i64), saturating: nothing beyond it can be
/// stored anyway.
fn sql_int(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| sql_int(d.as_millis()))
        .unwrap_or(0)
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding a connection cannot leave SQLite inconsistent
    // (an open transaction is rolled back on the next BEGIN), so poisoning is moot.
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a commit group waits for more units under concurrent load when
/// commits do not `fsync` (see `group_commit::gather`).
const COMMIT_WINDOW: Duration = Duration::from_micros(300);

fn open(path: &Path, synchronous: Synchronous) -> Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("failed to open sqlite database {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // Room for every statement a connection runs (rusqlite keeps 16): the
    // writer's and the readers' sets (`get_many` has one per key count, the
    // lag query one per subscriber) stay prepared instead of evicting each
    // other under mixed load.
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Statement journals (one per savepoint of a commit group) in memory,
    // not in temp files: measured ~11 % of POST /orders CPU in pwrite.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // The bundled SQLite has STAT4: without the planner stability guarantee
    // every cached statement whose plan a bound value might change is
    // compiled again at its next step after a rebind (measured: ~8 % of the
    // CPU of POST /orders went to re-preparing cached statements).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .context("failed to enable the query planner stability guarantee")?;
    Ok(conn)
}

impl SqliteBackend {
    /// Open (creating if needed) `dir/sktarbucks.db`.
    pub fn open(dir: &Path, synchronous: Synchronous) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create data directory {}", dir.display()))?;
        let path = dir.join("sktarbucks.db");
        let mut writer = open(&path, synchronous)?;
        writer
            .execute_batch(SCHEMA)
            .context("failed to create the sqlite schema")?;
        migrate(&mut writer).context("failed to migrate the sqlite schema")?;
        // A diagnosis only: not being able to read the options stops nothing.
        match compile_options(&writer).map(|options| slow_build(&options)) {
            Ok(slow) if !slow.is_empty() => tracing::warn!(
                with = ?slow,
                "the bundled SQLite was built without this checkout's .cargo/config.toml \
                 (LIBSQLITE3_FLAGS): every connection takes a process-wide mutex, and \
                 writes and reads wait for each other"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "could not read sqlite compile options")
            }
        }
        let readers = (0..READERS)
            .map(|_| open(&path, synchronous).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let anchor = super::read_anchor::ReadAnchor::new(open(&path, synchronous)?);
        // Checkpoints run on their own thread (see `checkpointer`); the
        // writer's own autocheckpoint is only the fallback.
        writer
            .pragma_update(
                None,
                "wal_autocheckpoint",
                super::checkpointer::WRITER_AUTOCHECKPOINT,
            )
            .context("failed to set the writer's autocheckpoint")?;
        let catch_up = super::checkpointer::CatchUp::default();
        let checkpointer = super::checkpointer::Checkpointer::start(
            open(&path, synchronous)?,
            &path,
            catch_up.clone(),
        )?;
        // With `fsync` per commit the wait for it gathers the next group.
        let window = match synchronous {
            Synchronous::Full => Duration::ZERO,
            Synchronous::Normal => COMMIT_WINDOW,
        };
        // With `fsync` per commit the WAL is synced already.
        let wal_sync = match synchronous {
            Synchronous::Full => None,
            Synchronous::Normal => Some(super::wal_sync::WalSync::start(&path)?),
        };
        Ok(Self {
            // One commit version per group, taken as it begins: the
            // group's units stamp what they write with it.
            writer: super::group_commit::GroupWriter::start(
                writer,
                Some(anchor),
                window,
                Some(catch_up),
                |tx| {
                    super::group_commit::exec(
                        tx,
                        "UPDATE meta SET value = value + 1 WHERE name = 'commit_version'",
                    )
                },
            )?,
            readers,
            wakeups: super::wakeups::Wakeups::default(),
            retain: Duration::from_secs(24 * 3600),
            run: i64::from(rand::random::<u32>()) + 1,
            suspects: Mutex::default(),
            ids: IdBlocks::default(),
            _wal_sync: wal_sync,
            _checkpointer: checkpointer,
        })
    }

    /// Keep acknowledged events this long before `maintain` prunes them.
    pub fn with_retention(mut self, retain: Duration) -> Self {
        self.retain = retain;
        self
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        for conn in &self.readers {
            if let Ok(guard) = conn.try_lock() {
                return guard;
            }
        }
        lock(&self.readers[0])
    }

    /// Run `f` on the writer in the next commit group (see `group_commit`):
    /// its writes are kept when it says so (`true`), rolled back otherwise.
    async fn transact<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<(R, bool)> + Send + 'static,
    {
        self.writer.run(f).await
    }

    /// A transaction that always commits.
    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.transact(move |tx| Ok((f(tx)?, true))).await
    }

    /// A transaction that commits iff `f` returns true (false: a conflict).
    /// `f` makes every check before its first write (see `apply`), so it
    /// runs without a savepoint of its own.
    async fn write_checked<F>(&self, f: F) -> Result<Commit>
    where
        F: FnOnce(&Connection) -> Result<bool> + Send + 'static,
    {
        self.writer
            .run_checks_first(move |tx| {
                let applied = f(tx)?;
                let outcome = if applied {
                    Commit::Applied
                } else {
                    Commit::Conflict
                };
                Ok((outcome, applied))
            })
            .await
    }
}

/// Check every read version and apply writes and events inside `tx`.
/// Returns false, having written nothing, when a read is stale.
fn apply(tx: &Connection, changes: &Changes) -> Result<bool> {
    let Some(added) = check(tx, changes)? else {
        return Ok(false);
    };
    write(tx, changes, added)?;
    Ok(true)
}

/// A counter's value after a unit's `store.add`, ready to be written.
type Added<'a> = Vec<(&'a DocKey, Vec<u8>)>;

/// Whether `changes` can commit: every read version still current, every
/// counter still above its floor. `None`: they conflict. Reads only, so a
/// caller that checks before its first write needs no savepoint to decline.
fn check<'a>(tx: &Connection, changes: &'a Changes) -> Result<Option<Added<'a>>> {
    {
        let mut version_of =
            tx.prepare_cached("SELECT version FROM docs WHERE ns = ?1 AND coll = ?2 AND key = ?3")?;
        for (key, seen) in &changes.reads {
            let current: u64 = version_of
                .query_row(params![key.ns, key.collection, key.key], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            if current != *seen {
                return Ok(None);
            }
        }
    }
    let mut added = Vec::with_capacity(changes.adds.len());
    {
        let mut value_of =
            tx.prepare_cached("SELECT value FROM docs WHERE ns = ?1 AND coll = ?2 AND key = ?3")?;
        for (key, add) in &changes.adds {
            let current: Option<Vec<u8>> = value_of
                .query_row(params![key.ns, key.collection, key.key], |r| r.get(0))
                .optional()?
                .flatten();
            let now = counter_value(current.as_deref())
                .map_err(|e| anyhow::anyhow!("store.add on {}/{}: {e}", key.collection, key.key))?;
            match now.checked_add(add.delta) {
                Some(next) if next >= add.floor => added.push((key, counter_bytes(next))),
                // Below the floor (or out of range) at commit: the unit
                // re-runs and sees the value that refused it.
                _ => return Ok(None),
            }
        }
    }
    Ok(Some(added))
}

/// Write checked `changes` (documents, counters, events) under a new
/// commit version.
fn write(tx: &Connection, changes: &Changes, added: Added<'_>) -> Result<()> {
    if changes.is_write_free() {
        return Ok(());
    }
    // The group's version (see `SqliteBackend::open`): units of one group
    // share it. A unit that read a document before the group began saw an
    // older version, so an earlier unit of the group rewriting it is still
    // a conflict; and nothing outside sees the version before the group
    // commits (a group rolled back hands it out again, unseen).
    let version: u64 = tx
        .prepare_cached("SELECT value FROM meta WHERE name = 'commit_version'")?
        .query_row([], |r| r.get(0))?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO docs (ns, coll, key, value, version) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (ns, coll, key) DO UPDATE SET value = excluded.value, version = excluded.version",
        )?;
        for (key, value) in &changes.writes {
            upsert.execute(params![key.ns, key.collection, key.key, value, version])?;
        }
        for (key, value) in &added {
            upsert.execute(params![key.ns, key.collection, key.key, value, version])?;
        }
    }
    {
        let mut append = tx.prepare_cached(
            "INSERT INTO events (topic, key, payload, source, created_ms, request_id, traceparent)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let now = now_ms();
        for event in &changes.events {
            append.execute(params![
                event.topic,
                event.key,
                event.payload,
                event.source,
                now,
                event.trace.request_id,
                event.trace.traceparent
            ])?;
        }
    }
    Ok(())
}

/// Remember that delivery `seq` to `subscriber` has failed `attempts` times.
fn record_attempt(
    tx: &Connection,
    subscriber: &str,
    seq: i64,
    attempts: u32,
    error: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO attempts (subscriber, seq, attempts, last_error) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (subscriber, seq) DO UPDATE SET attempts = excluded.attempts,
         last_error = excluded.last_error",
        params![subscriber, seq, attempts, error],
    )?;
    Ok(())
}

/// Mark a delivery as done for its subscriber. False, having written
/// nothing, if another process got there first. A first attempt has no
/// failed attempts on record (its count comes from that record), so only a
/// retry has one to clear.
fn advance(
    tx: &Connection,
    subscriber: &str,
    topic: &str,
    cursor: &Cursor,
    attempt: u32,
) -> Result<bool> {
    let Cursor::Seq { seq, replay } = cursor else {
        anyhow::bail!("not a sqlite delivery");
    };
    let changed = if *replay {
        tx.prepare_cached("DELETE FROM replays WHERE subscriber = ?1 AND seq = ?2")?
            .execute(params![subscriber, seq])?
    } else {
        tx.prepare_cached(
            "UPDATE topic_offsets SET seq = ?2 WHERE subscriber = ?1 AND topic = ?3 AND seq < ?2",
        )?
        .execute(params![subscriber, seq, topic])?
    };
    if changed == 1 && attempt > 1 {
        tx.prepare_cached("DELETE FROM attempts WHERE subscriber = ?1 AND seq = ?2")?
            .execute(params![subscriber, seq])?;
    }
    Ok(changed == 1)
}

/// Commit a handled delivery's `changes` and move its offset, or decline
/// (false) having written nothing: every check comes before the first write.
fn acknowledge(
    tx: &Connection,
    subscriber: &str,
    topic: &str,
    cursor: &Cursor,
    attempt: u32,
    changes: &Changes,
) -> Result<bool> {
    let Some(added) = check(tx, changes)? else {
        return Ok(false);
    };
    if !advance(tx, subscriber, topic, cursor, attempt)? {
        return Ok(false);
    }
    write(tx, changes, added)?;
    Ok(true)
}

fn topic_filter(topics: &[String]) -> String {
    let marks: Vec<String> = (0..topics.len()).map(|i| format!("?{}", i + 3)).collect();
    marks.join(", ")
}

/// One document with its version (absent: never written).
fn read_doc(conn: &Connection, key: &DocKey) -> Result<Read> {
    let row = conn
        .prepare_cached("SELECT value, version FROM docs WHERE ns = ?1 AND coll = ?2 AND key = ?3")?
        .query_row(params![key.ns, key.collection, key.key], |r| {
            Ok(Read {
                value: r.get(0)?,
                version: r.get(1)?,
            })
        })
        .optional()?;
    Ok(row.unwrap_or_default())
}

/// The statement of [`read_docs`] for `n` keys, built once per count up to
/// the most a `store.get-many` may ask for.
fn read_docs_sql(n: usize) -> std::borrow::Cow<'static, str> {
    static BUILT: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let build = |n: usize| {
        let rows = vec!["(?, ?, ?, ?)"; n].join(", ");
        format!(
            "WITH k(i, ns, coll, key) AS (VALUES {rows})
             SELECT k.i, d.value, d.version FROM k
             LEFT JOIN docs d ON d.ns = k.ns AND d.coll = k.coll AND d.key = k.key"
        )
    };
    let built = BUILT.get_or_init(|| (0..=crate::state::MAX_GET_MANY).map(build).collect());
    match built.get(n) {
        Some(sql) => std::borrow::Cow::Borrowed(sql.as_str()),
        None => std::borrow::Cow::Owned(build(n)),
    }
}

/// Documents `keys` in one statement, in the order asked (a key may repeat).
fn read_docs(conn: &Connection, keys: &[DocKey]) -> Result<Vec<Read>> {
    let mut stmt = conn.prepare_cached(&read_docs_sql(keys.len()))?;
    for (i, key) in keys.iter().enumerate() {
        let first = i * 4 + 1;
        stmt.raw_bind_parameter(first, sql_int(i))?;
        stmt.raw_bind_parameter(first + 1, &key.ns)?;
        stmt.raw_bind_parameter(first + 2, &key.collection)?;
        stmt.raw_bind_parameter(first + 3, &key.key)?;
    }
    let mut read = vec![Read::default(); keys.len()];
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next()? {
        let i: usize = row.get(0)?;
        if let (Some(slot), Some(version)) = (read.get_mut(i), row.get::<_, Option<u64>>(2)?) {
            *slot = Read {
                value: row.get(1)?,
                version,
            };
        }
    }
    Ok(read)
}

#[async_trait]
impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn ready(&self) -> Result<()> {
        self.reader()
            .query_row("SELECT 1", [], |_| Ok(()))
            .context("sqlite is not answering")
    }

    async fn get(&self, key: &DocKey) -> Result<Read> {
        read_doc(&self.reader(), key)
    }

    async fn get_many(&self, keys: &[DocKey]) -> Result<Vec<Read>> {
        match keys {
            [] => Ok(Vec::new()),
            [key] => Ok(vec![read_doc(&self.reader(), key)?]),
            // One statement: one snapshot and one WAL read lock for all of
            // them, without a BEGIN and COMMIT of its own.
            _ => read_docs(&self.reader(), keys),
        }
    }

    async fn range(
        &self,
        ns: &str,
        collection: &str,
        after: Option<&str>,
        limit: RangeLimit,
    ) -> Result<Range> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT key, value, version FROM docs
             WHERE ns = ?1 AND coll = ?2 AND key > ?3 AND value IS NOT NULL
             ORDER BY key LIMIT ?4",
        )?;
        // One row beyond the limit tells whether more follow.
        let fetch = sql_int(limit.entries.saturating_add(1));
        let mut rows = stmt.query(params![ns, collection, after.unwrap_or(""), fetch])?;
        let mut out = Range::default();
        let mut bytes = 0usize;
        while let Some(row) = rows.next()? {
            let value: Vec<u8> = row.get(1)?;
            bytes = bytes.saturating_add(value.len());
            if out.entries.len() == limit.entries
                || (!out.entries.is_empty() && bytes > limit.bytes)
            {
                out.more = true;
                break;
            }
            out.entries.push((row.get(0)?, value, row.get(2)?));
        }
        Ok(out)
    }

    async fn next_id(&self, ns: &str, sequence: &str) -> Result<u64> {
        self.ids
            .next(ns, sequence, |n| {
                let (ns, sequence) = (ns.to_owned(), sequence.to_owned());
                let n = sql_int(n);
                self.write(move |tx| {
                    let end: u64 = tx
                        .prepare_cached(
                            "INSERT INTO sequences (ns, name, value) VALUES (?1, ?2, ?3)
                             ON CONFLICT (ns, name) DO UPDATE SET value = value + ?3 RETURNING value",
                        )?
                        .query_row(params![ns, sequence, n], |r| r.get(0))?;
                    Ok(end)
                })
            })
            .await
    }

    async fn advance_sequence(&self, ns: &str, sequence: &str, value: u64) -> Result<()> {
        self.ids
            .advance(ns, sequence, value, || async {
                let value = sql_int(value);
                if self.sequence_at_least(ns, sequence, value)? {
                    return Ok(());
                }
                let (ns, sequence) = (ns.to_owned(), sequence.to_owned());
                self.write(move |tx| {
                    tx.execute(
                        "INSERT INTO sequences (ns, name, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT (ns, name) DO UPDATE SET value = max(value, excluded.value)",
                        params![ns, sequence, value],
                    )?;
                    Ok(())
                })
                .await
            })
            .await
    }

    async fn close(&self) -> Result<()> {
        // Give back what is left of every block of ids, unless something
        // moved the sequence since: a clean stop leaves no gap.
        let unused = self.ids.take_unused().await;
        if unused.is_empty() {
            return Ok(());
        }
        self.write(move |tx| {
            let mut give_back = tx.prepare_cached(
                "UPDATE sequences SET value = ?3 WHERE ns = ?1 AND name = ?2 AND value = ?4",
            )?;
            for (ns, sequence, block) in &unused {
                let (last_used, end) = (sql_int(block.next - 1), sql_int(block.end));
                give_back.execute(params![ns, sequence, last_used, end])?;
            }
            Ok(())
        })
        .await
    }

    async fn commit(&self, changes: Changes) -> Result<Commit> {
        let topics = appended_topics(&changes);
        let outcome = self
            .write_checked(move |tx| {
                let applied = apply(tx, &changes)?;
                if applied {
                    crate::crash::point(crate::crash::BEFORE_COMMIT);
                }
                Ok(applied)
            })
            .await?;
        if outcome == Commit::Applied {
            self.wakeups.appended(topics.iter().map(String::as_str));
        }
        Ok(outcome)
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<()> {
        // One offset per topic: a topic added to a subscriber later is read
        // from the start of the log, like a new Redis consumer group.
        let name = sub.component.clone();
        let topics = sub.topics.clone();
        let run = self.run;
        let crashed = self
            .write(move |tx| {
                for topic in &topics {
                    tx.execute(
                        "INSERT OR IGNORE INTO topic_offsets (subscriber, topic, seq) VALUES (?1, ?2, 0)",
                        params![name, topic],
                    )?;
                }
                let previous: Option<i64> = tx
                    .query_row(
                        "SELECT run FROM running WHERE subscriber = ?1",
                        params![name],
                        |r| r.get(0),
                    )
                    .optional()?;
                tx.execute(
                    "INSERT INTO running (subscriber, run) VALUES (?1, ?2)
                     ON CONFLICT (subscriber) DO UPDATE SET run = excluded.run",
                    params![name, run],
                )?;
                Ok(previous.is_some_and(|p| p != run))
            })
            .await?;
        if crashed {
            tracing::warn!(component = %sub.component, "previous host stopped without shutting down; its current event is charged one attempt");
            self.suspects
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(sub.component.clone());
        }
        Ok(())
    }

    async fn unsubscribe(&self, sub: &Subscription) -> Result<()> {
        let (name, run) = (sub.component.clone(), self.run);
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM running WHERE subscriber = ?1 AND run = ?2",
                params![name, run],
            )?;
            Ok(())
        })
        .await
    }

    async fn poll(&self, sub: &Subscription, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        if sub.topics.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let waiter = self.wakeups.waiter(&sub.component, &sub.topics);
        let notified = waiter.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let found = self.pending(sub, max)?;
        if !found.is_empty() || wait.is_zero() {
            return self.charge_suspect(sub, found).await;
        }
        let _ = tokio::time::timeout(wait, notified).await;
        let found = self.pending(sub, max)?;
        self.charge_suspect(sub, found).await
    }

    async fn touch(&self, _sub: &Subscription, _delivery: &Delivery) -> Result<bool> {
        // Offsets, not leases: nothing can take a delivery over.
        Ok(true)
    }

    async fn ack(
        &self,
        sub: &Subscription,
        delivery: &Delivery,
        changes: Changes,
    ) -> Result<Commit> {
        let topics = appended_topics(&changes);
        let subscriber = sub.component.clone();
        let topic = delivery.topic.clone();
        let cursor = delivery.cursor.clone();
        let attempt = delivery.attempt;
        let outcome = self
            .write_checked(move |tx| {
                acknowledge(tx, &subscriber, &topic, &cursor, attempt, &changes)
            })
            .await?;
        if outcome == Commit::Applied {
            self.wakeups.appended(topics.iter().map(String::as_str));
        }
        Ok(outcome)
    }

    async fn ack_batch(
        &self,
        sub: &Subscription,
        acks: Vec<(Delivery, Changes)>,
    ) -> Result<Vec<Commit>> {
        let subscriber = sub.component.clone();
        // Gathered here, not on the writer thread: each ack's topics, for
        // the wake-up once it applied.
        let topics: Vec<Vec<String>> = acks.iter().map(|(_, c)| appended_topics(c)).collect();
        // Every ack checks before it writes and the batch keeps what it
        // applied, so it needs no savepoint either.
        let outcomes = self
            .writer
            .run_checks_first(move |tx| {
                let mut outcomes = Vec::with_capacity(acks.len());
                // Offsets only move forward: a conflict ends the batch, the
                // rest is delivered again after it. An ack that declines has
                // written nothing, so the acks need no savepoints of their own.
                for (d, changes) in &acks {
                    if acknowledge(tx, &subscriber, &d.topic, &d.cursor, d.attempt, changes)? {
                        outcomes.push(Commit::Applied);
                    } else {
                        outcomes.push(Commit::Conflict);
                        break;
                    }
                }
                Ok((outcomes, true))
            })
            .await?;
        let applied = outcomes
            .iter()
            .take_while(|o| **o == Commit::Applied)
            .count();
        self.wakeups
            .appended(topics[..applied].iter().flatten().map(String::as_str));
        Ok(outcomes)
    }

    async fn fail(
        &self,
        sub: &Subscription,
        delivery: &Delivery,
        error: &str,
        dead: bool,
    ) -> Result<()> {
        let subscriber = sub.component.clone();
        let topic = delivery.topic.clone();
        let cursor = delivery.cursor.clone();
        let error = error.to_owned();
        let attempt = delivery.attempt;
        self.write(move |tx| {
            let Cursor::Seq { seq, .. } = cursor else {
                anyhow::bail!("not a sqlite delivery");
            };
            if dead {
                if !advance(tx, &subscriber, &topic, &cursor, attempt)? {
                    // Another process already completed it: no dead letter.
                    return Ok(());
                }
                tx.execute(
                    "INSERT INTO dead_letters (subscriber, seq, attempts, error, dead_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![subscriber, seq, attempt, error, now_ms()],
                )?;
                crate::crash::point(crate::crash::DEAD_LETTER);
            } else {
                record_attempt(tx, &subscriber, seq, attempt, &error)?;
            }
            Ok(())
        })
        .await
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT d.id, d.subscriber, d.seq, e.topic, e.key, e.payload, e.source,
                    d.attempts, d.error, d.dead_ms, e.request_id
             FROM dead_letters d JOIN events e ON e.seq = d.seq
             WHERE d.replayed = 0 ORDER BY d.id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                let payload: Vec<u8> = r.get(5)?;
                Ok(DeadLetter {
                    id: r.get::<_, i64>(0)?.to_string(),
                    subscriber: r.get(1)?,
                    event_id: r.get::<_, i64>(2)?.to_string(),
                    topic: r.get(3)?,
                    key: r.get(4)?,
                    payload: String::from_utf8_lossy(&payload).into_owned(),
                    source: r.get(6)?,
                    attempts: r.get(7)?,
                    error: r.get(8)?,
                    dead_at_ms: r.get(9)?,
                    request_id: r.get(10)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    async fn replay(&self, dead_letter_id: &str) -> Result<bool> {
        let Ok(id) = dead_letter_id.parse::<i64>() else {
            return Ok(false);
        };
        let replayed = self
            .write(move |tx| {
                let row: Option<(String, i64)> = tx
                    .query_row(
                        "SELECT subscriber, seq FROM dead_letters WHERE id = ?1 AND replayed = 0",
                        params![id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let Some((subscriber, seq)) = row else {
                    return Ok(None);
                };
                tx.execute(
                    "UPDATE dead_letters SET replayed = 1 WHERE id = ?1",
                    params![id],
                )?;
                tx.execute(
                    "INSERT OR IGNORE INTO replays (subscriber, seq) VALUES (?1, ?2)",
                    params![subscriber, seq],
                )?;
                Ok(Some(subscriber))
            })
            .await?;
        if let Some(subscriber) = &replayed {
            self.wakeups.wake(subscriber);
        }
        Ok(replayed.is_some())
    }

    async fn maintain(&self) -> Result<u64> {
        let cutoff = now_ms().saturating_sub(sql_int(self.retain.as_millis()));
        self.write(move |tx| {
            // Gone only when every subscriber of its topic is past it, and no
            // dead letter or replay still points at it.
            let pruned = tx.execute(
                "DELETE FROM events WHERE created_ms <= ?1
                   AND NOT EXISTS (SELECT 1 FROM topic_offsets o WHERE o.topic = events.topic AND o.seq < events.seq)
                   AND seq NOT IN (SELECT seq FROM dead_letters)
                   AND seq NOT IN (SELECT seq FROM replays)",
                params![cutoff],
            )?;
            Ok(pruned as u64)
        })
        .await
    }

    async fn lag(&self, sub: &Subscription) -> Result<u64> {
        if sub.topics.is_empty() {
            return Ok(0);
        }
        let conn = self.reader();
        let sql = format!(
            "SELECT (SELECT count(*) FROM events e
                     JOIN topic_offsets o ON o.subscriber = ?1 AND o.topic = e.topic
                     WHERE e.topic IN ({}) AND e.seq > o.seq)
                  + (SELECT count(*) FROM replays WHERE subscriber = ?1) + 0 * ?2",
            topic_filter(&sub.topics)
        );
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&sub.component, &0];
        for topic in &sub.topics {
            values.push(topic);
        }
        let lag: u64 = conn
            .prepare_cached(&sql)?
            .query_row(values.as_slice(), |r| r.get(0))?;
        Ok(lag)
    }

    async fn store_wasm(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let (digest, bytes) = (digest.to_owned(), bytes.to_vec());
        self.write(move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO wasm (digest, bytes) VALUES (?1, ?2)",
                params![digest, bytes],
            )?;
            Ok(())
        })
        .await
    }

    async fn load_wasm(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT bytes FROM wasm WHERE digest = ?1")?;
        Ok(stmt.query_row(params![digest], |r| r.get(0)).optional()?)
    }

    async fn set_deployment(&self, d: &Deployment) -> Result<()> {
        let d = d.clone();
        let history = serde_json::to_string(&d.history)?;
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO deployments (component, digest, activated_ms, history) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (component) DO UPDATE SET digest = excluded.digest,
                 activated_ms = excluded.activated_ms, history = excluded.history",
                params![d.component, d.digest, d.activated_ms, history],
            )?;
            tx.execute(
                "UPDATE meta SET value = value + 1 WHERE name = 'deploy_generation'",
                [],
            )?;
            Ok(())
        })
        .await
    }

    async fn deployments(&self) -> Result<Vec<Deployment>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT component, digest, activated_ms, history FROM deployments ORDER BY component",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?))
            })?
            .collect::<rusqlite::Result<Vec<(String, String, i64, String)>>>()?;
        rows.into_iter()
            .map(|(component, digest, activated_ms, history)| {
                Ok(Deployment {
                    component,
                    digest,
                    activated_ms,
                    history: serde_json::from_str(&history)
                        .context("a stored deployment history is not a JSON list")?,
                })
            })
            .collect()
    }

    async fn deployment_generation(&self) -> Result<u64> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT value FROM meta WHERE name = 'deploy_generation'")?;
        Ok(stmt.query_row([], |r| r.get(0))?)
    }
}

impl SqliteBackend {
    /// True when the sequence is already at `value` or beyond (a read, so the
    /// common case of an id behind the sequence never takes the writer).
    fn sequence_at_least(&self, ns: &str, sequence: &str, value: i64) -> Result<bool> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT value FROM sequences WHERE ns = ?1 AND name = ?2")?;
        let current: Option<i64> = stmt
            .query_row(params![ns, sequence], |r| r.get(0))
            .optional()?;
        Ok(current.is_some_and(|c| c >= value))
    }

    /// After a crash, record one attempt for the subscriber's first delivery.
    async fn charge_suspect(
        &self,
        sub: &Subscription,
        mut found: Vec<Delivery>,
    ) -> Result<Vec<Delivery>> {
        let Some(first) = found.first_mut() else {
            return Ok(found);
        };
        let suspect = self
            .suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sub.component);
        if suspect {
            let Cursor::Seq { seq, .. } = first.cursor else {
                return Ok(found);
            };
            let (name, attempt) = (sub.component.clone(), first.attempt);
            self.write(move |tx| {
                record_attempt(
                    tx,
                    &name,
                    seq,
                    attempt,
                    "the host stopped while this event was pending",
                )?;
                Ok(())
            })
            .await?;
            first.attempt += 1;
        }
        Ok(found)
    }

    /// Replayed dead letters first, then the log after the subscriber's offset.
    ///
    /// The log is read topic by topic, each along `events_by_topic` from the
    /// subscriber's offset for it (`max` at most each), and the lists are
    /// merged by `seq` here: one query over every topic would have SQLite sort
    /// the whole backlog of all of them in a temporary b-tree on every poll.
    /// Once `max` are in hand, a later topic reads only below the highest
    /// of them: rows above it would be cut off anyway (under a backlog,
    /// mypage's seven topics read seven times what a poll keeps).
    /// All of it runs in one read transaction, so the topics are read from
    /// one snapshot and no event can slip in below one already taken.
    fn pending(&self, sub: &Subscription, max: usize) -> Result<Vec<Delivery>> {
        let mut conn = self.reader();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let limit = sql_int(max);
        let mut out = Vec::new();
        {
            let mut replays = tx.prepare_cached(
                "SELECT e.seq, e.topic, e.key, e.payload, e.source,
                        coalesce((SELECT attempts FROM attempts a WHERE a.subscriber = r.subscriber AND a.seq = r.seq), 0),
                        e.request_id, e.traceparent, e.created_ms
                 FROM replays r JOIN events e ON e.seq = r.seq
                 WHERE r.subscriber = ?1 ORDER BY r.seq LIMIT ?2",
            )?;
            let rows =
                replays.query_map(params![sub.component, limit], |r| row_to_delivery(r, true))?;
            for row in rows {
                out.push(row?);
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        {
            // No offset row for a topic (not subscribed to it): nothing.
            let mut topic_log = tx.prepare_cached(
                "SELECT e.seq, e.topic, e.key, e.payload, e.source,
                        coalesce((SELECT attempts FROM attempts a WHERE a.subscriber = ?1 AND a.seq = e.seq), 0),
                        e.request_id, e.traceparent, e.created_ms
                 FROM events e
                 WHERE e.topic = ?2
                   AND e.seq > (SELECT seq FROM topic_offsets WHERE subscriber = ?1 AND topic = ?2)
                   AND e.seq < ?4
                 ORDER BY e.seq LIMIT ?3",
            )?;
            let mut below = i64::MAX;
            for (i, topic) in sub.topics.iter().enumerate() {
                if sub.topics[..i].contains(topic) {
                    continue;
                }
                let rows = topic_log
                    .query_map(params![sub.component, topic, limit, below], |r| {
                        row_to_delivery(r, false)
                    })?;
                for row in rows {
                    out.push(row?);
                }
                if out.len() >= max {
                    keep_first(&mut out, max);
                    below = out.last().map_or(i64::MAX, seq_of);
                }
            }
        }
        tx.commit()?;
        keep_first(&mut out, max);
        Ok(out)
    }
}

/// Where a delivery of this backend sits in the log.
fn seq_of(d: &Delivery) -> i64 {
    match d.cursor {
        Cursor::Seq { seq, .. } => seq,
        Cursor::Stream { .. } => i64::MAX,
    }
}

/// The first `max` deliveries of `out` in log order.
fn keep_first(out: &mut Vec<Delivery>, max: usize) {
    out.sort_unstable_by_key(seq_of);
    out.truncate(max);
}

fn row_to_delivery(r: &rusqlite::Row<'_>, replay: bool) -> rusqlite::Result<Delivery> {
    let seq: i64 = r.get(0)?;
    let previous: u32 = r.get(5)?;
    Ok(Delivery {
        id: seq.to_string(),
        topic: r.get(1)?,
        key: r.get(2)?,
        payload: r.get(3)?,
        source: r.get(4)?,
        attempt: previous.saturating_add(1),
        trace: crate::trace::TraceContext {
            request_id: r.get(6)?,
            traceparent: r.get(7)?,
        },
        appended_ms: u64::try_from(r.get::<_, i64>(8)?).unwrap_or(0),
        cursor: Cursor::Seq { seq, replay },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled SQLite is built as `.cargo/config.toml` asks, and a
    /// build without it is named at start.
    #[test]
    fn sqlite_is_built_without_process_wide_mutexes() {
        let conn = Connection::open_in_memory().expect("open");
        let options = compile_options(&conn).expect("options");
        assert!(
            options.iter().any(|o| o == "THREADSAFE=1"),
            "premise: the option list is read: {options:?}"
        );
        assert_eq!(slow_build(&options), Vec::<&str>::new(), "{options:?}");
        let stock = [
            "THREADSAFE=1".to_owned(),
            "ENABLE_MEMORY_MANAGEMENT".to_owned(),
        ];
        assert_eq!(slow_build(&stock).len(), 2, "both are named");
    }
}
