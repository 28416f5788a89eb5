//! The cost ledger: pricing a call, and writing attempts and results to Postgres in
//! batches (one transaction per batch, see `Store::write_ledger`).

use futures::future::BoxFuture;
use sluice_core::group_commit::{Flush, FlushError};
use sluice_core::store::{LedgerEntry, Written};
use sluice_core::Store;
use sluice_schemas::openai::{ChatRequest, Usage};

/// Writes ledger batches.
pub struct LedgerFlush(pub Store);

/// Each entry's answer: for a `Started` entry, whether it claimed the job and the attempt
/// number of the call (see [`Written`]).
impl Flush<LedgerEntry> for LedgerFlush {
    type Out = Written;
    fn flush<'a>(
        &'a self,
        items: &'a [LedgerEntry],
    ) -> BoxFuture<'a, Result<Vec<Written>, FlushError>> {
        Box::pin(async move { self.0.write_ledger(items).await.map_err(FlushError::from) })
    }
}

/// Usage for a call whose provider reported none (see [`crate::tokens`]).
pub fn estimate_usage(request: &ChatRequest, completion_text: &str) -> Usage {
    Usage::new(
        crate::tokens::prompt(request),
        crate::tokens::text(completion_text.len()),
    )
}
