//! [`Route`]: where a job is in its model group and fallback chain, and the rule that
//! decides what a failed attempt leads to ([`Next`]). Fallback order: the class's own
//! fallbacks (`context_window_fallbacks`, `content_policy_fallbacks`), the job's own
//! `fallbacks`, the group's `fallbacks`, `fallbacks["*"]`, then `default_fallbacks`; no
//! group is used twice and `max_fallbacks` bounds the hops.

use std::sync::Arc;

use sluice_core::config::Deployment;
use sluice_schemas::ErrorClass;

use crate::retry::Schedule;
use crate::Ctx;

/// The deployments of the current group a job may use (`job/eligible.rs`).
#[derive(Debug)]
pub(super) enum Pool {
    /// Not worked out yet for this group.
    Unknown,
    /// Every deployment of the group (no wildcard, tag or context rule applies): nothing
    /// is copied.
    All,
    /// Only these.
    Only(Vec<Arc<Deployment>>),
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// No other deployment or group can help: the job fails.
    Stop,
    /// Try the group again (another deployment first, if one is left).
    Retry,
    /// Move on to the next fallback group.
    Hop,
}

/// Where a job is in its model group and fallback chain.
pub(super) struct Route<'a> {
    ctx: &'a Ctx,
    /// Groups used so far, the requested one first (no group is used twice).
    visited: Vec<String>,
    /// The job's own fallbacks (`fallbacks` in the request), if any.
    own: Option<Vec<String>>,
    disabled: bool,
    /// The model name the job asked for (a wildcard group fills it into its deployments).
    requested: String,
    /// The deployments of the current group this job may use, once worked out.
    pub(super) pool: Pool,
    /// Deployments of the current group tried so far.
    pub(super) tried: Vec<Arc<Deployment>>,
    /// Retries in the current group.
    pub(super) retries: u32,
    /// The waits between those retries.
    pub(super) schedule: Schedule,
}

impl<'a> Route<'a> {
    pub(super) fn new(ctx: &'a Ctx, group: &str, own: Option<Vec<String>>, disabled: bool) -> Self {
        Route {
            ctx,
            visited: vec![ctx.config.resolve_group(group).to_string()],
            own,
            disabled,
            requested: group.to_string(),
            pool: Pool::Unknown,
            tried: Vec::new(),
            retries: 0,
            schedule: Schedule::new(),
        }
    }

    pub(super) fn group(&self) -> &str {
        self.visited.last().map(String::as_str).unwrap_or_default()
    }

    /// What the `*`s of the current group stand for, when it is the wildcard group the
    /// job's model name fell under (`openai/*` for `openai/gpt-4o`: `["gpt-4o"]`).
    pub(super) fn captures(&self) -> Option<Vec<&str>> {
        let group = self.group();
        if self.visited.len() != 1 || !group.contains('*') {
            return None;
        }
        sluice_core::config::wildcard::captures(group, &self.requested)
    }

    /// Moves to the next fallback group for a failure of `class` (None: the group is
    /// unavailable). Returns false when there is none left (or fallbacks are off).
    pub(super) fn hop(&mut self, class: Option<ErrorClass>) -> bool {
        let r = &self.ctx.config.router;
        if self.disabled || self.visited.len() as u32 > r.max_fallbacks {
            return false;
        }
        let origin = self.visited[0].clone();
        let current = self.group().to_string();
        let specific = match class {
            Some(ErrorClass::ContextWindow) => Some(&r.context_window_fallbacks),
            Some(ErrorClass::ContentPolicy) => Some(&r.content_policy_fallbacks),
            _ => None,
        };
        let mut lists: Vec<&[String]> = Vec::new();
        if let Some(map) = specific {
            for g in [&origin, &current] {
                if let Some(l) = map.get(g) {
                    lists.push(l);
                }
            }
        }
        if let Some(own) = &self.own {
            lists.push(own);
        }
        for g in [&origin, &current] {
            if let Some(l) = r.fallbacks.get(g) {
                lists.push(l);
            }
        }
        if let Some(l) = r.fallbacks.get("*") {
            lists.push(l);
        }
        lists.push(&r.default_fallbacks);
        let next = lists
            .iter()
            .flat_map(|l| l.iter())
            .map(|g| self.ctx.config.resolve_group(g).to_string())
            .find(|g| !self.visited.contains(g) && self.ctx.router.has_group(g));
        match next {
            Some(g) => {
                tracing::info!(from = %current, to = %g, "falling back");
                self.visited.push(g);
                self.pool = Pool::Unknown;
                self.tried.clear();
                self.retries = 0;
                self.schedule = Schedule::new();
                true
            }
            None => false,
        }
    }

    /// The rule after a failure of `class`: stop, retry within the group (while its
    /// retries last), or hop to a fallback group.
    pub(super) fn next(&self, class: ErrorClass) -> Next {
        let config = &self.ctx.config;
        let group_size = self.size();
        match class {
            // The request itself is wrong: no other deployment or group can help.
            ErrorClass::BadRequest | ErrorClass::NotFound | ErrorClass::Internal => Next::Stop,
            ErrorClass::Auth if group_size <= 1 => Next::Stop,
            // A bigger context or a different policy lives in another group.
            ErrorClass::ContextWindow | ErrorClass::ContentPolicy => Next::Hop,
            class
                if self.retries
                    < config
                        .router
                        .retries_in(self.group(), class, config.num_retries) =>
            {
                Next::Retry
            }
            _ => Next::Hop,
        }
    }

    /// Whether a deployment of the current group is still untried.
    pub(super) fn other_left(&self) -> bool {
        self.tried.len() < self.size()
    }

    /// Deployments of the current group this job may use.
    fn size(&self) -> usize {
        match &self.pool {
            Pool::Only(pool) => pool.len(),
            Pool::All | Pool::Unknown => self.ctx.router.size(self.group()),
        }
    }
}
