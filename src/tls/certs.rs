//! Reading the PEM certificate chain and private key, and choosing the certificate for a ClientHello.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::io::BufReader;
use std::sync::Arc;

/// A certificate or key that cannot be used; the message names the config key and the file.
#[derive(Debug, Clone)]
pub struct LoadError(String);

impl LoadError {
    pub(super) fn other(message: String) -> Self {
        LoadError(message)
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

/// Reads the chain (leaf first) from `cert_path` and the key (PKCS#8, PKCS#1 RSA or SEC1 EC; RSA, ECDSA or
/// Ed25519) from `key_path`, and checks that they belong together.
pub fn load(
    cert_path: &str,
    key_path: &str,
    provider: &CryptoProvider,
) -> Result<SniResolver, LoadError> {
    let cert_err = |m: String| LoadError(format!("tls.cert {cert_path}: {m}"));
    let key_err = |m: String| LoadError(format!("tls.key {key_path}: {m}"));

    let cert_file = std::fs::File::open(cert_path).map_err(|e| cert_err(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut BufReader::new(cert_file))
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("not a PEM certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err(
            "no certificate found (expected PEM `BEGIN CERTIFICATE` blocks)".into(),
        ));
    }
    webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| cert_err(format!("the first certificate cannot be parsed: {e}")))?;

    let key_file = std::fs::File::open(key_path).map_err(|e| key_err(e.to_string()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut BufReader::new(key_file))
        .map_err(|e| key_err(format!("not a PEM key file: {e}")))?
        .ok_or_else(|| {
            key_err("no private key found (expected PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".into())
        })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(format!("unsupported private key: {e}")))?;

    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        LoadError(format!(
            "tls.key {key_path} does not match the certificate in tls.cert {cert_path}: {e}"
        ))
    })?;
    Ok(SniResolver {
        key: Arc::new(certified),
    })
}

/// Serves the one configured certificate. A client that names a server (SNI) the certificate is not valid for
/// is refused during the handshake instead of being shown a certificate it will reject anyway; a client that
/// names none (a bare IP address) gets the certificate.
#[derive(Debug)]
pub struct SniResolver {
    key: Arc<CertifiedKey>,
}

impl SniResolver {
    fn covers(&self, name: &str) -> bool {
        let Ok(server_name) = ServerName::try_from(name) else {
            return false;
        };
        let Some(leaf) = self.key.cert.first() else {
            return false;
        };
        match webpki::EndEntityCert::try_from(leaf) {
            Ok(cert) => cert.verify_is_valid_for_subject_name(&server_name).is_ok(),
            Err(_) => false,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            None => Some(self.key.clone()),
            Some(name) if self.covers(name) => Some(self.key.clone()),
            Some(name) => {
                log::debug!("TLS: refusing unknown server name {name:?}");
                None
            }
        }
    }
}
