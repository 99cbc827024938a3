//! Acks and retransmit of user pushes on a live connection. A push sent with `"ack": true` (and an id) waits on
//! the connection that received it until the client acks its id (acks are cumulative: an ack of id X confirms
//! every push up to X). Unacked, it is sent again, marked `"retry":n`, after `delivery.ack_timeout` and then
//! twice as long each time up to 16 times that (50, 100, 200, 400, 800, 800 ... ms by default), at most
//! `delivery.max_attempts` sends in all. After the last send's wait, or when more than `delivery.max_unacked`
//! pushes wait, the connection is closed with 4010: its pushes stay in the replay store and come back at the
//! reconnect, after the device's last ack. Memory per connection is bounded by the count and by
//! `ws.max_outbound_bytes` of frames (shared with the live delivery, not copied).
//!
//! The retransmit timer is the reactor's millisecond timer (`Core::schedule_ms`): one pending firing per
//! connection at the earliest due push, nothing allocated per delivery beyond the waiting entry.

use super::frames::{self, code};
use super::handler::{Client, Gateway};
use crate::config::Config;
use crate::ids::StreamId;
use crate::pool::OutFrame;
use crate::reactor::{Core, Key};
use std::collections::VecDeque;

/// The longest wait between two sends, in multiples of `delivery.ack_timeout`.
const MAX_BACKOFF_SHIFT: u32 = 4;

/// The retransmit policy, copied out of the config.
pub(super) struct AckPolicy {
    pub timeout_ms: u64,
    pub max_attempts: u32,
    pub max_unacked: usize,
    pub max_bytes: usize,
}

impl AckPolicy {
    pub fn from_config(c: &Config) -> AckPolicy {
        AckPolicy {
            timeout_ms: c.delivery.ack_timeout,
            max_attempts: c.delivery.max_attempts,
            max_unacked: c.delivery.max_unacked as usize,
            max_bytes: c.ws.max_outbound_bytes,
        }
    }

    /// How long to wait for the ack after send number `sends` (1 = the first delivery).
    fn wait_after(&self, sends: u32) -> u64 {
        self.timeout_ms << (sends.saturating_sub(1)).min(MAX_BACKOFF_SHIFT)
    }
}

/// One push waiting for its ack.
struct Waiting {
    id: StreamId,
    frame: OutFrame,
    sends: u32,
    /// Reactor milliseconds at which it is sent again (or, after the last send, given up).
    due: u64,
}

/// A connection's pushes waiting for an ack, oldest first.
pub struct PendingAcks {
    waiting: VecDeque<Waiting>,
    bytes: usize,
    /// The millisecond timer pending for this connection (`u64::MAX` = none).
    timer_at: u64,
}

impl Default for PendingAcks {
    fn default() -> Self {
        PendingAcks {
            waiting: VecDeque::new(),
            bytes: 0,
            timer_at: u64::MAX,
        }
    }
}

impl PendingAcks {
    /// Drops what an ack of `id` confirms; returns how many.
    pub fn ack(&mut self, id: StreamId) -> usize {
        let before = self.waiting.len();
        let mut freed = 0;
        self.waiting.retain(|w| {
            let keep = w.id > id;
            if !keep {
                freed += w.frame.len();
            }
            keep
        });
        self.bytes -= freed;
        if self.waiting.is_empty() && self.waiting.capacity() > 64 {
            self.waiting = VecDeque::new();
        }
        before - self.waiting.len()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

impl Gateway {
    /// Whether connection `key` can take one more push that wants an ack; if not, it is closed with 4010 (the
    /// push is not sent: it waits in the replay store with the others).
    pub(super) fn room_for_ack(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        frame_len: usize,
    ) -> bool {
        let p = &self.policy.acks;
        let pending = core
            .app(key)
            .state
            .as_deref()
            .and_then(|s| s.acks.as_deref());
        let Some(pending) = pending else {
            return true;
        };
        let over = pending.len() >= p.max_unacked
            || (!pending.is_empty() && pending.bytes + frame_len > p.max_bytes);
        if over {
            self.local.tally.unacked_overflow_closes_total += 1;
            core.close(key, code::NOT_ACKED, "too many unacknowledged messages");
        }
        !over
    }

    /// Remembers a push with ack sent to `key` just now, and makes sure its timer fires when it is due.
    pub(super) fn await_ack(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        id: StreamId,
        frame: &OutFrame,
    ) {
        let due = core.now_ms() + self.policy.acks.wait_after(1);
        let Some(s) = core.app_mut(key).state.as_deref_mut() else {
            return;
        };
        let pending = s.acks.get_or_insert_with(Default::default);
        pending.waiting.push_back(Waiting {
            id,
            frame: frame.clone(),
            sends: 1,
            due,
        });
        pending.bytes += frame.len();
        if due < pending.timer_at {
            pending.timer_at = due;
            core.schedule_ms(key, due);
        }
    }

    /// The connection's millisecond timer: resends what is due, closes the connection when a push has had all
    /// its sends, and sets the timer for the next due push.
    pub(super) fn retransmit(&mut self, core: &mut Core<Client>, key: Key) {
        let now = core.now_ms();
        // While the socket has not taken what is queued, the ack cannot have come: wait, without counting sends
        // (a connection that never drains is the slow-consumer limit's business).
        let stalled = core.queued_bytes(key) > 0;
        let policy = &self.policy.acks;
        let Some(pending) = core
            .app_mut(key)
            .state
            .as_deref_mut()
            .and_then(|s| s.acks.as_deref_mut())
        else {
            return;
        };
        if now < pending.timer_at {
            return; // an earlier firing, superseded; the one at timer_at is still coming
        }
        pending.timer_at = u64::MAX;
        let mut resend: Vec<(OutFrame, u32)> = Vec::new();
        let mut next = u64::MAX;
        for w in pending.waiting.iter_mut() {
            if w.due <= now {
                if stalled {
                    w.due = now + policy.timeout_ms;
                } else if w.sends >= policy.max_attempts {
                    self.local.tally.ack_timeout_closes_total += 1;
                    return core.close(key, code::NOT_ACKED, "ack timeout");
                } else {
                    resend.push((w.frame.clone(), w.sends));
                    w.sends += 1;
                    w.due = now + policy.wait_after(w.sends);
                }
            }
            next = next.min(w.due);
        }
        if next != u64::MAX {
            pending.timer_at = next;
            core.schedule_ms(key, next);
        }
        self.local.tally.ack_retransmits_total += resend.len() as u64;
        for (frame, n) in resend {
            core.send(key, frames::retry(&frame, n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_entries_stay_small_and_backoff_doubles_to_a_cap() {
        // docs/PROTOCOL.md promises about 40 bytes per waiting push (plus the shared frame it points to).
        let size = std::mem::size_of::<Waiting>();
        assert!(size <= 40, "a waiting push grew to {size} bytes");
        let p = AckPolicy {
            timeout_ms: 50,
            max_attempts: 10,
            max_unacked: 1,
            max_bytes: 1,
        };
        let waits: Vec<u64> = (1..=7).map(|n| p.wait_after(n)).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 800, 800]);
    }

    #[test]
    fn an_ack_confirms_everything_up_to_its_id() {
        let mut p = PendingAcks::default();
        let frame: OutFrame = std::rc::Rc::new(std::sync::Arc::new(vec![0u8; 10]));
        for id in [3, 1, 5] {
            p.waiting.push_back(Waiting {
                id: StreamId(id, 0),
                frame: frame.clone(),
                sends: 1,
                due: 0,
            });
            p.bytes += 10;
        }
        assert_eq!(p.ack(StreamId(3, 0)), 2);
        assert_eq!((p.len(), p.bytes), (1, 10));
        assert_eq!(p.ack(StreamId(2, 0)), 0);
        assert_eq!(p.ack(StreamId(9, 9)), 1);
        assert!(p.is_empty());
    }

    /// The server's frames read so far: (opcode, payload as text; a close frame's code as its decimal number
    /// first); frames here are short (one-byte length).
    fn read_frames(client: &mut std::os::unix::net::UnixStream) -> Vec<(u8, String)> {
        use std::io::Read;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = client.read(&mut chunk) {
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf);
        let Some(end) = text.find("\r\n\r\n").filter(|_| text.starts_with("HTTP/")) else {
            return split(&buf);
        };
        split(&buf[end + 4..])
    }

    fn split(mut buf: &[u8]) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        while buf.len() >= 2 {
            let len = (buf[1] & 0x7f) as usize;
            assert!(
                len < 126 && buf.len() >= 2 + len,
                "unexpected frame in {buf:?}"
            );
            let (opcode, payload) = (buf[0] & 0x0f, &buf[2..2 + len]);
            let text = match (opcode, payload) {
                (8, [hi, lo, reason @ ..]) => {
                    format!(
                        "{} {}",
                        u16::from_be_bytes([*hi, *lo]),
                        String::from_utf8_lossy(reason)
                    )
                }
                _ => String::from_utf8_lossy(payload).into(),
            };
            out.push((opcode, text));
            buf = &buf[2 + len..];
        }
        out
    }

    /// A gateway on the hand-driven reactor (its clock moves only when told) with `delivery.max_attempts` = 7, and
    /// one client of user `u1`, upgraded and past its welcome frame.
    fn user_on_a_hand_driven_reactor() -> (
        crate::reactor::harness::Harness<Gateway>,
        std::os::unix::net::UnixStream,
    ) {
        use crate::gateway::{stats::GatewayStats, Shared};
        use std::io::Write;
        use std::sync::Arc;

        let mut c = Config::default();
        c.auth.mode = crate::config::AuthMode::Jwt;
        c.auth.hs256_secret = "secret".into();
        c.delivery.max_attempts = 7;
        let config = Arc::new(c);
        let shared = Arc::new(Shared::from_config(&config).unwrap());
        let gateway = Gateway::new(&config, shared, 0, Arc::new(GatewayStats::default()));
        let mut h = crate::reactor::harness::Harness::new(config, gateway).unwrap();
        let mut client = h.connect().unwrap();
        let claims =
            serde_json::json!({"sub": "u1", "exp": crate::ids::sid::unix_ms() / 1000 + 300});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        let request = format!(
            "GET /ws?since=$&token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        h.step().unwrap();
        client.write_all(request.as_bytes()).unwrap();
        for _ in 0..3 {
            h.step().unwrap();
        }
        let welcome = read_frames(&mut client);
        assert!(
            welcome.len() == 1 && welcome[0].1.contains("welcome"),
            "{welcome:?}"
        );
        (h, client)
    }

    fn push_with_ack(h: &crate::reactor::harness::Harness<Gateway>, data: &str) {
        use crate::gateway::command::Command as GatewayCommand;
        let id = StreamId(5, 0);
        h.command(crate::reactor::Command::App(GatewayCommand::PublishUser {
            user: "u1".into(),
            device: None,
            tenant: None,
            frame: frames::user_push("u1", data, Some(id), false, true),
            id: Some(id),
            ack: true,
        }));
    }

    /// Resends exactly at 50, 100, 200, 400, 800, 800 ms after the previous send, then close 4010 one wait after
    /// the last of `max_attempts` sends.
    #[test]
    fn retransmits_follow_the_backoff_on_the_reactor_clock() {
        let (mut h, mut client) = user_on_a_hand_driven_reactor();
        push_with_ack(&h, "1");
        h.step().unwrap();
        let first = r#"{"user":"u1","data":1,"id":"5-0","ack":true}"#;
        assert_eq!(read_frames(&mut client), [(1, first.to_string())]);
        for (n, wait) in [50, 100, 200, 400, 800, 800].into_iter().enumerate() {
            h.advance(wait - 1);
            h.step().unwrap();
            assert_eq!(
                read_frames(&mut client),
                [],
                "retry {} before {wait} ms",
                n + 1
            );
            h.advance(1);
            h.step().unwrap();
            let retry = format!(
                r#"{{"user":"u1","data":1,"id":"5-0","ack":true,"retry":{}}}"#,
                n + 1
            );
            assert_eq!(
                read_frames(&mut client),
                [(1, retry)],
                "retry {} after {wait} ms",
                n + 1
            );
        }
        h.advance(799);
        h.step().unwrap();
        assert_eq!(read_frames(&mut client), []);
        h.advance(1);
        h.step().unwrap();
        assert_eq!(
            read_frames(&mut client),
            [(8, "4010 ack timeout".to_string())]
        );
    }

    /// While the socket has not taken the push, nothing is resent and no send is counted: seconds of a stalled
    /// reader end neither in resends nor in 4010; once it has read, the waits start over.
    #[test]
    fn nothing_is_resent_while_the_socket_has_not_taken_the_push() {
        use std::io::Read;
        let (mut h, mut client) = user_on_a_hand_driven_reactor();
        h.limit_send_buffer(0, 1024);
        push_with_ack(&h, &format!("\"{}\"", "x".repeat(100_000)));
        for _ in 0..100 {
            h.advance(50);
            h.step().unwrap();
        }
        let mut got = Vec::new();
        let mut chunk = [0u8; 65536];
        for _ in 0..10_000 {
            match client.read(&mut chunk) {
                Ok(n @ 1..) => got.extend_from_slice(&chunk[..n]),
                _ => {
                    h.step().unwrap();
                    if got.ends_with(b"\"ack\":true}") {
                        break;
                    }
                }
            }
        }
        assert!(got.ends_with(b"\"ack\":true}"), "{} bytes", got.len());
        let text = String::from_utf8_lossy(&got);
        assert_eq!(text.matches("\"retry\"").count(), 0);
        h.advance(50);
        h.step().unwrap();
        for _ in 0..100 {
            match client.read(&mut chunk) {
                Ok(n @ 1..) => got.extend_from_slice(&chunk[..n]),
                _ => h.step().map(|_| ()).unwrap(),
            }
        }
        assert!(got.ends_with(b"\"ack\":true,\"retry\":1}"));
    }
}
