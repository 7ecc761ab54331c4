//! Checkpoints the WAL from a thread of its own, so that commits do not
//! wait behind them.
//!
//! SQLite's autocheckpoint runs inside the `COMMIT` that takes the WAL past
//! 1 000 frames: that commit copies every page written since the last one
//! into the database file and, having copied them all, `fsync`s the
//! database, and every unit of the process waits behind it. Measured during
//! spread orders: ~460 pages copied and a 3.6 ms `fsync` per checkpoint
//! (`strace -T` on the writer thread), one every 1 000 frames, so ~30 a
//! second at 4 000 orders/s of ~7.4 frames each; 18 % of the writer's CPU
//! was in `walCheckpoint` (`perf`).
//!
//! Here a connection of its own checkpoints `PASSIVE`ly every few
//! milliseconds while the WAL is written: it copies what the readers allow
//! while the writer goes on, and SQLite syncs the database only after a
//! checkpoint that found nothing left to copy. This thread then syncs the
//! database itself after each copy, so that sync finds little to write.
//!
//! The WAL starts over from its beginning only once every frame was
//! copied, which a checkpoint racing the writer never sees under steady
//! load. Once the WAL holds [`CATCH_UP_FRAMES`], this thread therefore
//! asks the writer to checkpoint between two commit groups
//! ([`CatchUp::run_if_asked`]): it copies the few frames written since this
//! thread's last pass, and the writer's next group starts the WAL over.
//! The writer keeps SQLite's autocheckpoint at [`WRITER_AUTOCHECKPOINT`]
//! frames, well past that, in case this thread ever stops keeping up.
//!
//! After a pass that copied the whole WAL, readers begin on the database
//! file's read mark, which the writer's read anchor (`read_anchor`) does
//! not hold: each read would take it from the kernel again (1.9 `fcntl`s
//! per `GET` measured, 5 % fewer GETs/s). So this thread holds that mark
//! itself between such a pass and its next one.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::Connection;

use super::read_anchor::ReadAnchor;
use crate::background::Background;

/// WAL frames (pages) at which the writer is asked to catch up: 16 MiB.
pub(super) const CATCH_UP_FRAMES: i64 = 4096;

/// The writer's own autocheckpoint (`PRAGMA wal_autocheckpoint`): the
/// fallback should this thread not keep the WAL short.
pub(super) const WRITER_AUTOCHECKPOINT: i64 = 4 * CATCH_UP_FRAMES;

/// How often the WAL is checkpointed while it is being written.
const EVERY: Duration = Duration::from_millis(25);
/// The longest pause between looks once it stopped being written.
const IDLE_EVERY: Duration = Duration::from_millis(200);

/// The checkpointing thread; it stops when this is dropped.
pub(super) struct Checkpointer {
    _thread: Background,
}

/// The writer's side: whether it was asked to checkpoint between groups.
#[derive(Clone, Default)]
pub(super) struct CatchUp {
    asked: Arc<AtomicBool>,
    /// Catch-up checkpoints the writer ran (tests and diagnosis).
    runs: Arc<AtomicU64>,
}

impl CatchUp {
    /// Checkpoint on `writer` if the checkpointer asked for it; called by
    /// the writer thread between commit groups, outside any transaction.
    pub(super) fn run_if_asked(&self, writer: &Connection) {
        if !self.asked.swap(false, Ordering::Relaxed) {
            return;
        }
        self.runs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = passive(writer) {
            tracing::warn!(error = %e, "sqlite catch-up checkpoint on the writer failed");
        }
    }

    /// How many catch-up checkpoints the writer ran.
    #[cfg(test)]
    pub(super) fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}

/// What one `PRAGMA wal_checkpoint(PASSIVE)` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Pass {
    /// Frames in the WAL.
    log: i64,
    /// Frames of those copied into the database, by this pass or earlier.
    copied: i64,
}

fn passive(conn: &Connection) -> rusqlite::Result<Pass> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(Pass {
            log: row.get(1)?,
            copied: row.get(2)?,
        })
    })
}

impl Checkpointer {
    /// Checkpoint the database at `db` over `conn` (a connection of its
    /// own, with the writer's `synchronous`), asking `catch_up`'s writer to
    /// finish when the WAL grows long.
    pub(super) fn start(conn: Connection, db: &Path, catch_up: CatchUp) -> Result<Self> {
        let file = File::open(db)
            .with_context(|| format!("failed to open {} for syncing", db.display()))?;
        let mut anchor = ReadAnchor::new(conn);
        let mut last = Pass::default();
        let mut pause = EVERY;
        let thread = Background::start("sqlite-checkpoint", EVERY, move || {
            // While the writer has yet to catch up, a pass here would only
            // race it: copying, it holds the lock the writer's next group
            // needs to start the WAL over.
            if catch_up.asked.load(Ordering::Relaxed) {
                return EVERY;
            }
            // A checkpoint cannot copy under its own connection's snapshot.
            anchor.release();
            let pass = match passive(anchor.conn()) {
                Ok(pass) => pass,
                Err(e) => {
                    tracing::debug!(error = %e, "sqlite checkpoint failed; retrying");
                    return IDLE_EVERY;
                }
            };
            if pass.copied > 0 && pass != last {
                // Copied pages reach the disk now rather than all at once
                // in the sync that lets the WAL start over.
                if let Err(e) = file.sync_data() {
                    tracing::debug!(error = %e, "sqlite database sync failed; the checkpoint syncs it anyway");
                }
            }
            // `log` counts from the WAL's last start over: a long one has not
            // started over since, whatever this pass copied (the writer
            // appended more while it ran).
            if pass.log >= CATCH_UP_FRAMES {
                catch_up.asked.store(true, Ordering::Relaxed);
            } else if pass.log >= 0 && pass.copied == pass.log {
                // Not while the writer is asked to catch up: a snapshot
                // taken after frames were appended would keep the WAL
                // from starting over.
                anchor.hold();
            }
            pause = if pass != last {
                EVERY
            } else {
                (pause * 2).min(IDLE_EVERY)
            };
            last = pass;
            pause
        })?;
        Ok(Self { _thread: thread })
    }
}

#[cfg(test)]
mod tests {
    use super::super::group_commit::GroupWriter;
    use super::super::test_db::{open, with_blobs};
    use super::*;

    /// Whether this process holds a shared POSIX lock on byte `at` of the
    /// file `path` (`/proc/locks`: `1: POSIX ADVISORY READ <pid>
    /// <maj:min:inode> <start> <end>`).
    fn holds_read_lock(path: &Path, at: u64) -> bool {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(path).expect("stat").ino().to_string();
        let pid = std::process::id().to_string();
        std::fs::read_to_string("/proc/locks")
            .expect("/proc/locks")
            .lines()
            .any(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                f.len() >= 8
                    && f[1] == "POSIX"
                    && f[3] == "READ"
                    && f[4] == pid
                    && f[5].rsplit(':').next() == Some(inode.as_str())
                    && f[6] == at.to_string()
            })
    }

    /// Once a pass copied the whole WAL, the checkpointer holds the read
    /// mark of the database file (`WAL_READ_LOCK(0)`, byte 123 of the
    /// `-shm` file), which readers then share in memory instead of taking
    /// it from the kernel on every read.
    #[test]
    fn after_copying_the_whole_wal_it_holds_the_database_files_read_mark() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, writer) = with_blobs(dir.path());
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .expect("autocheckpoint");
        writer
            .execute_batch("INSERT INTO t VALUES (1, x'00'), (2, x'00')")
            .expect("write");
        let shm = dir.path().join("t.db-shm");
        assert!(
            !holds_read_lock(&shm, 123),
            "premise: no connection holds the mark before the checkpointer"
        );
        let _checkpointer =
            Checkpointer::start(open(&path), &path, CatchUp::default()).expect("checkpointer");
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !holds_read_lock(&shm, 123) {
            assert!(
                std::time::Instant::now() < until,
                "the checkpointer never held the database file's read mark"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Under commits that never pause, the WAL still starts over, and
    /// every row is there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_steady_commits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, writer) = with_blobs(dir.path());
        // No fallback here: only the catch-ups can start the WAL over.
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .expect("autocheckpoint");
        let catch_up = CatchUp::default();
        let w = Arc::new(
            GroupWriter::start(writer, None, Duration::ZERO, Some(catch_up.clone()), |_| {
                Ok(())
            })
            .expect("start"),
        );
        let _checkpointer =
            Checkpointer::start(open(&path), &path, catch_up.clone()).expect("checkpointer");
        // ~3 pages per commit (a 4 000-byte row, the table's pages): 30 000
        // commits write ~90 000 frames (~370 MiB) into a WAL that never
        // started over. Eight writers keep the writer busy throughout.
        let mut tasks = Vec::new();
        for t in 0..8_i64 {
            let w = Arc::clone(&w);
            tasks.push(tokio::spawn(async move {
                for i in 0..3750_i64 {
                    let k = t * 100_000 + i;
                    w.run(move |c| {
                        c.execute("INSERT INTO t (k, v) VALUES (?1, zeroblob(4000))", [k])?;
                        Ok(((), true))
                    })
                    .await
                    .expect("commit");
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer task");
        }
        let wal = std::fs::metadata(dir.path().join("t.db-wal"))
            .expect("wal file")
            .len();
        assert!(
            catch_up.runs() > 0,
            "premise: the WAL grew long enough to ask the writer to catch up"
        );
        // Starting over at ~4 096 frames, plus what is written until the
        // next pass and the writer's next group (~12 000 frames seen at
        // this test's ~240 MiB/s), keeps it well under 16 384.
        let bound = 4 * CATCH_UP_FRAMES as u64 * (4096 + 24);
        assert!(wal < bound, "the WAL grew to {wal} bytes (bound {bound})");
        let reader = open(&path);
        let n: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 30_000, "every committed row is there");
    }
}
