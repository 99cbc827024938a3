//! One client connection as a reactor holds it in its slab. Kept small: an idle connection is this struct, its
//! subscriptions and its place in the channel lists — no buffers.

use super::channels::SubList;
use super::timer::{Timed, TimerLink};
use crate::frame::decode::Decoder;
use crate::pool::{BufId, OutQueue, NO_BUF};
use std::os::fd::RawFd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the upgrade request.
    Handshake,
    /// WebSocket open: the application owns the connection.
    Open,
    /// Our close frame is queued or sent; the client's frames are still decoded, to see its close (data frames
    /// are ignored).
    Closing,
    /// Nothing more is read: after an HTTP error, or after a protocol violation left the input undecodable.
    /// Our last bytes leave, our side shuts down, and input is discarded until EOF or the grace timer.
    Lingering,
}

/// Flag bits in [`Conn::flags`].
pub mod flag {
    /// A server ping is outstanding since the last inbound bytes.
    pub const PING_SENT: u8 = 1;
    /// On the reactor's flush list for this iteration.
    pub const DIRTY: u8 = 2;
    /// Doom the connection once the outbound queue is written.
    pub const CLOSE_AFTER_FLUSH: u8 = 4;
    /// The socket returned EAGAIN; wait for EPOLLOUT before writing again.
    pub const BLOCKED: u8 = 8;
    /// On the reap list: takes no input, queues nothing new, and is freed at the end of the iteration.
    pub const DOOMED: u8 = 16;
    /// Shut our side down (SHUT_WR) once the outbound queue is written (a lingering connection's last bytes).
    pub const SHUT_AFTER_FLUSH: u8 = 32;
    /// Takes zero-copy sends (it was queued a frame of at least `ws.zerocopy_threshold`): its writes go through
    /// its zero-copy ledger (reactor/zerocopy.rs).
    pub const ZEROCOPY: u8 = 64;
    /// A request the handler answers later ([`super::super::Core::hold`]): input is discarded meanwhile.
    pub const HELD: u8 = 128;
}

/// What a connection's frames look like on the wire, in [`Conn::wire`].
pub mod wire {
    /// permessage-deflate: 0 = not negotiated; otherwise the client's window for server messages (8..=15).
    pub const WINDOW: u8 = 0x0F;
    /// The client keeps its compression context across messages: inflate with the connection's own inflater
    /// (`Core::inflate_contexts`, kept outside the connection so that the idle connection stays small).
    pub const CLIENT_CONTEXT: u8 = 0x10;
    /// The application's alternative format (its frames transcoded by [`super::super::Handler::transcode`]).
    pub const ALT_FORMAT: u8 = 0x20;
    /// A streaming HTTP connection: frames leave in the handler's stream form, input is discarded.
    pub const STREAM: u8 = 0x40;
    /// No socket ([`super::super::Core::open_detached`]): frames stay queued until the handler takes them.
    pub const DETACHED: u8 = 0x80;
}

/// Index of a connection's TLS state in the reactor's TLS slab; [`NO_TLS`] for a plaintext connection.
/// An index, not a pointer, so a plaintext connection pays 4 bytes that fit in padding.
pub type TlsId = u32;
pub const NO_TLS: TlsId = u32::MAX;

/// A connection: the core's part, and `app`, the application's part (see [`super::Handler::Conn`]).
pub struct Conn<A> {
    pub fd: RawFd,
    pub state: State,
    pub flags: u8,
    /// Once open: reactor-clock second of the last inbound bytes. During the handshake: reactor-clock microsecond
    /// (wrapping) of the accept, the start of the handshake duration (one field for both keeps an idle connection
    /// small; nothing reads the last inbound second before the upgrade).
    pub last_rx: u32,
    pub timer: TimerLink,
    /// Lent read buffer holding a partial frame, or NO_BUF.
    pub rbuf: BufId,
    /// Lent buffer assembling a fragmented message, or NO_BUF.
    pub msg: BufId,
    /// TLS state, or NO_TLS.
    pub tls: TlsId,
    /// permessage-deflate agreement and format (see [`wire`]).
    pub wire: u8,
    pub decoder: Decoder,
    pub out: OutQueue,
    pub subs: SubList,
    pub app: A,
}

impl<A: Default> Conn<A> {
    pub fn new(fd: RawFd, accepted_us: u32) -> Self {
        Conn {
            fd,
            state: State::Handshake,
            flags: 0,
            last_rx: accepted_us,
            timer: TimerLink::default(),
            rbuf: NO_BUF,
            msg: NO_BUF,
            tls: NO_TLS,
            wire: 0,
            decoder: Decoder::default(),
            out: OutQueue::default(),
            subs: SubList::Empty,
            app: A::default(),
        }
    }
}

impl<A> Conn<A> {
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Open and not doomed: the only connections that take new frames.
    pub fn accepts_frames(&self) -> bool {
        self.state == State::Open && !self.has(flag::DOOMED)
    }
}

impl<A> Timed for Conn<A> {
    fn link(&mut self) -> &mut TimerLink {
        &mut self.timer
    }
}
