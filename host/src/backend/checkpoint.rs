//! WAL checkpoints on their own thread and connection, so the writer's
//! commits never wait for one.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that crosses
//! `wal_autocheckpoint` pages: that commit copies the WAL into the database
//! file and syncs it before it returns, and every unit of work queued behind
//! it waits too. The writer connection turns that off and nudges this thread
//! after each commit instead; it runs a `PASSIVE` checkpoint (which never
//! blocks the writer or the readers) at most every [`PAUSE`], so a burst of
//! commits costs one checkpoint, not one per commit.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::Connection;

/// Least time between two checkpoints.
const PAUSE: Duration = Duration::from_millis(100);

/// Handle held by the writer; the thread ends when it is dropped.
pub struct Checkpointer {
    nudge: mpsc::SyncSender<()>,
}

impl Checkpointer {
    /// Start checkpointing through `conn` (its own connection to the
    /// database), calling `before` ahead of each checkpoint (to end read
    /// snapshots that would hold it back).
    pub fn start(conn: Connection, before: impl Fn() + Send + 'static) -> Result<Self> {
        // One pending nudge is enough: nudges that arrive while one waits
        // are covered by the same checkpoint.
        let (nudge, nudged) = mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while nudged.recv().is_ok() {
                    before();
                    if let Err(e) = checkpoint(&conn) {
                        tracing::warn!(error = %e, "WAL checkpoint failed; retrying after the next commit");
                    }
                    std::thread::sleep(PAUSE);
                }
            })
            .context("failed to start the sqlite checkpoint thread")?;
        Ok(Self { nudge })
    }

    /// Something was committed: checkpoint soon. Never blocks.
    pub fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }
}

/// Copy what the WAL holds into the database file without waiting for
/// anyone; what a reader still needs stays for the next round.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames in the WAL not yet copied into the database file, as a
    /// zero-work PASSIVE checkpoint reports them (log minus checkpointed).
    fn uncheckpointed(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok(r.get::<_, i64>(1)? - r.get::<_, i64>(2)?)
        })
        .expect("checkpoint status")
    }

    #[test]
    fn commits_are_checkpointed_by_the_thread_not_the_writer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let writer = Connection::open(&path).expect("open");
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .expect("no autocheckpoint");
        writer
            .execute_batch("CREATE TABLE t (v BLOB)")
            .expect("schema");
        for _ in 0..50 {
            writer
                .execute("INSERT INTO t (v) VALUES (zeroblob(4000))", [])
                .expect("insert");
        }
        // The premise: with autocheckpoint off, the writer left its frames.
        let probe = Connection::open(&path).expect("probe");
        // A PASSIVE checkpoint from the probe would do the work itself, so
        // read the premise from the WAL size instead.
        let wal = std::fs::metadata(dir.path().join("t.db-wal"))
            .expect("wal file")
            .len();
        assert!(wal > 50 * 4000, "the WAL holds the inserts ({wal} bytes)");

        let checkpointer =
            Checkpointer::start(Connection::open(&path).expect("open"), || {}).expect("start");
        checkpointer.nudge();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let db = std::fs::metadata(&path).expect("db file").len();
            if db > 50 * 4000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the checkpoint thread never copied the WAL into the database ({db} bytes)"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(uncheckpointed(&probe), 0);
    }
}
