//! Group commit: many callers' rows written in one statement.
//!
//! A single task owns the writes. It takes whatever has queued up while the previous
//! flush ran (up to `max_batch`), flushes it, and answers each caller. An idle system
//! pays no delay; a busy one amortises one round trip over many rows. A failed flush is
//! retried with backoff for a bounded time before its callers get the error.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
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

/// What a batch writer does with one batch: one output per input, in order.
pub trait Flush<T>: Send + Sync + 'static {
    type Out: Send + 'static;
    fn flush<'a>(&'a self, items: &'a [T]) -> BoxFuture<'a, Result<Vec<Self::Out>, String>>;
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

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    pub fn spawn<F: Flush<T, Out = R>>(
        name: &'static str,
        max_batch: usize,
        tracker: &TaskTracker,
        flush: F,
    ) -> Self {
        let (tx, rx) = mpsc::channel(max_batch * 4);
        tracker.spawn(run(name, max_batch, rx, Arc::new(flush)));
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

async fn run<T, F: Flush<T>>(
    name: &'static str,
    max_batch: usize,
    mut rx: mpsc::Receiver<Item<T, F::Out>>,
    flush: Arc<F>,
) {
    let mut items: Vec<Item<T, F::Out>> = Vec::with_capacity(max_batch);
    let mut values: Vec<T> = Vec::with_capacity(max_batch);
    loop {
        if rx.recv_many(&mut items, max_batch).await == 0 {
            return;
        }
        let mut replies = Vec::with_capacity(items.len());
        for item in items.drain(..) {
            values.push(item.value);
            replies.push(item.reply);
        }
        let mut delay = Duration::from_millis(50);
        let started = tokio::time::Instant::now();
        let outcome = loop {
            match flush.flush(&values).await {
                Ok(out) if out.len() == values.len() => break Ok(out),
                Ok(out) => {
                    break Err(format!(
                        "flush returned {} results for {} rows",
                        out.len(),
                        values.len()
                    ))
                }
                Err(message) if started.elapsed() < RETRY_FOR => {
                    tracing::warn!(writer = name, rows = values.len(), error = %message, "batch write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(message) => break Err(message),
            }
        };
        values.clear();
        match outcome {
            Ok(outs) => {
                for (reply, out) in replies.into_iter().zip(outs) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(out));
                    }
                }
            }
            Err(message) => {
                tracing::error!(writer = name, error = %message, "batch write gave up");
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(BatchError::Failed {
                        writer: name,
                        message: message.clone(),
                    }));
                }
            }
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
        fn flush<'a>(&'a self, items: &'a [u32]) -> BoxFuture<'a, Result<Vec<u32>, String>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                if self.fail_first && n == 0 {
                    return Err("boom".into());
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
}
