//! Which deployments of a model group a job may use, decided once per group before any
//! call (the pipeline's `Run::pool` walks the fallback chain with these):
//!
//! - a wildcard group's deployments (`model: openai/*`) call the model the job named;
//! - tag routing (`router_settings.enable_tag_filtering`): a tagged job goes to the
//!   deployments sharing a tag (all of its tags with `tag_filtering_match_any: false`) or
//!   whose `tag_regex` matches one of the job's header lines (`User-Agent: <value>`),
//!   else to those tagged `default`; a job with neither tags nor a header line some
//!   `tag_regex` could match goes to the `default` ones if there are any, else anywhere.
//!   With `tag_filtering_match_any: false`, a deployment with tags of its own is chosen by
//!   its tags only (a pattern cannot get round them), as in LiteLLM;
//! - the pre-call check (`router_settings.enable_pre_call_checks`): deployments whose
//!   context window (`context.rs`) cannot hold the prompt are skipped.

use std::sync::Arc;

use serde_json::{Map, Value};
use sluice_core::config::{Deployment, RouterSettings};
use sluice_schemas::openai::ChatRequest;

/// The tags a job asks for: the request's `tags` (taken out of the request, since no
/// provider takes it) and its `metadata.tags`, as LiteLLM reads them.
pub(super) fn job_tags(
    request: &mut ChatRequest,
    metadata: Option<&Map<String, Value>>,
) -> Vec<String> {
    let mut tags = Vec::new();
    let mut add = |v: Option<&Value>| {
        for t in v.and_then(Value::as_array).into_iter().flatten() {
            if let Some(t) = t.as_str() {
                if !tags.iter().any(|have| have == t) {
                    tags.push(t.to_string());
                }
            }
        }
    };
    add(request.extra.remove("tags").as_ref());
    add(metadata.and_then(|m| m.get("tags")));
    tags
}

/// The header lines a job's `tag_regex` patterns are matched against: its
/// `User-Agent: <value>`, when the api sent it along.
pub(super) fn header_lines(user_agent: Option<&str>) -> Vec<String> {
    user_agent
        .map(|ua| vec![format!("User-Agent: {ua}")])
        .unwrap_or_default()
}

/// The deployments of `all` a job with `tags` and header lines `headers` may use; `None`
/// when it asked for tags (or sent a header line) no deployment matches and none is
/// tagged `default`.
pub(crate) fn by_tags(
    all: Vec<Arc<Deployment>>,
    tags: &[String],
    headers: &[String],
    router: &RouterSettings,
) -> Option<Vec<Arc<Deployment>>> {
    if !router.tag_filtering {
        return Some(all);
    }
    let is_default = |d: &Deployment| d.tags.iter().any(|t| t == "default");
    let by_regex = !headers.is_empty() && all.iter().any(|d| !d.tag_regex.is_empty());
    if tags.is_empty() && !by_regex {
        if all.iter().any(|d| is_default(d)) {
            return Some(all.into_iter().filter(|d| is_default(d)).collect());
        }
        return Some(all);
    }
    let fits = |d: &Deployment| {
        let by_tags = !tags.is_empty()
            && !d.tags.is_empty()
            && if router.tag_match_any {
                tags.iter().any(|t| d.tags.contains(t))
            } else {
                tags.iter().all(|t| d.tags.contains(t))
            };
        let strict = !router.tag_match_any && !d.tags.is_empty();
        by_tags
            || (!strict
                && d.tag_regex
                    .iter()
                    .any(|r| headers.iter().any(|h| r.is_match(h))))
    };
    let (matched, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|d| fits(d));
    if !matched.is_empty() {
        return Some(matched);
    }
    let defaults: Vec<_> = rest.into_iter().filter(|d| is_default(d)).collect();
    (!defaults.is_empty()).then_some(defaults)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Config;

    fn deployments(yaml: &str) -> (Config, Vec<Arc<Deployment>>) {
        let c = Config::from_yaml(yaml, None, &|_: &str| None).unwrap();
        let all = c.deployments.iter().cloned().map(Arc::new).collect();
        (c, all)
    }

    fn ids(list: Option<Vec<Arc<Deployment>>>) -> Option<Vec<String>> {
        list.map(|l| l.iter().map(|d| d.id.clone()).collect())
    }

    #[test]
    fn tagged_jobs_go_to_their_tags_then_to_default() {
        let (c, all) = deployments(
            "model_list:
  - {model_name: g, litellm_params: {model: openai/a, tags: [paid, eu]}, model_info: {id: paid}}
  - {model_name: g, litellm_params: {model: openai/b, tags: [free]}, model_info: {id: free}}
  - {model_name: g, litellm_params: {model: openai/c, tags: [default]}, model_info: {id: dflt}}
router_settings: {enable_tag_filtering: true}
",
        );
        let t = |tags: &[&str]| tags.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ids(by_tags(all.clone(), &t(&["paid"]), &[], &c.router)).unwrap(),
            ["paid"]
        );
        assert_eq!(
            ids(by_tags(all.clone(), &t(&["free", "eu"]), &[], &c.router)).unwrap(),
            ["paid", "free"]
        );
        assert_eq!(
            ids(by_tags(all.clone(), &t(&["gpu"]), &[], &c.router)).unwrap(),
            ["dflt"]
        );
        assert_eq!(
            ids(by_tags(all.clone(), &[], &[], &c.router)).unwrap(),
            ["dflt"]
        );
        let mut all_of = c.router.clone();
        all_of.tag_match_any = false;
        assert_eq!(
            ids(by_tags(all.clone(), &t(&["paid", "eu"]), &[], &all_of)).unwrap(),
            ["paid"]
        );
        assert_eq!(
            ids(by_tags(all.clone(), &t(&["free", "eu"]), &[], &all_of)).unwrap(),
            ["dflt"]
        );
        let mut off = c.router.clone();
        off.tag_filtering = false;
        assert_eq!(
            ids(by_tags(all, &t(&["paid"]), &[], &off)).unwrap().len(),
            3
        );
    }

    #[test]
    fn unmatched_tags_without_a_default_leave_nothing() {
        let (c, all) = deployments(
            "model_list:
  - {model_name: g, litellm_params: {model: openai/a, tags: [paid]}, model_info: {id: paid}}
  - {model_name: g, litellm_params: {model: openai/b}, model_info: {id: plain}}
router_settings: {enable_tag_filtering: true}
",
        );
        assert!(by_tags(all.clone(), &["gpu".to_string()], &[], &c.router).is_none());
        assert_eq!(
            ids(by_tags(all, &[], &[], &c.router)).unwrap().len(),
            2,
            "untagged: anywhere"
        );
    }

    #[test]
    fn a_user_agent_matching_tag_regex_routes_like_a_tag() {
        let (c, all) = deployments(
            "model_list:
  - {model_name: g, litellm_params: {model: openai/a, tag_regex: ['^User-Agent: claude-code/']}, model_info: {id: code}}
  - {model_name: g, litellm_params: {model: openai/b, tags: [paid]}, model_info: {id: paid}}
  - {model_name: g, litellm_params: {model: openai/c, tags: [default]}, model_info: {id: dflt}}
router_settings: {enable_tag_filtering: true}
",
        );
        let ua = |v: &str| header_lines(Some(v));
        let code = ua("claude-code/1.0.3");
        assert_eq!(
            ids(by_tags(all.clone(), &[], &code, &c.router)).unwrap(),
            ["code"]
        );
        assert_eq!(
            ids(by_tags(all.clone(), &["paid".into()], &code, &c.router)).unwrap(),
            ["code", "paid"],
            "a tag or a pattern"
        );
        let other = ua("curl/8.0");
        assert_eq!(
            ids(by_tags(all.clone(), &[], &other, &c.router)).unwrap(),
            ["dflt"]
        );
        assert_eq!(
            ids(by_tags(all.clone(), &[], &[], &c.router)).unwrap(),
            ["dflt"]
        );
        let mut off = c.router.clone();
        off.tag_filtering = false;
        assert_eq!(ids(by_tags(all, &[], &code, &off)).unwrap().len(), 3);
    }

    #[test]
    fn tags_come_from_the_request_and_its_metadata_and_leave_the_request() {
        let mut r: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "g", "messages": [], "tags": ["a", "b"]
        }))
        .unwrap();
        let meta: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"tags": ["b", "c"], "other": 1})).unwrap();
        assert_eq!(job_tags(&mut r, Some(&meta)), ["a", "b", "c"]);
        assert!(!r.extra.contains_key("tags"));
    }
}
