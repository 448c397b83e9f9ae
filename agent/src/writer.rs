//! The single SQLite writer, with group commit.
//!
//! Every write goes through one thread that owns the write connection. It takes every job
//! waiting in its queue, runs each inside its own savepoint (a job that fails rolls back
//! alone), commits them all with one fsync, and only then answers each caller. So a 2xx
//! still means "on disk", while concurrent tills share the cost of the fsync instead of
//! queueing behind one another.

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;
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
        let notify = committed.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, receiver, notify))
            .expect("spawning the writer thread");
        Writer { jobs, committed }
    }

    /// Runs `job` in the next group transaction; resolves once that transaction committed
    /// (or the job's own error, its changes rolled back).
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
        self.jobs.send(boxed).map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }
}

fn writer_loop(conn: Connection, mut jobs: mpsc::UnboundedReceiver<Job>, committed: Arc<Notify>) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    let mut finishes: Vec<Finish> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = jobs.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let outcome = run_group(&conn, &mut group, &mut finishes);
        if let Err(e) = &outcome {
            tracing::error!(error = %e, jobs = finishes.len(), "group commit failed; every job in it is answered with the error");
        }
        for finish in finishes.drain(..) {
            finish(outcome.clone());
        }
        committed.notify_waiters();
    }
}

fn run_group(
    conn: &Connection,
    group: &mut Vec<Job>,
    finishes: &mut Vec<Finish>,
) -> Result<(), String> {
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

    #[tokio::test]
    async fn concurrent_jobs_commit_and_failed_ones_roll_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Writer::start(&dir.path().join("w.db")).unwrap();
        let mut handles = Vec::new();
        for i in 0..200i64 {
            let w = writer.clone();
            handles.push(tokio::spawn(async move {
                w.write(move |conn| {
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES (?1, 'v')",
                        [format!("k{i}")],
                    )
                    .map_err(|e| e.to_string())?;
                    if i % 10 == 0 {
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
        assert_eq!(ok, 180);
        let conn = crate::ledger::open(&dir.path().join("w.db")).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM meta", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 180, "the refused jobs' inserts were rolled back");
    }
}
