//! The cost ledger: pricing a call, and writing attempts and results to Postgres in
//! batches (one transaction per batch, see `Store::write_ledger`).

use futures::future::BoxFuture;
use sluice_core::group_commit::{Flush, FlushError};
use sluice_core::store::LedgerEntry;
use sluice_core::Store;
use sluice_schemas::openai::{ChatRequest, Usage};

/// Writes ledger batches.
pub struct LedgerFlush(pub Store);

/// Each entry's answer: `false` for a `Started` entry whose job had already ended, so the
/// job was not claimed and must not run; `true` otherwise.
impl Flush<LedgerEntry> for LedgerFlush {
    type Out = bool;
    fn flush<'a>(
        &'a self,
        items: &'a [LedgerEntry],
    ) -> BoxFuture<'a, Result<Vec<bool>, FlushError>> {
        Box::pin(async move {
            let refused = self.0.write_ledger(items).await.map_err(FlushError::from)?;
            Ok(items
                .iter()
                .map(|entry| match entry {
                    LedgerEntry::Started(s) => !refused.contains(&s.job_id),
                    _ => true,
                })
                .collect())
        })
    }
}

/// Usage for a call whose provider reported none (see [`crate::tokens`]).
pub fn estimate_usage(request: &ChatRequest, completion_text: &str) -> Usage {
    Usage::new(
        crate::tokens::prompt(request),
        crate::tokens::text(completion_text.len()),
    )
}
