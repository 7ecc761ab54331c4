//! The SQLite writer: one thread owns the write connection and commits
//! whatever units of work are waiting together, in one transaction and one
//! `fsync` (group commit).
//!
//! Each queued job runs inside its own `SAVEPOINT`, in arrival order: a job
//! that fails or declines (a version conflict) is rolled back to its
//! savepoint alone, and later jobs of the group see the writes of earlier
//! ones, so the outcome is exactly that of running them one after another.
//! No job's result is handed back before the group's `COMMIT` succeeded; if
//! the commit fails, every job of the group gets the error (nothing of the
//! group was written).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use rusqlite::Connection;
use tokio::sync::oneshot;

/// Most jobs committed together: bounds the time one group holds the lock
/// and the answers it holds back.
const MAX_GROUP: usize = 256;

/// What a job left behind in the open transaction: whether to keep its
/// writes, and how to answer once the group's fate is known.
struct Staged {
    keep: bool,
    answer: Box<dyn FnOnce(Result<(), String>) + Send>,
}

/// One unit of work queued for the writer.
trait Job: Send {
    /// Run inside the group's transaction (within the job's savepoint).
    fn stage(self: Box<Self>, conn: &Connection) -> Staged;
    /// The group could not run (the transaction did not open).
    fn abort(self: Box<Self>, reason: String);
}

struct Queued<F, R> {
    run: F,
    reply: oneshot::Sender<Result<R>>,
}

impl<F, R> Job for Queued<F, R>
where
    F: FnOnce(&Connection) -> Result<(R, bool)> + Send + 'static,
    R: Send + 'static,
{
    fn stage(self: Box<Self>, conn: &Connection) -> Staged {
        let reply = self.reply;
        match (self.run)(conn) {
            Ok((result, keep)) => Staged {
                keep,
                answer: Box::new(move |committed| {
                    let _ = reply.send(
                        committed
                            .map(|()| result)
                            .map_err(|e| anyhow!("sqlite commit failed: {e}")),
                    );
                }),
            },
            Err(error) => Staged {
                keep: false,
                answer: Box::new(move |_| {
                    let _ = reply.send(Err(error));
                }),
            },
        }
    }

    fn abort(self: Box<Self>, reason: String) {
        let _ = self
            .reply
            .send(Err(anyhow!("sqlite transaction failed: {reason}")));
    }
}

/// Handle to the writer thread; cheap to share. The thread ends when the
/// last handle is dropped.
pub struct GroupWriter {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl GroupWriter {
    /// Hand `conn` (already configured) to a new writer thread.
    pub fn start(conn: Connection) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match queue.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    run_group(&conn, group);
                }
            })
            .context("failed to start the sqlite writer thread")?;
        Ok(Self { jobs })
    }

    /// Run `f` in the next group: its writes are kept when it returns
    /// `true` (and the group commits), rolled back when `false` or on error.
    pub async fn run<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<(R, bool)> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(Queued { run: f, reply }))
            .map_err(|_| anyhow!("the sqlite writer thread has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow!("the sqlite writer thread has stopped"))?
    }
}

/// Execute one parameterless statement through the statement cache.
pub(super) fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// A group slower than this is logged: every commit of the process waits
/// behind it (a stalled `fsync` or checkpoint shows up here, not as a
/// mystery in request latencies).
const SLOW_GROUP: Duration = Duration::from_millis(100);

/// One transaction for the whole group; a savepoint per job.
fn run_group(conn: &Connection, group: Vec<Box<dyn Job>>) {
    let started = Instant::now();
    let units = group.len();
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        let reason = e.to_string();
        for job in group {
            job.abort(reason.clone());
        }
        return;
    }
    let mut staged = Vec::with_capacity(group.len());
    let mut jobs = group.into_iter();
    let mut broken = None;
    for job in jobs.by_ref() {
        if let Err(e) = exec(conn, "SAVEPOINT unit") {
            broken = Some(e.to_string());
            job.abort(e.to_string());
            break;
        }
        let done = job.stage(conn);
        let closed = if done.keep {
            exec(conn, "RELEASE unit")
        } else {
            exec(conn, "ROLLBACK TO unit").and_then(|()| exec(conn, "RELEASE unit"))
        };
        staged.push(done);
        if let Err(e) = closed {
            broken = Some(e.to_string());
            break;
        }
    }
    let outcome = match broken {
        Some(reason) => {
            for job in jobs {
                job.abort(reason.clone());
            }
            Err(reason)
        }
        None => {
            let committing = Instant::now();
            let committed = exec(conn, "COMMIT").map_err(|e| e.to_string());
            let took = started.elapsed();
            if took >= SLOW_GROUP {
                // COMMIT writes the WAL (`fsync` with synchronous = full) and,
                // every ~1000 pages, checkpoints it into the database file.
                tracing::warn!(
                    db = conn.path().unwrap_or(""),
                    units,
                    total_ms = took.as_millis(),
                    commit_ms = committing.elapsed().as_millis(),
                    "slow sqlite commit group: every commit waited behind it"
                );
            }
            committed
        }
    };
    if outcome.is_err() {
        // Nothing of the group is kept: the transaction is still open after
        // a failed savepoint or COMMIT (or SQLite already rolled it back).
        let _ = conn.execute_batch("ROLLBACK");
    }
    for done in staged {
        (done.answer)(outcome.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (GroupWriter, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = Connection::open(dir.path().join("t.db")).expect("open");
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
            .expect("schema");
        (GroupWriter::start(conn).expect("start"), dir)
    }

    fn count(dir: &tempfile::TempDir) -> i64 {
        let conn = Connection::open(dir.path().join("t.db")).expect("open");
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_declined_or_failed_job_leaves_nothing_and_others_commit() {
        let (w, dir) = writer();
        let w = std::sync::Arc::new(w);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let w = std::sync::Arc::clone(&w);
            tasks.push(tokio::spawn(async move {
                w.run(move |c| {
                    c.execute("INSERT INTO t (k, v) VALUES (?1, 1)", [format!("k{i}")])?;
                    match i % 3 {
                        0 => Ok((i, true)),
                        1 => Ok((i, false)),
                        _ => Err(anyhow!("job {i} failed after writing")),
                    }
                })
                .await
            }));
        }
        let mut kept = 0;
        for (i, task) in tasks.into_iter().enumerate() {
            let result = task.await.expect("task");
            match i % 3 {
                0 => {
                    assert_eq!(result.expect("kept job"), i);
                    kept += 1;
                }
                1 => assert_eq!(result.expect("declined job answers"), i),
                _ => assert!(result.is_err()),
            }
        }
        assert_eq!(count(&dir), kept);
    }

    /// Log lines of the whole test process (the writer logs from its own
    /// thread, so only a global subscriber sees them).
    fn captured() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
        static LOG: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
            std::sync::OnceLock::new();
        LOG.get_or_init(|| {
            let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = std::sync::Arc::clone(&log);
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || Sink(std::sync::Arc::clone(&sink)))
                .try_init()
                .expect("the only global subscriber of this test binary");
            log
        })
        .clone()
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_group_is_logged_and_a_fast_one_is_not() {
        let log = captured();
        let (w, dir) = writer();
        // Other tests' writers log into the same process: ours name our file.
        let ours = dir.path().join("t.db").display().to_string();
        let slow_lines = || {
            String::from_utf8_lossy(&log.lock().unwrap_or_else(|p| p.into_inner()))
                .lines()
                .filter(|l| l.contains("slow sqlite commit group") && l.contains(&ours))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let before = slow_lines().len();
        let asked = Instant::now();
        w.run(|c| {
            Ok((
                c.execute("INSERT INTO t (k, v) VALUES ('fast', 1)", [])?,
                true,
            ))
        })
        .await
        .expect("fast job");
        // (A disk that stalled the fast group past the limit logs it too.)
        if asked.elapsed() < SLOW_GROUP {
            assert_eq!(slow_lines().len(), before, "a fast group is not logged");
        }
        let before = slow_lines().len();
        w.run(|c| {
            std::thread::sleep(SLOW_GROUP + Duration::from_millis(20));
            Ok((
                c.execute("INSERT INTO t (k, v) VALUES ('slow', 1)", [])?,
                true,
            ))
        })
        .await
        .expect("slow job");
        let lines = slow_lines();
        assert_eq!(lines.len(), before + 1, "{lines:?}");
        assert!(lines[before].contains("units=1"), "{lines:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn later_jobs_of_a_group_see_earlier_ones() {
        let (w, dir) = writer();
        let w = std::sync::Arc::new(w);
        // Two jobs insert the same key: exactly one may win, whatever the grouping.
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let w = std::sync::Arc::clone(&w);
            tasks.push(tokio::spawn(async move {
                w.run(|c| {
                    let present: i64 =
                        c.query_row("SELECT count(*) FROM t WHERE k = 'x'", [], |r| r.get(0))?;
                    if present == 0 {
                        c.execute("INSERT INTO t (k, v) VALUES ('x', 1)", [])?;
                        Ok((true, true))
                    } else {
                        Ok((false, false))
                    }
                })
                .await
            }));
        }
        let mut winners = 0;
        for task in tasks {
            if task.await.expect("task").expect("answer") {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
        assert_eq!(count(&dir), 1);
    }
}
