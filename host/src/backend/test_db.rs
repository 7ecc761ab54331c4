//! Scratch WAL databases for the unit tests of the SQLite writer's parts
//! (group commit, read anchor, checkpointer).

use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// A connection to `path` in WAL mode (`synchronous` left at SQLite's
/// `FULL`: a commit per `fsync` keeps the writer at a pace the tests'
/// background threads keep up with on a loaded machine).
pub(super) fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn
}

/// `dir/t.db` with a table `t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)`,
/// and the connection that made it (the writer's).
pub(super) fn with_blobs(dir: &Path) -> (PathBuf, Connection) {
    let path = dir.join("t.db");
    let writer = open(&path);
    writer
        .execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        .expect("schema");
    (path, writer)
}
