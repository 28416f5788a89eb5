//! The retry schedules, built on the `backoff` crate (this file is the only one that
//! knows it, so it can be replaced here alone).
//!
//! - [`Schedule`]: waits between provider retries of one job within one model group
//!   (LiteLLM's rule). No wait when another deployment of the group is still untried;
//!   otherwise the provider's `Retry-After` when it is sane (≤ 60 s), else an exponential
//!   backoff from 0.5 s doubling to at most 8 s, each wait drawn from 75–100 % of its
//!   step.
//! - [`delivery_delay`]: the wait before a durable delivery of a job's end (webhook,
//!   reply subject) is tried again: the same doubling, up to five minutes
//!   (`worker/src/deliveries.rs`).
//! - [`CallbackRetry`]: the waits between the tries of one usage-callback batch
//!   (`worker/src/callbacks.rs`): the same doubling up to 4 s, [`CALLBACK_TRIES`] tries
//!   in all.

use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;

const MAX_HONOURED_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The backoff crate jitters symmetrically (`interval · (1 ± r)`): centring each step on
/// 87.5 % of the nominal wait with r = 1/7 draws it from 75–100 % of that wait.
const JITTER_CENTRE: f64 = 0.875;
const JITTER: f64 = 1.0 / 7.0;
/// The first provider retry's nominal wait, and the cap.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(8);

/// The longest wait between two deliveries of a job's end.
const MAX_DELIVERY_WAIT: Duration = Duration::from_secs(300);

/// The waits between the retries of one job in one model group; a fresh one per group
/// (a fallback hop starts over).
#[derive(Debug)]
pub struct Schedule {
    backoff: ExponentialBackoff,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::new()
    }
}

impl Schedule {
    pub fn new() -> Self {
        Schedule {
            backoff: exponential(
                FIRST_RETRY.mul_f64(JITTER_CENTRE),
                MAX_RETRY.mul_f64(JITTER_CENTRE),
                JITTER,
            ),
        }
    }

    /// The wait before the next retry. Every retry takes a step of the schedule, waited
    /// or not.
    pub fn next(&mut self, retry_after: Option<Duration>, other_deployment_left: bool) -> Duration {
        let step = self.backoff.next_backoff().unwrap_or(MAX_RETRY);
        if other_deployment_left {
            return Duration::ZERO;
        }
        if let Some(ra) = retry_after.filter(|d| !d.is_zero() && *d <= MAX_HONOURED_RETRY_AFTER) {
            return ra;
        }
        step
    }
}

/// Doubling from `first` up to `max`, jittered by `randomization`, never giving up.
fn exponential(first: Duration, max: Duration, randomization: f64) -> ExponentialBackoff {
    let mut b = ExponentialBackoff {
        current_interval: first,
        initial_interval: first,
        randomization_factor: randomization,
        multiplier: 2.0,
        max_interval: max,
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    };
    b.reset();
    b
}

/// Tries of one usage-callback batch before it is counted as failed.
pub const CALLBACK_TRIES: u32 = 4;
/// The longest wait between two tries of a callback batch.
const MAX_CALLBACK_WAIT: Duration = Duration::from_secs(4);

/// The waits between the tries of one usage-callback batch: 0.5 s doubling to 4 s (each
/// drawn from 75–100 % of its step), and none after the last of [`CALLBACK_TRIES`].
#[derive(Debug)]
pub struct CallbackRetry {
    backoff: ExponentialBackoff,
    tries: u32,
}

impl Default for CallbackRetry {
    fn default() -> Self {
        CallbackRetry::new()
    }
}

impl CallbackRetry {
    pub fn new() -> Self {
        CallbackRetry {
            backoff: exponential(
                FIRST_RETRY.mul_f64(JITTER_CENTRE),
                MAX_CALLBACK_WAIT.mul_f64(JITTER_CENTRE),
                JITTER,
            ),
            tries: 1,
        }
    }

    /// After a failed try: the wait before the next one, or `None` when the tries are
    /// spent.
    pub fn after_failure(&mut self) -> Option<Duration> {
        if self.tries >= CALLBACK_TRIES {
            return None;
        }
        self.tries += 1;
        Some(self.backoff.next_backoff().unwrap_or(MAX_CALLBACK_WAIT))
    }
}

/// The wait before delivery try `n + 1` of a job's end (webhook, reply): the same
/// doubling as calls, with 0.75–1.0 jitter, up to five minutes, since a receiver may be
/// down for a while.
pub fn delivery_delay(n: u32) -> Duration {
    let mut b = exponential(
        FIRST_RETRY.mul_f64(JITTER_CENTRE),
        MAX_DELIVERY_WAIT.mul_f64(JITTER_CENTRE),
        JITTER,
    );
    // Deliveries are rows shared by every worker, so the schedule is replayed to step n
    // (bounded: the cap is reached long before).
    let mut wait = FIRST_RETRY;
    for _ in 0..=n.min(32) {
        wait = b.next_backoff().unwrap_or(MAX_DELIVERY_WAIT);
    }
    wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_rules() {
        // Another deployment is left: no wait, whatever the provider said.
        assert_eq!(
            Schedule::new().next(Some(Duration::from_secs(5)), true),
            Duration::ZERO
        );
        // A sane Retry-After is honoured.
        assert_eq!(
            Schedule::new().next(Some(Duration::from_secs(5)), false),
            Duration::from_secs(5)
        );
        // An absurd one is not: the first step, 375–500 ms.
        let d = Schedule::new().next(Some(Duration::from_secs(600)), false);
        assert!(
            d >= Duration::from_millis(375) && d <= Duration::from_millis(500),
            "{d:?}"
        );
        // The eleventh retry: capped, 6–8 s.
        let mut s = Schedule::new();
        for _ in 0..10 {
            s.next(None, false);
        }
        let d = s.next(None, false);
        assert!(
            d >= Duration::from_secs(6) && d <= Duration::from_secs(8),
            "{d:?}"
        );
    }

    #[test]
    fn each_step_doubles_within_its_jitter() {
        let mut s = Schedule::new();
        for n in 0..5 {
            let nominal = (0.5 * 2f64.powi(n)).min(8.0);
            let d = s.next(None, false).as_secs_f64();
            assert!(
                d >= nominal * 0.75 - 1e-9 && d <= nominal + 1e-9,
                "step {n}: {d} not in 75-100 % of {nominal}"
            );
        }
    }

    #[test]
    fn a_callback_batch_gets_its_tries_with_doubling_waits_then_none() {
        let mut r = CallbackRetry::new();
        for n in 0..CALLBACK_TRIES - 1 {
            let nominal = (0.5 * 2f64.powi(n as i32)).min(4.0);
            let d = r.after_failure().map(|d| d.as_secs_f64()).unwrap();
            assert!(
                d >= nominal * 0.75 - 1e-9 && d <= nominal + 1e-9,
                "retry {n}: {d} not in 75-100 % of {nominal}"
            );
        }
        assert_eq!(r.after_failure(), None, "{CALLBACK_TRIES} tries in all");
    }

    #[test]
    fn delivery_waits_double_within_their_jitter_up_to_five_minutes() {
        for n in 0..12 {
            let nominal = (0.5 * 2f64.powi(n)).min(300.0);
            let d = delivery_delay(n as u32).as_secs_f64();
            assert!(
                d >= nominal * 0.75 - 1e-9 && d <= nominal + 1e-9,
                "try {n}: {d} not in 75-100 % of {nominal}"
            );
        }
    }
}
