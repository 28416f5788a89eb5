//! The Redis admission scripts against a real Redis: exactness across several limiters
//! (each with its own connections, as separate workers would have), settlement, leases.

use std::time::Duration;

use anyhow::Result;
use sluice_testkit::{services, unique};
use sluice_worker::limits::{Actual, Admission, Candidate, Estimate, Health, Kind, Limiter, Scope};

fn limiter(prefix: &str) -> Result<Limiter> {
    let pool = sluice_core::redis::pool(&services().redis_url, 8)?;
    Ok(Limiter::new(pool, prefix, false))
}

fn candidate(scopes: Vec<Scope>, tokens: u64, cost: f64) -> Candidate {
    Candidate {
        deployment: "d".into(),
        order: 0,
        cooldowns: false,
        scopes,
        estimate: Estimate { tokens, cost },
    }
}

const MINUTE: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_admits_exactly_the_limit_across_three_limiters() -> Result<()> {
    let prefix = unique("rl");
    let limiters = [limiter(&prefix)?, limiter(&prefix)?, limiter(&prefix)?];
    let c = vec![candidate(
        vec![Scope::new(Kind::Rpm, "dep:a", 50.0, MINUTE)],
        10,
        0.0,
    )];
    let attempts = (0..200).map(|i| {
        let l = limiters[i % 3].clone();
        let c = c.clone();
        async move { l.admit(None, &c, LEASE).await }
    });
    let results = futures::future::join_all(attempts).await;
    let admitted = results
        .iter()
        .filter(|r| matches!(r, Admission::Admitted { .. }))
        .count();
    assert_eq!(admitted, 50);
    for r in &results {
        match r {
            Admission::Admitted { .. } => {}
            Admission::Wait { after, limit, .. } => {
                assert!(
                    *after > Duration::from_secs(55) && *after <= MINUTE,
                    "{after:?}"
                );
                assert_eq!(limit, "dep:a rpm");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_reserves_estimates_and_settlement_returns_unused_tokens() -> Result<()> {
    let l = limiter(&unique("rl"))?;
    let c = vec![candidate(
        vec![Scope::new(Kind::Tpm, "dep:t", 1000.0, MINUTE)],
        300,
        0.0,
    )];
    let mut held = Vec::new();
    for _ in 0..3 {
        match l.admit(None, &c, LEASE).await {
            Admission::Admitted { reservation, .. } => held.push(reservation),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        matches!(l.admit(None, &c, LEASE).await, Admission::Wait { .. }),
        "900 + 300 > 1000"
    );
    // The calls used 100 tokens each: 300 in the window, room for two more estimates.
    for r in held {
        l.settle(
            r,
            Actual {
                tokens: 100,
                cost: 0.0,
            },
            Health::success(),
        )
        .await;
    }
    assert!(matches!(
        l.admit(None, &c, LEASE).await,
        Admission::Admitted { .. }
    ));
    assert!(matches!(
        l.admit(None, &c, LEASE).await,
        Admission::Admitted { .. }
    ));
    assert!(matches!(
        l.admit(None, &c, LEASE).await,
        Admission::Wait { .. }
    ));
    // An estimate above the limit can never fit.
    let huge = vec![candidate(
        vec![Scope::new(Kind::Tpm, "dep:t", 1000.0, MINUTE)],
        5000,
        0.0,
    )];
    assert!(matches!(
        l.admit(None, &huge, LEASE).await,
        Admission::TooLarge { .. }
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_leases_are_released_by_settlement_or_expire_on_their_own() -> Result<()> {
    let l = limiter(&unique("rl"))?;
    let c = vec![candidate(
        vec![Scope::new(Kind::Parallel, "dep:p", 2.0, MINUTE)],
        1,
        0.0,
    )];
    let short = Duration::from_millis(400);
    let Admission::Admitted {
        reservation: first, ..
    } = l.admit(None, &c, short).await
    else {
        panic!()
    };
    let Admission::Admitted { .. } = l.admit(None, &c, short).await else {
        panic!()
    };
    assert!(matches!(
        l.admit(None, &c, short).await,
        Admission::Wait { .. }
    ));
    l.settle(
        first,
        Actual {
            tokens: 0,
            cost: 0.0,
        },
        Health::success(),
    )
    .await;
    let Admission::Admitted { .. } = l.admit(None, &c, short).await else {
        panic!("settled slot is free")
    };
    assert!(matches!(
        l.admit(None, &c, short).await,
        Admission::Wait { .. }
    ));
    // A crashed holder never settles: its lease runs out.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let Admission::Admitted { .. } = l.admit(None, &c, short).await else {
        panic!("expired leases are free")
    };
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_counts_reserved_and_spent_money() -> Result<()> {
    let l = limiter(&unique("rl"))?;
    let day = Duration::from_secs(86_400);
    let c = vec![candidate(
        vec![Scope::new(Kind::Budget, "key:k1", 1.0, day)],
        1,
        0.4,
    )];
    let Admission::Admitted { reservation: a, .. } = l.admit(None, &c, LEASE).await else {
        panic!()
    };
    let Admission::Admitted { reservation: b, .. } = l.admit(None, &c, LEASE).await else {
        panic!()
    };
    assert!(
        matches!(l.admit(None, &c, LEASE).await, Admission::Wait { .. }),
        "0.8 reserved + 0.4 > 1"
    );
    l.settle(
        a,
        Actual {
            tokens: 0,
            cost: 0.3,
        },
        Health::success(),
    )
    .await;
    l.settle(
        b,
        Actual {
            tokens: 0,
            cost: 0.3,
        },
        Health::success(),
    )
    .await;
    // 0.6 spent + 0.4 estimate = 1.0 fits; then the budget is exhausted for the period.
    let Admission::Admitted {
        reservation: c1, ..
    } = l.admit(None, &c, LEASE).await
    else {
        panic!()
    };
    l.settle(
        c1,
        Actual {
            tokens: 0,
            cost: 0.35,
        },
        Health::success(),
    )
    .await;
    match l.admit(None, &c, LEASE).await {
        Admission::Wait { after, limit, .. } => {
            assert!(
                after > Duration::from_secs(86_000),
                "waits for the period to end: {after:?}"
            );
            assert_eq!(limit, "key:k1 bud");
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_candidate_that_fits_is_admitted() -> Result<()> {
    let l = limiter(&unique("rl"))?;
    let a = candidate(vec![Scope::new(Kind::Rpm, "dep:a", 1.0, MINUTE)], 1, 0.0);
    let b = candidate(vec![Scope::new(Kind::Rpm, "dep:b", 1.0, MINUTE)], 1, 0.0);
    let both = vec![a.clone(), b.clone()];
    assert!(matches!(
        l.admit(None, &both, LEASE).await,
        Admission::Admitted { index: 0, .. }
    ));
    assert!(matches!(
        l.admit(None, &both, LEASE).await,
        Admission::Admitted { index: 1, .. }
    ));
    assert!(matches!(
        l.admit(None, &both, LEASE).await,
        Admission::Wait { .. }
    ));
    // No limits at all: admitted without asking Redis.
    let free = vec![candidate(vec![], 1, 0.0)];
    assert!(matches!(
        l.admit(None, &free, LEASE).await,
        Admission::Admitted { index: 0, .. }
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_closed_or_open_as_configured() -> Result<()> {
    let port = sluice_testkit::servers::free_port();
    let dead = sluice_core::redis::pool(&format!("redis://127.0.0.1:{port}"), 2)?;
    let c = vec![candidate(
        vec![Scope::new(Kind::Rpm, "dep:a", 1.0, MINUTE)],
        1,
        0.0,
    )];
    let closed = Limiter::new(dead.clone(), "x", false);
    assert!(matches!(
        closed.admit(None, &c, LEASE).await,
        Admission::Unavailable(_)
    ));
    let open = Limiter::new(dead, "x", true);
    assert!(matches!(
        open.admit(None, &c, LEASE).await,
        Admission::Admitted { .. }
    ));
    Ok(())
}

fn deployment(id: &str, order: u32) -> Candidate {
    Candidate {
        deployment: id.into(),
        order,
        cooldowns: true,
        scopes: vec![],
        estimate: Estimate {
            tokens: 1,
            cost: 0.0,
        },
    }
}

fn failure(cool_now: Duration, counts: bool) -> Health {
    Health {
        ok: false,
        latency: Duration::from_millis(5),
        ttft: None,
        cool_now,
        counts_as_failure: counts,
        allowed_fails: 2,
        cooldown: Duration::from_millis(700),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_cools_a_deployment_for_every_limiter_and_cooldowns_only_extend() -> Result<()> {
    let prefix = unique("cd");
    let (one, other) = (limiter(&prefix)?, limiter(&prefix)?);
    let only_a = vec![deployment("a", 0)];
    let both = vec![deployment("a", 0), deployment("b", 1)];
    let Admission::Admitted {
        reservation: r1, ..
    } = one.admit(None, &only_a, LEASE).await
    else {
        panic!()
    };
    let Admission::Admitted {
        reservation: r2, ..
    } = one.admit(None, &only_a, LEASE).await
    else {
        panic!()
    };
    let none = Actual {
        tokens: 0,
        cost: 0.0,
    };
    one.settle(r1, none, failure(Duration::from_millis(800), false))
        .await;
    // A later, shorter cooldown does not shorten the first.
    one.settle(r2, none, failure(Duration::from_millis(100), false))
        .await;
    // The other limiter (another worker) skips `a` while it cools and takes `b`.
    let Admission::Admitted { index: 1, .. } = other.admit(None, &both, LEASE).await else {
        panic!("b serves")
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    match other.admit(None, &only_a, LEASE).await {
        Admission::Wait {
            after,
            cooling: true,
            limit,
        } => {
            assert!(
                after > Duration::from_millis(400) && after <= Duration::from_millis(600),
                "{after:?}"
            );
            assert_eq!(limit, "cooldown");
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(650)).await;
    let Admission::Admitted { index: 0, .. } = one.admit(None, &both, LEASE).await else {
        panic!("a is back")
    };
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_allowed_fails_in_a_minute_cools_a_deployment_down() -> Result<()> {
    let l = limiter(&unique("cd"))?;
    let only = vec![deployment("x", 0)];
    for _ in 0..2 {
        let Admission::Admitted { reservation, .. } = l.admit(None, &only, LEASE).await else {
            panic!()
        };
        l.settle(
            reservation,
            Actual {
                tokens: 0,
                cost: 0.0,
            },
            failure(Duration::ZERO, true),
        )
        .await;
    }
    // Two failures are allowed; the third puts it in cooldown for 700 ms.
    let Admission::Admitted { reservation, .. } = l.admit(None, &only, LEASE).await else {
        panic!("still allowed")
    };
    l.settle(
        reservation,
        Actual {
            tokens: 0,
            cost: 0.0,
        },
        failure(Duration::ZERO, true),
    )
    .await;
    assert!(matches!(
        l.admit(None, &only, LEASE).await,
        Admission::Wait { cooling: true, .. }
    ));
    Ok(())
}
