//! The human-readable account of a resolved config (secrets masked) that
//! `sluice config check` prints.

use std::fmt::Write;

use super::{Config, Deployment};

impl Config {
    /// The resolved config, secrets masked, for `sluice config check`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let file = self
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(none)".into());
        let _ = writeln!(out, "config: {file}");
        for g in self.groups() {
            let _ = writeln!(out, "model group {g}");
            for d in self.deployments_of(g) {
                describe_deployment(&mut out, d);
            }
        }
        self.describe_router(&mut out);
        for b in &self.limits.provider_budgets {
            let _ = writeln!(
                out,
                "provider budget: {} ${} per {:?}",
                b.provider, b.budget_limit, b.period
            );
        }
        if !self.ignored_keys.is_empty() {
            let _ = writeln!(out, "not acted on: {}", self.ignored_keys.join(", "));
        }
        out
    }

    /// Routing, retries, cooldowns and fallbacks.
    fn describe_router(&self, out: &mut String) {
        let r = &self.router;
        let _ = writeln!(
            out,
            "routing: {:?}; retries {} (policy {:?}); retry_after {:?}",
            r.strategy, self.num_retries, r.retry_policy, r.retry_after
        );
        let _ = writeln!(
            out,
            "cooldowns: {}",
            if r.disable_cooldowns {
                "disabled".to_string()
            } else {
                format!(
                    "after {} failures a minute or a 429, for {:?} (or Retry-After)",
                    r.allowed_fails, r.cooldown_time
                )
            }
        );
        for (name, map) in [
            ("fallbacks", &r.fallbacks),
            ("context_window_fallbacks", &r.context_window_fallbacks),
            ("content_policy_fallbacks", &r.content_policy_fallbacks),
        ] {
            for (g, to) in map {
                let _ = writeln!(out, "{name}: {g} -> {}", to.join(", "));
            }
        }
        if !r.default_fallbacks.is_empty() {
            let _ = writeln!(out, "default_fallbacks: {}", r.default_fallbacks.join(", "));
        }
        let _ = writeln!(out, "max_fallbacks: {}", r.max_fallbacks);
        for (g, policy) in &r.group_retry_policy {
            let _ = writeln!(out, "retry policy of {g}: {policy:?}");
        }
        if !r.allowed_fails_policy.is_empty() {
            let _ = writeln!(out, "allowed fails per class: {:?}", r.allowed_fails_policy);
        }
        let _ = writeln!(
            out,
            "pre-call context checks: {}; tag filtering: {}",
            if r.pre_call_checks { "on" } else { "off" },
            match (r.tag_filtering, r.tag_match_any) {
                (false, _) => "off",
                (true, true) => "on (any tag)",
                (true, false) => "on (every tag)",
            }
        );
        for (alias, g) in &r.aliases {
            let _ = writeln!(out, "alias: {alias} -> {g}");
        }
    }
}

/// One deployment, on one line.
fn describe_deployment(out: &mut String, d: &Deployment) {
    let price = match (d.input_cost_per_token, d.output_cost_per_token) {
        (Some(i), Some(o)) => format!("${i}/${o} per token"),
        _ => "no price".into(),
    };
    let key = d
        .api_key
        .as_ref()
        .map(|k| k.to_string())
        .unwrap_or_else(|| "no key".into());
    let limits: Vec<String> = [
        d.rpm.map(|n| format!("rpm {n}")),
        d.tpm.map(|n| format!("tpm {n}")),
        d.max_parallel_requests.map(|n| format!("parallel {n}")),
        d.max_input_tokens.map(|n| format!("max input tokens {n}")),
        (!d.tags.is_empty()).then(|| format!("tags {}", d.tags.join("/"))),
    ]
    .into_iter()
    .flatten()
    .collect();
    let _ = writeln!(
        out,
        "  - {} = {}/{} at {} (key {key}; order {}, weight {}; timeout {:?}; {price}{}{})",
        d.id,
        d.provider,
        d.model,
        d.api_base,
        d.order,
        d.weight,
        d.timeout,
        if limits.is_empty() {
            String::new()
        } else {
            format!("; {}", limits.join(", "))
        },
        d.stream_timeout
            .map(|t| format!("; first token within {t:?}"))
            .unwrap_or_default(),
    );
}
