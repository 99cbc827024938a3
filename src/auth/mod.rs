//! Authentication at the handshake: JWT verification (HS256 with a shared secret; RS*/PS*, ES256/ES384 and EdDSA
//! with PEM public keys chosen by `kid`), the claims wsgate reads, and channel grants.
//!
//! Algorithm confusion is impossible by construction: HS256 tokens are only ever checked against
//! `auth.hs256_secret`, public-key algorithms only against public keys of their own family, and `alg: none` (or any
//! algorithm wsgate does not know) does not even parse.

pub mod grant;
pub mod token;

use crate::config::{AuthConfig, ConfigError};
use grant::Grant;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Longest accepted `sub`, `device` or `tenant` claim, bytes.
pub const MAX_CLAIM_LEN: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Family::Rsa,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
    }
}

struct PublicKey {
    kid: String,
    family: Family,
    key: DecodingKey,
}

/// A problem with the `[auth]` configuration (bad key file, ...), naming the key.
#[derive(Debug)]
pub struct ConfigProblem {
    pub key: &'static str,
    pub message: String,
}

/// What a verified token says about its holder.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub device: Option<String>,
    pub tenant: Option<String>,
    /// `exp`, Unix seconds.
    pub exp: u64,
    pub grant: Grant,
}

/// The claims wsgate reads; everything else in the token is ignored.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    exp: Option<f64>,
}

/// Opens the key files `[auth]` names, for [`crate::config::ConfigBuilder::key_check`]: a key that cannot be
/// loaded is a configuration error, reported before anything starts.
pub fn check_keys(c: &AuthConfig) -> Result<(), ConfigError> {
    Verifier::from_config(c).map(drop).map_err(|e| ConfigError {
        key: e.key.to_string(),
        message: e.message,
    })
}

/// Verifies tokens against the configured keys. Built once at start-up, shared read-only by the reactors.
pub struct Verifier {
    hs256: Option<DecodingKey>,
    keys: Vec<PublicKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    default_channels: Vec<String>,
}

impl Verifier {
    /// Loads the keys named by `[auth]`.
    pub fn from_config(c: &AuthConfig) -> Result<Verifier, ConfigProblem> {
        let hs256 = (!c.hs256_secret.is_empty())
            .then(|| DecodingKey::from_secret(c.hs256_secret.as_bytes()));
        let mut keys = Vec::new();
        for entry in &c.public_keys {
            keys.push(load_key(entry)?);
        }
        Ok(Verifier {
            hs256,
            keys,
            issuer: (!c.issuer.is_empty()).then(|| c.issuer.clone()),
            audience: (!c.audience.is_empty()).then(|| c.audience.clone()),
            leeway: c.leeway,
            default_channels: c.default_channels.clone(),
        })
    }

    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Verifies `token`. The error is a short reason safe to show to the client.
    pub fn verify(&self, token: &str) -> Result<Identity, &'static str> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| "malformed token or unsupported algorithm")?;
        let fam = family(header.alg);
        let candidates: Vec<&DecodingKey> = match fam {
            Family::Hmac if header.alg == Algorithm::HS256 => self.hs256.iter().collect(),
            Family::Hmac => Vec::new(),
            _ => self
                .keys
                .iter()
                .filter(|k| k.family == fam)
                .filter(|k| header.kid.as_deref().is_none_or(|kid| kid == k.kid))
                .map(|k| &k.key)
                .collect(),
        };
        if candidates.is_empty() {
            return Err(if header.kid.is_some() && fam != Family::Hmac {
                "unknown key id (kid) for this algorithm"
            } else {
                "token algorithm not accepted"
            });
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let mut last = "invalid signature";
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return self.identity(data.claims),
                Err(e) => {
                    last = reason(e.kind());
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        break; // only a signature mismatch is worth trying the next key for
                    }
                }
            }
        }
        Err(last)
    }

    fn identity(&self, claims: Claims) -> Result<Identity, &'static str> {
        let user = claims.sub.ok_or("missing sub claim")?;
        if user.is_empty() || user.len() > MAX_CLAIM_LEN {
            return Err("sub claim must be 1..=255 bytes");
        }
        for v in [&claims.device, &claims.tenant].into_iter().flatten() {
            if v.len() > MAX_CLAIM_LEN {
                return Err("device and tenant claims must be at most 255 bytes");
            }
        }
        let exp = claims.exp.ok_or("missing exp claim")?;
        let grant = match &claims.channels {
            Some(list) => Grant::from_claim(list)?,
            None => Grant::from_templates(&self.default_channels, &user, claims.tenant.as_deref()),
        };
        Ok(Identity {
            user,
            device: claims.device,
            tenant: claims.tenant,
            exp: exp.max(0.0) as u64,
            grant,
        })
    }
}

fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid (nbf)",
        ErrorKind::InvalidSignature => "invalid signature",
        ErrorKind::InvalidIssuer => "wrong issuer (iss)",
        ErrorKind::InvalidAudience => "wrong audience (aud)",
        ErrorKind::MissingRequiredClaim(c) if c == "exp" => "missing exp claim",
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => "missing iss claim",
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => "missing aud claim",
        ErrorKind::MissingRequiredClaim(_) => "missing required claim",
        ErrorKind::InvalidAlgorithm => "token algorithm not accepted",
        ErrorKind::Json(_) => {
            "malformed claims (sub, device, tenant must be strings; channels a list)"
        }
        _ => "malformed token",
    }
}

/// `"PATH"` (kid = file name without extension) or `"KID=PATH"`.
fn load_key(entry: &str) -> Result<PublicKey, ConfigProblem> {
    let problem = |message: String| ConfigProblem {
        key: "auth.public_keys",
        message,
    };
    let (kid, path) = match entry.split_once('=') {
        Some((kid, path)) if !kid.is_empty() && !kid.contains('/') => (kid.to_string(), path),
        _ => {
            let stem = std::path::Path::new(entry)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or(entry);
            (stem.to_string(), entry)
        }
    };
    let pem = std::fs::read(path).map_err(|e| problem(format!("cannot read {path}: {e}")))?;
    let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
        (Family::Rsa, k)
    } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
        (Family::Ec, k)
    } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
        (Family::Ed, k)
    } else {
        return Err(problem(format!(
            "{path} is not a PEM RSA, EC or Ed25519 public key"
        )));
    };
    Ok(PublicKey { kid, family, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        crate::ids::sid::unix_ms() / 1000
    }

    fn verifier(secret: &str) -> Verifier {
        Verifier::from_config(&AuthConfig {
            mode: crate::config::AuthMode::Jwt,
            hs256_secret: secret.into(),
            default_channels: vec!["user:{sub}".into()],
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn hs(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn hs256_claims_and_failures() {
        let v = verifier("s3cret");
        let id = v
            .verify(&hs(
                json!({"sub":"u1","device":"phone","exp":now()+60,"channels":["doc:*"]}),
                "s3cret",
            ))
            .unwrap();
        assert_eq!(id.user, "u1");
        assert_eq!(id.device.as_deref(), Some("phone"));
        assert!(id.grant.allows("doc:1"));
        let id = v
            .verify(&hs(json!({"sub":"u2","exp":now()+60}), "s3cret"))
            .unwrap();
        assert!(id.grant.allows("user:u2") && !id.grant.allows("user:u1"));

        let expired = hs(json!({"sub":"u1","exp":now()-3600}), "s3cret");
        assert_eq!(v.verify(&expired).unwrap_err(), "token expired");
        let wrong = hs(json!({"sub":"u1","exp":now()+60}), "other");
        assert_eq!(v.verify(&wrong).unwrap_err(), "invalid signature");
        let nosub = hs(json!({"exp":now()+60}), "s3cret");
        assert_eq!(v.verify(&nosub).unwrap_err(), "missing sub claim");
        let noexp = hs(json!({"sub":"u1"}), "s3cret");
        assert_eq!(v.verify(&noexp).unwrap_err(), "missing exp claim");
        let early = hs(
            json!({"sub":"u1","exp":now()+600,"nbf":now()+300}),
            "s3cret",
        );
        assert_eq!(v.verify(&early).unwrap_err(), "token not yet valid (nbf)");
        let badsub = hs(json!({"sub":7,"exp":now()+60}), "s3cret");
        assert!(v
            .verify(&badsub)
            .unwrap_err()
            .starts_with("malformed claims"));
        assert!(v.verify("not a token").is_err());
        assert!(v.verify("").is_err());
        // alg "none": an unsigned token never parses.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"sub":"u1","exp":{}}}"#, now() + 60))
        );
        assert_eq!(
            v.verify(&none).unwrap_err(),
            "malformed token or unsupported algorithm"
        );
        // HS512 with the right secret is still not HS256.
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &json!({"sub":"u1","exp":now()+60}),
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(
            v.verify(&hs512).unwrap_err(),
            "token algorithm not accepted"
        );
    }

    #[test]
    fn issuer_and_audience() {
        let v = Verifier::from_config(&AuthConfig {
            mode: crate::config::AuthMode::Jwt,
            hs256_secret: "k".into(),
            issuer: "https://id.example".into(),
            audience: "wsgate".into(),
            ..AuthConfig::default()
        })
        .unwrap();
        let ok = hs(
            json!({"sub":"u","exp":now()+60,"iss":"https://id.example","aud":"wsgate"}),
            "k",
        );
        assert!(v.verify(&ok).is_ok());
        let bad_iss = hs(
            json!({"sub":"u","exp":now()+60,"iss":"evil","aud":"wsgate"}),
            "k",
        );
        assert_eq!(v.verify(&bad_iss).unwrap_err(), "wrong issuer (iss)");
        let no_aud = hs(
            json!({"sub":"u","exp":now()+60,"iss":"https://id.example"}),
            "k",
        );
        assert_eq!(v.verify(&no_aud).unwrap_err(), "missing aud claim");
        // Without configured audience a token's aud is accepted.
        let v = verifier("k");
        assert!(v
            .verify(&hs(json!({"sub":"u","exp":now()+60,"aud":"x"}), "k"))
            .is_ok());
    }

    #[test]
    fn ec_keys_by_kid_and_no_confusion() {
        let dir = std::env::temp_dir().join(format!("wsgate-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut paths = Vec::new();
        let mut private = Vec::new();
        for name in ["k1", "k2"] {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let path = dir.join(format!("{name}.pem"));
            std::fs::write(&path, pair.public_key_pem()).unwrap();
            paths.push(path.to_string_lossy().into_owned());
            private.push(pair.serialize_pem());
        }
        let public_pem = std::fs::read(&paths[0]).unwrap();
        let v = Verifier::from_config(&AuthConfig {
            mode: crate::config::AuthMode::Jwt,
            public_keys: vec![paths[0].clone(), format!("second={}", paths[1])],
            ..AuthConfig::default()
        })
        .unwrap();
        let sign = |kid: Option<&str>, pem: &str| {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = kid.map(str::to_string);
            encode(
                &h,
                &json!({"sub":"u1","exp":now()+60}),
                &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            )
            .unwrap()
        };
        assert!(v.verify(&sign(Some("k1"), &private[0])).is_ok());
        assert!(v.verify(&sign(Some("second"), &private[1])).is_ok());
        assert!(v.verify(&sign(None, &private[1])).is_ok());
        assert_eq!(
            v.verify(&sign(Some("k1"), &private[1])).unwrap_err(),
            "invalid signature"
        );
        assert_eq!(
            v.verify(&sign(Some("k3"), &private[0])).unwrap_err(),
            "unknown key id (kid) for this algorithm"
        );
        // HS256 signed with the public key's PEM as the secret: no HMAC secret is configured, so it is refused.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let confused = encode(
            &h,
            &json!({"sub":"u1","exp":now()+60}),
            &EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        assert_eq!(
            v.verify(&confused).unwrap_err(),
            "token algorithm not accepted"
        );
        let e = Verifier::from_config(&AuthConfig {
            public_keys: vec![dir.join("missing.pem").to_string_lossy().into_owned()],
            ..AuthConfig::default()
        })
        .err()
        .unwrap();
        assert_eq!(e.key, "auth.public_keys");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
