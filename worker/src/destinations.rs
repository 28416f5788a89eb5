//! Where a finished job's result may go: the webhook's address checked on what its name
//! resolves to *now* (a name that resolved outward at submit may point inward later), and
//! the reply subject checked again (envelopes published straight to NATS skip the api).
//!
//! Owns the vetting of one delivery. The address rules themselves are
//! `sluice_core::safety`'s, shared with the api; sending and retrying are `webhook.rs`'s.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_core::safety::{self, DestinationError, SafetySettings};

/// How long resolving a webhook host may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves `url`'s host, refuses it if any address it resolves to is not allowed, and
/// returns a client pinned to the vetted addresses (so the connection goes where the
/// check looked), which follows no redirects and ignores proxy settings.
pub async fn vetted_client(
    url: &str,
    s: &SafetySettings,
    timeout: Duration,
) -> Result<reqwest::Client, DestinationError> {
    let parsed = safety::check_webhook_url(url, s)?;
    let host = parsed
        .host_str()
        .ok_or(DestinationError::NotHttp)?
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(RESOLVE_TIMEOUT);
    let builder = if host.parse::<std::net::IpAddr>().is_ok() {
        // An IP literal: `check_webhook_url` has judged it already.
        builder
    } else {
        let addrs: Vec<SocketAddr> = tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        .map_err(|_| DestinationError::Host(host.clone()))?
        .map_err(|_| DestinationError::Host(host.clone()))?
        .collect();
        if addrs.is_empty() {
            return Err(DestinationError::Host(host));
        }
        for a in &addrs {
            safety::check_resolved(&host, a.ip(), s)?;
        }
        builder.resolve_to_addrs(&host, &addrs)
    };
    builder.build().map_err(|_| DestinationError::NotHttp)
}

/// The reply subject, if it may be published to (checked again here: a trusted service
/// can publish envelopes straight to NATS).
pub fn reply_subject<'a>(
    subject: Option<&'a str>,
    prefix: &str,
    s: &SafetySettings,
) -> Option<&'a str> {
    let subject = subject?;
    match safety::check_reply_subject(subject, prefix, s.reply_subject_prefixes.as_deref()) {
        Ok(()) => Some(subject),
        Err(reason) => {
            tracing::warn!(%reason, "reply subject refused; not publishing the result there");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_delivery() {
        let s = SafetySettings::default();
        // `localhost.` with a trailing dot skips the literal-name check and resolves.
        let e = vetted_client("http://localhost.:9/x", &s, Duration::from_secs(1))
            .await
            .err();
        assert!(
            matches!(
                e,
                Some(DestinationError::NotPublic(_)) | Some(DestinationError::Host(_))
            ),
            "{e:?}"
        );
        let open = SafetySettings {
            webhook_allow_private: true,
            ..SafetySettings::default()
        };
        assert!(
            vetted_client("http://127.0.0.1:9/x", &open, Duration::from_secs(1))
                .await
                .is_ok()
        );
    }
}
