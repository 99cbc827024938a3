//! Token verification (`auth::Verifier::verify`) with a fixed HS256 key, in two modes chosen by the first byte:
//! - even: the rest is the token as a client sends it (garbage, truncated or tampered tokens);
//! - odd: the rest is `header JSON \0 claims JSON`, signed here with the right key, so the fuzzer gets past the
//!   signature into the header, claims, time and grant checks.
//!
//! Checked: never a panic; an accepted token yields an identity within the documented limits.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wsgate::auth::{grant, Verifier, MAX_CLAIM_LEN};
use wsgate::config::AuthConfig;

const SECRET: &str = "fuzz-secret-0123456789";

/// Two verifiers: one plain, one that also requires `iss` and `aud` (and uses default channel templates).
fn verifiers() -> &'static [Verifier; 2] {
    static V: OnceLock<[Verifier; 2]> = OnceLock::new();
    V.get_or_init(|| {
        let plain = AuthConfig {
            hs256_secret: SECRET.to_string(),
            ..AuthConfig::default()
        };
        let strict = AuthConfig {
            hs256_secret: SECRET.to_string(),
            issuer: "iss".to_string(),
            audience: "aud".to_string(),
            leeway: 0,
            default_channels: vec![
                "user:{sub}".to_string(),
                "tenant:{tenant}:*".to_string(),
                "*".to_string(),
            ],
            ..AuthConfig::default()
        };
        [
            Verifier::from_config(&plain).expect("plain verifier"),
            Verifier::from_config(&strict).expect("strict verifier"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    let verifier = &verifiers()[usize::from(mode & 2 != 0)];
    let token = if mode & 1 == 0 {
        // Tokens reach the verifier as UTF-8 (a header value or a percent-decoded query parameter).
        let Ok(t) = std::str::from_utf8(rest) else {
            return;
        };
        t.to_string()
    } else {
        let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let header = &rest[..split];
        let claims = rest.get(split + 1..).unwrap_or(&[]);
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
            .expect("HMAC signing cannot fail");
        format!("{message}.{signature}")
    };
    if let Ok(id) = verifier.verify(&token) {
        assert!(!id.user.is_empty() && id.user.len() <= MAX_CLAIM_LEN);
        assert!(id.device.as_ref().is_none_or(|d| d.len() <= MAX_CLAIM_LEN));
        assert!(id.tenant.as_ref().is_none_or(|t| t.len() <= MAX_CLAIM_LEN));
        let patterns = id.grant.describe();
        assert!(patterns.len() <= grant::MAX_PATTERNS);
        for p in &patterns {
            let _ = id.grant.allows(p);
        }
    }
});
