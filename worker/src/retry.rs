//! How long to wait before the next attempt (LiteLLM's rule).
//!
//! No wait when another deployment of the group is still untried; otherwise the
//! provider's `Retry-After` when it is sane (≤ 60 s), else `min(0.5·2^n, 8) s` with
//! 0.75–1.0 jitter.

use std::time::Duration;

use rand::Rng;

const MAX_HONOURED_RETRY_AFTER: Duration = Duration::from_secs(60);

pub fn delay(
    retry_index: u32,
    retry_after: Option<Duration>,
    other_deployment_left: bool,
) -> Duration {
    if other_deployment_left {
        return Duration::ZERO;
    }
    if let Some(ra) = retry_after.filter(|d| !d.is_zero() && *d <= MAX_HONOURED_RETRY_AFTER) {
        return ra;
    }
    let base = (0.5 * 2f64.powi(retry_index.min(16) as i32)).min(8.0);
    let jitter = rand::rng().random_range(0.75..=1.0);
    Duration::from_secs_f64(base * jitter)
}

/// The wait before delivery try `n + 1` of a job's end (webhook, reply): the same
/// doubling as calls, with 0.75–1.0 jitter, up to five minutes, since a receiver may be
/// down for a while.
pub fn delivery_delay(n: u32) -> Duration {
    let base = (0.5 * 2f64.powi(n.min(16) as i32)).min(300.0);
    let jitter = rand::rng().random_range(0.75..=1.0);
    Duration::from_secs_f64(base * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_rules() {
        assert_eq!(delay(3, Some(Duration::from_secs(5)), true), Duration::ZERO);
        assert_eq!(
            delay(0, Some(Duration::from_secs(5)), false),
            Duration::from_secs(5)
        );
        let d = delay(0, Some(Duration::from_secs(600)), false);
        assert!(
            d >= Duration::from_millis(375) && d <= Duration::from_millis(500),
            "{d:?}"
        );
        let d = delay(10, None, false);
        assert!(
            d >= Duration::from_secs(6) && d <= Duration::from_secs(8),
            "{d:?}"
        );
    }
}
