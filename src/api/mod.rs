//! The HTTP/1.1 API listener: one thread with its own epoll loop, keep-alive and pipelining. Handlers encode a
//! publish once and hand it to the reactors through the hub.

mod connection_routes;
/// Public so the fuzz targets (fuzz/) can reach the request parser; the API thread is its only real caller.
pub mod http;
mod metrics;
mod routes;

use crate::cluster::ClusterHandle;
use crate::config::Config;
use crate::hub::Hub;
use crate::reactor::sys::{net, Epoll, Poller, Ready};
use crate::tls::TlsAcceptor;
use http::Parsed;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN_LISTENER: u64 = u64::MAX - 1;
/// API connections held at once; more are refused (the API is for a few backend clients).
pub const MAX_API_CONNECTIONS: usize = 1024;
/// An API connection that sends nothing for this long is closed (also bounds slow request heads).
const IDLE: Duration = Duration::from_secs(30);
/// Unsent response bytes at which a pipelining client is no longer read from until it reads its responses.
const MAX_PENDING_RESPONSES: usize = 1 << 20;

struct Client {
    fd: RawFd,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    written: usize,
    close_after_write: bool,
    /// Reading stopped because too many responses are unsent (see MAX_PENDING_RESPONSES).
    read_paused: bool,
    last_active: Instant,
}

/// Counters of the HTTP API.
#[derive(Default)]
pub struct ApiStats {
    pub requests_total: AtomicU64,
    pub errors_total: AtomicU64,
    pub publishes_total: AtomicU64,
    pub broadcasts_total: AtomicU64,
}

/// What the API handlers reach: the reactors (through the hub), and what only the API uses.
pub struct Context {
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    /// The reloadable TLS configuration, when `tls.cert` is set (for `POST /api/reload-tls`).
    pub tls: Option<Arc<TlsAcceptor>>,
    /// The bridge to the other nodes; None when standalone (`cluster.redis` empty).
    pub cluster: Option<ClusterHandle>,
    pub stats: ApiStats,
}

impl Context {
    pub fn new(
        hub: Arc<Hub>,
        config: Arc<Config>,
        tls: Option<Arc<TlsAcceptor>>,
        cluster: Option<ClusterHandle>,
    ) -> Self {
        Context {
            hub,
            config,
            tls,
            cluster,
            stats: ApiStats::default(),
        }
    }
}

pub struct Api {
    poller: Epoll,
    listener: RawFd,
    clients: slab::Slab<Client>,
    ctx: Context,
    stop: Arc<AtomicBool>,
}

impl Api {
    pub fn new(listener: RawFd, ctx: Context, stop: Arc<AtomicBool>) -> io::Result<Self> {
        let poller = Epoll::new(256)?;
        poller.add(listener, TOKEN_LISTENER)?;
        Ok(Api {
            poller,
            listener,
            clients: slab::Slab::new(),
            ctx,
            stop,
        })
    }

    pub fn run(&mut self) -> io::Result<()> {
        let mut ready: Vec<Ready> = Vec::with_capacity(256);
        let mut last_sweep = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            self.poller.wait(&mut ready, 500)?;
            for ev in ready.iter() {
                if ev.token == TOKEN_LISTENER {
                    self.accept_all();
                } else {
                    self.on_ready(ev.token as usize, ev);
                }
            }
            if last_sweep.elapsed() >= Duration::from_secs(1) {
                last_sweep = Instant::now();
                let idle: Vec<usize> = self
                    .clients
                    .iter()
                    .filter(|(_, c)| c.last_active.elapsed() > IDLE)
                    .map(|(k, _)| k)
                    .collect();
                for key in idle {
                    self.close(key);
                }
            }
        }
        Ok(())
    }

    fn accept_all(&mut self) {
        loop {
            match net::accept(self.listener) {
                Ok(fd) => {
                    if self.clients.len() >= MAX_API_CONNECTIONS {
                        net::close(fd);
                        continue;
                    }
                    let key = self.clients.insert(Client {
                        fd,
                        rbuf: Vec::new(),
                        wbuf: Vec::new(),
                        written: 0,
                        close_after_write: false,
                        read_paused: false,
                        last_active: Instant::now(),
                    });
                    if self.poller.add(fd, key as u64).is_err() {
                        self.close(key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("api: accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_ready(&mut self, key: usize, ev: &Ready) {
        if !self.clients.contains(key) {
            return;
        }
        if ev.error {
            return self.close(key);
        }
        if ev.readable && !self.read(key) {
            return;
        }
        self.write(key);
    }

    /// Reads everything available and answers every complete request. False if the client was closed.
    fn read(&mut self, key: usize) -> bool {
        let mut eof = false;
        loop {
            let client = &mut self.clients[key];
            if client.close_after_write {
                break; // ignore anything after a request we answered with Connection: close
            }
            if client.wbuf.len() - client.written > MAX_PENDING_RESPONSES {
                client.read_paused = true;
                break; // backpressure: resumed by write() once the responses are out
            }
            match crate::pool::read_into(client.fd, &mut client.rbuf, 16 * 1024) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => client.last_active = Instant::now(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(key);
                    return false;
                }
            }
            self.answer(key);
        }
        self.answer(key);
        if eof {
            // The client half-closed: finish writing what it asked for, then close.
            let client = &mut self.clients[key];
            client.close_after_write = true;
            if client.wbuf.len() == client.written {
                self.close(key);
                return false;
            }
        }
        true
    }

    /// Handles every complete request in the read buffer (pipelining), appending responses in order.
    fn answer(&mut self, key: usize) {
        let max_body = self.ctx.config.api.max_body;
        loop {
            let client = &mut self.clients[key];
            if client.close_after_write || client.rbuf.is_empty() {
                return;
            }
            let parsed = http::parse(&client.rbuf, max_body);
            let (consumed, response, close) = match parsed {
                Parsed::Partial => return,
                Parsed::Error(status, message) => (
                    client.rbuf.len(),
                    http::error_response(status, message),
                    true,
                ),
                Parsed::Request(req) => {
                    self.ctx
                        .stats
                        .requests_total
                        .fetch_add(1, Ordering::Relaxed);
                    let consumed = req.total_len;
                    let close = !req.keep_alive;
                    let response = routes::handle(&req, &self.ctx);
                    (consumed, response.to_bytes(close), close)
                }
            };
            let client = &mut self.clients[key];
            client.rbuf.drain(..consumed);
            client.wbuf.extend_from_slice(&response);
            if close {
                client.close_after_write = true;
            }
        }
    }

    fn write(&mut self, key: usize) {
        let client = &mut self.clients[key];
        while client.written < client.wbuf.len() {
            match net::write(client.fd, &client.wbuf[client.written..]) {
                Ok(n) => client.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(key),
            }
        }
        client.wbuf.clear();
        client.written = 0;
        if client.wbuf.capacity() > 1 << 20 {
            client.wbuf.shrink_to(64 * 1024);
        }
        if client.close_after_write {
            self.close(key);
        } else if std::mem::take(&mut client.read_paused) && self.read(key) {
            // Edge-triggered: bytes that arrived while paused raise no new event, so read them now.
            self.write(key);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(client) = self.clients.try_remove(key) {
            net::close(client.fd);
        }
    }
}
