//! The seam between the event loop and the application. The loop owns sockets, buffers, framing, queues,
//! timers and teardown; the application (src/gateway/) decides what an upgrade may do and what a message means,
//! and acts only through [`Core`]. Dispatch is static: the reactor is generic over its handler.
//!
//! Re-entrancy rules, which the teardown design makes simple:
//! - every hook runs at a point of the loop where no connection is being walked, so a hook may queue, close or
//!   (un)subscribe any connection, including the one it was called for;
//! - closing never frees anything during the hook: the connection stays readable through [`Core`] until the end
//!   of the loop iteration, where [`Handler::on_close`] runs (once) and the reactor frees it.

use super::command::Command;
use super::core::Core;
use crate::frame::handshake::{Reject, Request};
use crate::pool::SharedFrame;
use std::net::IpAddr;
use std::os::fd::RawFd;

/// Index of a connection in its reactor's slab: valid from acceptance until the end of the iteration in which
/// [`Handler::on_close`] ran (or the connection was dropped before it opened).
pub type Key = usize;

pub trait Handler {
    /// The application's state of one connection, kept inline in the reactor's slab (keep it small: every idle
    /// connection pays for it).
    type Conn: Default;
    /// The application's commands, carried by [`Command::App`].
    type Command: Send + 'static;

    /// A connection was accepted from `peer` (before any byte is read). `Err` refuses it with that HTTP status.
    fn on_accept(
        &mut self,
        core: &mut Core<Self::Conn>,
        peer: Option<IpAddr>,
    ) -> Result<(), Reject>;

    /// A complete HTTP request on a new connection: its head and its body (`Content-Length` bytes, at most
    /// `ws.max_message_size`; the core answers 413 beyond, and the handshake timeout bounds how long head and body
    /// may take). The handler routes it and answers with a [`Reply`], the bytes to send written into `response`:
    /// - a WebSocket upgrade: it checks the request (`frame::handshake::check_upgrade`, after its own routing so an
    ///   unknown path is a 404, not a 400), writes the 101 response (`frame::handshake::write_switching`) and any
    ///   first frames, sets up the connection (app state, subscriptions, its timer) and returns
    ///   [`Reply::WebSocket`]: the connection is then open;
    /// - a streaming HTTP response: the same with the response head and first bytes in the handler's stream form,
    ///   returning [`Reply::Stream`];
    /// - a complete HTTP response ([`Reply::Respond`]): sent, then the connection closes.
    ///
    /// Refuse with `Err` before changing anything; the core answers with that HTTP error.
    fn on_http(
        &mut self,
        core: &mut Core<Self::Conn>,
        key: Key,
        req: &Request<'_>,
        body: &[u8],
        response: &mut Vec<u8>,
    ) -> Result<Reply, Reject>;

    /// A complete text or binary message on an open connection (fragments already joined, text already valid
    /// UTF-8).
    fn on_message(&mut self, core: &mut Core<Self::Conn>, key: Key, opcode: u8, payload: &[u8]);

    /// A ping or pong frame from an open connection. False = over the connection's budget for control frames:
    /// the ping gets no pong (the handler may also close the connection).
    fn on_control(&mut self, core: &mut Core<Self::Conn>, key: Key) -> bool;

    /// The timer of an open connection (set with [`Core::schedule`]) fired.
    fn on_timer(&mut self, core: &mut Core<Self::Conn>, key: Key);

    /// A millisecond timer of an open connection (set with [`Core::schedule_ms`]) fired. It may be one the
    /// handler no longer needs: nothing being due then is not an error.
    fn on_ms_timer(&mut self, core: &mut Core<Self::Conn>, key: Key);

    /// An open connection left the open state (closed by either side, or dropped). Its app state, subscriptions
    /// and identity are still readable; queueing on it does nothing. Runs once, at the end of the iteration.
    fn on_close(&mut self, core: &mut Core<Self::Conn>, key: Key);

    /// An application command from another thread.
    fn on_command(&mut self, core: &mut Core<Self::Conn>, cmd: Self::Command);

    /// A publication with an offset in its channel's history ([`Command::PublishAt`]). By default every local
    /// subscriber gets it; an application that replays history decides who already has it. Returns how many
    /// connections it was queued on.
    fn on_publication(
        &mut self,
        core: &mut Core<Self::Conn>,
        channel: &str,
        offset: u64,
        frame: SharedFrame,
    ) -> usize {
        let _ = offset;
        core.fan_out(channel, frame, &[])
    }

    /// Whether a broadcast goes to this open connection.
    fn takes_broadcast(conn: &Self::Conn) -> bool;

    /// A complete frame in the application's alternative format, for connections set to it with
    /// [`Core::use_alt_format`] (None = the frame stays as it is). Shared frames are transcoded once per publish.
    fn transcode(_frame: &[u8]) -> Option<Vec<u8>> {
        None
    }

    /// A complete frame in the handler's stream form, for connections opened with [`Reply::Stream`]: every frame
    /// queued on them (messages, pings, the close frame) leaves in this form; empty = nothing is sent for it.
    /// Shared frames are converted once per publish.
    fn stream_form(frame: &[u8]) -> Vec<u8> {
        frame.to_vec()
    }

    /// Frames were queued on a detached connection ([`Core::open_detached`]) this iteration; the handler takes
    /// them with [`Core::take_queued`] when it has somewhere to send them.
    fn on_output(&mut self, core: &mut Core<Self::Conn>, key: Key) {
        let _ = (core, key);
    }

    /// Once per loop iteration, after teardown (publish counters).
    fn on_iteration(&mut self, core: &Core<Self::Conn>);

    /// A connection accepted on the side listener ([`super::ReactorSetup::side_listener`]): a socket the handler
    /// serves itself (non-blocking, close-on-exec, TCP_NODELAY). To hear of its readiness it registers it with
    /// [`Core::watch`]; it gives it back with [`Core::close_side`]. By default it is closed at once.
    fn on_side_accept(&mut self, core: &mut Core<Self::Conn>, fd: RawFd, peer: Option<IpAddr>) {
        let _ = (core, peer);
        super::sys::net::close(fd);
    }

    /// Readiness of a socket registered with [`Core::watch`] under `token` (edge-triggered: the handler reads and
    /// writes until EAGAIN). Runs where readiness of the reactor's own connections is handled, so commands it
    /// queues for this reactor run in the same iteration.
    fn on_side_ready(
        &mut self,
        core: &mut Core<Self::Conn>,
        token: u32,
        ready: &super::sys::Ready,
    ) {
        let _ = (core, token, ready);
    }

    /// The iteration's input is read (ready sockets, side sockets, accepts), before commands run and output is
    /// flushed: the moment to hand what the handler gathered to other threads, so they work on it while this
    /// reactor writes.
    fn after_reads(&mut self, core: &mut Core<Self::Conn>) {
        let _ = core;
    }

    /// During a long flush pass, between groups of connections written: the handler may take in more of its own
    /// input (side sockets) meanwhile; commands it queues for this reactor join the queues of the connections not
    /// yet written in the pass. A reactor busy writing thousands of sockets otherwise reads nothing for the whole
    /// pass.
    fn mid_flush(&mut self, core: &mut Core<Self::Conn>) {
        let _ = core;
    }

    /// Right before the loop may sleep, once per iteration (after the previous iteration's teardown): the
    /// handler's last chance to act on what other threads left for it outside the command channel. It runs
    /// after the reactor announced it may sleep ([`super::Waker::arm`]), so a thread that hands it work and then
    /// wakes the reactor's waker is never missed. Frames queued here leave in the next iteration, which then
    /// does not sleep; side sockets it asks to watch ([`Core::watch`]) are registered before the wait. Returns the
    /// longest the loop may sleep, in milliseconds (None: no bound of its own).
    fn before_wait(&mut self, core: &mut Core<Self::Conn>) -> Option<i32> {
        let _ = core;
        None
    }
}

/// What a handler made of an HTTP request ([`Handler::on_http`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Upgraded to a WebSocket: the response holds the 101 response and any first frames.
    WebSocket,
    /// A streaming HTTP response (server-sent events): the response holds its head and first bytes. The connection
    /// is open like a WebSocket one — sessions, channels, timers, the slow-consumer limit — but what is queued on it
    /// leaves in [`Handler::stream_form`], its input is discarded (the client speaks on other requests), and a
    /// close ends it as soon as the last bytes are written.
    Stream,
    /// A complete HTTP response: sent, then the connection closes.
    Respond,
    /// No answer yet: the handler called [`Core::hold`] and answers later with [`Core::answer_held`] (or already
    /// did, during the hook).
    Hold,
}

/// The reactor's command type for handler `H`.
pub type CommandFor<H> = Command<<H as Handler>::Command>;
