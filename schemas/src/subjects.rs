//! Subject and stream names, derived from one configurable prefix.
//!
//! Stream and consumer names derive from the prefix too, so several Sluice installations
//! (or parallel tests) can share one NATS server without colliding.

use uuid::Uuid;

use crate::envelope::Tier;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
    stream_base: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        let stream_base = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        Subjects {
            prefix: prefix.to_string(),
            stream_base,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.jobs.<tier>`
    pub fn jobs(&self, tier: Tier) -> String {
        self.joined(".jobs.", tier.as_str())
    }

    /// `<prefix>.jobs.>`
    pub fn jobs_all(&self) -> String {
        format!("{}.jobs.>", self.prefix)
    }

    /// `<prefix>.events.<job_id>`
    pub fn events(&self, job_id: Uuid) -> String {
        let mut id = Uuid::encode_buffer();
        self.joined(".events.", job_id.hyphenated().encode_lower(&mut id))
    }

    /// `<prefix><middle><last>`, copied into one allocation of its size: these names are
    /// made for every job, and `format!` goes through the formatting machinery (a
    /// `Uuid` as `Display` a piece at a time).
    fn joined(&self, middle: &str, last: &str) -> String {
        let mut name = String::with_capacity(self.prefix.len() + middle.len() + last.len());
        name.push_str(&self.prefix);
        name.push_str(middle);
        name.push_str(last);
        name
    }

    /// `<prefix>.events.>`
    pub fn events_all(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// `<prefix>.cancel.<job_id>`: core NATS notice that a job was cancelled.
    pub fn cancel(&self, job_id: Uuid) -> String {
        format!("{}.cancel.{}", self.prefix, job_id)
    }

    /// `<prefix>.cancel.>`
    pub fn cancel_all(&self) -> String {
        format!("{}.cancel.>", self.prefix)
    }

    /// `<prefix>.dlq`
    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.prefix)
    }

    /// `SLUICE_JOBS` for the default prefix.
    pub fn jobs_stream(&self) -> String {
        format!("{}_JOBS", self.stream_base)
    }

    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.stream_base)
    }

    /// `<prefix>.workers.heartbeat`: core NATS (no stream), each worker's periodic
    /// [`crate::ops::WorkerHeartbeat`], so the API can say which workers it has seen.
    pub fn worker_heartbeat(&self) -> String {
        format!("{}.workers.heartbeat", self.prefix)
    }

    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.stream_base)
    }

    /// Durable pull consumer of one tier, shared by every worker.
    pub fn tier_consumer(&self, tier: Tier) -> String {
        format!(
            "{}_{}",
            self.stream_base.to_ascii_lowercase(),
            tier.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefix_gives_design_names() {
        let s = Subjects::new("sluice");
        assert_eq!(s.jobs(Tier::High), "sluice.jobs.high");
        assert_eq!(s.jobs_stream(), "SLUICE_JOBS");
        assert_eq!(s.events_stream(), "SLUICE_EVENTS");
        assert_eq!(s.dlq(), "sluice.dlq");
        assert_eq!(s.tier_consumer(Tier::Low), "sluice_low");
        assert_eq!(s.worker_heartbeat(), "sluice.workers.heartbeat");
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(s.events(id), format!("sluice.events.{id}"));
    }

    #[test]
    fn dotted_prefix_gives_valid_stream_names() {
        let s = Subjects::new("t.42");
        assert_eq!(s.jobs_stream(), "T_42_JOBS");
        assert_eq!(s.jobs_all(), "t.42.jobs.>");
    }
}
