//! The single SQLite writer, with group commit.
//!
//! Every write goes through the one write connection. A job that finds the writer idle
//! (nothing queued, the connection free) runs at once on the caller's own thread, alone in
//! its transaction: a lone till's request commits without waiting for, or waking, another
//! thread. Otherwise it joins the queue of the writer thread, which takes every job
//! waiting, runs each inside its own savepoint (a job that fails rolls back alone), commits
//! them all with one fsync, and only then answers each caller. Either way a 2xx still means
//! "on disk", while concurrent tills share the cost of the fsync instead of queueing
//! behind one another.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{mpsc, oneshot, Notify};

/// How many queued jobs one transaction takes at most.
const MAX_GROUP: usize = 512;

type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> (bool, Finish) + Send>;

#[derive(Debug, thiserror::Error)]
pub enum WriteError<E> {
    #[error(transparent)]
    Job(E),
    #[error("the database did not commit: {0}")]
    Commit(String),
    #[error("the writer has stopped")]
    Stopped,
}

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::UnboundedSender<Job>,
    /// The write connection: held by whoever runs a transaction, the writer thread or a
    /// caller running its job at once.
    conn: Arc<Mutex<Connection>>,
    /// Jobs sent to the writer thread and not yet taken into a group. A caller runs its
    /// job itself only when this is zero, so it never jumps a queue.
    queued: Arc<AtomicUsize>,
    /// Woken after every commit, so the sync pump sees new rows at once.
    pub committed: Arc<Notify>,
}

impl Writer {
    /// Opens the write connection and starts the writer thread.
    pub fn start(path: &Path) -> rusqlite::Result<Writer> {
        let conn = crate::ledger::open(path)?;
        Ok(Self::start_with(conn))
    }

    pub fn start_with(conn: Connection) -> Writer {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let committed = Arc::new(Notify::new());
        let conn = Arc::new(Mutex::new(conn));
        let queued = Arc::new(AtomicUsize::new(0));
        let (thread_conn, thread_queued, notify) =
            (conn.clone(), queued.clone(), committed.clone());
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(&thread_conn, receiver, &thread_queued, &notify))
            .expect("spawning the writer thread");
        Writer {
            jobs,
            conn,
            queued,
            committed,
        }
    }

    /// Runs `job` in a transaction of its own when the writer is idle, else in the next
    /// group transaction; resolves once that transaction committed (or the job's own
    /// error, its changes rolled back).
    pub async fn write<T, E, F>(&self, job: F) -> Result<T, WriteError<E>>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let boxed: Job = Box::new(move |conn| {
            let result = job(conn);
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |commit| {
                let outcome = match (result, commit) {
                    (Err(e), _) => Err(WriteError::Job(e)),
                    (Ok(_), Err(e)) => Err(WriteError::Commit(e)),
                    (Ok(v), Ok(())) => Ok(v),
                };
                let _ = reply.send(outcome);
            });
            (ok, finish)
        });
        let boxed = match self.run_now(boxed) {
            None => return answer.await.map_err(|_| WriteError::Stopped)?,
            Some(job) => job,
        };
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.jobs.send(boxed).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(WriteError::Stopped);
        }
        answer.await.map_err(|_| WriteError::Stopped)?
    }

    /// Runs `job` on this thread if nothing is queued and the connection is free, and
    /// hands it back otherwise. Only on a multi-threaded runtime, where `block_in_place`
    /// lets the other tasks of this worker move elsewhere while the commit's fsync waits.
    fn run_now(&self, job: Job) -> Option<Job> {
        let multi_thread =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
        if !multi_thread || self.queued.load(Ordering::SeqCst) != 0 {
            return Some(job);
        }
        let Ok(conn) = self.conn.try_lock() else {
            return Some(job);
        };
        tokio::task::block_in_place(|| {
            let mut group = vec![job];
            let mut finishes = Vec::with_capacity(1);
            let outcome = run_group(&conn, &mut group, &mut finishes);
            drop(conn);
            report(outcome, &mut finishes, &self.committed);
        });
        None
    }
}

/// Answers every job of a transaction with its outcome, then wakes the sync pump.
fn report(outcome: Result<(), String>, finishes: &mut Vec<Finish>, committed: &Notify) {
    if let Err(e) = &outcome {
        tracing::error!(error = %e, jobs = finishes.len(), "group commit failed; every job in it is answered with the error");
    }
    for finish in finishes.drain(..) {
        finish(outcome.clone());
    }
    committed.notify_waiters();
}

fn writer_loop(
    conn: &Mutex<Connection>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    queued: &AtomicUsize,
    committed: &Notify,
) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    let mut finishes: Vec<Finish> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = jobs.blocking_recv() {
        // A caller running its own job holds the connection until it has committed.
        let conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        queued.fetch_sub(group.len(), Ordering::SeqCst);
        let outcome = run_group(&conn, &mut group, &mut finishes);
        drop(conn);
        report(outcome, &mut finishes, committed);
    }
}

fn run_group(
    conn: &Connection,
    group: &mut Vec<Job>,
    finishes: &mut Vec<Finish>,
) -> Result<(), String> {
    if !conn.is_autocommit() {
        // A job that panicked left its transaction open: nothing of it was committed.
        let _ = conn.execute_batch("ROLLBACK");
    }
    let begun = conn
        .prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut s| s.execute([]))
        .map_err(|e| e.to_string());
    if let Err(e) = begun {
        // Nothing ran. Dropping a job drops its reply channel, which its caller sees as
        // `WriteError::Stopped`: nothing was written, and it may retry.
        group.clear();
        return Err(e);
    }
    // A job alone in its group needs no savepoint: if it fails, the whole transaction
    // rolls back, which is the same thing and saves two statements on the common path.
    let alone = group.len() == 1;
    for job in group.drain(..) {
        if !alone {
            if let Err(e) = conn
                .prepare_cached("SAVEPOINT job")
                .and_then(|mut s| s.execute([]))
            {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e.to_string());
            }
        }
        let (ok, finish) = job(conn);
        finishes.push(finish);
        if alone {
            if !ok {
                conn.execute_batch("ROLLBACK").map_err(|e| e.to_string())?;
                return Ok(());
            }
            continue;
        }
        let closed = if ok {
            conn.prepare_cached("RELEASE job")
                .and_then(|mut s| s.execute([]))
        } else {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")
                .map(|_| 0)
        };
        if let Err(e) = closed {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.to_string());
        }
    }
    conn.prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            e.to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a multi-threaded runtime a lone job runs on the caller's thread: it commits
    /// durably before `write` returns, and a failing one leaves nothing behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_job_commits_on_the_callers_thread_and_a_failed_one_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let writer = Writer::start(&path).unwrap();
        let caller = std::thread::current().id();
        let ran_on = writer
            .write(|conn| {
                conn.execute("INSERT INTO meta (key, value) VALUES ('a', 'v')", [])?;
                Ok::<_, rusqlite::Error>(std::thread::current().id())
            })
            .await
            .unwrap();
        assert_eq!(ran_on, caller, "nothing queued: the job ran at once, here");
        let refused = writer
            .write(|conn| {
                conn.execute("INSERT INTO meta (key, value) VALUES ('b', 'v')", [])
                    .map_err(|e| e.to_string())?;
                Err::<(), _>("refused".to_string())
            })
            .await;
        assert!(matches!(refused, Err(WriteError::Job(ref e)) if e == "refused"));
        // Read on another connection: what `write` answered is what is on disk.
        let conn = crate::ledger::open(&path).unwrap();
        let keys: Vec<String> = conn
            .prepare("SELECT key FROM meta ORDER BY key")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(keys, ["a"], "the refused job's insert was rolled back");
        assert!(writer.queued.load(Ordering::SeqCst) == 0);
    }

    /// `jobs` callers at once, each inserting its own key, every `refuse_every`-th one
    /// failing after its insert: all are answered, and the failed ones alone roll back.
    async fn concurrent_inserts_commit_or_roll_back_alone(jobs: i64, refuse_every: i64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let writer = Writer::start(&path).unwrap();
        let mut handles = Vec::new();
        for i in 0..jobs {
            let w = writer.clone();
            handles.push(tokio::spawn(async move {
                w.write(move |conn| {
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES (?1, 'v')",
                        [format!("k{i}")],
                    )
                    .map_err(|e| e.to_string())?;
                    if i % refuse_every == 0 {
                        return Err("refused".to_string());
                    }
                    Ok(i)
                })
                .await
            }));
        }
        let mut ok = 0;
        for h in handles {
            if h.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        let kept = (0..jobs).filter(|i| i % refuse_every != 0).count();
        assert_eq!(ok, kept);
        let conn = crate::ledger::open(&path).unwrap();
        let rows: usize = conn
            .query_row("SELECT count(*) FROM meta", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, kept, "the refused jobs' inserts were rolled back");
        assert_eq!(
            writer.queued.load(Ordering::SeqCst),
            0,
            "every queued job was taken"
        );
    }

    /// Some callers run on their own thread, the rest are grouped by the writer thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_on_a_multi_threaded_runtime_all_commit_or_roll_back_alone() {
        concurrent_inserts_commit_or_roll_back_alone(300, 7).await;
    }

    /// On a current-thread runtime (no `block_in_place`) every job goes through the queue.
    #[tokio::test]
    async fn concurrent_jobs_commit_and_failed_ones_roll_back_alone() {
        concurrent_inserts_commit_or_roll_back_alone(200, 10).await;
    }
}
