//! Group commit: many callers' rows written in one statement.
//!
//! A single task owns the writes. It takes whatever has queued up while the previous
//! flush ran (up to `max_batch`), flushes it, and answers each caller. An idle system
//! pays no delay; a busy one amortises one round trip over many rows. A failed flush is
//! retried with backoff for a bounded time before its callers get the error. A batch the
//! database refuses for what one row holds (a [`FlushError::permanent`] error) is written
//! again row by row at once: the bad row fails alone and fast, the others succeed. A
//! writer whose rows do not order one another may run a few flushes at once
//! ([`Batcher::spawn_overlapping`]).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("the {0} writer has stopped")]
    Closed(&'static str),
    #[error("{writer} write failed: {message}")]
    Failed {
        writer: &'static str,
        message: String,
    },
}

/// Why a flush failed, and whether trying the same rows again could help.
#[derive(Debug, Clone)]
pub struct FlushError {
    pub message: String,
    /// The rows themselves were refused (bad data, a constraint): retrying them as they
    /// are cannot succeed.
    pub permanent: bool,
}

impl From<String> for FlushError {
    /// A failure that may pass (connection, timeout): retried.
    fn from(message: String) -> Self {
        FlushError {
            message,
            permanent: false,
        }
    }
}

/// What a batch writer does with one batch: one output per input, in order.
pub trait Flush<T>: Send + Sync + 'static {
    type Out: Send + 'static;
    fn flush<'a>(&'a self, items: &'a [T]) -> BoxFuture<'a, Result<Vec<Self::Out>, FlushError>>;
}

struct Item<T, R> {
    value: T,
    reply: Option<oneshot::Sender<Result<R, BatchError>>>,
}

/// Handle to a batch writer task. Cloning is cheap; the task ends when every handle is
/// dropped, after flushing what is queued.
pub struct Batcher<T, R> {
    name: &'static str,
    tx: mpsc::Sender<Item<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Batcher {
            name: self.name,
            tx: self.tx.clone(),
        }
    }
}

/// How long a failing flush is retried before its callers are told.
const RETRY_FOR: Duration = Duration::from_secs(30);

impl<T: Send + Sync + 'static, R: Send + 'static> Batcher<T, R> {
    /// A writer that flushes one batch at a time: a batch is written only after the one
    /// before it (what a writer whose rows order one another needs).
    pub fn spawn<F: Flush<T, Out = R>>(
        name: &'static str,
        max_batch: usize,
        tracker: &TaskTracker,
        flush: F,
    ) -> Self {
        Self::spawn_overlapping(name, max_batch, 1, tracker, flush)
    }

    /// A writer with up to `in_flight` flushes running at once, for rows that do not order
    /// one another: a new batch starts while earlier ones wait for their commit, so a
    /// caller waits about one flush instead of the rest of the running one and then its
    /// own. `in_flight` 1 is [`Batcher::spawn`].
    pub fn spawn_overlapping<F: Flush<T, Out = R>>(
        name: &'static str,
        max_batch: usize,
        in_flight: usize,
        tracker: &TaskTracker,
        flush: F,
    ) -> Self {
        let (tx, rx) = mpsc::channel(max_batch * 4);
        tracker.spawn(run(name, max_batch, in_flight.max(1), rx, Arc::new(flush)));
        Batcher { name, tx }
    }

    /// Queues `value` and waits until it is durably written.
    pub async fn write(&self, value: T) -> Result<R, BatchError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Item {
                value,
                reply: Some(reply),
            })
            .await
            .map_err(|_| BatchError::Closed(self.name))?;
        rx.await.map_err(|_| BatchError::Closed(self.name))?
    }

    /// Queues `value` without waiting for the write (still bounded: waits for room).
    pub async fn send(&self, value: T) -> Result<(), BatchError> {
        self.tx
            .send(Item { value, reply: None })
            .await
            .map_err(|_| BatchError::Closed(self.name))
    }
}

async fn run<T: Send + Sync, F: Flush<T>>(
    name: &'static str,
    max_batch: usize,
    in_flight: usize,
    mut rx: mpsc::Receiver<Item<T, F::Out>>,
    flush: Arc<F>,
) {
    let mut flushing = FuturesUnordered::new();
    let mut open = true;
    loop {
        if !open && flushing.is_empty() {
            return;
        }
        let mut items: Vec<Item<T, F::Out>> = Vec::new();
        tokio::select! {
            biased;
            Some(()) = flushing.next(), if !flushing.is_empty() => {}
            // `recv_many` is cancel safe: nothing is taken when the other branch wins.
            n = rx.recv_many(&mut items, max_batch), if open && flushing.len() < in_flight => {
                if n == 0 {
                    open = false;
                } else {
                    flushing.push(write_batch(name, Arc::clone(&flush), items));
                }
            }
        }
    }
}

/// Writes one batch and answers its callers.
async fn write_batch<T: Send + Sync, F: Flush<T>>(
    name: &'static str,
    flush: Arc<F>,
    items: Vec<Item<T, F::Out>>,
) {
    let mut replies = Vec::with_capacity(items.len());
    let mut values = Vec::with_capacity(items.len());
    for item in items {
        values.push(item.value);
        replies.push(item.reply);
    }
    let outcome = flush_retrying(name, &*flush, &values).await;
    match outcome {
        Ok(outs) => answer(replies, outs.into_iter().map(Ok)),
        Err(e) if e.permanent && values.len() > 1 => {
            // One row spoiled the batch: write each alone, so only that row fails.
            tracing::warn!(writer = name, rows = values.len(), error = %e.message, "batch refused; writing row by row");
            let mut outs = Vec::with_capacity(values.len());
            for value in values.chunks(1) {
                outs.push(
                    flush_retrying(name, &*flush, value)
                        .await
                        .map(|mut out| out.remove(0)),
                );
            }
            answer(
                replies,
                outs.into_iter().map(|r| {
                    r.map_err(|e| BatchError::Failed {
                        writer: name,
                        message: e.message,
                    })
                }),
            );
        }
        Err(e) => {
            tracing::error!(writer = name, error = %e.message, "batch write gave up");
            let failed = (0..replies.len()).map(|_| {
                Err(BatchError::Failed {
                    writer: name,
                    message: e.message.clone(),
                })
            });
            answer(replies, failed.collect::<Vec<_>>());
        }
    }
}

/// Sends each caller its answer.
fn answer<R>(
    replies: Vec<Option<oneshot::Sender<Result<R, BatchError>>>>,
    outs: impl IntoIterator<Item = Result<R, BatchError>>,
) {
    for (reply, out) in replies.into_iter().zip(outs) {
        if let Some(reply) = reply {
            let _ = reply.send(out);
        }
    }
}

/// Flushes `values`, retrying a failure that may pass for up to [`RETRY_FOR`]; a permanent
/// one comes back at once. On success there is exactly one output per value.
async fn flush_retrying<T: Sync, F: Flush<T>>(
    name: &'static str,
    flush: &F,
    values: &[T],
) -> Result<Vec<F::Out>, FlushError> {
    let mut delay = Duration::from_millis(50);
    let started = tokio::time::Instant::now();
    loop {
        match flush.flush(values).await {
            Ok(out) if out.len() == values.len() => return Ok(out),
            Ok(out) => {
                return Err(format!(
                    "flush returned {} results for {} rows",
                    out.len(),
                    values.len()
                )
                .into())
            }
            Err(e) if !e.permanent && started.elapsed() < RETRY_FOR => {
                tracing::warn!(writer = name, rows = values.len(), error = %e.message, "batch write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Doubler {
        calls: Arc<AtomicUsize>,
        fail_first: bool,
    }

    impl Flush<u32> for Doubler {
        type Out = u32;
        fn flush<'a>(&'a self, items: &'a [u32]) -> BoxFuture<'a, Result<Vec<u32>, FlushError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                if self.fail_first && n == 0 {
                    return Err(String::from("boom").into());
                }
                if items.contains(&1013) {
                    return Err(FlushError {
                        message: "1013 is refused".into(),
                        permanent: true,
                    });
                }
                Ok(items.iter().map(|x| x * 2).collect())
            })
        }
    }

    #[tokio::test]
    async fn concurrent_writes_share_flushes_and_each_gets_its_answer() {
        let tracker = TaskTracker::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let b = Batcher::spawn(
            "test",
            64,
            &tracker,
            Doubler {
                calls: calls.clone(),
                fail_first: false,
            },
        );
        let futs: Vec<_> = (0..200u32)
            .map(|i| {
                let b = b.clone();
                async move { (i, b.write(i).await.unwrap()) }
            })
            .collect();
        for (i, out) in futures::future::join_all(futs).await {
            assert_eq!(out, i * 2);
        }
        assert!(
            calls.load(Ordering::SeqCst) < 200,
            "writes were not batched"
        );
        drop(b);
        tracker.close();
        tracker.wait().await;
    }

    /// Counts the flushes running at once; each takes 10 ms.
    struct Slow {
        running: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Flush<u32> for Slow {
        type Out = u32;
        fn flush<'a>(&'a self, items: &'a [u32]) -> BoxFuture<'a, Result<Vec<u32>, FlushError>> {
            Box::pin(async move {
                let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                self.running.fetch_sub(1, Ordering::SeqCst);
                Ok(items.to_vec())
            })
        }
    }

    async fn most_at_once(in_flight: usize) -> usize {
        let tracker = TaskTracker::new();
        let most = Arc::new(AtomicUsize::new(0));
        let b = Batcher::spawn_overlapping(
            "test",
            4,
            in_flight,
            &tracker,
            Slow {
                running: Arc::default(),
                most: most.clone(),
            },
        );
        let futs: Vec<_> = (0..40u32)
            .map(|i| {
                let b = b.clone();
                async move { (i, b.write(i).await.unwrap()) }
            })
            .collect();
        for (i, out) in futures::future::join_all(futs).await {
            assert_eq!(out, i);
        }
        most.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn an_overlapping_writer_runs_up_to_its_flushes_at_once_and_a_plain_one_only_one() {
        assert_eq!(most_at_once(3).await, 3);
        assert_eq!(most_at_once(1).await, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_flush_is_retried() {
        let tracker = TaskTracker::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let b = Batcher::spawn(
            "test",
            8,
            &tracker,
            Doubler {
                calls: calls.clone(),
                fail_first: true,
            },
        );
        assert_eq!(b.write(21).await.unwrap(), 42);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_row_fails_alone_at_once_and_the_rest_of_its_batch_is_written() {
        let tracker = TaskTracker::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let b = Batcher::spawn(
            "test",
            64,
            &tracker,
            Doubler {
                calls: calls.clone(),
                fail_first: false,
            },
        );
        let started = tokio::time::Instant::now();
        let futs: Vec<_> = (1010..1020u32)
            .map(|i| {
                let b = b.clone();
                async move { (i, b.write(i).await) }
            })
            .collect();
        for (i, out) in futures::future::join_all(futs).await {
            match out {
                Ok(v) => assert_eq!(v, i * 2),
                Err(e) => assert_eq!(i, 1013, "{e}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a refused row was retried"
        );
    }
}
