//! Budgets as Redis counts them: which budgets a call's cost counts against, their Redis
//! keys, and the charge step (`charge.lua`) that adds real spend to them.
//!
//! Two paths spend money: a live call, settled by the worker (`worker/src/limits/`), and a
//! native batch result, written by the api's batch driver (`api/src/native.rs`). Both
//! name their budgets with [`provider_budgets`] and [`key_budget`] and charge through
//! [`CHARGE_LUA`], so a budget sees native spend exactly as it sees live spend. The
//! Postgres ledger stays the truth: counters Redis lost are rebuilt from it
//! (`core/src/store/budget_ledger.rs`, `worker/src/limits/seed.lua`), native attempts included.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::Script;
use rust_decimal::prelude::ToPrimitive;

use crate::config::{parse_period, ProviderBudget};
use crate::keys::KeyRecord;
use crate::redis::{unavailable, Pool, RedisError};

/// The Lua function `charge_spent(spent, mark, amount, period_ms)`: the one charge step.
/// Scripts that charge begin with it.
pub const CHARGE_LUA: &str = include_str!("charge.lua");

/// A key budget without `budget_duration` never resets (LiteLLM): a long period.
const FOREVER: Duration = Duration::from_secs(3650 * 86_400);

/// One USD budget on one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// `provider:<name>` or `key:<id>`.
    pub subject: String,
    /// USD per period.
    pub limit: f64,
    /// The period runs from its first charge.
    pub period: Duration,
}

/// The budgets of calls to `provider` (`router_settings.provider_budget_config`).
pub fn provider_budgets<'a>(
    provider: &'a str,
    budgets: &'a [ProviderBudget],
) -> impl Iterator<Item = Budget> + 'a {
    budgets
        .iter()
        .filter(move |b| b.provider == provider)
        .map(|b| Budget {
            subject: format!("provider:{}", b.provider),
            limit: b.budget_limit,
            period: b.period,
        })
}

/// The budget of a virtual key's jobs (`max_budget` per `budget_duration`), if it has one.
pub fn key_budget(k: &KeyRecord) -> Option<Budget> {
    let limit = k.max_budget.and_then(|b| b.to_f64())?;
    let period = k
        .budget_duration
        .as_deref()
        .and_then(parse_period)
        .unwrap_or(FOREVER);
    Some(Budget {
        subject: format!("key:{}", k.id),
        limit,
        period,
    })
}

/// The hash tag every limit key of `prefix` (`sluice.subject_prefix`) shares, so a script
/// touching several is valid on Redis Cluster.
pub fn tag(prefix: &str) -> String {
    format!("{{{prefix}}}")
}

/// The Redis keys of a budget on `subject` under `tag` ([`tag`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetKeys {
    /// Reservations of calls in flight by lease end (zset).
    pub lease: String,
    /// Reserved USD per reservation, and `_reserved` (hash).
    pub amounts: String,
    /// USD spent in the current period; expires with it (string).
    pub spent: String,
    /// Present while Redis holds the budget's counters; no expiry.
    pub seeded: String,
}

impl BudgetKeys {
    pub fn new(tag: &str, subject: &str) -> BudgetKeys {
        let base = format!("{tag}:bud:{subject}");
        BudgetKeys {
            lease: format!("{base}:lease"),
            amounts: format!("{base}:amt"),
            spent: format!("{base}:spent"),
            seeded: format!("{base}:seeded"),
        }
    }
}

/// Spend to charge, summed per budget.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Charges {
    /// Subject → (period, USD).
    by_subject: BTreeMap<String, (Duration, f64)>,
}

impl Charges {
    /// Adds `usd` to `budget`'s charge; nothing for a cost of zero or less.
    pub fn add(&mut self, budget: &Budget, usd: f64) {
        if usd > 0.0 && usd.is_finite() {
            let entry = self
                .by_subject
                .entry(budget.subject.clone())
                .or_insert((budget.period, 0.0));
            entry.1 += usd;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_subject.is_empty()
    }

    /// USD charged to `subject` so far.
    pub fn usd(&self, subject: &str) -> f64 {
        self.by_subject.get(subject).map_or(0.0, |(_, usd)| *usd)
    }

    /// Charges every budget in one round trip, through [`CHARGE_LUA`] as the worker's
    /// settlement does.
    pub async fn charge(&self, pool: &Pool, prefix: &str) -> Result<(), RedisError> {
        if self.is_empty() {
            return Ok(());
        }
        let script = Script::new(&format!("{CHARGE_LUA}\n{}", include_str!("charge_all.lua")));
        let tag = tag(prefix);
        let mut inv = script.prepare_invoke();
        for (subject, (period, usd)) in &self.by_subject {
            let keys = BudgetKeys::new(&tag, subject);
            inv.key(keys.spent)
                .key(keys.seeded)
                .arg(*usd)
                .arg(period.as_millis() as u64);
        }
        let mut conn = Box::pin(pool.get()).await.map_err(unavailable)?;
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_sum_per_budget_and_skip_nothing_spent() {
        let budgets = [
            ProviderBudget {
                provider: "openai".into(),
                budget_limit: 1.0,
                period: Duration::from_secs(60),
            },
            ProviderBudget {
                provider: "anthropic".into(),
                budget_limit: 2.0,
                period: Duration::from_secs(60),
            },
        ];
        let openai: Vec<Budget> = provider_budgets("openai", &budgets).collect();
        assert_eq!(openai.len(), 1);
        assert_eq!(openai[0].subject, "provider:openai");
        let mut c = Charges::default();
        c.add(&openai[0], 0.25);
        c.add(&openai[0], 0.5);
        c.add(&openai[0], 0.0);
        c.add(&openai[0], f64::NAN);
        assert_eq!(c.usd("provider:openai"), 0.75);
        assert_eq!(c.usd("provider:anthropic"), 0.0);
        assert_eq!(
            BudgetKeys::new(&tag("sluice"), "provider:openai").spent,
            "{sluice}:bud:provider:openai:spent"
        );
    }
}
