//! Reader connections that keep their read transaction open between reads
//! while nothing was committed.
//!
//! A read in SQLite's autocommit mode opens and closes a read transaction
//! per statement: taking the WAL read lock (a shared-memory mutex and
//! `fcntl`) and releasing it cost more than the lookup itself (measured:
//! ~10 % of the CPU of a `GET /cafes/{id}`, which reads two documents). So
//! each reader keeps one transaction open, tagged with the writer's commit
//! generation, and starts a new one only when the writer committed since
//! (or the snapshot is older than [`MAX_AGE`]).
//!
//! Why that is never stale for anything a client could have seen: the
//! writer bumps the generation after `COMMIT` and before it answers any unit
//! of the group. A reader reads the generation before it begins its
//! transaction, so its snapshot holds every commit counted up to then; if
//! the generation is unchanged at the next read, no commit has been answered
//! since. Writes by another process (the CLI's `replay`) are seen within
//! [`MAX_AGE`]. Units that write still have every read version-checked by
//! the writer at commit, whatever a reader saw.
//!
//! An idle reader would pin its snapshot and keep checkpoints from getting
//! past it: the checkpoint thread ends snapshots older than [`MAX_AGE`]
//! first ([`Readers::release_stale`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::group_commit::exec;

/// Oldest snapshot a read may use; also how late another process's write
/// can be seen.
pub const MAX_AGE: Duration = Duration::from_millis(20);

/// One reader connection and the snapshot it holds open.
pub struct Reader {
    conn: Connection,
    /// Commit generation and start of the open read transaction.
    since: Option<(u64, Instant)>,
}

impl std::ops::Deref for Reader {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Reader {
    /// Make the open snapshot current as of `generation` (and younger than `max_age`).
    fn refresh(&mut self, generation: u64, max_age: Duration) {
        if let Some((tag, at)) = self.since
            && tag == generation
            && at.elapsed() < max_age
            && !self.conn.is_autocommit()
        {
            return;
        }
        self.end();
        // Deferred: the snapshot is taken by the next statement, after
        // `generation` was read, so it holds at least those commits.
        if exec(&self.conn, "BEGIN").is_ok() {
            self.since = Some((generation, Instant::now()));
        }
    }

    /// Close the read transaction, if one is open.
    fn end(&mut self) {
        self.since = None;
        if !self.conn.is_autocommit() {
            // A failed COMMIT of a read transaction leaves nothing to undo;
            // ROLLBACK makes sure the connection is back in autocommit.
            if exec(&self.conn, "COMMIT").is_err() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
        }
    }
}

/// The pool of readers; cheap to share behind an `Arc`.
pub struct Readers {
    pool: Vec<Mutex<Reader>>,
    /// Bumped by the writer after every commit.
    generation: Arc<AtomicU64>,
    /// [`MAX_AGE`], but for tests.
    max_age: Duration,
}

impl Readers {
    /// Readers over `conns` whose snapshots follow `generation`, which
    /// the writer bumps after every commit.
    pub fn new(conns: Vec<Connection>, generation: Arc<AtomicU64>) -> Self {
        Self::with_max_age(conns, generation, MAX_AGE)
    }

    fn with_max_age(conns: Vec<Connection>, generation: Arc<AtomicU64>, max_age: Duration) -> Self {
        Self {
            max_age,
            pool: conns
                .into_iter()
                .map(|conn| Mutex::new(Reader { conn, since: None }))
                .collect(),
            generation,
        }
    }

    /// A free reader (or the first, waited for) whose snapshot is current.
    pub fn get(&self) -> MutexGuard<'_, Reader> {
        let generation = self.generation.load(Ordering::Acquire);
        let mut guard = self
            .pool
            .iter()
            .find_map(|r| r.try_lock().ok())
            .unwrap_or_else(|| lock(&self.pool[0]));
        guard.refresh(generation, self.max_age);
        guard
    }

    /// End the snapshots of readers not in use that are older than
    /// [`MAX_AGE`], so checkpoints can copy past them.
    pub fn release_stale(&self) {
        for reader in &self.pool {
            if let Ok(mut r) = reader.try_lock()
                && r.since.is_some_and(|(_, at)| at.elapsed() >= self.max_age)
            {
                r.end();
            }
        }
    }
}

fn lock(reader: &Mutex<Reader>) -> MutexGuard<'_, Reader> {
    // A panic while holding a reader cannot leave SQLite inconsistent (a
    // read transaction has nothing to undo), so poisoning is moot.
    reader
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(max_age: Duration) -> (tempfile::TempDir, Connection, Readers, Arc<AtomicU64>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let writer = Connection::open(&path).expect("open");
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        writer
            .execute_batch("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1)")
            .expect("schema");
        let generation = Arc::new(AtomicU64::new(0));
        let readers = Readers::with_max_age(
            vec![Connection::open(&path).expect("reader")],
            Arc::clone(&generation),
            max_age,
        );
        (dir, writer, readers, generation)
    }

    fn value(readers: &Readers) -> i64 {
        readers
            .get()
            .query_row("SELECT v FROM t", [], |r| r.get(0))
            .expect("read")
    }

    #[test]
    fn a_snapshot_is_kept_until_the_generation_moves() {
        let (_dir, writer, readers, generation) = setup(Duration::from_secs(3600));
        assert_eq!(value(&readers), 1);
        assert!(
            !readers.get().is_autocommit(),
            "the read transaction stays open"
        );
        writer.execute("UPDATE t SET v = 2", []).expect("update");
        // Without a new generation the reader keeps its snapshot: this is
        // why the writer bumps it after every commit, before answering.
        assert_eq!(value(&readers), 1);
        generation.fetch_add(1, Ordering::Release);
        assert_eq!(value(&readers), 2, "a new generation starts a new snapshot");
    }

    #[test]
    fn another_process_write_is_seen_after_max_age() {
        let (_dir, writer, readers, _generation) = setup(MAX_AGE);
        assert_eq!(value(&readers), 1);
        writer.execute("UPDATE t SET v = 3", []).expect("update");
        std::thread::sleep(MAX_AGE + Duration::from_millis(5));
        assert_eq!(value(&readers), 3);
    }

    #[test]
    fn stale_idle_snapshots_are_released_for_checkpoints() {
        let (dir, writer, readers, _generation) = setup(MAX_AGE);
        assert_eq!(value(&readers), 1);
        for i in 0..100 {
            writer
                .execute("INSERT INTO t VALUES (?1)", [i])
                .expect("insert");
        }
        let uncopied = |conn: &Connection| -> i64 {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok(r.get::<_, i64>(1)? - r.get::<_, i64>(2)?)
            })
            .expect("checkpoint")
        };
        let checkpointer = Connection::open(dir.path().join("t.db")).expect("open");
        assert!(
            uncopied(&checkpointer) > 0,
            "the premise: an open snapshot keeps the checkpoint from copying everything"
        );
        std::thread::sleep(MAX_AGE + Duration::from_millis(5));
        readers.release_stale();
        assert_eq!(uncopied(&checkpointer), 0);
    }
}
