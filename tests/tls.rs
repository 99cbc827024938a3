//! TLS (wss) end to end: the binary with certificates generated here, a real rustls client and tungstenite on
//! top. Covers fan-out over wss, TLS 1.2 and 1.3, ECDSA/RSA/Ed25519 keys, resumption, bad input, the handshake
//! timeout, unknown SNI, hot reload (API and SIGHUP), start-up errors, and SSE and long-poll over TLS.

mod common;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tungstenite::WebSocket;

type Wss = WebSocket<StreamOwned<ClientConnection, TcpStream>>;

/// Read timeout for wss messages (large ones cross several TLS records).
const WSS_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate for `names`, its key, written as PEM files into a fresh temp dir.
struct Cert {
    dir: PathBuf,
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Cert {
    fn new(tag: &str, alg: &str, names: &[&str]) -> Cert {
        let key = match alg {
            "ecdsa" => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            "ed25519" => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
            // ring cannot generate RSA keys: a fixed test-only key, certificates still made here.
            "rsa" => rcgen::KeyPair::from_pem(include_str!("fixtures/test-only-rsa2048-key.pem"))
                .unwrap(),
            _ => unreachable!(),
        };
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = temp_dir(&format!("tls-{tag}"));
        let c = Cert {
            dir,
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        c.install(&c.cert_path(), &c.key_path());
        c
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// Writes this certificate and key to the given paths (atomically, as a deploy tool would).
    fn install(&self, cert: &Path, key: &Path) {
        write_atomic(cert, &self.cert_pem);
        write_atomic(key, &self.key_pem);
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--set".into(),
            format!("tls.cert={}", self.cert_path().display()),
            "--set".into(),
            format!("tls.key={}", self.key_path().display()),
        ]
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Starts the gateway with `cert`; returns it with its TLS listener.
fn start(cert: &Cert, extra: &[&str]) -> (Server, SocketAddr) {
    let mut args: Vec<String> = cert.args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let s = Server::start(&refs);
    let wss = s
        .wss
        .unwrap_or_else(|| panic!("no wss= in the ready line\n{}", s.describe()));
    (s, wss)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting `certs`, speaking the given versions, offering ALPN http/1.1.
fn client_config(
    certs: &[&Cert],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c.der.clone()).unwrap();
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn all_versions() -> &'static [&'static rustls::SupportedProtocolVersion] {
    rustls::ALL_VERSIONS
}

/// TCP + TLS handshake to `addr` naming `sni`.
fn tls_connect(
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = ClientConnection::new(cfg.clone(), name).unwrap();
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// A wss connection subscribed to `channels` (comma-separated).
fn wss(cfg: &Arc<ClientConfig>, addr: SocketAddr, channels: &str) -> Wss {
    let stream = tls_connect(cfg, addr, "localhost").expect("TLS handshake");
    let url = format!("ws://localhost:{}/ws?channels={channels}", addr.port());
    let (mut ws, response) = tungstenite::client::client(url, stream).expect("upgrade over TLS");
    assert_eq!(response.status(), 101);
    check_welcome(&recv_text(&mut ws));
    ws
}

fn peer_cert(ws: &Wss) -> CertificateDer<'static> {
    ws.get_ref().conn.peer_certificates().unwrap()[0].clone()
}

fn recv_text(ws: &mut Wss) -> String {
    tws_next_text(ws, WSS_READ_TIMEOUT, "wss message")
}

/// Publishes on `channel` and checks `ws` receives it.
fn assert_delivery(api: &mut Http, ws: &mut Wss, channel: &str, n: u32) {
    publish(api, channel, &format!("{{\"n\":{n}}}"));
    let got = recv_text(ws);
    assert_eq!(
        got,
        format!("{{\"channel\":\"{channel}\",\"data\":{{\"n\":{n}}}}}")
    );
}

/// Reads until the server closes the connection (EOF or reset) and returns what it sent; panics if it is still
/// open after 10 s.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("server did not close the connection: {e}"),
        }
    }
}

/// Sends raw bytes to the TLS port and returns what the server sent back before closing (bounded).
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = tcp_connect(addr);
    s.write_all(bytes).unwrap();
    read_until_closed(&mut s)
}

#[test]
fn wss_subscribe_and_fan_out_with_plain_listener_alongside() {
    let cert = Cert::new("fanout", "ecdsa", &["localhost"]);
    let (gw, wss_addr) = start(&cert, &["--set", "tls.plain_listen=127.0.0.1:0"]);
    let mut api = Http::connect(gw.api);
    let cfg = client_config(&[&cert], all_versions());
    let mut a = wss(&cfg, wss_addr, "news,doc:1");
    let mut b = wss(&cfg, wss_addr, "news");
    assert_eq!(a.get_ref().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        a.get_ref().conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    // The plaintext listener serves the same channels (ws_connect checks the welcome).
    let mut plain = ws_connect(gw.ws, "/ws?channels=news");

    for n in 0..20 {
        publish(&mut api, "news", &format!("{{\"n\":{n}}}"));
    }
    for ws in [&mut a, &mut b] {
        for n in 0..20 {
            assert_eq!(
                recv_text(ws),
                format!("{{\"channel\":\"news\",\"data\":{{\"n\":{n}}}}}")
            );
        }
    }
    for n in 0..20 {
        assert_eq!(
            tws_next_text(&mut plain, READ_TIMEOUT, "plain ws delivery"),
            format!("{{\"channel\":\"news\",\"data\":{{\"n\":{n}}}}}")
        );
    }
    assert_delivery(&mut api, &mut a, "doc:1", 7);

    // The client protocol works over TLS too.
    tws_send_text(&mut a, r#"{"op":"ping","id":5}"#);
    assert_eq!(recv_text(&mut a), r#"{"type":"pong","id":5}"#);

    // A large publish is split into several TLS records and arrives whole.
    let big = format!("\"{}\"", "x".repeat(200_000));
    publish(&mut api, "news", &big);
    assert_eq!(
        recv_text(&mut b),
        format!("{{\"channel\":\"news\",\"data\":{big}}}")
    );

    assert!(gw.stat("/totals/tls_handshakes_total") >= 2);
    a.close(None).unwrap();
}

#[test]
fn large_messages_both_ways_on_the_echo_endpoint() {
    let cert = Cert::new("echo", "ecdsa", &["localhost"]);
    let (_gw, wss_addr) = start(&cert, &["--echo-path", "/echo"]);
    let cfg = client_config(&[&cert], all_versions());
    let stream = tls_connect(&cfg, wss_addr, "localhost").unwrap();
    let url = format!("ws://localhost:{}/echo", wss_addr.port());
    let (mut ws, _) = tungstenite::client::client(url, stream).unwrap();
    for size in [1usize, 125, 16_000, 16_384, 70_000, 300_000] {
        let text: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        tws_send_text(&mut ws, &text);
        assert_eq!(recv_text(&mut ws).len(), size);
    }
}

#[test]
fn records_spanning_receive_buffers_of_a_tiny_ring_decrypt_in_order() {
    // io_uring receives ciphertext in 4 KiB buffers; with two of them for 8 clients at once, receives find none and
    // connections are read instead. Records larger than a buffer, split anywhere, still decrypt in order.
    let cert = Cert::new("tinyring", "ecdsa", &["localhost"]);
    let (_gw, wss_addr) = start(
        &cert,
        &[
            "--echo-path",
            "/echo",
            "--threads",
            "1",
            "--set",
            "server.uring_recv_buffers=2",
        ],
    );
    let cfg = client_config(&[&cert], all_versions());
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let stream = tls_connect(&cfg, wss_addr, "localhost").unwrap();
            let url = format!("ws://localhost:{}/echo", wss_addr.port());
            let (mut ws, _) = tungstenite::client::client(url, stream).unwrap();
            std::thread::spawn(move || {
                for (i, size) in [3usize, 5_000, 16_384, 40_000, 7].into_iter().enumerate() {
                    let text: String = (0..size)
                        .map(|k| (b'a' + ((c + i + k) % 26) as u8) as char)
                        .collect();
                    tws_send_text(&mut ws, &text);
                    assert!(
                        recv_text(&mut ws) == text,
                        "client {c}: echo {i} of {size} bytes"
                    );
                }
            })
        })
        .collect();
    for (c, t) in clients.into_iter().enumerate() {
        t.join().unwrap_or_else(|_| panic!("client {c} failed"));
    }
}

#[test]
fn tls12_and_tls13_with_ecdsa_rsa_and_ed25519_keys_and_resumption() {
    for alg in ["ecdsa", "rsa", "ed25519"] {
        let cert = Cert::new(alg, alg, &["localhost"]);
        let (gw, wss_addr) = start(&cert, &[]);
        let mut api = Http::connect(gw.api);
        for (version, label) in [
            (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
            (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        ] {
            let cfg = client_config(&[&cert], &[version]);
            let mut ws = wss(&cfg, wss_addr, "v");
            assert_eq!(ws.get_ref().conn.protocol_version(), Some(label), "{alg}");
            assert_delivery(&mut api, &mut ws, "v", 1);
            ws.close(None).unwrap();
            // The same client config holds the ticket / session id: the next handshake resumes.
            let mut again = wss(&cfg, wss_addr, "v");
            assert_eq!(
                again.get_ref().conn.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed),
                "{alg} {label:?} resumption"
            );
            assert_delivery(&mut api, &mut again, "v", 2);
        }
    }
}

#[test]
fn plaintext_http_and_garbage_on_the_tls_port_are_closed_and_counted() {
    let cert = Cert::new("bad", "ecdsa", &["localhost"]);
    let (gw, wss_addr) = start(&cert, &[]);
    let mut api = Http::connect(gw.api);
    let cfg = client_config(&[&cert], all_versions());
    let mut ok = wss(&cfg, wss_addr, "c");

    let reply = raw_exchange(
        wss_addr,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    assert!(
        !reply.starts_with(b"HTTP/"),
        "no plaintext answer on the TLS port"
    );
    let reply = raw_exchange(wss_addr, &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5]);
    assert!(reply.len() < 64, "at most an alert: {reply:?}");
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
    raw_exchange(wss_addr, &garbage);

    assert!(gw.wait_stat("/totals/tls_failures_total", 3, Duration::from_secs(5)) >= 3);
    // The established connection is unaffected.
    assert_delivery(&mut api, &mut ok, "c", 1);
    let mut fresh = wss(&cfg, wss_addr, "c");
    assert_delivery(&mut api, &mut fresh, "c", 2);
}

#[test]
fn stalled_handshake_is_closed_by_the_handshake_timeout() {
    let cert = Cert::new("stall", "ecdsa", &["localhost"]);
    let (gw, wss_addr) = start(&cert, &["--set", "server.handshake_timeout=1"]);
    // Silent, and half a ClientHello.
    let mut silent = tcp_connect(wss_addr);
    let mut half = tcp_connect(wss_addr);
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    let started = std::time::Instant::now();
    for s in [&mut silent, &mut half] {
        read_until_closed(s);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(gw.wait_stat("/totals/tls_failures_total", 2, Duration::from_secs(5)) >= 2);
    let cfg = client_config(&[&cert], all_versions());
    let mut ws = wss(&cfg, wss_addr, "t");
    assert_delivery(&mut Http::connect(gw.api), &mut ws, "t", 1);
}

#[test]
fn unknown_sni_is_refused_and_counted() {
    let cert = Cert::new("sni", "ecdsa", &["localhost", "*.example.test"]);
    let (gw, wss_addr) = start(&cert, &[]);
    // The client trusts the cert; only the name is unknown to the server.
    let cfg = client_config(&[&cert], all_versions());
    let err = tls_connect(&cfg, wss_addr, "other.invalid");
    assert!(err.is_err(), "handshake with an unknown name must fail");
    assert!(gw.wait_stat("/totals/tls_failures_total", 1, Duration::from_secs(5)) >= 1);
    // Names the certificate covers, including through a wildcard, work.
    let ok = tls_connect(&cfg, wss_addr, "a.example.test");
    assert!(ok.is_ok(), "{:?}", ok.err());
    let mut ws = wss(&cfg, wss_addr, "s");
    assert_delivery(&mut Http::connect(gw.api), &mut ws, "s", 1);
}

/// Installs `new` over the gateway's certificate files and reloads with `reload`; the old connection keeps
/// working and a new one sees the new certificate.
fn reload_case(reload: impl Fn(&Server)) {
    let old = Cert::new("old", "ecdsa", &["localhost"]);
    let new = Cert::new("new", "rsa", &["localhost"]);
    let (gw, wss_addr) = start(&old, &[]);
    let cfg = client_config(&[&old, &new], all_versions());
    let mut before = wss(&cfg, wss_addr, "r");
    assert_eq!(peer_cert(&before), old.der);

    new.install(&old.cert_path(), &old.key_path());
    reload(&gw);

    // A fresh client (one with a cached ticket would resume the old session, which is allowed and shows no
    // certificate).
    let fresh_cfg = client_config(&[&old, &new], all_versions());
    let mut after = wss(&fresh_cfg, wss_addr, "r");
    assert_eq!(
        peer_cert(&after),
        new.der,
        "new handshakes use the new certificate"
    );
    publish(&mut Http::connect(gw.api), "r", "1");
    assert_eq!(recv_text(&mut before), r#"{"channel":"r","data":1}"#);
    assert_eq!(recv_text(&mut after), r#"{"channel":"r","data":1}"#);
    tws_send_text(&mut before, r#"{"op":"ping"}"#);
    assert_eq!(recv_text(&mut before), r#"{"type":"pong"}"#);
}

/// `POST /api/reload-tls` on a fresh connection.
fn reload_tls(gw: &Server) -> HttpResponse {
    http_request(gw.api, "POST", "/api/reload-tls", &[], b"")
}

#[test]
fn reload_via_api_keeps_connections_and_serves_the_new_certificate() {
    reload_case(|gw| {
        let r = reload_tls(gw);
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, r#"{"ok":true}"#),
            "{r}"
        );
    });
}

#[test]
fn reload_via_sighup_keeps_connections_and_serves_the_new_certificate() {
    reload_case(|gw| {
        gw.signal(libc::SIGHUP);
        assert!(gw.wait_log("TLS certificate reloaded", Duration::from_secs(10)));
    });
}

#[test]
fn broken_certificate_on_reload_is_rejected_and_the_old_one_kept() {
    let cert = Cert::new("keep", "ecdsa", &["localhost"]);
    let other = Cert::new("other", "ecdsa", &["localhost"]);
    let (mut gw, wss_addr) = start(&cert, &[]);
    let cfg = client_config(&[&cert], all_versions());
    let mut ws = wss(&cfg, wss_addr, "k");

    // Not PEM at all.
    write_atomic(&cert.cert_path(), "garbage\n");
    let r = reload_tls(&gw);
    assert_eq!(r.status, 500, "{r}");
    assert!(r.text().contains("tls.cert"), "{r}");
    // A valid certificate with a key that does not belong to it.
    write_atomic(&cert.cert_path(), &other.cert_pem);
    let r = reload_tls(&gw);
    assert_eq!(r.status, 500, "{r}");
    assert!(r.text().contains("does not match"), "{r}");
    // Missing key file, by SIGHUP: logged, old certificate kept.
    std::fs::remove_file(cert.key_path()).unwrap();
    gw.signal(libc::SIGHUP);
    assert!(gw.wait_log("TLS reload failed", Duration::from_secs(10)));

    let fresh_cfg = client_config(&[&cert], all_versions());
    let mut fresh = wss(&fresh_cfg, wss_addr, "k2");
    assert_eq!(peer_cert(&fresh), cert.der, "old certificate still served");
    let mut api = Http::connect(gw.api);
    assert_delivery(&mut api, &mut ws, "k", 1);
    assert_delivery(&mut api, &mut fresh, "k2", 2);
    assert!(gw.wait_exit(Duration::ZERO).is_none(), "the gateway exited");
}

#[test]
fn reload_without_tls_is_a_400() {
    let gw = Server::start(&[]);
    // The ready line named ws= (the port is a real one) and no wss=.
    assert!(gw.ws.port() != 0 && gw.wss.is_none(), "{}", gw.describe());
    let r = reload_tls(&gw);
    assert_eq!(r.status, 400, "{r}");
}

#[test]
fn missing_or_broken_files_at_start_up_exit_non_zero_naming_the_file() {
    let cert = Cert::new("start", "ecdsa", &["localhost"]);
    let missing = cert.dir.join("nope.pem");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![
                "--set".into(),
                format!("tls.cert={}", missing.display()),
                "--set".into(),
                format!("tls.key={}", cert.key_path().display()),
            ],
            missing.display().to_string(),
        ),
        (
            vec![
                "--set".into(),
                format!("tls.cert={}", cert.cert_path().display()),
                "--set".into(),
                format!("tls.key={}", missing.display()),
            ],
            missing.display().to_string(),
        ),
        (
            // Key and certificate swapped: neither file holds what it should.
            vec![
                "--set".into(),
                format!("tls.cert={}", cert.key_path().display()),
                "--set".into(),
                format!("tls.key={}", cert.cert_path().display()),
            ],
            cert.key_path().display().to_string(),
        ),
        (
            vec![
                "--set".into(),
                format!("tls.cert={}", cert.cert_path().display()),
            ],
            "tls.key".into(),
        ),
    ];
    for (args, needle) in cases {
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        // A gateway that starts instead does not exit: it is killed after the timeout and has no exit code.
        let out = run_cli(&refs, &[], true, Duration::from_secs(10));
        assert!(
            out.code().is_some_and(|c| c != 0),
            "started, or exit code {:?}, with {args:?}: {out:?}",
            out.code()
        );
        assert!(
            out.stderr.contains(&needle),
            "{needle} not named in: {}",
            out.stderr
        );
    }
}

fn shrink_receive_buffer(ws: &Wss) {
    use std::os::fd::AsRawFd;
    set_rcvbuf(ws.get_ref().sock.as_raw_fd(), 16 * 1024);
}

#[test]
fn backpressure_resumes_and_slow_consumers_are_closed_over_tls() {
    let cert = Cert::new("slow", "ecdsa", &["localhost"]);
    let (gw, wss_addr) = start(&cert, &["--set", "ws.max_outbound_bytes=8388608"]);
    let mut api = Http::connect(gw.api);
    let cfg = client_config(&[&cert], all_versions());
    // A client that pauses: everything queued while it does not read arrives later, in order.
    let mut paused = wss(&cfg, wss_addr, "p");
    shrink_receive_buffer(&paused);
    let chunk = "y".repeat(100_000);
    // More than a loopback socket's largest send buffer (tcp_wmem max, 4 MiB by default).
    for n in 0..60 {
        publish(&mut api, "p", &format!("[{n},\"{chunk}\"]"));
    }
    // The socket is full: the ciphertext it refused waits in a pooled buffer (counted with the lent buffers).
    assert!(gw.wait_stat("/totals/read_buffers_lent", 1, Duration::from_secs(5)) >= 1);
    for n in 0..60 {
        let got = recv_text(&mut paused);
        assert_eq!(
            got,
            format!("{{\"channel\":\"p\",\"data\":[{n},\"{chunk}\"]}}")
        );
    }

    // A client that never reads passes ws.max_outbound_bytes and is closed; a reading one is unaffected.
    // A fresh API connection: on a loaded machine the phase above can outlast the API's idle timeout (30 s).
    let mut api = Http::connect(gw.api);
    let mut stuck = wss(&cfg, wss_addr, "s");
    shrink_receive_buffer(&stuck);
    let mut reader = wss(&cfg, wss_addr, "s");
    let before = gw.stat("/totals/slow_consumer_closes_total");
    let big = "z".repeat(1_000_000);
    let mut closed = false;
    for n in 0..40 {
        publish(&mut api, "s", &format!("[{n},\"{big}\"]"));
        let got = recv_text(&mut reader);
        assert!(got.starts_with(&format!("{{\"channel\":\"s\",\"data\":[{n},")));
        if gw.stat("/totals/slow_consumer_closes_total") > before {
            closed = true;
            break;
        }
    }
    assert!(closed, "the stuck client was never closed");
    // The stuck client sees its stream end (after whatever was already in flight).
    stuck
        .get_mut()
        .sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while stuck.read().is_ok() {}
    assert_delivery(&mut api, &mut reader, "s", 99);
}

#[test]
fn key_update_requested_by_the_client_keeps_the_stream_decryptable() {
    let cert = Cert::new("keyupdate", "ecdsa", &["localhost"]);
    let (gw, wss_addr) = start(&cert, &[]);
    let mut api = Http::connect(gw.api);
    let cfg = client_config(&[&cert], &[&rustls::version::TLS13]);
    let mut ws = wss(&cfg, wss_addr, "ku");
    assert_delivery(&mut api, &mut ws, "ku", 0);
    for round in 1..=3 {
        // KeyUpdate(update_requested): the server must answer with its own KeyUpdate, sealed under its old key,
        // before any record under the new one.
        ws.get_mut().conn.refresh_traffic_keys().unwrap();
        tws_send_text(&mut ws, r#"{"op":"ping","id":1}"#);
        assert_eq!(recv_text(&mut ws), r#"{"type":"pong","id":1}"#);
        for n in 0..5 {
            assert_delivery(&mut api, &mut ws, "ku", round * 10 + n);
        }
    }
}

#[test]
fn zero_copy_threshold_leaves_tls_connections_on_their_own_path() {
    // rustls encrypts into its own buffer: a large frame reaches a TLS subscriber whole, and no zero-copy send
    // happens for it, while a plaintext subscriber of the same publish gets it zero-copy.
    let cert = Cert::new("zerocopy", "ecdsa", &["localhost"]);
    let (gw, wss_addr) = start(
        &cert,
        &[
            "--set",
            "ws.zerocopy_threshold=8192",
            "--set",
            "tls.plain_listen=127.0.0.1:0",
        ],
    );
    let mut api = Http::connect(gw.api);
    let cfg = client_config(&[&cert], all_versions());
    let mut secure = wss(&cfg, wss_addr, "big");
    let big = format!("\"{}\"", "z".repeat(100_000));
    publish(&mut api, "big", &big);
    assert_eq!(
        recv_text(&mut secure),
        format!("{{\"channel\":\"big\",\"data\":{big}}}")
    );
    assert_eq!(gw.stat("/totals/zerocopy_sends_total"), 0);
    let mut plain = ws_connect(gw.ws, "/ws?channels=big");
    publish(&mut api, "big", &big);
    assert_eq!(
        recv_text(&mut secure),
        format!("{{\"channel\":\"big\",\"data\":{big}}}")
    );
    assert_eq!(
        tws_next_text(&mut plain, READ_TIMEOUT, "plain delivery"),
        format!("{{\"channel\":\"big\",\"data\":{big}}}")
    );
    assert!(gw.wait_stat("/totals/zerocopy_sends_total", 1, READ_TIMEOUT) >= 1);
}

/// Reads from a TLS stream until `needle` shows up in what arrived (or the server closes).
fn tls_read_until(s: &mut StreamOwned<ClientConnection, TcpStream>, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn sse_and_long_poll_over_tls() {
    let cert = Cert::new("fallback", "ecdsa", &["localhost"]);
    let (gw, wss_addr) = start(&cert, &[]);
    let cfg = client_config(&[&cert], all_versions());
    let mut api = Http::connect(gw.api);

    let mut sse = tls_connect(&cfg, wss_addr, "localhost").expect("TLS handshake");
    sse.write_all(
        b"GET /sse?channels=t HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
    )
    .unwrap();
    let head = tls_read_until(&mut sse, "\"welcome\"");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    publish(&mut api, "t", r#"{"over":"tls"}"#);
    let event = tls_read_until(&mut sse, "\"over\"");
    assert!(
        event.contains("data: {\"channel\":\"t\",\"data\":{\"over\":\"tls\"}}"),
        "{event}"
    );

    // A complete response (the long-poll open) leaves over TLS and the connection closes after it.
    let mut poll = tls_connect(&cfg, wss_addr, "localhost").expect("TLS handshake");
    poll.write_all(b"POST /poll HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let answer = tls_read_until(&mut poll, "\"welcome\"");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"key\":\""), "{answer}");
}
