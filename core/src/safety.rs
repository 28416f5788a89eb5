//! Guards against hostile or careless input (`sluice.safety`): where a job may send its
//! result (`reply_subject`, `webhook_url`), and the limits that keep one tenant from
//! stalling the others. Defaults live here, next to the type; `config.rs` only hooks the
//! section in.
//!
//! Owns the checks themselves, as plain functions the api (at submit) and the worker (at
//! delivery, on the resolved address) both call. It does not own HTTP clients or NATS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::Deserialize;

/// Longest `Retry-After` / rate-limit reset a provider can make a job wait (fixed): a
/// provider's bytes cannot park a job for a day, nor overflow a timer.
pub const MAX_PROVIDER_WAIT: Duration = Duration::from_secs(3600);

pub mod defaults {
    /// Concurrent SSE streams (`GET /v1/jobs/{id}/events`, streamed chat) per key.
    pub const MAX_STREAMS_PER_KEY: usize = 64;
    /// Postgres `statement_timeout` on every pool.
    pub const STATEMENT_TIMEOUT_SECS: u64 = 30;
    /// Unknown bearer keys remembered (no database query for them) this long.
    pub const NEGATIVE_KEY_TTL_SECS: u64 = 5;
    /// Largest non-file multipart field of `POST /v1/files`.
    pub const MAX_FORM_FIELD_BYTES: usize = 64 * 1024;
    /// Most bytes one SSE events stream sends.
    pub const MAX_STREAM_BYTES: u64 = 256 * 1024 * 1024;
}

/// `sluice.safety` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSafetySettings {
    webhook_allow_private: Option<bool>,
    webhook_allow_hosts: Option<Vec<String>>,
    reply_subject_prefixes: Option<Vec<String>>,
    max_streams_per_key: Option<usize>,
    statement_timeout_secs: Option<u64>,
    negative_key_ttl_secs: Option<u64>,
    max_form_field_bytes: Option<usize>,
    max_stream_bytes: Option<u64>,
}

/// The guards and their settings.
#[derive(Debug, Clone)]
pub struct SafetySettings {
    /// Lets webhooks reach loopback, private, link-local, CGNAT… addresses (an operator
    /// whose receivers live on the internal network).
    pub webhook_allow_private: bool,
    /// Hosts (exact names or IP literals) webhooks may reach whatever they resolve to.
    pub webhook_allow_hosts: Vec<String>,
    /// When set, a `reply_subject` must start with one of these prefixes.
    pub reply_subject_prefixes: Option<Vec<String>>,
    /// Concurrent event streams per key; 429 beyond.
    pub max_streams_per_key: usize,
    /// `statement_timeout` on every Postgres connection.
    pub statement_timeout: Duration,
    /// How long an unknown bearer key is remembered as unknown.
    pub negative_key_ttl: Duration,
    /// Largest non-file field of a multipart upload.
    pub max_form_field_bytes: usize,
    /// Most bytes one event stream (SSE) sends before it ends.
    pub max_stream_bytes: u64,
}

impl Default for SafetySettings {
    fn default() -> Self {
        SafetySettings {
            webhook_allow_private: false,
            webhook_allow_hosts: Vec::new(),
            reply_subject_prefixes: None,
            max_streams_per_key: defaults::MAX_STREAMS_PER_KEY,
            statement_timeout: Duration::from_secs(defaults::STATEMENT_TIMEOUT_SECS),
            negative_key_ttl: Duration::from_secs(defaults::NEGATIVE_KEY_TTL_SECS),
            max_form_field_bytes: defaults::MAX_FORM_FIELD_BYTES,
            max_stream_bytes: defaults::MAX_STREAM_BYTES,
        }
    }
}

impl RawSafetySettings {
    /// Validates the section; an error names the key (under `sluice.safety`).
    pub fn resolve(&self) -> Result<SafetySettings, (&'static str, String)> {
        let d = SafetySettings::default();
        let positive = |key: &'static str, v: Option<u64>, default: u64| match v {
            Some(0) => Err((key, "must be at least 1".to_string())),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        if let Some(prefixes) = &self.reply_subject_prefixes {
            for p in prefixes {
                if p.is_empty() || p.starts_with('$') || p.contains(['*', '>', ' ', '\t']) {
                    return Err((
                        "sluice.safety.reply_subject_prefixes",
                        format!("{p:?} is not a literal subject prefix"),
                    ));
                }
            }
        }
        Ok(SafetySettings {
            webhook_allow_private: self.webhook_allow_private.unwrap_or(false),
            webhook_allow_hosts: self
                .webhook_allow_hosts
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
                .collect(),
            reply_subject_prefixes: self.reply_subject_prefixes.clone(),
            max_streams_per_key: positive(
                "sluice.safety.max_streams_per_key",
                self.max_streams_per_key.map(|v| v as u64),
                d.max_streams_per_key as u64,
            )? as usize,
            statement_timeout: Duration::from_secs(positive(
                "sluice.safety.statement_timeout_secs",
                self.statement_timeout_secs,
                defaults::STATEMENT_TIMEOUT_SECS,
            )?),
            negative_key_ttl: Duration::from_secs(positive(
                "sluice.safety.negative_key_ttl_secs",
                self.negative_key_ttl_secs,
                defaults::NEGATIVE_KEY_TTL_SECS,
            )?),
            max_form_field_bytes: positive(
                "sluice.safety.max_form_field_bytes",
                self.max_form_field_bytes.map(|v| v as u64),
                d.max_form_field_bytes as u64,
            )? as usize,
            max_stream_bytes: positive(
                "sluice.safety.max_stream_bytes",
                self.max_stream_bytes,
                defaults::MAX_STREAM_BYTES,
            )?,
        })
    }
}

/// Longest subject accepted as a `reply_subject`.
const MAX_SUBJECT_LEN: usize = 256;

/// Checks a job's `reply_subject`: a literal subject (no wildcards, no empty tokens, no
/// whitespace or control characters), not a system subject (`$…`, e.g. `$JS.API.…`), not
/// under Sluice's own `prefix`, and under one of `allowed` when that is set. The error
/// says what is wrong, for a 400 naming the field.
pub fn check_reply_subject(
    subject: &str,
    prefix: &str,
    allowed: Option<&[String]>,
) -> Result<(), String> {
    if subject.is_empty() || subject.len() > MAX_SUBJECT_LEN {
        return Err(format!(
            "`reply_subject` must be 1 to {MAX_SUBJECT_LEN} characters"
        ));
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("`reply_subject` must not contain spaces or control characters".into());
    }
    if subject.split('.').any(|t| t.is_empty()) {
        return Err("`reply_subject` must not have empty tokens".into());
    }
    if subject.split('.').any(|t| t == "*" || t == ">") || subject.contains(['*', '>']) {
        return Err("`reply_subject` must be a literal subject (no `*` or `>`)".into());
    }
    if subject.starts_with('$') {
        return Err("`reply_subject` must not be a system subject (`$…`)".into());
    }
    if subject == prefix || subject.starts_with(&format!("{prefix}.")) {
        return Err(format!(
            "`reply_subject` must not be under Sluice's own prefix `{prefix}`"
        ));
    }
    if let Some(allowed) = allowed {
        let ok = allowed
            .iter()
            .any(|p| subject == p || subject.starts_with(&format!("{}.", p.trim_end_matches('.'))));
        if !ok {
            return Err(format!(
                "`reply_subject` must start with one of the allowed prefixes: {}",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

/// Why a webhook destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("`webhook_url` must be an http(s) URL with a host")]
    NotHttp,
    #[error("`webhook_url` must not carry credentials")]
    Credentials,
    #[error("`webhook_url` points to a non-public address ({0}); the operator has not allowed private destinations")]
    NotPublic(IpAddr),
    #[error("`webhook_url` host {0:?} is not allowed")]
    Host(String),
}

/// Checks `webhook_url` at submit: an http(s) URL with a host, no user info, and, when its
/// host is an IP literal, a public one. A name is checked again, on every address it
/// resolves to, at delivery ([`check_resolved`]).
pub fn check_webhook_url(raw: &str, s: &SafetySettings) -> Result<url::Url, DestinationError> {
    let url = url::Url::parse(raw).map_err(|_| DestinationError::NotHttp)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(DestinationError::NotHttp);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(DestinationError::Credentials);
    }
    let host = match url.host() {
        Some(h) => h,
        None => return Err(DestinationError::NotHttp),
    };
    let name = host
        .to_string()
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    if host_allowed(&name, s) {
        return Ok(url);
    }
    let ip = match host {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(d) => {
            // `localhost` and friends never need DNS to be inward.
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") {
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
            } else {
                None
            }
        }
    };
    if let Some(ip) = ip {
        check_resolved(&name, ip, s)?;
    }
    Ok(url)
}

/// Whether `host` (lower case, no brackets) is in the operator's allow-list.
pub fn host_allowed(host: &str, s: &SafetySettings) -> bool {
    s.webhook_allow_hosts.iter().any(|h| h == host)
}

/// Checks one address a webhook host resolved to (or its IP literal).
pub fn check_resolved(host: &str, ip: IpAddr, s: &SafetySettings) -> Result<(), DestinationError> {
    if s.webhook_allow_private || host_allowed(host, s) || is_public(ip) {
        Ok(())
    } else {
        Err(DestinationError::NotPublic(ip))
    }
}

/// Whether `ip` is a public unicast address: not unspecified, loopback, private,
/// link-local (cloud metadata), CGNAT, multicast, broadcast, documentation or reserved.
/// IPv4 embedded in IPv6 (mapped, NAT64, 6to4) is judged as IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    let blocked = o[0] == 0 // this network
        || o[0] == 10
        || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT 100.64/10
        || o[0] == 127
        || (o[0] == 169 && o[1] == 254) // link-local, metadata
        || (o[0] == 172 && (16..32).contains(&o[1]))
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 192 && o[1] == 0 && o[2] == 2) // TEST-NET-1
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast
        || (o[0] == 192 && o[1] == 168)
        || (o[0] == 198 && (18..20).contains(&o[1])) // benchmarking
        || (o[0] == 198 && o[1] == 51 && o[2] == 100) // TEST-NET-2
        || (o[0] == 203 && o[1] == 0 && o[2] == 113) // TEST-NET-3
        || o[0] >= 224; // multicast 224/4, reserved 240/4, broadcast
    !blocked
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    let blocked = ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard-only 100::/64
        || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0); // ::/80 (IPv4-compatible)
    !blocked
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::/96`) or
/// 6to4 (`2002::/16`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
        return Some(tail());
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(tail());
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inward_addresses_are_not_public() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_public(ip), "{ip} passed");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_public(ip), "{ip} refused");
        }
    }

    #[test]
    fn webhook_urls_pointing_inward_are_refused_unless_allowed() {
        let s = SafetySettings::default();
        for url in [
            "http://127.0.0.1:8080/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://localhost/",
            "http://10.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
        ] {
            assert!(check_webhook_url(url, &s).is_err(), "{url} passed");
        }
        assert_eq!(
            check_webhook_url("ftp://example.com/", &s),
            Err(DestinationError::NotHttp)
        );
        assert_eq!(
            check_webhook_url("https://u:p@example.com/", &s),
            Err(DestinationError::Credentials)
        );
        assert!(check_webhook_url("https://example.com/hook", &s).is_ok());
        let open = SafetySettings {
            webhook_allow_private: true,
            ..SafetySettings::default()
        };
        assert!(check_webhook_url("http://127.0.0.1:8080/x", &open).is_ok());
        let listed = SafetySettings {
            webhook_allow_hosts: vec!["127.0.0.1".into()],
            ..SafetySettings::default()
        };
        assert!(check_webhook_url("http://127.0.0.1:8080/x", &listed).is_ok());
        assert!(check_webhook_url("http://10.0.0.1/", &listed).is_err());
    }

    #[test]
    fn reply_subjects_must_be_literal_and_outward() {
        let ok = |s: &str| check_reply_subject(s, "sluice", None);
        assert!(ok("orders.llm.done").is_ok());
        for bad in [
            "",
            "orders.*",
            "orders.>",
            ">",
            "$JS.API.STREAM.DELETE.SLUICE_JOBS",
            "$SYS.REQ.SERVER.PING",
            "sluice.jobs.critical",
            "sluice",
            "a..b",
            "a b",
            "a\u{0000}b",
        ] {
            assert!(ok(bad).is_err(), "{bad:?} passed");
        }
        let allowed = vec!["orders".to_string()];
        assert!(check_reply_subject("orders.done", "sluice", Some(&allowed)).is_ok());
        assert!(check_reply_subject("billing.done", "sluice", Some(&allowed)).is_err());
    }
}
