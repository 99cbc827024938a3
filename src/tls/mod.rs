//! TLS termination inside the reactors (wss on the client listener).
//!
//! - [`TlsAcceptor`]: the certificate and key loaded from `tls.cert` / `tls.key`, turned into a rustls
//!   `ServerConfig` (TLS 1.2 and 1.3, ALPN `http/1.1`, session tickets). It is reloadable: a reactor reads the
//!   current config once per accepted connection, and [`TlsAcceptor::reload`] swaps in a new one, so existing
//!   connections keep their session while new handshakes see the new certificate. A broken new certificate is
//!   rejected and the old one stays.
//! - [`TlsConnection`]: one connection's rustls state, driven through rustls's *unbuffered* API. The reactor owns
//!   every buffer (ciphertext in, plaintext out, records to send), so an idle TLS connection holds rustls's state
//!   and nothing else — no 4 KiB read buffer, no queue of encrypted records.

mod certs;
mod connection;

pub use certs::LoadError;
pub use connection::{ReadOutcome, TlsConnection, TlsError, RECORD_OVERHEAD};

use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::ServerConfig;
use std::sync::{Arc, RwLock};

/// TLS 1.2 session-id cache entries (TLS 1.3 resumption uses stateless tickets and needs none).
const SESSION_CACHE_ENTRIES: usize = 4096;

/// The ALPN protocol wss speaks (WebSocket upgrades are HTTP/1.1 requests).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The gateway's TLS configuration: certificate files and the current rustls config built from them.
pub struct TlsAcceptor {
    cert_path: String,
    key_path: String,
    current: RwLock<Arc<ServerConfig>>,
    /// Kept across reloads so tickets issued before a reload still resume afterwards.
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
}

impl TlsAcceptor {
    /// Loads the certificate chain and key. Errors name the file and the reason.
    pub fn load(cert_path: &str, key_path: &str) -> Result<Self, LoadError> {
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| LoadError::other(format!("cannot create the TLS ticketer: {e}")))?;
        let sessions: Arc<dyn StoresServerSessions> =
            ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        let config = build_config(cert_path, key_path, &ticketer, &sessions)?;
        Ok(TlsAcceptor {
            cert_path: cert_path.to_string(),
            key_path: key_path.to_string(),
            current: RwLock::new(config),
            ticketer,
            sessions,
        })
    }

    /// The config for a new handshake (one read lock and one reference count per accepted connection).
    pub fn config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the certificate and key files. On success new handshakes use them; on error nothing changes.
    pub fn reload(&self) -> Result<(), LoadError> {
        let config = build_config(
            &self.cert_path,
            &self.key_path,
            &self.ticketer,
            &self.sessions,
        )?;
        match self.current.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(())
    }

    /// A new connection's TLS state with the current config.
    pub fn connection(&self) -> Result<TlsConnection, TlsError> {
        TlsConnection::new(self.config())
    }
}

/// Reloads the TLS certificate, logging the outcome; shared by SIGHUP and `POST /api/reload-tls`. Existing
/// connections keep their TLS state; new handshakes use the new certificate. On error the old one stays and the
/// error is returned.
pub fn reload(tls: Option<&TlsAcceptor>) -> Result<(), String> {
    let Some(tls) = tls else {
        return Err("TLS is not configured (set tls.cert and tls.key)".into());
    };
    match tls.reload() {
        Ok(()) => {
            log::info!("TLS certificate reloaded");
            Ok(())
        }
        Err(e) => {
            log::error!("TLS reload failed, keeping the current certificate: {e}");
            Err(e.to_string())
        }
    }
}

fn build_config(
    cert_path: &str,
    key_path: &str,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions>,
) -> Result<Arc<ServerConfig>, LoadError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = certs::load(cert_path, key_path, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| LoadError::other(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.ticketer = ticketer.clone();
    config.session_storage = sessions.clone();
    // 0-RTT data is replayable; a WebSocket upgrade has no use for it.
    config.max_early_data_size = 0;
    // One ticket is what a browser uses for its next connection; each one costs a record per handshake.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}
