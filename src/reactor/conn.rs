//! One client connection as a reactor holds it in its slab. Kept small: an idle connection is this struct, its
//! subscriptions and its place in the channel lists — no buffers.

use super::timer::{Timed, TimerLink};
use crate::channels::SubList;
use crate::frame::decode::Decoder;
use crate::gateway::ClientState as ConnSession;
use crate::pool::{BufId, OutQueue, NO_BUF};
use std::os::fd::RawFd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the upgrade request.
    Handshake,
    /// WebSocket open.
    Open,
    /// We sent a close frame and wait for the client's (data frames are ignored).
    Closing,
    /// An HTTP error was sent and our side shut down; input is discarded until EOF or the grace timer.
    Lingering,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Not yet known (during the handshake).
    None,
    /// The gateway endpoint: the JSON client protocol.
    Gateway,
    /// The debug echo endpoint.
    Echo,
}

/// Flag bits in [`Conn::flags`].
pub mod flag {
    /// A server ping is outstanding since the last inbound bytes.
    pub const PING_SENT: u8 = 1;
    /// On the reactor's flush list for this iteration.
    pub const DIRTY: u8 = 2;
    /// Close the socket once the outbound queue is written.
    pub const CLOSE_AFTER_FLUSH: u8 = 4;
    /// The socket returned EAGAIN; wait for EPOLLOUT before writing again.
    pub const BLOCKED: u8 = 8;
}

/// Index of a connection's TLS state in the reactor's session slab; [`NO_TLS`] for a plaintext connection.
/// An index, not a pointer, so a plaintext connection pays 4 bytes that fit in padding (Conn stays 128 bytes).
pub type TlsId = u32;
pub const NO_TLS: TlsId = u32::MAX;

pub struct Conn {
    pub fd: RawFd,
    pub state: State,
    pub endpoint: Endpoint,
    pub flags: u8,
    /// Malformed client frames so far (the error budget).
    pub errors: u8,
    /// Reactor-clock second of the last inbound bytes.
    pub last_rx: u32,
    pub timer: TimerLink,
    /// Lent read buffer holding a partial frame, or NO_BUF.
    pub rbuf: BufId,
    /// Lent buffer assembling a fragmented message, or NO_BUF.
    pub msg: BufId,
    /// TLS state (issue 5), or NO_TLS.
    pub tls: TlsId,
    pub decoder: Decoder,
    pub out: OutQueue,
    pub subs: SubList,
    /// Socket id (src/ids/sid.rs), given at the upgrade on the gateway endpoint; 0 before.
    pub sid: u64,
    /// Identity, token expiry, heartbeat and message rates; None for an anonymous connection that has not sent a
    /// request yet (src/gateway/mod.rs).
    pub session: Option<Box<ConnSession>>,
}

impl Conn {
    pub fn new(fd: RawFd, now: u32) -> Self {
        Conn {
            fd,
            state: State::Handshake,
            endpoint: Endpoint::None,
            flags: 0,
            errors: 0,
            last_rx: now,
            timer: TimerLink::default(),
            rbuf: NO_BUF,
            msg: NO_BUF,
            tls: NO_TLS,
            decoder: Decoder::default(),
            out: OutQueue::default(),
            subs: SubList::Empty,
            sid: 0,
            session: None,
        }
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

impl Timed for Conn {
    fn link(&mut self) -> &mut TimerLink {
        &mut self.timer
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn idle_connection_stays_small() {
        // The per-connection budget is 256 bytes of user-space RSS for an idle connection; this struct is most
        // of it (bench/RESULTS.md has the measured figure). 128 before socket ids and sessions: +8 for the sid,
        // +8 for the pointer to the (optional, boxed) session. TLS state lives elsewhere and costs a 4-byte index
        // that fits in padding.
        let size = std::mem::size_of::<super::Conn>();
        println!("size_of::<Conn>() = {size}");
        assert!(size <= 144, "Conn grew to {size} bytes");
    }
}
