//! TLS trust and client credentials shared by the NATS, Redis and Postgres clients.
//!
//! Every client trusts the system's CA bundle and, when `SSL_CERT_FILE` is set, the
//! certificates in that file as well (the clients' own loaders would use it *instead of*
//! the system bundle). NATS also reads the nats CLI's variables: `NATS_CREDS`, `NATS_CA`,
//! `NATS_CERT`, `NATS_KEY`. All of them come through [`crate::config::Env`], so tests
//! supply their own without touching the process environment.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::config::Env;

/// Where Linux distributions keep the system CA bundle (Debian/Ubuntu/Alpine first).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The TLS-related environment of a process (paths only, never key material).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsEnv {
    /// `SSL_CERT_FILE`: extra trusted CAs (PEM bundle) for every client.
    pub ssl_cert_file: Option<PathBuf>,
    /// `NATS_CREDS`: a JWT + nkey seed creds file.
    pub nats_creds: Option<PathBuf>,
    /// `NATS_CA`: extra trusted CAs for NATS.
    pub nats_ca: Option<PathBuf>,
    /// `NATS_CERT` / `NATS_KEY`: client certificate for mutual TLS with NATS.
    pub nats_cert: Option<PathBuf>,
    pub nats_key: Option<PathBuf>,
}

impl TlsEnv {
    pub fn from_env(env: &dyn Env) -> TlsEnv {
        let path = |name: &str| env.var(name).map(PathBuf::from);
        TlsEnv {
            ssl_cert_file: path("SSL_CERT_FILE"),
            nats_creds: path("NATS_CREDS"),
            nats_ca: path("NATS_CA"),
            nats_cert: path("NATS_CERT"),
            nats_key: path("NATS_KEY"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("TLS setup: {0}")]
pub struct TlsError(pub String);

/// Makes ring the process-wide rustls provider (the redis client builds its config with
/// the default provider). Idempotent.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads the certificates of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            TlsError(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        TlsError(format!(
            "cannot read private key from {}: {e}",
            path.display()
        ))
    })
}

/// The system bundle's certificates that rustls can use as trust anchors.
fn system_roots() -> Vec<CertificateDer<'static>> {
    let Some(bundle) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) else {
        return Vec::new();
    };
    let certs = CertificateDer::pem_file_iter(bundle)
        .map(|it| it.filter_map(Result::ok).collect::<Vec<_>>())
        .unwrap_or_default();
    certs
        .into_iter()
        .filter(|c| RootCertStore::empty().add(c.clone()).is_ok())
        .collect()
}

/// System roots, `SSL_CERT_FILE` and `extra` files, as one root store.
pub fn root_store(tls: &TlsEnv, extra: &[&Path]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(system_roots());
    for path in tls
        .ssl_cert_file
        .iter()
        .map(PathBuf::as_path)
        .chain(extra.iter().copied())
    {
        for cert in read_certs(path)? {
            store
                .add(cert)
                .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(store)
}

/// The same trust as [`root_store`], as a PEM bundle (for clients that take PEM bytes).
/// `None` when `SSL_CERT_FILE` and `extra` are unset: the client's own system store is
/// then the same thing.
pub fn trusted_pem(tls: &TlsEnv, extra: &[&Path]) -> Result<Option<Vec<u8>>, TlsError> {
    if tls.ssl_cert_file.is_none() && extra.is_empty() {
        return Ok(None);
    }
    let mut certs = system_roots();
    for path in tls
        .ssl_cert_file
        .iter()
        .map(PathBuf::as_path)
        .chain(extra.iter().copied())
    {
        certs.extend(read_certs(path)?);
    }
    let mut pem = Vec::new();
    for cert in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    Ok(Some(pem))
}

/// The rustls client config for NATS: [`root_store`] plus `NATS_CA`, and the
/// `NATS_CERT`/`NATS_KEY` client certificate when both are set.
pub fn nats_client_config(tls: &TlsEnv) -> Result<rustls::ClientConfig, TlsError> {
    install_provider();
    let extra: Vec<&Path> = tls.nats_ca.iter().map(PathBuf::as_path).collect();
    let roots = root_store(tls, &extra)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError(e.to_string()))?
    .with_root_certificates(roots);
    match (&tls.nats_cert, &tls.nats_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| TlsError(format!("NATS_CERT/NATS_KEY: {e}"))),
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(TlsError(
            "NATS_CERT and NATS_KEY must be set together".into(),
        )),
    }
}

/// `url` with any password (or token-only user) replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let redacted = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{}{redacted}{}", &url[..scheme_end + 3], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords_and_tokens() {
        assert_eq!(
            redact_url("rediss://app:s3cret@redis.example.com:6380/0"),
            "rediss://app:***@redis.example.com:6380/0"
        );
        assert_eq!(redact_url("tls://tok3n@nats:4222"), "tls://***@nats:4222");
        assert_eq!(
            redact_url("postgres://u:p%40ss@db/sluice?sslmode=require"),
            "postgres://u:***@db/sluice?sslmode=require"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("http://h/a@b"), "http://h/a@b");
    }

    #[test]
    fn trusted_pem_adds_ssl_cert_file_to_the_system_roots() {
        let dir = tempfile_dir();
        let ca = rcgen_free_ca(&dir);
        let env = TlsEnv {
            ssl_cert_file: Some(ca.clone()),
            ..Default::default()
        };
        let pem = trusted_pem(&env, &[]).unwrap().unwrap();
        let n = CertificateDer::pem_slice_iter(&pem).count();
        assert_eq!(n, system_roots().len() + 1);
        assert!(trusted_pem(&TlsEnv::default(), &[]).unwrap().is_none());
        let store = root_store(&env, &[]).unwrap();
        assert_eq!(store.len(), system_roots().len() + 1);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A fresh self-signed CA certificate.
    fn rcgen_free_ca(dir: &Path) -> PathBuf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        path
    }
}
