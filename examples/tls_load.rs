//! Load helper for bench/tls_memory.sh (TLS memory and fan-out figures). Not part of the gateway.
//!
//! - `tls_load cert DIR` writes an ECDSA P-256 certificate for localhost (cert.pem, key.pem) into DIR.
//! - `tls_load encrypt DIR SIZE COUNT` times the gateway's per-record encryption (wsgate::tls::Session, the
//!   code the reactor runs per frame per connection) for COUNT frames of SIZE bytes, in memory, after a real
//!   handshake with a rustls client: the TLS cost per delivery without syscalls or scheduling noise.
//! - `tls_load idle ADDR COUNT [--tls CERT] [--report FILE]` opens COUNT WebSocket connections (wss with --tls),
//!   each subscribed to channel `idle`, keeps only the sockets (the client's TLS state is dropped: the server
//!   sees idle connections), prints `open N` after every 1000 and `holding N`, then waits for stdin to close.
//! - `tls_load fanout ADDR API COUNT MESSAGES [--tls CERT] [--paced]` opens COUNT subscribers of channel `f`, publishes
//!   MESSAGES small messages through the API, waits until every subscriber got all of them and prints
//!   `deliveries=D seconds=S`. It prints `subscribed N` and waits for a line on stdin before publishing, so a
//!   driver can sample the server between set-up and fan-out. Unpaced, all publishes are pipelined (many frames
//!   per connection per write); `--paced` waits for each publish's response and 1 ms more before the next, so
//!   each message leaves alone (one write, and with TLS one record, per frame per connection).
//!
//! Loopback only; every loop is bounded by its arguments and a deadline.

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    match args.first().map(String::as_str) {
        Some("cert") => cert(&args[1]),
        Some("encrypt") => {
            encrypt_bench(&args[1], args[2].parse().unwrap(), args[3].parse().unwrap())
        }
        Some("idle") => idle(
            args[1].parse().unwrap(),
            args[2].parse().unwrap(),
            flag("--tls"),
        ),
        Some("fanout") => fanout(
            args[1].parse().unwrap(),
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            flag("--tls"),
            args.iter().any(|a| a == "--paced"),
        ),
        _ => {
            eprintln!("usage: tls_load cert DIR | idle ADDR COUNT [--tls CERT] | fanout ADDR API COUNT MESSAGES [--tls CERT]");
            std::process::exit(2);
        }
    }
}

fn cert(dir: &str) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(format!("{dir}/cert.pem"), cert.pem()).unwrap();
    std::fs::write(format!("{dir}/key.pem"), key.serialize_pem()).unwrap();
}

fn client_config(cert_pem: &str) -> Arc<ClientConfig> {
    let text = std::fs::read(cert_pem).unwrap();
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &text[..]) {
        let c: CertificateDer<'static> = c.unwrap();
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Full handshakes only, so every server connection pays the same.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Reads an HTTP response head (up to the blank line) and checks for 101.
fn read_101(s: &mut impl Read) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).expect("upgrade response");
        head.push(b[0]);
        assert!(head.len() < 4096);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(b),
            Stream::Tls(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(b),
            Stream::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One upgraded connection subscribed to `channel`.
fn connect(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>, channel: &str) -> Stream {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut s = match tls {
        None => Stream::Plain(tcp),
        Some(cfg) => {
            let conn =
                ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
                    .unwrap();
            Stream::Tls(Box::new(StreamOwned::new(conn, tcp)))
        }
    };
    write!(
        s,
        "GET /ws?channels={channel} HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}"
    )
    .unwrap();
    s.flush().unwrap();
    read_101(&mut s);
    s
}

fn idle(addr: SocketAddr, count: usize, tls: Option<String>) {
    let cfg = tls.as_deref().map(client_config);
    let threads = 4;
    let per = count.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let n = per.min(count.saturating_sub(t * per));
                (0..n)
                    .map(|_| match connect(addr, cfg.as_ref(), "idle") {
                        Stream::Plain(s) => s,
                        // Keep the socket, drop the client's TLS state: the server holds an idle session.
                        Stream::Tls(s) => s.into_parts().1,
                    })
                    .collect::<Vec<TcpStream>>()
            })
        })
        .collect();
    let held: Vec<TcpStream> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    println!("holding {}", held.len());
    std::io::stdout().flush().unwrap();
    // Hold until the driver closes stdin.
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {
        line.clear();
    }
    drop(held);
}

fn fanout(
    addr: SocketAddr,
    api: SocketAddr,
    count: usize,
    messages: usize,
    tls: Option<String>,
    paced: bool,
) {
    let cfg = tls.as_deref().map(client_config);
    let mut subs: Vec<Stream> = (0..count)
        .map(|_| connect(addr, cfg.as_ref(), "f"))
        .collect();

    // The driver samples the server's CPU time between these two points.
    println!("subscribed {count}");
    std::io::stdout().flush().unwrap();
    let mut go = String::new();
    let _ = std::io::stdin().lock().read_line(&mut go);

    let started = Instant::now();
    // Publish everything, pipelined on one keep-alive API connection.
    let publisher = std::thread::spawn(move || {
        let mut s = TcpStream::connect(api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut reqs: Vec<Vec<u8>> = Vec::new();
        for n in 0..messages {
            let body = format!("{{\"channel\":\"f\",\"data\":{{\"n\":{n},\"pad\":\"0123456789abcdef0123456789abcdef\"}}}}");
            reqs.push(
                format!(
                    "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            );
        }
        if paced {
            let mut buf = vec![0u8; 4096];
            for req in &reqs {
                s.write_all(req).unwrap();
                // One response: head, then a body of Content-Length bytes.
                let mut text = Vec::new();
                loop {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0);
                    text.extend_from_slice(&buf[..n]);
                    if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&text[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .split("content-length:")
                            .nth(1)
                            .and_then(|v| v.lines().next())
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap();
                        if text.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                // Let the reactors send this message before the next one arrives.
                std::thread::sleep(Duration::from_millis(1));
            }
            return;
        }
        s.write_all(&reqs.concat()).unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        let mut text = Vec::new();
        while got < messages {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            text.extend_from_slice(&buf[..n]);
            got = text.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
        }
    });

    // Each reader thread drains its share of subscribers: MESSAGES frames each.
    let threads = 2;
    let per = subs.len().div_ceil(threads);
    let mut handles = Vec::new();
    while !subs.is_empty() {
        let take = per.min(subs.len());
        let mine: Vec<Stream> = subs.drain(..take).collect();
        handles.push(std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut deliveries = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            for mut s in mine {
                // Small unmasked server text frames: 2-byte header + payload; count frames by walking headers.
                let mut pending: Vec<u8> = Vec::new();
                let mut frames = 0;
                while frames < messages {
                    assert!(Instant::now() < deadline, "fan-out did not complete");
                    let n = s.read(&mut buf).expect("subscriber read");
                    assert!(n > 0, "subscriber closed");
                    pending.extend_from_slice(&buf[..n]);
                    let mut off = 0;
                    while pending.len() >= off + 2 {
                        let len = (pending[off + 1] & 0x7f) as usize;
                        let (hdr, len) = if len == 126 {
                            if pending.len() < off + 4 {
                                break;
                            }
                            (
                                4,
                                u16::from_be_bytes([pending[off + 2], pending[off + 3]]) as usize,
                            )
                        } else {
                            (2, len)
                        };
                        if pending.len() < off + hdr + len {
                            break;
                        }
                        off += hdr + len;
                        frames += 1;
                    }
                    pending.drain(..off);
                }
                deliveries += frames;
            }
            deliveries
        }));
    }
    let deliveries: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    publisher.join().unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!("deliveries={deliveries} seconds={secs:.3}");
}

fn encrypt_bench(dir: &str, size: usize, count: usize) {
    let acceptor =
        wsgate::tls::TlsAcceptor::load(&format!("{dir}/cert.pem"), &format!("{dir}/key.pem"))
            .unwrap();
    let mut server = acceptor.connection().unwrap();
    let mut client = ClientConnection::new(
        client_config(&format!("{dir}/cert.pem")),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    // In-memory handshake.
    let (mut to_server, mut plain, mut to_client) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..20 {
        while client.wants_write() {
            client.write_tls(&mut to_server).unwrap();
        }
        let outcome = server.read(&mut to_server, &mut plain, &mut to_client);
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        to_server.drain(..outcome.consumed);
        let mut rd = &to_client[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        to_client.clear();
        client.process_new_packets().unwrap();
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    assert!(!server.is_handshaking());
    let frame = vec![b'x'; size];
    let mut out = vec![0u8; size + 1024];
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..count {
        bytes += server.encrypt(&frame, &mut out).unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "encrypt size={size} count={count} version={:?} per_record={:.3} us wire_bytes_per_record={}",
        server.protocol_version(),
        secs * 1e6 / count as f64,
        bytes / count
    );
}
