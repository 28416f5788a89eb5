//! Routing: which deployment of a model group serves the next attempt.
//!
//! `simple-shuffle` within the lowest `order` tier, weighted by `weight`; a retry prefers
//! a deployment not yet tried.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use sluice_core::config::{Config, Deployment, RoutingStrategy};

#[derive(Clone)]
pub struct Router {
    groups: Arc<HashMap<String, Vec<Arc<Deployment>>>>,
    /// `cost-based-routing`: cheapest first instead of a weighted shuffle.
    by_price: bool,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let mut groups: HashMap<String, Vec<Arc<Deployment>>> = HashMap::new();
        for d in &config.deployments {
            groups
                .entry(d.group.clone())
                .or_default()
                .push(Arc::new(d.clone()));
        }
        for list in groups.values_mut() {
            list.sort_by_key(|d| d.order);
        }
        Router {
            groups: Arc::new(groups),
            by_price: config.router.strategy == RoutingStrategy::CostBased,
        }
    }

    pub fn has_group(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Deployments in `group`.
    pub fn size(&self, group: &str) -> usize {
        self.groups.get(group).map(Vec::len).unwrap_or(0)
    }

    /// Every deployment of `group`.
    pub fn deployments(&self, group: &str) -> &[Arc<Deployment>] {
        self.groups
            .get(group)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Deployments of `group` in the order to try them (see [`Router::order`]).
    pub fn candidates(&self, group: &str, tried: &[Arc<Deployment>]) -> Vec<Arc<Deployment>> {
        self.order(self.deployments(group), tried)
    }

    /// `all` (the deployments a job may use in one group) in the order to try them:
    /// untried ones first (all of them once every one was tried), lower `order` first,
    /// and within one `order` a weighted shuffle. Admission takes the first one whose
    /// limits allow the call.
    pub fn order(
        &self,
        all: &[Arc<Deployment>],
        tried: &[Arc<Deployment>],
    ) -> Vec<Arc<Deployment>> {
        let untried: Vec<&Arc<Deployment>> = all
            .iter()
            .filter(|d| !tried.iter().any(|t| t.id == d.id))
            .collect();
        let mut pool: Vec<&Arc<Deployment>> = if untried.is_empty() {
            all.iter().collect()
        } else {
            untried
        };
        if self.by_price {
            // Cheapest first within each `order`; unknown prices last.
            let price = |d: &Deployment| match (d.input_cost_per_token, d.output_cost_per_token) {
                (Some(i), Some(o)) => Some(i + o),
                _ => None,
            };
            pool.sort_by_key(|d| (d.order, price(d).is_none(), price(d)));
            return pool.into_iter().cloned().collect();
        }
        let mut out = Vec::with_capacity(pool.len());
        let mut rng = rand::rng();
        while !pool.is_empty() {
            let best_order = pool.iter().map(|d| d.order).min().unwrap_or(0);
            let total: u64 = pool
                .iter()
                .filter(|d| d.order == best_order)
                .map(|d| u64::from(d.weight.max(1)))
                .sum();
            let mut roll = rng.random_range(0..total.max(1));
            let mut chosen = 0;
            for (i, d) in pool.iter().enumerate() {
                if d.order != best_order {
                    continue;
                }
                let w = u64::from(d.weight.max(1));
                chosen = i;
                if roll < w {
                    break;
                }
                roll -= w;
            }
            out.push(Arc::clone(pool.remove(chosen)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_yaml(yaml, None, &|_: &str| None).unwrap()
    }

    #[test]
    fn lower_order_first_and_retries_prefer_untried() {
        let c = config(
            "model_list:
  - {model_name: g, litellm_params: {model: openai/a, api_base: 'http://x/v1', order: 2}, model_info: {id: a}}
  - {model_name: g, litellm_params: {model: openai/b, api_base: 'http://x/v1', order: 1}, model_info: {id: b}}
",
        );
        let r = Router::new(&c);
        let first = r.candidates("g", &[])[0].clone();
        assert_eq!(first.id, "b");
        let second = r.candidates("g", std::slice::from_ref(&first))[0].clone();
        assert_eq!(second.id, "a");
        let third = r.candidates("g", &[first, second])[0].clone();
        assert_eq!(third.id, "b");
        assert!(r.candidates("nope", &[]).is_empty());
        let order: Vec<String> = r
            .candidates("g", &[])
            .iter()
            .map(|d| d.id.clone())
            .collect();
        assert_eq!(order, ["b", "a"]);
    }

    #[test]
    fn cost_based_routing_tries_the_cheapest_first() {
        let c = config(
            "model_list:
  - {model_name: g, litellm_params: {model: openai/a, api_base: 'http://x/v1', input_cost_per_token: 0.00001, output_cost_per_token: 0.00003}, model_info: {id: dear}}
  - {model_name: g, litellm_params: {model: openai/b, api_base: 'http://x/v1'}, model_info: {id: unknown}}
  - {model_name: g, litellm_params: {model: openai/c, api_base: 'http://x/v1', input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}, model_info: {id: cheap}}
router_settings: {routing_strategy: cost-based-routing}
",
        );
        let r = Router::new(&c);
        let order: Vec<String> = r
            .candidates("g", &[])
            .iter()
            .map(|d| d.id.clone())
            .collect();
        assert_eq!(order, ["cheap", "dear", "unknown"]);
    }

    #[test]
    fn weights_shape_the_first_candidate() {
        let c = config(
            "model_list:
  - {model_name: g, litellm_params: {model: openai/a, api_base: 'http://x/v1', weight: 3}, model_info: {id: a}}
  - {model_name: g, litellm_params: {model: openai/b, api_base: 'http://x/v1', weight: 1}, model_info: {id: b}}
",
        );
        let r = Router::new(&c);
        let firsts = (0..4000)
            .filter(|_| r.candidates("g", &[])[0].id == "a")
            .count();
        // Expect 3000 of 4000; 6 sigma is about 165.
        assert!((2835..=3165).contains(&firsts), "{firsts}");
        assert_eq!(r.candidates("g", &[]).len(), 2);
    }
}
