//! The SQLite writer: one thread owns the write connection and commits
//! whatever units of work are waiting together, in one transaction and one
//! `fsync` (group commit).
//!
//! Jobs run in arrival order, and later jobs of the group see the writes of
//! earlier ones, so the outcome is exactly that of running them one after
//! another. A job that fails or declines (a version conflict) leaves nothing:
//! - an ordinary job runs inside its own `SAVEPOINT` and is rolled back to it
//!   alone;
//! - a job that checks before its first write (a unit's commit, an
//!   acknowledgement: [`GroupWriter::run_checks_first`]) runs without one,
//!   since a decline or a failed check has nothing to undo. Savepoints were
//!   ~8 % of the instructions of a spread order (callgrind), most of it
//!   SQLite copying pages into the statement journal. If such a job still
//!   ends having changed rows (it failed mid-write: an I/O error), its
//!   writes cannot be undone alone: the whole group is rolled back and every
//!   job of it gets the error.
//!
//! No job's result is handed back before the group's `COMMIT` succeeded; if
//! the commit fails, every job of the group gets the error (nothing of the
//! group was written).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::checkpointer::CatchUp;
use super::read_anchor::ReadAnchor;

/// Most jobs committed together: bounds the time one group holds the lock
/// and the answers it holds back.
const MAX_GROUP: usize = 256;

/// A group of this many jobs or more means heavy load: the next group
/// waits its window for more (see [`gather`]).
const BUSY_GROUP: usize = 3;

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
    /// Whether it runs inside a savepoint of its own (see the module doc).
    fn guarded(&self) -> bool;
}

struct Queued<F, R> {
    run: F,
    reply: oneshot::Sender<Result<R>>,
    guarded: bool,
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

    fn guarded(&self) -> bool {
        self.guarded
    }
}

/// Handle to the writer thread; cheap to share. The thread ends when the
/// last handle is dropped.
pub struct GroupWriter {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl GroupWriter {
    /// Hand `conn` (already configured) to a new writer thread, which runs
    /// `begin` first in every group's transaction, outside any job's
    /// savepoint (a group that cannot run it runs none of its jobs). With
    /// an `anchor`, the thread holds it between groups (see `read_anchor`).
    /// A non-zero `window` is how long a group waits for more jobs after
    /// one of at least [`BUSY_GROUP`] jobs (see [`gather`]). With
    /// `catch_up`, the thread checkpoints between groups when the
    /// checkpointer asks (see `checkpointer`).
    pub fn start(
        conn: Connection,
        mut anchor: Option<ReadAnchor>,
        window: Duration,
        catch_up: Option<CatchUp>,
        begin: impl Fn(&Connection) -> rusqlite::Result<()> + Send + 'static,
    ) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                anchor.iter_mut().for_each(ReadAnchor::hold);
                let mut busy = false;
                while let Ok(first) = queue.recv() {
                    let group = gather(&queue, first, if busy { window } else { Duration::ZERO });
                    busy = group.len() >= BUSY_GROUP;
                    anchor.iter_mut().for_each(ReadAnchor::release);
                    run_group(&conn, &begin, group);
                    if let Some(catch_up) = &catch_up {
                        catch_up.run_if_asked(&conn);
                    }
                    anchor.iter_mut().for_each(ReadAnchor::hold);
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
        self.queue(f, true).await
    }

    /// Like [`run`](Self::run), for an `f` that makes every check before its
    /// first write, so it declines or fails having written nothing: it runs
    /// without a savepoint. Should it fail after writing anyway, the whole
    /// group is rolled back.
    pub async fn run_checks_first<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<(R, bool)> + Send + 'static,
    {
        self.queue(f, false).await
    }

    async fn queue<R, F>(&self, f: F, guarded: bool) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<(R, bool)> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(Queued {
                run: f,
                reply,
                guarded,
            }))
            .map_err(|_| anyhow!("the sqlite writer thread has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow!("the sqlite writer thread has stopped"))?
    }
}

/// The group that starts with `first`: every job already queued, and those
/// arriving within `window` of it (at most [`MAX_GROUP`]).
///
/// A commit costs about the same for one unit as for ten (the transaction,
/// the commit version, and each changed page written to the WAL once: the
/// meta row, the event log's and the documents' last pages, the
/// subscribers' offsets). Without an `fsync` per commit (`synchronous =
/// "normal"`) a commit is quicker than the units that feed it, so groups
/// stay small and every unit pays nearly a whole commit: with 32 clients
/// placing orders as fast as they can, 63 % of the groups were of one job.
/// The writer therefore waits up to `window` for more, but only after a
/// group of at least [`BUSY_GROUP`] jobs, a sign of heavy load (3 % of the
/// groups at a steady 1 000 orders/s, 26 % flat out); a lone unit on an
/// idle host, and most at moderate load, commit at once. With `"full"` the
/// `fsync` is the window already. Measured (`bench --only orders,pipeline
/// --no-redis --rounds 1`, alternating builds): spread orders with
/// `"normal"` 4 466 / 4 388 per second without a window, 6 081 / 4 924 with
/// a 300 µs window after groups of 3+ (README, Benchmarks).
fn gather(
    queue: &mpsc::Receiver<Box<dyn Job>>,
    first: Box<dyn Job>,
    window: Duration,
) -> Vec<Box<dyn Job>> {
    let mut group = vec![first];
    let until = Instant::now() + window;
    while group.len() < MAX_GROUP {
        let next = match queue.try_recv() {
            Ok(job) => Some(job),
            Err(mpsc::TryRecvError::Disconnected) => None,
            Err(mpsc::TryRecvError::Empty) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    None
                } else {
                    queue.recv_timeout(left).ok()
                }
            }
        };
        match next {
            Some(job) => group.push(job),
            None => break,
        }
    }
    group
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

/// One transaction for the whole group; a savepoint per guarded job.
fn run_group(
    conn: &Connection,
    begin: &dyn Fn(&Connection) -> rusqlite::Result<()>,
    group: Vec<Box<dyn Job>>,
) {
    let started = Instant::now();
    let units = group.len();
    // The transaction and the group's own first step, or none of its jobs.
    let opened = exec(conn, "BEGIN IMMEDIATE").and_then(|()| {
        begin(conn).inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })
    });
    if let Err(e) = opened {
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
        let guarded = job.guarded();
        if guarded && let Err(e) = exec(conn, "SAVEPOINT unit") {
            broken = Some(e.to_string());
            job.abort(e.to_string());
            break;
        }
        let changes_before = conn.total_changes();
        let done = job.stage(conn);
        let closed = if !guarded {
            if done.keep || conn.total_changes() == changes_before {
                Ok(())
            } else {
                Err(
                    "a unit failed after its first write; its whole commit group is rolled back"
                        .to_owned(),
                )
            }
        } else if done.keep {
            exec(conn, "RELEASE unit").map_err(|e| e.to_string())
        } else {
            exec(conn, "ROLLBACK TO unit")
                .and_then(|()| exec(conn, "RELEASE unit"))
                .map_err(|e| e.to_string())
        };
        staged.push(done);
        if let Err(reason) = closed {
            broken = Some(reason);
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
        (
            GroupWriter::start(conn, None, Duration::ZERO, None, |_| Ok(())).expect("start"),
            dir,
        )
    }

    fn count(dir: &tempfile::TempDir) -> i64 {
        let conn = Connection::open(dir.path().join("t.db")).expect("open");
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count")
    }

    /// Jobs `i` answered by `i % 3`: 0 kept (its row is there), 1 declined,
    /// 2 failed with an error mentioning `failure`; only kept rows remain.
    async fn assert_thirds(
        tasks: Vec<tokio::task::JoinHandle<Result<usize>>>,
        dir: &tempfile::TempDir,
        failure: &str,
    ) {
        let mut kept = 0;
        for (i, task) in tasks.into_iter().enumerate() {
            let result = task.await.expect("task");
            match i % 3 {
                0 => {
                    assert_eq!(result.expect("kept job"), i);
                    kept += 1;
                }
                1 => assert_eq!(result.expect("declined job answers"), i),
                _ => {
                    let error = result.expect_err("failed job");
                    assert!(error.to_string().contains(failure), "{error:#}");
                }
            }
        }
        assert_eq!(count(dir), kept);
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
        assert_thirds(tasks, &dir, "failed after writing").await;
    }

    /// Jobs that check first and decline or fail before writing run without
    /// savepoints and still leave the rest of their group alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_first_jobs_that_decline_or_fail_before_writing_leave_others_be() {
        let (w, dir) = writer();
        let w = std::sync::Arc::new(w);
        let mut tasks = Vec::new();
        for i in 0..300 {
            let w = std::sync::Arc::clone(&w);
            tasks.push(tokio::spawn(async move {
                w.run_checks_first(move |c| {
                    let taken: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
                    match i % 3 {
                        0 => {
                            c.execute(
                                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                                (format!("k{i}"), taken),
                            )?;
                            Ok((i, true))
                        }
                        1 => Ok((i, false)),
                        _ => Err(anyhow!("job {i} failed its check")),
                    }
                })
                .await
            }));
        }
        assert_thirds(tasks, &dir, "failed its check").await;
    }

    /// A job without a savepoint that fails after writing takes its whole
    /// group down with it (nothing of the group is kept, every job hears of
    /// it), and the writer goes on with the next group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checks_first_job_failing_mid_write_rolls_back_its_whole_group() {
        use std::future::Future;
        use std::task::Poll;
        let (w, dir) = writer();
        let w = std::sync::Arc::new(w);
        // Hold the writer in a first group while the next one queues up.
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = {
            let w = std::sync::Arc::clone(&w);
            tokio::spawn(async move {
                w.run(move |c| {
                    let _ = started_tx.send(());
                    let _ = released.recv_timeout(Duration::from_secs(30));
                    c.execute("INSERT INTO t (k, v) VALUES ('held', 0)", [])?;
                    Ok(((), true))
                })
                .await
            })
        };
        tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(30)))
            .await
            .expect("join")
            .expect("the first group is running");
        let before = w.run_checks_first(|c| {
            c.execute("INSERT INTO t (k, v) VALUES ('before', 1)", [])?;
            Ok(((), true))
        });
        let failing = w.run_checks_first(|c| {
            c.execute("INSERT INTO t (k, v) VALUES ('partial', 2)", [])?;
            Err::<((), bool), _>(anyhow!("disk gone after the first write"))
        });
        let after = w.run(|c| {
            c.execute("INSERT INTO t (k, v) VALUES ('after', 3)", [])?;
            Ok(((), true))
        });
        let (mut before, mut failing, mut after) =
            (Box::pin(before), Box::pin(failing), Box::pin(after));
        // One poll each queues the three jobs, in this order, behind the held group.
        std::future::poll_fn(|cx| {
            for pending in [
                before.as_mut().poll(cx).is_pending(),
                failing.as_mut().poll(cx).is_pending(),
                after.as_mut().poll(cx).is_pending(),
            ] {
                assert!(pending, "no answer before the group ran");
            }
            Poll::Ready(())
        })
        .await;
        release.send(()).expect("release");
        holder.await.expect("task").expect("the held group commits");
        let before = before.await.expect_err("rolled back with its group");
        assert!(before.to_string().contains("rolled back"), "{before:#}");
        let failing = failing.await.expect_err("its own error");
        assert!(failing.to_string().contains("disk gone"), "{failing:#}");
        let after = after.await.expect_err("never ran");
        assert!(after.to_string().contains("rolled back"), "{after:#}");
        let conn = Connection::open(dir.path().join("t.db")).expect("open");
        let keys: Vec<String> = conn
            .prepare("SELECT k FROM t ORDER BY k")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(keys, ["held"]);
        // The writer is fine afterwards.
        w.run_checks_first(|c| {
            c.execute("INSERT INTO t (k, v) VALUES ('later', 4)", [])?;
            Ok(((), true))
        })
        .await
        .expect("a later group commits");
        assert_eq!(count(&dir), 2);
    }

    /// After a group of [`BUSY_GROUP`] jobs the writer waits up to its
    /// window for more and commits them together; after a smaller group it
    /// commits the next job at once. Groups are counted by `begin`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_load_a_group_waits_its_window_and_alone_it_does_not() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = Connection::open(dir.path().join("t.db")).expect("open");
        let groups = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&groups);
        let w = Arc::new(
            GroupWriter::start(conn, None, Duration::from_secs(1), None, move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .expect("start"),
        );
        let job = |w: &Arc<GroupWriter>, pause: Duration| {
            let w = Arc::clone(w);
            tokio::spawn(async move {
                w.run(move |_| {
                    std::thread::sleep(pause);
                    Ok(((), true))
                })
                .await
            })
        };
        let gap = Duration::from_millis(150);
        // A lone job holds the writer while three more queue: they are the
        // next group, a busy one.
        let slow = job(&w, Duration::from_millis(300));
        tokio::time::sleep(gap).await;
        let queued: Vec<_> = (0..BUSY_GROUP).map(|_| job(&w, Duration::ZERO)).collect();
        slow.await.expect("task").expect("slow job");
        for j in queued {
            j.await.expect("task").expect("queued job");
        }
        assert_eq!(
            groups.load(Ordering::SeqCst),
            2,
            "premise: the queued jobs committed together"
        );
        // Two jobs `gap` apart; how many groups there have been once both
        // are answered.
        let two_apart = || async {
            let first = job(&w, Duration::ZERO);
            tokio::time::sleep(gap).await;
            let second = job(&w, Duration::ZERO);
            first.await.expect("task").expect("first");
            second.await.expect("task").expect("second");
            groups.load(Ordering::SeqCst)
        };
        // Busy: the later job joins the earlier one's group.
        assert_eq!(two_apart().await, 3, "the window gathered the later job");
        // That group had two jobs, too few to wait after: one group each.
        assert_eq!(two_apart().await, 5, "after a small group: no wait");
    }

    /// `begin` runs once per group, outside the jobs' savepoints (a job
    /// rolled back to its savepoint does not undo it); if it fails, the
    /// group's jobs get its error and nothing of them is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_begin_step_runs_once_per_group_outside_the_savepoints() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = Connection::open(dir.path().join("t.db")).expect("open");
        conn.execute_batch(
            "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
             CREATE TABLE groups (n INTEGER NOT NULL); INSERT INTO groups VALUES (0);",
        )
        .expect("schema");
        let w = GroupWriter::start(conn, None, Duration::ZERO, None, |c| {
            let n: i64 = c.query_row("SELECT n FROM groups", [], |r| r.get(0))?;
            if n == 3 {
                return Err(rusqlite::Error::InvalidQuery);
            }
            c.execute("UPDATE groups SET n = n + 1", [])?;
            Ok(())
        })
        .expect("start");
        for (i, keep) in [true, false, true].into_iter().enumerate() {
            // One at a time: each job is a group of its own.
            let got = w
                .run(move |c| {
                    c.execute("INSERT INTO t (k, v) VALUES (?1, 1)", [format!("k{i}")])?;
                    Ok((i, keep))
                })
                .await
                .expect("answer");
            assert_eq!(got, i);
        }
        let refused = w
            .run(|c| {
                Ok((
                    c.execute("INSERT INTO t (k, v) VALUES ('late', 1)", [])?,
                    true,
                ))
            })
            .await
            .expect_err("the fourth group's begin step fails");
        assert!(
            refused.to_string().contains("sqlite transaction failed"),
            "{refused:#}"
        );
        let conn = Connection::open(dir.path().join("t.db")).expect("open");
        let n: i64 = conn
            .query_row("SELECT n FROM groups", [], |r| r.get(0))
            .expect("n");
        assert_eq!(n, 3, "three groups ran, the declined job's included");
        assert_eq!(count(&dir), 2, "k0 and k2; k1 declined, late refused");
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
