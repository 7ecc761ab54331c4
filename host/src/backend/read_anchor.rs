//! A read transaction the SQLite writer holds open between commit groups,
//! so that some connection of the process always holds the WAL read mark
//! the readers use.
//!
//! Every read transaction locks a read mark in the WAL index, and SQLite
//! takes that lock from the kernel (`fcntl`) only when no other connection
//! of the process holds the same mark: without an anchor, nearly every
//! `GET` made two `fcntl` calls (1.84 per `GET /cafes/{id}` under load,
//! ~4 % of its CPU). With one, readers share the anchor's mark and take it
//! in memory.
//!
//! The anchor never changes what anyone reads: each read still begins its
//! own transaction, on the latest commit. It is let go before every commit
//! group and taken again after it, so the group's checkpoint can copy every
//! frame and the WAL can start over from its beginning as before (an anchor
//! held across commits would pin old frames and the WAL would grow without
//! end).

use rusqlite::Connection;

use super::group_commit::exec;

/// The writer's anchor connection and whether it holds a snapshot now.
pub(super) struct ReadAnchor {
    conn: Connection,
    held: bool,
}

impl ReadAnchor {
    /// An anchor on `conn`, a connection of its own to the database.
    pub(super) fn new(conn: Connection) -> Self {
        Self { conn, held: false }
    }

    /// Take the latest commit's read mark (after a group). Failing leaves
    /// it unheld: readers then lock their marks themselves, as without one.
    pub(super) fn hold(&mut self) {
        if self.held {
            return;
        }
        // Through the statement cache, like the writer's own BEGIN and
        // COMMIT: this runs around every commit group.
        let began = exec(&self.conn, "BEGIN").and_then(|()| {
            // A table read starts the read transaction (BEGIN alone does not).
            self.conn
                .prepare_cached("SELECT 1 FROM sqlite_master LIMIT 1")?
                .exists([])
                .map(|_| ())
        });
        match began {
            Ok(()) => self.held = true,
            Err(e) => {
                tracing::debug!(error = %e, "sqlite read anchor not taken");
                let _ = exec(&self.conn, "ROLLBACK");
            }
        }
    }

    /// Let go of the snapshot (before a group commits).
    pub(super) fn release(&mut self) {
        if std::mem::take(&mut self.held) && exec(&self.conn, "COMMIT").is_err() {
            let _ = exec(&self.conn, "ROLLBACK");
        }
    }

    /// The anchor's connection, for work between its snapshots (the
    /// checkpointer's passes).
    pub(super) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Whether the anchor holds a snapshot now (tests).
    #[cfg(test)]
    pub(super) fn held(&self) -> bool {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::super::group_commit::GroupWriter;
    use super::super::test_db::{open, with_blobs};
    use super::*;

    /// Readers see every commit at once, and the WAL still starts over at
    /// its checkpoints: 3 000 commits of ~2 pages each would grow a WAL
    /// that never restarts past 20 MiB; restarting, it stays near the
    /// autocheckpoint's 1 000 pages (4 MiB).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_see_every_commit_and_the_wal_starts_over() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, writer) = with_blobs(dir.path());
        let mut anchor = ReadAnchor::new(open(&path));
        anchor.hold();
        assert!(anchor.held(), "premise: the anchor takes a snapshot");
        let w = GroupWriter::start(
            writer,
            Some(anchor),
            std::time::Duration::ZERO,
            None,
            |_| Ok(()),
        )
        .expect("start");
        let reader = open(&path);
        for i in 0..3000_i64 {
            w.run(move |c| {
                c.execute("INSERT INTO t (k, v) VALUES (?1, zeroblob(4000))", [i])?;
                Ok(((), true))
            })
            .await
            .expect("commit");
            let n: i64 = reader
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .expect("count");
            assert_eq!(n, i + 1, "a read after a commit sees it");
        }
        let wal = std::fs::metadata(dir.path().join("t.db-wal"))
            .expect("wal file")
            .len();
        assert!(wal < 8 << 20, "the WAL grew to {wal} bytes");
    }
}
