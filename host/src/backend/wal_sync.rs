//! Keeps the WAL's frames on disk ahead of the checkpoints, from a thread of
//! its own, when commits do not `fsync` (`synchronous = "normal"`).
//!
//! With `"normal"` nothing syncs the WAL until a checkpoint does: every
//! ~1 000 pages the writer's `COMMIT` first `fsync`s the whole 4 MiB the WAL
//! gathered since the last one, then copies it into the database file and
//! syncs that. Every commit of the process waits behind it. Measured at
//! 1 000 orders/s (`syscalls:sys_enter_fsync` tracepoints): the WAL's sync
//! took 3.3 ms at p90, most of a ~5 ms checkpoint, about every 70 ms.
//!
//! This thread `fdatasync`s the WAL file every few milliseconds while it is
//! being written, so the checkpoint's own sync finds little left to write.
//! The checkpoints have since moved to a thread of their own
//! (`checkpointer`), but the writer still runs the catch-up checkpoint that
//! lets the WAL start over, whose sync this keeps short: without this
//! thread, one of 3 paced runs had ORDERED p99 28.9 ms (a 56 ms stall)
//! against 6.2–8.5 ms with it.
//! It takes no SQLite lock and changes no outcome: it only makes frames
//! durable earlier than SQLite asks for.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Result;

use crate::background::Background;

/// How often the WAL is looked at (and synced when it was written) while
/// it is being written.
const EVERY: Duration = Duration::from_millis(5);
/// The longest pause between looks once it stopped being written: an idle
/// host wakes this thread a few times a second, not 200.
const IDLE_EVERY: Duration = Duration::from_millis(200);

/// The syncing thread; it stops when this is dropped.
pub(super) struct WalSync {
    _thread: Background,
}

impl WalSync {
    /// Start syncing `db`'s WAL (`<db>-wal`).
    pub(super) fn start(db: &Path) -> Result<Self> {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let mut wal = Wal::new(PathBuf::from(wal));
        let mut pause = EVERY;
        let thread = Background::start("sqlite-wal-sync", EVERY, move || {
            pause = if wal.sync_if_written() {
                EVERY
            } else {
                (pause * 2).min(IDLE_EVERY)
            };
            pause
        })?;
        Ok(Self { _thread: thread })
    }
}

/// The WAL file as last synced.
struct Wal {
    path: PathBuf,
    open: Option<Synced>,
}

struct Synced {
    file: File,
    ino: u64,
    /// Its modification time when last synced (`None`: not synced yet).
    modified: Option<SystemTime>,
}

impl Wal {
    fn new(path: PathBuf) -> Self {
        Self { path, open: None }
    }

    /// `fdatasync` the WAL if it was written since the last sync; whether
    /// it did. A write within the file system's timestamp granularity of
    /// the last sync may wait for the next write to be synced: the
    /// checkpoint syncs whatever is left anyway.
    fn sync_if_written(&mut self) -> bool {
        // The path's file now: SQLite deletes the WAL when the last
        // connection closes and makes a new one on the next open.
        let Ok(meta) = std::fs::metadata(&self.path) else {
            self.open = None;
            return false;
        };
        if self.open.as_ref().is_none_or(|s| s.ino != meta.ino()) {
            self.open = File::open(&self.path).ok().map(|file| Synced {
                file,
                ino: meta.ino(),
                modified: None,
            });
        }
        let Some(s) = self.open.as_mut() else {
            return false;
        };
        let modified = meta.modified().ok();
        if modified.is_some() && s.modified == modified {
            return false;
        }
        match s.file.sync_data() {
            Ok(()) => {
                s.modified = modified;
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "sqlite WAL sync failed; its checkpoint syncs it anyway");
                self.open = None;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Append to `path` until its modification time differs from `before`
    /// (timestamps are coarse), so a sync can tell it was written.
    fn write_until_modified(path: &Path, before: Option<SystemTime>) {
        for _ in 0..1000 {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .expect("open for append");
            f.write_all(b"frame").expect("append");
            let now = std::fs::metadata(path).expect("stat").modified().ok();
            if now != before {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the modification time of {} never changed", path.display());
    }

    #[test]
    fn syncs_only_what_was_written_since_and_follows_a_new_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db-wal");
        let mut wal = Wal::new(path.clone());
        assert!(!wal.sync_if_written(), "no WAL yet: nothing to sync");

        write_until_modified(&path, None);
        assert!(wal.sync_if_written(), "a new WAL is synced");
        assert!(!wal.sync_if_written(), "unchanged since: not synced again");

        let synced = std::fs::metadata(&path).expect("stat").modified().ok();
        write_until_modified(&path, synced);
        assert!(wal.sync_if_written(), "written since: synced again");

        // SQLite deletes the WAL when its last connection closes, and the
        // next open makes a new file: that one is synced, not the old.
        // (Moved aside rather than deleted, so its inode is not reused.)
        let old = wal.open.as_ref().map(|s| s.ino).expect("open");
        std::fs::rename(&path, dir.path().join("old-wal")).expect("move aside");
        assert!(!wal.sync_if_written(), "no WAL: nothing to sync");
        write_until_modified(&path, None);
        assert!(wal.sync_if_written(), "the new WAL is synced");
        let new = wal.open.as_ref().map(|s| s.ino).expect("open");
        assert_ne!(old, new, "premise: the new WAL is another file");
    }
}
