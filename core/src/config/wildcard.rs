//! Wildcard model groups (LiteLLM's `model_name: "openai/*"`, `"*"`): which pattern a
//! requested model name falls under, and what the pattern's `*`s stood for, so a
//! deployment written `model: openai/*` calls the model that was asked for.
//!
//! A pattern matches the whole name; `*` matches any run of characters (including none).
//! Exact group names always win over patterns, and among patterns the most specific one
//! (the longest, then the one with fewer `*`s) wins.

/// What each `*` of `pattern` matched in `name`, in order; `None` if `name` does not match.
pub fn captures<'n>(pattern: &str, name: &'n str) -> Option<Vec<&'n str>> {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let mut rest = name.strip_prefix(first)?;
    let middle: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle.split_last() else {
        // No `*`: an exact name.
        return rest.is_empty().then(Vec::new);
    };
    let mut out = Vec::with_capacity(middle.len() + 1);
    for part in middle {
        let at = rest.find(part)?;
        out.push(&rest[..at]);
        rest = &rest[at + part.len()..];
    }
    let tail = rest.strip_suffix(last)?;
    out.push(tail);
    Some(out)
}

/// `template` (a deployment's model, e.g. `gpt-*` or `*`) with its `*`s replaced by
/// `caps` in order; a template without `*` stays as it is.
pub fn fill(template: &str, caps: &[&str]) -> String {
    let mut out =
        String::with_capacity(template.len() + caps.iter().map(|c| c.len()).sum::<usize>());
    let mut caps = caps.iter();
    let mut pieces = template.split('*').peekable();
    while let Some(piece) = pieces.next() {
        out.push_str(piece);
        if pieces.peek().is_some() {
            out.push_str(caps.next().copied().unwrap_or_default());
        }
    }
    out
}

/// The most specific pattern among `patterns` that `name` matches.
pub fn best<'p, I>(patterns: I, name: &str) -> Option<&'p str>
where
    I: IntoIterator<Item = &'p str>,
{
    patterns
        .into_iter()
        .filter(|p| p.contains('*') && captures(p, name).is_some())
        .max_by_key(|p| (p.len(), std::cmp::Reverse(p.matches('*').count())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_capture_what_they_stand_for() {
        assert_eq!(captures("openai/*", "openai/gpt-4o"), Some(vec!["gpt-4o"]));
        assert_eq!(
            captures("*", "anything/at all"),
            Some(vec!["anything/at all"])
        );
        assert_eq!(captures("openai/*", "anthropic/claude"), None);
        assert_eq!(captures("gpt-*-mini", "gpt-4o-mini"), Some(vec!["4o"]));
        assert_eq!(
            captures("gpt-*-mini", "gpt-4o-mini-2024"),
            None,
            "whole name"
        );
        assert_eq!(captures("a*b*c", "aXbYc"), Some(vec!["X", "Y"]));
        assert_eq!(captures("exact", "exact"), Some(vec![]));
        assert_eq!(captures("exact", "exactly"), None);
        assert_eq!(fill("*", &["gpt-4o"]), "gpt-4o");
        assert_eq!(fill("gpt-*-mini", &["4o"]), "gpt-4o-mini");
        assert_eq!(fill("plain", &["x"]), "plain");
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let patterns = ["*", "openai/*", "openai/gpt-*", "exact"];
        assert_eq!(best(patterns, "openai/gpt-4o"), Some("openai/gpt-*"));
        assert_eq!(best(patterns, "openai/o3"), Some("openai/*"));
        assert_eq!(best(patterns, "mistral/x"), Some("*"));
        assert_eq!(best(["openai/*"], "gemini/x"), None);
        assert_eq!(
            best(["exact"], "exact"),
            None,
            "exact names are not patterns"
        );
    }
}
