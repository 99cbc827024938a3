//! The gateway on a hand-driven reactor (`reactor::harness`), run from a script of bytes: the reactor state
//! machine's fuzz target (fuzz/) and the seeded scenario tests (tests/reactor_script.rs) both go through
//! [`run`]. Each byte string decodes to a bounded sequence of client actions (connect, upgrade, frames that are
//! valid, broken or fragmented, protocol requests, raw bytes, not reading, closing, shrinking send buffers),
//! injected readiness (spurious, errors), clock jumps and publishes — interleaved with loop iterations. At the end
//! every client goes away, and the reactor must have let go of everything: no connection, no buffer, no channel.

use super::command::Command as GatewayCommand;
use super::stats::GatewayStats;
use super::{Gateway, Shared};
use crate::config::Config;
use crate::reactor::harness::Harness;
use crate::reactor::{Command, Tally};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// Actions per script at most (so every input runs in bounded time).
const MAX_OPS: usize = 256;
/// Clients alive at once at most.
const MAX_CLIENTS: usize = 12;

/// The limits the script runs under: small, so that misbehaviour reaches them quickly.
pub fn config() -> Config {
    let mut c = Config::default();
    c.server.handshake_timeout = 2;
    c.server.max_request_head = 2048;
    c.server.max_buffered_bytes = 1 << 20;
    c.ws.max_message_size = 64 * 1024;
    c.ws.max_outbound_bytes = 64 * 1024;
    c.ws.ping_interval = 2;
    c.ws.idle_timeout = 5;
    c.ws.message_timeout = 4;
    c.ws.max_channels_per_connection = 4;
    c.ws.error_budget = 3;
    c.debug.echo_path = "/echo".into();
    c.debug.demo_path = "/demo".into();
    c.transport.poll_timeout = 1;
    c.transport.session_ttl = 5;
    c
}

/// Reads a script byte by byte; an exhausted script reads zeros.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// Runs one script; returns the reactor's counters (what the script reached). Err describes a broken invariant
/// (the caller panics on it).
pub fn run(data: &[u8]) -> Result<Tally, String> {
    let config = Arc::new(config());
    let shared = Arc::new(Shared::from_config(&config).map_err(|e| e.to_string())?);
    let gateway = Gateway::new(&config, shared, 0, Arc::new(GatewayStats::default()));
    let mut h = Harness::new(config, gateway).map_err(|e| format!("harness: {e}"))?;
    let mut clients: Vec<UnixStream> = Vec::new();
    // Whether each client was sent an upgrade request yet.
    let mut upgraded: Vec<bool> = Vec::new();
    let mut script = Script(data);
    let step = |h: &mut Harness<Gateway>| h.step().map(|_| ()).map_err(|e| format!("step: {e}"));

    for _ in 0..MAX_OPS {
        if script.done() {
            break;
        }
        let op = script.byte() % 12;
        let pick = script.byte() as usize;
        let client = if clients.is_empty() {
            None
        } else {
            Some(pick % clients.len())
        };
        match (op, client) {
            (0, _) if clients.len() < MAX_CLIENTS => {
                clients.push(h.connect().map_err(|e| format!("connect: {e}"))?);
                upgraded.push(false);
            }
            (1, Some(pick)) => {
                // The oldest client still without a request (a second request on one connection is rarely
                // interesting: it is a protocol error), else the picked one.
                let i = upgraded.iter().position(|u| !u).unwrap_or(pick);
                upgraded[i] = true;
                // WebSocket upgrades, and the other requests of the client listener: an event stream, a long-poll
                // session (detached, it outlives its request until `transport.session_ttl`), ops and polls for
                // sessions that do not exist, a body that never completes, the demo page.
                let path = match script.byte() % 8 {
                    0 => "/echo",
                    1 => "/ws",
                    2 => "/ws?channels=a,b",
                    3 => "/ws?channels=c",
                    4 => "GET /sse?channels=a,c HTTP/1.1\r\nHost: x\r\n\r\n",
                    5 => "POST /poll?channels=a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                    6 => "POST /sse/op?sid=1&key=00 HTTP/1.1\r\nContent-Length: 13\r\n\r\n{\"op\":\"ping\"}",
                    _ => "POST /poll?sid=1&key=0 HTTP/1.1\r\nContent-Length: 50\r\n\r\n[{\"op\"",
                };
                let request = if path.contains(' ') {
                    path.to_string()
                } else {
                    format!(
                        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                    )
                };
                send(&mut clients[i], request.as_bytes());
            }
            (2, Some(i)) => {
                // Mostly a well-formed frame (text, binary, continuation, ping, pong; FIN or not; ASCII text), so
                // scripts get past the first frame; sometimes anything at all.
                const VALID: [u8; 8] = [0x81, 0x82, 0x01, 0x02, 0x00, 0x80, 0x89, 0x8A];
                let wild = script.byte() % 4 == 0;
                let b0 = if wild {
                    script.byte()
                } else {
                    VALID[script.byte() as usize % VALID.len()]
                };
                let len = match script.byte() % 4 {
                    _ if !wild && b0 & 0x08 != 0 => script.byte() as usize % 126,
                    0 => script.byte() as usize % 126,
                    1 => 126 + script.byte() as usize * 64,
                    2 => 70_000,
                    _ => script.byte() as usize,
                };
                let masked = wild || script.byte() % 16 != 0;
                let mut payload = script.bytes(len.min(512)).to_vec();
                if !wild {
                    payload.iter_mut().for_each(|b| *b &= 0x7f);
                }
                send(&mut clients[i], &frame(b0, len, masked, &payload));
            }
            (3, Some(i)) => {
                let n = script.byte() as usize;
                let raw = script.bytes(n).to_vec();
                send(&mut clients[i], &raw);
            }
            (4, Some(i)) => {
                let text: &[u8] = match script.byte() % 8 {
                    0 => br#"{"op":"subscribe","channels":["a","c"],"id":1}"#,
                    1 => br#"{"op":"unsubscribe","channels":["a"],"id":2}"#,
                    2 => br#"{"op":"ping","id":3}"#,
                    3 => br#"{"op":"msg","data":{"x":1},"id":4}"#,
                    4 => br#"{"op":"subscribe","channels":["a","b","c","d","e","f"]}"#,
                    5 => br#"{"op":"refresh","token":"x"}"#,
                    6 => b"not json",
                    _ => br#"{"op":"ack","id":"1-0"}"#,
                };
                // Whole, or split into a first fragment and a continuation.
                if script.byte() % 2 == 0 {
                    send(&mut clients[i], &frame(0x81, text.len(), true, text));
                } else {
                    let cut = text.len() / 2;
                    send(&mut clients[i], &frame(0x01, cut, true, &text[..cut]));
                    if script.byte() % 2 == 0 {
                        send(&mut clients[i], &frame(0x89, 2, true, b"hi"));
                    }
                    let rest = &text[cut..];
                    send(&mut clients[i], &frame(0x80, rest.len(), true, rest));
                }
            }
            (5, Some(i)) => {
                let mut sink = vec![0u8; 256 * (1 + script.byte() as usize)];
                let _ = clients[i].read(&mut sink);
            }
            (6, Some(i)) => {
                if script.byte() % 2 == 0 {
                    clients.swap_remove(i);
                    upgraded.swap_remove(i);
                } else {
                    let _ = clients[i].shutdown(std::net::Shutdown::Write);
                }
            }
            (7, _) => {
                let flags = script.byte();
                h.inject(pick, flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
            }
            (8, _) => h.limit_send_buffer(pick, 1024),
            (9, _) => h.advance(250 * (1 + script.byte() as u64 % 16)),
            (10, _) => {
                let size = match script.byte() % 4 {
                    0 => 10,
                    1 => 2000,
                    _ => 40_000,
                };
                let data = format!("\"{}\"", "x".repeat(size));
                let cmd = match script.byte() % 3 {
                    0 => Command::Broadcast {
                        frame: crate::protocol::broadcast_message(&data),
                        since: std::time::Instant::now(),
                    },
                    1 => Command::Publish {
                        channel: "a".into(),
                        frame: crate::protocol::channel_message("a", &data),
                        since: std::time::Instant::now(),
                    },
                    _ => Command::App(GatewayCommand::PublishSid {
                        sid: pick as u64,
                        frame: crate::protocol::broadcast_message(&data),
                    }),
                };
                h.command(cmd);
            }
            (11, _) => {
                for _ in 0..1 + script.byte() % 4 {
                    step(&mut h)?;
                }
            }
            _ => {}
        }
        step(&mut h)?;
    }

    // Everyone leaves; within the longest grace and timeout the reactor must let go of everything.
    clients.clear();
    for _ in 0..20 {
        step(&mut h)?;
        h.advance(500);
    }
    let (buffers, bytes) = h.buffers();
    if h.connections() != 0 || buffers != 0 || bytes != 0 || h.channels() != 0 {
        return Err(format!(
            "after every client left: {} connections, {buffers} buffers ({bytes} bytes), {} channels",
            h.connections(),
            h.channels()
        ));
    }
    Ok(h.tally())
}

/// A client frame: first byte `b0` as given (FIN, RSV, opcode — possibly invalid), a length field for `len`,
/// a mask when `masked`, and whatever of the payload the script had (a shorter payload leaves a partial frame).
fn frame(b0: u8, len: usize, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![b0];
    let mask_bit = if masked { 0x80 } else { 0 };
    if len < 126 {
        f.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        f.push(mask_bit | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(mask_bit | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    if masked {
        f.extend_from_slice(&mask);
    }
    f.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| if masked { b ^ mask[i % 4] } else { *b }),
    );
    f
}

/// Best effort: a client whose socket is full or closed just loses the bytes.
fn send(client: &mut UnixStream, bytes: &[u8]) {
    let _ = client.write(bytes);
}
