//! Authentication at the handshake, against the real binary: tokens in all three places, every refusal as HTTP
//! 401 with a JSON body and no session, public keys chosen by kid, channel grants, refresh and expiry.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

fn valid(sub: &str) -> String {
    hs256(&json!({"sub": sub, "exp": unix_now() + 300, "channels": ["doc:*", "news"]}))
}

#[test]
fn token_from_header_subprotocol_or_query() {
    let s = Server::start(&JWT_ARGS);
    let token = valid("u1");

    let bearer = format!("Bearer {token}");
    let a = RawWs::connect_with(s.ws, "/ws", &[("Authorization", &bearer)])
        .expect("upgrade with the token in Authorization");
    let w = a.welcome_frame();
    assert_eq!(w["user"], "u1");
    let sid = w["sid"].as_str().expect("sid is a decimal string");
    assert!(sid.parse::<u64>().is_ok());
    assert!(w["heartbeat"]["interval"].as_u64().is_some());

    // Browsers: new WebSocket(url, ["wsgate", "bearer." + token]); the server answers "wsgate".
    let offered = format!("wsgate, bearer.{token}");
    let b = RawWs::connect_with(s.ws, "/ws", &[("Sec-WebSocket-Protocol", &offered)])
        .expect("upgrade with the token in Sec-WebSocket-Protocol");
    let response = b.response.as_ref().expect("101 response");
    assert_eq!(
        response.header("sec-websocket-protocol"),
        Some("wsgate"),
        "{response}"
    );
    assert_eq!(b.welcome_frame()["user"], "u1");

    let c = RawWs::connect(s.ws, &format!("/ws?token={token}"));
    assert_eq!(c.welcome_frame()["user"], "u1");
    assert_eq!(
        s.wait_stat("/sessions/authenticated", 3, Duration::from_secs(2)),
        3
    );
}

/// Expects a 401 with `{"code":4001,"error":...}` containing `why`.
fn refused(s: &Server, target: &str, headers: &[(&str, &str)], why: &str) {
    let r = upgrade_response(s.ws, target, headers);
    assert_eq!(r.status, 401, "{r}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer")),
        "{r}"
    );
    let v = r.json();
    assert_eq!(v["code"], 4001, "{r}");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains(why), "expected {why:?} in {error:?}");
}

#[test]
fn bad_tokens_are_refused_before_the_upgrade() {
    let g = Server::start(&JWT_ARGS);
    let bearer = |t: &str| format!("Bearer {t}");
    refused(&g, "/ws", &[], "missing token");
    let expired = hs256(&json!({"sub":"u1","exp": unix_now() - 3600}));
    refused(
        &g,
        "/ws",
        &[("Authorization", &bearer(&expired))],
        "token expired",
    );
    let wrong = hs256_with(
        &json!({"sub":"u1","exp": unix_now() + 60}),
        "another-secret",
    );
    refused(
        &g,
        "/ws",
        &[("Authorization", &bearer(&wrong))],
        "invalid signature",
    );
    let no_sub = hs256(&json!({"exp": unix_now() + 60}));
    refused(
        &g,
        "/ws",
        &[("Authorization", &bearer(&no_sub))],
        "missing sub",
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(format!(r#"{{"sub":"u1","exp":{}}}"#, unix_now() + 60))
    );
    refused(
        &g,
        "/ws",
        &[("Authorization", &bearer(&none))],
        "unsupported algorithm",
    );
    refused(&g, "/ws?token=garbage", &[], "malformed token");
    refused(&g, "/ws", &[("Authorization", "Basic dTpw")], "Bearer");
    // Nothing was opened for any of them (counters are published once per reactor loop: poll briefly).
    assert_eq!(
        g.wait_stat("/sessions/auth_failures_total", 7, Duration::from_secs(2)),
        7
    );
    let stats = g.stats();
    assert_eq!(stats["totals"]["handshakes_total"], 0);
    assert_eq!(stats["totals"]["connections"], 0);
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed to run this test (scripts/test.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

#[test]
fn rs256_and_es256_keys_by_kid_and_no_algorithm_confusion() {
    let dir = temp_dir("keys");
    let rsa_private = dir.join("rsa.key");
    let rsa_public = dir.join("rsa.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        rsa_private.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        rsa_private.to_str().unwrap(),
        "-pubout",
        "-out",
        rsa_public.to_str().unwrap(),
    ]);
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec_public = dir.join("ec-2024.pem");
    std::fs::write(&ec_public, ec.public_key_pem()).unwrap();

    let keys = format!(
        "auth.public_keys=[\"main={}\", \"{}\"]",
        rsa_public.display(),
        ec_public.display()
    );
    // An HS256 secret is configured too, so HS/RS confusion would have a key to try if it were possible.
    let g = Server::start(&[&JWT_ARGS[..], &["--set", &keys]].concat());
    let claims = json!({"sub":"u9","exp": unix_now() + 300});
    let sign =
        |alg: jsonwebtoken::Algorithm, kid: Option<&str>, key: &jsonwebtoken::EncodingKey| {
            let mut h = jsonwebtoken::Header::new(alg);
            h.kid = kid.map(str::to_string);
            jsonwebtoken::encode(&h, &claims, key).unwrap()
        };
    let rsa_key =
        jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&rsa_private).unwrap()).unwrap();
    let ec_key = jsonwebtoken::EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();

    let rs = sign(jsonwebtoken::Algorithm::RS256, Some("main"), &rsa_key);
    let a = RawWs::connect(g.ws, &format!("/ws?token={rs}"));
    assert_eq!(a.welcome_frame()["user"], "u9");
    let es = sign(jsonwebtoken::Algorithm::ES256, Some("ec-2024"), &ec_key);
    let b = RawWs::connect(g.ws, &format!("/ws?token={es}"));
    assert_eq!(b.welcome_frame()["user"], "u9");
    // Without kid every key of the algorithm's family is tried.
    let es = sign(jsonwebtoken::Algorithm::ES256, None, &ec_key);
    RawWs::connect(g.ws, &format!("/ws?token={es}"));

    let unknown = sign(jsonwebtoken::Algorithm::RS256, Some("old"), &rsa_key);
    refused(&g, &format!("/ws?token={unknown}"), &[], "unknown key id");
    // The RSA public key used as an HMAC secret: HS256 only ever meets auth.hs256_secret.
    let pem = std::fs::read(&rsa_public).unwrap();
    let confused = sign(
        jsonwebtoken::Algorithm::HS256,
        Some("main"),
        &jsonwebtoken::EncodingKey::from_secret(&pem),
    );
    refused(
        &g,
        &format!("/ws?token={confused}"),
        &[],
        "invalid signature",
    );
    // An RSA signature presented as ES256 (wrong algorithm for the key).
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let forged = sign(
        jsonwebtoken::Algorithm::ES256,
        Some("ec-2024"),
        &jsonwebtoken::EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap(),
    );
    refused(&g, &format!("/ws?token={forged}"), &[], "invalid signature");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_key_file_stops_start_up_naming_the_key() {
    let out = run_cli(
        &[
            "--set",
            "auth.mode=jwt",
            "--set",
            "auth.public_keys=[\"/nonexistent/key.pem\"]",
            "--print-config",
        ],
        &[],
        false,
        Duration::from_secs(10),
    );
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("auth.public_keys"), "{out:?}");
    let out = run_cli(
        &["--set", "auth.mode=jwt", "--print-config"],
        &[],
        false,
        Duration::from_secs(10),
    );
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("auth.mode"), "{out:?}");
}

#[test]
fn channels_are_authorized_at_connect_and_on_subscribe() {
    let g = Server::start(&JWT_ARGS);
    let token = valid("u1");
    let mut ws = RawWs::connect(
        g.ws,
        &format!("/ws?channels=doc:1,secret,news&since=$&token={token}"),
    );
    let refusal = ws.expect_json("refusal of the channel not granted");
    assert_eq!(refusal["type"], "reply");
    assert_eq!(refusal["ok"], false);
    assert_eq!(refusal["code"], 4003);
    assert_eq!(refusal["channels"], json!(["secret"]));

    let r = ws.call(json!({"op":"subscribe","channels":["doc:2","admin"],"id":1}));
    assert_eq!(
        r,
        json!({"type":"reply","id":1,"ok":false,"code":4003,"error":"channel not allowed","channels":["admin"]})
    );
    let r = ws.call(json!({"op":"subscribe","channels":["doc:2"],"id":2}));
    assert_eq!(r, json!({"type":"reply","id":2,"ok":true}));

    let mut api = Http::connect(g.api);
    for channel in ["secret", "admin", "doc:2"] {
        publish(&mut api, channel, &json!(channel).to_string());
    }
    // Only the allowed channel arrives.
    assert_eq!(
        ws.expect_json("delivery"),
        json!({"channel":"doc:2","data":"doc:2"})
    );
    ws.expect_silence(Duration::from_millis(300), "channels not granted");

    // No channels claim: auth.default_channels applies, with {sub} replaced.
    let g = Server::start(
        &[
            &JWT_ARGS[..],
            &["--set", "auth.default_channels=[\"user:{sub}\"]"],
        ]
        .concat(),
    );
    let token = hs256(&json!({"sub":"u2","exp": unix_now() + 60}));
    let mut ws = RawWs::connect(g.ws, &format!("/ws?channels=user:u2&since=$&token={token}"));
    let r = ws.call(json!({"op":"subscribe","channels":["user:u3"],"id":"x"}));
    assert_eq!(r["code"], 4003);
}

#[test]
fn expiry_closes_with_4001_unless_refreshed() {
    let g = Server::start(&[&JWT_ARGS[..], &["--set", "auth.leeway=0"]].concat());
    let short =
        |sub: &str| hs256(&json!({"sub": sub, "exp": unix_now() + 2, "channels": ["a", "b"]}));

    let mut lapsing = RawWs::connect(g.ws, &format!("/ws?since=$&token={}", short("u1")));
    let mut refreshed = RawWs::connect(
        g.ws,
        &format!("/ws?channels=a,b&since=$&token={}", short("u1")),
    );

    // Refresh errors: another user's token, a bad token, no token.
    let other = hs256(&json!({"sub":"u2","exp": unix_now() + 300}));
    let r = refreshed.call(json!({"op":"refresh","token": other, "id": 1}));
    assert_eq!(
        (r["ok"].clone(), r["code"].clone()),
        (json!(false), json!(4001)),
        "{r}"
    );
    let r = refreshed.call(json!({"op":"refresh","token": "x.y.z", "id": 2}));
    assert_eq!(r["code"], 4001);
    let r = refreshed.call(json!({"op":"refresh","id": 3}));
    assert_eq!(r["ok"], false);

    // A good refresh that narrows the channels: "b" is unsubscribed.
    let exp = unix_now() + 300;
    let fresh = hs256(&json!({"sub":"u1","exp": exp, "channels": ["a"]}));
    let r = refreshed.call(json!({"op":"refresh","token": fresh, "id": 4}));
    assert_eq!(
        r,
        json!({"type":"reply","id":4,"ok":true,"exp":exp,"unsubscribed":["b"]})
    );

    lapsing.expect_close_code(4001, "the token expired");
    // Well past the first token's expiry the refreshed connection still works.
    std::thread::sleep(Duration::from_millis(1500));
    let r = refreshed.call(json!({"op":"ping","id":5}));
    assert_eq!(r, json!({"type":"pong","id":5}));
    let mut api = Http::connect(g.api);
    publish(&mut api, "b", "1");
    publish(&mut api, "a", "2");
    assert_eq!(
        refreshed.expect_json("delivery on a"),
        json!({"channel":"a","data":2})
    );
    assert_eq!(
        g.wait_stat(
            "/sessions/token_expired_closes_total",
            1,
            Duration::from_secs(2)
        ),
        1
    );
    assert_eq!(g.stat("/sessions/refreshes_total"), 1);
}
