//! One serving host per SQLite data directory. The embedded backend's
//! wake-ups, crash detection and dispatchers assume they are the only
//! writer's process: a second host started on the same directory (a second
//! `cargo xtask serve` with another `--listen`) would deliver every event a
//! second time beside the first and take it for a crashed predecessor.
//! Several hosts share state through Redis instead.
//!
//! The lock is an advisory `flock` on `<data>/serve.lock`, held for the
//! serving host's life: the kernel releases it when the process dies, so a
//! host killed by SIGKILL never leaves a stale lock behind. The file holds
//! the holder's pid for the refusal message. Commands that only read or
//! queue (`sktarbucks dead-letters`, `replay`) do not take it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "serve.lock";

/// Held while a host serves from a data directory; released on drop.
#[derive(Debug)]
pub struct DataLock {
    _file: File,
}

impl DataLock {
    /// Take the directory `dir` (created when missing), or explain who has it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create the data directory {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "pid unknown".to_owned(),
                    pid => format!("pid {pid}"),
                };
                bail!(
                    "the data directory {} is in use by another sktarbucks host ({holder}); \
                     one host serves a SQLite directory: stop it, give this one another \
                     --data, or run several hosts on Redis (--redis)",
                    dir.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("failed to lock {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("failed to write {}", path.display()))?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let first = DataLock::acquire(&data).expect("the first host takes it");
        assert!(data.join(LOCK_FILE).is_file(), "the lock file exists");
        let err = DataLock::acquire(&data).expect_err("a second host is refused");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("in use by another sktarbucks host")
                && msg.contains(&format!("pid {}", std::process::id())),
            "the refusal names the holder: {msg}"
        );
        drop(first);
        let _again = DataLock::acquire(&data).expect("free again once the first let go");
        let written = std::fs::read_to_string(data.join(LOCK_FILE)).expect("lock file readable");
        assert_eq!(written.trim(), std::process::id().to_string());
    }
}
