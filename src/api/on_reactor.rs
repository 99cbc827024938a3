//! The reactor handler of a gateway node: the [`Gateway`] (client connections) plus this reactor's API
//! connections ([`ApiConns`], on the reactor's side listener, `api.listen`). Every client hook goes to the gateway
//! unchanged; the side hooks go to the API.

use super::conns::ApiConns;
use super::spread::Handed;
use super::worker::{Done, WorkerQueue};
use super::Context;
use crate::frame::handshake::{Reject, Request};
use crate::gateway::command::Command;
use crate::gateway::{Client, Gateway};
use crate::pool::SharedFrame;
use crate::reactor::sys::Ready;
use crate::reactor::{Core, Handler, Key, Reply};
use crossbeam_channel::Receiver;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

pub struct GatewayWithApi {
    gateway: Gateway,
    api: ApiConns,
}

impl GatewayWithApi {
    /// Reactor `me`'s handler: `gateway`, and the API served with `ctx`, its slow routes handed to `worker`, whose
    /// answers come back on `done`; the API connections other reactors accepted for it come on `handed`.
    pub fn new(
        gateway: Gateway,
        me: usize,
        ctx: Arc<Context>,
        worker: WorkerQueue,
        done: Receiver<Done>,
        handed: Handed,
    ) -> Self {
        GatewayWithApi {
            gateway,
            api: ApiConns::new(me, ctx, worker, done, handed),
        }
    }

    /// The reactor stops watching the API sockets closed meanwhile, and closes them.
    fn release_closed(&mut self, core: &mut Core<Client>) {
        for (fd, token) in self.api.take_closed() {
            core.close_side(fd, token);
        }
    }
}

impl Handler for GatewayWithApi {
    type Conn = Client;
    type Command = Command;

    fn on_accept(&mut self, core: &mut Core<Client>, peer: Option<IpAddr>) -> Result<(), Reject> {
        self.gateway.on_accept(core, peer)
    }

    fn on_http(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        req: &Request<'_>,
        body: &[u8],
        response: &mut Vec<u8>,
    ) -> Result<Reply, Reject> {
        self.gateway.on_http(core, key, req, body, response)
    }

    fn on_message(&mut self, core: &mut Core<Client>, key: Key, opcode: u8, payload: &[u8]) {
        self.gateway.on_message(core, key, opcode, payload)
    }

    fn on_control(&mut self, core: &mut Core<Client>, key: Key) -> bool {
        self.gateway.on_control(core, key)
    }

    fn on_timer(&mut self, core: &mut Core<Client>, key: Key) {
        self.gateway.on_timer(core, key)
    }

    fn on_ms_timer(&mut self, core: &mut Core<Client>, key: Key) {
        self.gateway.on_ms_timer(core, key)
    }

    fn on_close(&mut self, core: &mut Core<Client>, key: Key) {
        self.gateway.on_close(core, key)
    }

    fn on_command(&mut self, core: &mut Core<Client>, cmd: Command) {
        self.gateway.on_command(core, cmd)
    }

    fn on_publication(
        &mut self,
        core: &mut Core<Client>,
        channel: &str,
        offset: u64,
        frame: SharedFrame,
    ) -> usize {
        self.gateway.on_publication(core, channel, offset, frame)
    }

    fn takes_broadcast(conn: &Client) -> bool {
        Gateway::takes_broadcast(conn)
    }

    fn transcode(frame: &[u8]) -> Option<Vec<u8>> {
        Gateway::transcode(frame)
    }

    fn stream_form(frame: &[u8]) -> Vec<u8> {
        Gateway::stream_form(frame)
    }

    fn on_output(&mut self, core: &mut Core<Client>, key: Key) {
        self.gateway.on_output(core, key)
    }

    fn on_iteration(&mut self, core: &Core<Client>) {
        self.gateway.on_iteration(core)
    }

    fn on_side_accept(&mut self, core: &mut Core<Client>, fd: RawFd, _peer: Option<IpAddr>) {
        if let Some(token) = self.api.accept(fd) {
            core.watch(fd, token);
        }
        self.release_closed(core);
    }

    fn on_side_ready(&mut self, core: &mut Core<Client>, token: u32, ready: &Ready) {
        self.api.on_ready(token, ready);
        self.release_closed(core);
    }

    fn after_reads(&mut self, _core: &mut Core<Client>) {
        self.api.hand_over();
    }

    fn mid_flush(&mut self, core: &mut Core<Client>) {
        self.api.mid_flush();
        self.release_closed(core);
    }

    fn before_wait(&mut self, core: &mut Core<Client>) -> Option<i32> {
        while let Some((fd, token)) = self.api.adopt_handed() {
            core.watch(fd, token);
        }
        let bound = self.api.before_wait();
        self.release_closed(core);
        bound
    }
}
