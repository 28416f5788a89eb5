//! A reservation held by a job, which settles itself when the job lets go of it without
//! settling: the job was cancelled, handed back at the drain's hard stop, or its task
//! panicked. Its leases are released at once instead of when they expire, and a call that
//! was already made is charged its estimate (the provider may bill it).

use tokio_util::task::TaskTracker;

use super::{Actual, Estimate, Limiter, Reservation};

pub struct Held {
    limiter: Limiter,
    tracker: TaskTracker,
    reservation: Option<Reservation>,
    estimate: Estimate,
    called: bool,
}

impl Held {
    /// Holds `reservation`, admitted with `estimate`; a settlement on drop runs on
    /// `tracker`.
    pub fn new(
        limiter: &Limiter,
        tracker: &TaskTracker,
        reservation: Reservation,
        estimate: Estimate,
    ) -> Held {
        Held {
            limiter: limiter.clone(),
            tracker: tracker.clone(),
            reservation: Some(reservation),
            estimate,
            called: false,
        }
    }

    /// When the limits counted the call (Redis time), if Redis was asked.
    pub fn admitted_at_ms(&self) -> Option<i64> {
        self.reservation.as_ref().and_then(|r| r.admitted_at_ms)
    }

    /// What the call was admitted with.
    pub fn estimate(&self) -> Estimate {
        self.estimate
    }

    /// The provider call is about to be made: from now on, letting go charges it.
    pub fn calling(&mut self) {
        self.called = true;
    }

    /// Takes the reservation to settle it with the call's outcome.
    pub fn take(mut self) -> Option<Reservation> {
        self.reservation.take()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let actual = if self.called {
            Actual {
                tokens: self.estimate.tokens,
                cost: self.estimate.cost,
            }
        } else {
            Actual {
                tokens: 0,
                cost: 0.0,
            }
        };
        let limiter = self.limiter.clone();
        self.tracker
            .spawn(async move { limiter.release(reservation, actual).await });
    }
}
