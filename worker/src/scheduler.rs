//! Scheduling: which tier's job takes the next free slot.
//!
//! A worker has `capacity` slots. Each tier has one fetch loop that asks for a slot before
//! it pulls a message, so a worker never holds a message it cannot start (messages wait in
//! JetStream, visible to other workers, not in our buffers). When slots are scarce they
//! are handed to the waiting tiers by smooth weighted round-robin (default 8:4:2:1), so
//! higher tiers go first and lower tiers still move.

use std::sync::{Arc, Mutex};

use sluice_schemas::Tier;
use tokio::sync::oneshot;

/// Default slot weights, highest tier first.
pub const DEFAULT_WEIGHTS: [u32; 4] = [8, 4, 2, 1];

struct State {
    free: usize,
    waiters: [Option<oneshot::Sender<()>>; 4],
    weights: [i64; 4],
    current: [i64; 4],
}

impl State {
    fn any_waiting(&self) -> bool {
        self.waiters.iter().any(Option::is_some)
    }

    /// Smooth weighted round-robin over the tiers that are waiting.
    fn pick(&mut self) -> Option<usize> {
        let mut total = 0;
        let mut best: Option<usize> = None;
        for i in 0..4 {
            if self.waiters[i].is_none() {
                continue;
            }
            self.current[i] += self.weights[i];
            total += self.weights[i];
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

/// The worker's job slots, shared by the tier fetch loops.
pub struct Slots {
    state: Mutex<State>,
    capacity: usize,
}

/// One held slot; freeing it hands it to the next waiting tier.
pub struct Slot {
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release();
    }
}

impl Slots {
    pub fn new(capacity: usize, weights: [u32; 4]) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new(State {
                free: capacity,
                waiters: Default::default(),
                weights: weights.map(|w| i64::from(w.max(1))),
                current: [0; 4],
            }),
            capacity,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots in use.
    pub fn in_use(&self) -> usize {
        self.capacity - self.lock().free
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot for `tier`. One waiter per tier (each tier has one fetch loop).
    /// If this future is dropped after being granted a slot, that slot is lost; fetch
    /// loops are only dropped at shutdown.
    pub async fn acquire(self: &Arc<Self>, tier: Tier) -> Slot {
        let rx = {
            let mut s = self.lock();
            if s.free > 0 && !s.any_waiting() {
                s.free -= 1;
                return Slot {
                    slots: Arc::clone(self),
                };
            }
            let (tx, rx) = oneshot::channel();
            s.waiters[tier.index()] = Some(tx);
            rx
        };
        // The sender lives in `state` until it is used, so this cannot fail while `self`
        // is alive; treat a closed channel as a grant all the same.
        let _ = rx.await;
        Slot {
            slots: Arc::clone(self),
        }
    }

    /// A slot now, if one is free and no tier is waiting for it.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let mut s = self.lock();
        if s.free > 0 && !s.any_waiting() {
            s.free -= 1;
            Some(Slot {
                slots: Arc::clone(self),
            })
        } else {
            None
        }
    }

    fn release(&self) {
        let mut s = self.lock();
        while let Some(i) = s.pick() {
            if let Some(tx) = s.waiters[i].take() {
                if tx.send(()).is_ok() {
                    return;
                }
            }
        }
        s.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn freed_slots_go_to_waiting_tiers_by_weight() {
        let slots = Slots::new(1, DEFAULT_WEIGHTS);
        let held = slots.acquire(Tier::Normal).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for tier in Tier::ALL {
            let slots = slots.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let s = slots.acquire(tier).await;
                    if tx.send((tier, s)).is_err() {
                        return;
                    }
                }
            });
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(held);
        let mut counts = [0usize; 4];
        for _ in 0..150 {
            let (tier, slot) = rx.recv().await.unwrap();
            counts[tier.index()] += 1;
            drop(slot);
        }
        // 8:4:2:1 of 150 = 80:40:20:10 (the first grant may go either way).
        assert!((78..=82).contains(&counts[0]), "{counts:?}");
        assert!((38..=42).contains(&counts[1]), "{counts:?}");
        assert!((18..=22).contains(&counts[2]), "{counts:?}");
        assert!((8..=12).contains(&counts[3]), "{counts:?}");
    }

    #[tokio::test]
    async fn try_acquire_respects_capacity_and_release_returns_slots() {
        let slots = Slots::new(2, DEFAULT_WEIGHTS);
        let a = slots.try_acquire().unwrap();
        let _b = slots.try_acquire().unwrap();
        assert!(slots.try_acquire().is_none());
        assert_eq!(slots.in_use(), 2);
        drop(a);
        assert_eq!(slots.in_use(), 1);
        assert!(slots.try_acquire().is_some());
    }
}
