//! One worker process: its share of the connections in a flat Vec, driven by one edge-triggered epoll loop.
//!
//! Memory per connection is a small struct plus buffers that stay empty unless a frame straddles two reads: all reads
//! go into one scratch buffer per process and complete frames are handled right there, only an incomplete tail is
//! copied into the connection's `rx`. Outgoing frames (pongs, receipts, echo messages, close) are encoded into the
//! connection's `tx`, which keeps its capacity, and flushed once per readable event.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use hdrhistogram::Histogram;

use crate::config::{Config, Scenario, UserAddressing};
use crate::hist::{self, new_hist};
use crate::inflate::Inflate;
use crate::msg::{self, Incoming};
use crate::result::{FailKind, WorkerResult};
use crate::rng::Rng;
use crate::seq::{SeqTotals, SeqTracker};
use crate::shared::{Shared, PHASE_ABORT, PHASE_DRAIN, PHASE_GO};
use crate::sys::{self, Epoll, EPOLLERR, EPOLLET, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP};
use crate::users::{self, Owed};
use crate::ws::{self, Event};

const SWEEP_NS: u64 = 25_000_000;
const SCRATCH: usize = 256 * 1024;
const MAX_HEAD: usize = 16 * 1024;
/// How long the final close handshakes may take before the sockets are simply closed.
const FINAL_CLOSE_NS: u64 = 3_000_000_000;
const ACK_RING: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Idle,
    Connecting,
    Handshake,
    Open,
    /// We sent a close frame and wait for the server's.
    Closing,
    Dead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Our close handshake (churn or final) finished or timed out.
    CloseDone,
    /// The server sent a close frame, dropped the connection, or broke the protocol.
    Lost,
}

struct Conn {
    fd: RawFd,
    gen: u32,
    st: St,
    /// Index over all processes; picks the source address.
    global: u32,
    /// True until the first upgrade of this slot succeeds or fails (later ones are reconnects).
    first_round: bool,
    started_ns: u64,
    deadline_ns: u64,
    /// Churn: when to send our close frame (0 = not scheduled).
    close_at_ns: u64,
    /// Churn: the lifetime's expected end (publishes acknowledged when we decided to leave).
    lifetime_end: u64,
    key: [u8; 24],
    rx: Vec<u8>,
    tx: Vec<u8>,
    dec: ws::Decoder,
    seq: SeqTracker,
    echo_out: u32,
    /// Receipts awaiting their pong: (id, sent ns); id u64::MAX = free.
    acks: [(u64, u64); ACK_RING],
    ack_next: u8,
}

impl Conn {
    fn new(global: u32) -> Conn {
        Conn {
            fd: -1,
            gen: 0,
            st: St::Idle,
            global,
            first_round: true,
            started_ns: 0,
            deadline_ns: 0,
            close_at_ns: 0,
            lifetime_end: 0,
            key: [0; 24],
            rx: Vec::new(),
            tx: Vec::new(),
            dec: ws::Decoder::default(),
            seq: SeqTracker::default(),
            echo_out: 0,
            acks: [(u64::MAX, 0); ACK_RING],
            ack_next: 0,
        }
    }

    fn acks_pending(&self) -> bool {
        self.acks.iter().any(|a| a.0 != u64::MAX)
    }

    /// True when this connection has every publish below the global number `end` that is addressed to it.
    fn has_all(&self, owed: Owed, end: u64) -> bool {
        self.seq.is_complete(owed.count(self.global as u64, end))
    }

    /// Ends the lifetime, which was owed the publishes below the global number `end` that are addressed to it.
    fn finish_lifetime(&mut self, owed: Owed, sh: &Shared, end: u64) -> SeqTotals {
        let me = self.global as u64;
        let failed = |a: u64, b: u64| match owed {
            Owed::All => sh.failed_in(a, b),
            Owed::RoundRobin { .. } => (a..b)
                .map(|k| {
                    let s = owed.global(me, k);
                    sh.failed_in(s, s + 1)
                })
                .sum(),
        };
        self.seq.finish(owed.count(me, end), &failed)
    }
}

pub struct Worker<'a> {
    cfg: &'a Config,
    sh: &'a Shared,
    index: usize,
    rate: f64,
    churn_rate: f64,
    start_ns: u64,
    ep: Epoll,
    conns: Vec<Conn>,
    scratch: Vec<u8>,
    rng: Rng,
    res: WorkerResult,
    h_handshake: Histogram<u64>,
    h_latency: Histogram<u64>,
    h_rtt: Histogram<u64>,
    h_ack: Histogram<u64>,
    launched: usize,
    settled_first: usize,
    open: u64,
    go_ns: u64,
    churned: u64,
    echo_sending: bool,
    echo_window_end: u64,
    /// Final close handshakes in progress: stop counting deliveries.
    closing_all: bool,
    reconnect: Vec<u32>,
    next_sweep: u64,
    drain_complete: bool,
    cpu_at_go_ms: u64,
    /// permessage-deflate (`--deflate`): compressed deliveries are inflated here.
    inflate: Inflate,
}

/// Connections of worker `i` out of `procs` for `total`: slots i, i+procs, i+2·procs, ...
pub fn share_of(total: usize, procs: usize, i: usize) -> usize {
    total / procs + usize::from(i < total % procs)
}

fn token(i: usize, gen: u32) -> u64 {
    ((gen as u64) << 32) | i as u64
}

impl<'a> Worker<'a> {
    pub fn new(
        cfg: &'a Config,
        sh: &'a Shared,
        index: usize,
        start_ns: u64,
    ) -> std::io::Result<Worker<'a>> {
        let share = share_of(cfg.conns, cfg.procs, index);
        let conns = (0..share)
            .map(|k| Conn::new((k * cfg.procs + index) as u32))
            .collect();
        Ok(Worker {
            cfg,
            sh,
            index,
            rate: cfg.rate / cfg.procs as f64,
            churn_rate: cfg.churn_rate / cfg.procs as f64,
            start_ns,
            ep: Epoll::new(1024)?,
            conns,
            scratch: vec![0; SCRATCH],
            rng: Rng::from_os(),
            res: WorkerResult {
                workers: 1,
                ..Default::default()
            },
            h_handshake: new_hist(),
            h_latency: new_hist(),
            h_rtt: new_hist(),
            h_ack: new_hist(),
            launched: 0,
            settled_first: 0,
            open: 0,
            go_ns: 0,
            churned: 0,
            echo_sending: false,
            echo_window_end: 0,
            closing_all: false,
            reconnect: Vec::with_capacity(1024),
            next_sweep: 0,
            drain_complete: false,
            cpu_at_go_ms: 0,
            inflate: Inflate::default(),
        })
    }

    pub fn run(mut self) -> WorkerResult {
        loop {
            let now = sys::mono_ns();
            let phase = self.sh.phase();
            if phase == PHASE_ABORT {
                break;
            }
            self.launch(now);
            if now >= self.next_sweep {
                self.sweep(now, phase);
                self.next_sweep = now + SWEEP_NS;
            }
            if phase >= PHASE_GO && self.go_ns == 0 {
                self.on_go(now);
            }
            if phase == PHASE_GO {
                self.churn(now);
            }
            if self.echo_sending && now >= self.echo_window_end {
                self.echo_sending = false;
            }
            if self.finished(now, phase) {
                break;
            }
            self.publish_progress();
            let n = self.ep.wait(5);
            for k in 0..n {
                let (tok, ev) = self.ep.event(k);
                self.on_event(tok, ev);
            }
        }
        if self.go_ns != 0 {
            self.res.cpu_load_ms =
                sys::rusage_ms(libc::RUSAGE_SELF).saturating_sub(self.cpu_at_go_ms);
        }
        self.res.inflated = self.inflate.inflated;
        self.sh
            .slot(self.index)
            .finished
            .store(1, std::sync::atomic::Ordering::Release);
        self.shutdown();
        self.into_result()
    }

    fn publish_progress(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.sh.slot(self.index);
        s.open.store(self.open, Relaxed);
        s.deliveries.store(self.res.deliveries, Relaxed);
        s.echoes.store(self.res.echo_recv, Relaxed);
        s.failed.store(self.res.failures.total(), Relaxed);
        if self.settled_first == self.conns.len() && s.conn_done.load(Relaxed) == 0 {
            s.conn_done.store(1, std::sync::atomic::Ordering::Release);
        }
    }

    fn finished(&mut self, now: u64, phase: u32) -> bool {
        match self.cfg.scenario {
            Scenario::Connect => phase >= PHASE_DRAIN,
            Scenario::Echo => {
                if self.go_ns == 0 || self.echo_sending {
                    return false;
                }
                let waited_out = now >= self.echo_window_end + self.cfg.timeout_ns();
                waited_out
                    || self
                        .conns
                        .iter()
                        .all(|c| c.st != St::Open || c.echo_out == 0)
            }
            _ => {
                if phase != PHASE_DRAIN {
                    return false;
                }
                now >= self
                    .sh
                    .hdr()
                    .drain_deadline_ns
                    .load(std::sync::atomic::Ordering::Acquire)
                    || self.drain_complete
            }
        }
    }

    /// Starts due first-round connections (at the per-worker rate) and pending churn reconnects.
    fn launch(&mut self, now: u64) {
        if self.launched < self.conns.len() {
            let due = if self.rate <= 0.0 {
                self.conns.len()
            } else {
                (((now.saturating_sub(self.start_ns)) as f64 * self.rate / 1e9) as usize + 1)
                    .min(self.conns.len())
            };
            let mut budget = 512;
            while self.launched < due && budget > 0 {
                let i = self.launched;
                self.launched += 1;
                budget -= 1;
                self.connect(i, now);
            }
        }
        while let Some(i) = self.reconnect.pop() {
            self.connect(i as usize, now);
        }
    }

    fn connect(&mut self, i: usize, now: u64) {
        let src =
            Ipv4Addr::from(0x7f00_0001u32 + self.conns[i].global % self.cfg.source_ips as u32);
        let key = ws::make_key(&mut self.rng);
        if self.conns[i].first_round {
            self.res.attempted += 1;
            if self.res.first_attempt_ns == 0 {
                self.res.first_attempt_ns = now;
            }
        }
        // Source addresses 127.0.0.x reach loopback targets only (a target in another namespace: the kernel's).
        let src = self.cfg.target.ip().is_loopback().then_some(src);
        match sys::tcp_connect(src, self.cfg.target) {
            Err(e) => self.fail(i, FailKind::from_errno(e)),
            Ok(fd) => {
                let c = &mut self.conns[i];
                c.gen = c.gen.wrapping_add(1);
                c.fd = fd;
                c.key = key;
                c.st = St::Connecting;
                c.started_ns = now;
                c.deadline_ns = now + self.cfg.timeout_ns();
                if let Err(e) = self.ep.add(
                    fd,
                    token(i, c.gen),
                    EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                ) {
                    self.fail(i, FailKind::from_errno(e));
                }
            }
        }
    }

    /// A connect or upgrade failed.
    fn fail(&mut self, i: usize, kind: FailKind) {
        let c = &mut self.conns[i];
        if c.first_round {
            c.first_round = false;
            self.res.failures.record(kind);
            self.settled_first += 1;
        } else {
            self.res.reconnect_failures.record(kind);
        }
        sys::close(c.fd);
        c.fd = -1;
        c.gen = c.gen.wrapping_add(1);
        c.st = St::Dead;
        c.rx.clear();
        c.tx.clear();
    }

    fn on_event(&mut self, tok: u64, ev: u32) {
        let i = (tok & 0xffff_ffff) as usize;
        let gen = (tok >> 32) as u32;
        let Some(c) = self.conns.get(i) else { return };
        if c.gen != gen || c.fd < 0 {
            return;
        }
        match c.st {
            St::Connecting => {
                if ev & (EPOLLOUT | EPOLLERR | EPOLLHUP) == 0 {
                    return;
                }
                let err = sys::so_error(c.fd);
                if err != 0 {
                    self.fail(i, FailKind::from_errno(err));
                    return;
                }
                let path = self.request_path(i);
                let c = &mut self.conns[i];
                c.st = St::Handshake;
                ws::write_request(&mut c.tx, &self.cfg.host, &path, &c.key, self.cfg.deflate);
                c.dec.deflate = self.cfg.deflate;
                if !self.flush(i) {
                    return;
                }
                if ev & (EPOLLIN | EPOLLRDHUP) != 0 {
                    self.on_readable(i);
                }
            }
            St::Handshake | St::Open | St::Closing => {
                if ev & EPOLLOUT != 0 && !self.conns[i].tx.is_empty() && !self.flush(i) {
                    return;
                }
                if ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR) != 0 {
                    self.on_readable(i);
                }
            }
            St::Idle | St::Dead => {}
        }
    }

    /// The upgrade request's path: the configured one, or for a user its own token or channel.
    fn request_path(&self, i: usize) -> std::borrow::Cow<'a, str> {
        let user = self.conns[i].global as u64;
        match self.cfg.users {
            None => std::borrow::Cow::Borrowed(&self.cfg.path),
            Some(UserAddressing::Topics) => {
                crate::config::with_channel(&self.cfg.path, &format!("user:{user}")).into()
            }
            Some(UserAddressing::Jwt) => {
                // Valid past every bound of the run (see coord::hard_bound_ns).
                let ttl = (self.cfg.duration_s + 4.0 * self.cfg.timeout_s) as u64 + 3600;
                let secret = self.cfg.jwt_secret.as_deref().unwrap_or_default();
                let sep = if self.cfg.path.contains('?') {
                    '&'
                } else {
                    '?'
                };
                format!(
                    "{}{sep}token={}",
                    self.cfg.path,
                    users::token(secret, user, ttl)
                )
                .into()
            }
        }
    }

    /// Writes as much of `tx` as the socket takes. False if the connection died.
    fn flush(&mut self, i: usize) -> bool {
        let c = &mut self.conns[i];
        let mut off = 0;
        while off < c.tx.len() {
            let n = sys::write(c.fd, &c.tx[off..]);
            if n > 0 {
                off += n as usize;
                continue;
            }
            let e = sys::errno();
            if e == libc::EINTR {
                continue;
            }
            if e == libc::EAGAIN {
                break;
            }
            c.tx.drain(..off);
            self.res.bytes_out += off as u64;
            self.conn_error(i, e);
            return false;
        }
        self.res.bytes_out += off as u64;
        if off == c.tx.len() {
            c.tx.clear();
        } else {
            c.tx.drain(..off);
        }
        true
    }

    fn conn_error(&mut self, i: usize, e: i32) {
        match self.conns[i].st {
            St::Connecting | St::Handshake => self.fail(i, FailKind::from_errno(e)),
            St::Closing => self.end(i, End::CloseDone),
            _ => {
                self.res.dropped += 1;
                self.end(i, End::Lost);
            }
        }
    }

    fn on_readable(&mut self, i: usize) {
        let gen = self.conns[i].gen;
        let mut scratch = std::mem::take(&mut self.scratch);
        loop {
            let c = &self.conns[i];
            if c.gen != gen || c.fd < 0 {
                break;
            }
            let n = sys::read(c.fd, &mut scratch);
            if n > 0 {
                self.res.bytes_in += n as u64;
                self.res.reads += 1;
                self.feed(i, &scratch[..n as usize]);
                // Edge-triggered: a short read drained the socket; data arriving later raises a new edge.
                if (n as usize) < scratch.len() {
                    break;
                }
            } else if n == 0 {
                self.on_eof(i);
                break;
            } else {
                let e = sys::errno();
                if e == libc::EINTR {
                    continue;
                }
                if e != libc::EAGAIN {
                    self.conn_error(i, e);
                }
                break;
            }
        }
        self.scratch = scratch;
        let c = &self.conns[i];
        if c.gen == gen && c.fd >= 0 && !c.tx.is_empty() {
            self.flush(i);
        }
    }

    fn on_eof(&mut self, i: usize) {
        match self.conns[i].st {
            St::Connecting | St::Handshake => self.fail(i, FailKind::Eof),
            St::Closing => self.end(i, End::CloseDone),
            St::Open => {
                self.res.dropped += 1;
                self.end(i, End::Lost);
            }
            St::Idle | St::Dead => {}
        }
    }

    fn feed(&mut self, i: usize, data: &[u8]) {
        let c = &mut self.conns[i];
        match c.st {
            St::Handshake => {
                c.rx.extend_from_slice(data);
                match ws::parse_response(&c.rx, &c.key, MAX_HEAD) {
                    Ok(None) => {}
                    Err(_) => self.fail(i, FailKind::BadHandshake),
                    Ok(Some(head)) => {
                        let mut rx = std::mem::take(&mut c.rx);
                        self.on_open(i);
                        if rx.len() > head {
                            self.ingest(i, &rx[head..]);
                        }
                        rx.clear();
                        let c = &mut self.conns[i];
                        if c.rx.is_empty() {
                            c.rx = rx; // keep the capacity
                        }
                    }
                }
            }
            St::Open | St::Closing => self.ingest(i, data),
            _ => {}
        }
    }

    /// Frame data for an upgraded connection. Complete frames are decoded straight from `data`; only a frame that
    /// straddles reads is carried in `rx`, and `rx` is only ever topped up to the end of that one frame, so it never
    /// grows past the largest frame (copying whole reads into it would cost a page-faulting buffer per connection).
    fn ingest(&mut self, i: usize, mut data: &[u8]) {
        let gen = self.conns[i].gen;
        let alive = |w: &Self| w.conns[i].gen == gen && w.conns[i].fd >= 0;
        while !self.conns[i].rx.is_empty() && !data.is_empty() {
            let mut rx = std::mem::take(&mut self.conns[i].rx);
            let want = match ws::parse_header(&rx) {
                Ok(Some(h)) => h
                    .header_len
                    .saturating_add(h.payload_len.min(usize::MAX as u64 / 2) as usize),
                // Not even the header yet: take up to the longest header; what follows it is this frame's too.
                Ok(None) => ws::MAX_SERVER_HEADER,
                Err(_) => rx.len(), // let `process` report the protocol error
            };
            let take = want.saturating_sub(rx.len()).min(data.len());
            rx.extend_from_slice(&data[..take]);
            data = &data[take..];
            let used = self.process(i, &rx);
            if !alive(self) {
                return;
            }
            rx.drain(..used);
            if rx.capacity() > 1 << 20 && rx.is_empty() {
                rx = Vec::new();
            }
            self.conns[i].rx = rx;
        }
        if data.is_empty() {
            return;
        }
        let used = self.process(i, data);
        if alive(self) && used < data.len() {
            self.conns[i].rx.extend_from_slice(&data[used..]);
        }
    }

    fn on_open(&mut self, i: usize) {
        let now = sys::mono_ns();
        let subscribes = self.cfg.scenario.subscribes();
        let start = self
            .sh
            .hdr()
            .sent
            .load(std::sync::atomic::Ordering::Acquire);
        let c = &mut self.conns[i];
        c.st = St::Open;
        self.open += 1;
        hist::record(&mut self.h_handshake, (now - c.started_ns) / 1000);
        if c.first_round {
            c.first_round = false;
            self.res.connected += 1;
            self.settled_first += 1;
            self.res.last_connected_ns = now;
            let sec = (now.saturating_sub(self.start_ns) / 1_000_000_000) as usize;
            if self.res.connect_per_sec.len() <= sec {
                self.res.connect_per_sec.resize(sec + 1, 0);
            }
            self.res.connect_per_sec[sec] += 1;
        } else {
            self.res.reconnects += 1;
        }
        if subscribes {
            c.seq.begin(self.cfg.owed().count(c.global as u64, start));
        }
        if self.echo_sending {
            for _ in 0..self.cfg.inflight {
                self.send_echo(i);
            }
        }
    }

    fn send_echo(&mut self, i: usize) {
        let size = self.cfg.size;
        let op = if self.cfg.binary {
            ws::OP_BINARY
        } else {
            ws::OP_TEXT
        };
        let mask = self.rng.mask();
        let c = &mut self.conns[i];
        let start = ws::begin_frame(&mut c.tx, op, size, mask);
        msg::push_u64_fixed20(&mut c.tx, sys::mono_ns());
        c.tx.resize(start + size, b'x');
        ws::mask_from(&mut c.tx, start, mask);
        c.echo_out += 1;
        self.res.echo_sent += 1;
    }

    /// Decodes the frames in `data`; returns the bytes consumed. May end the connection.
    fn process(&mut self, i: usize, data: &[u8]) -> usize {
        let now_rt = sys::real_us();
        let now_mono = sys::mono_ns();
        let scenario = self.cfg.scenario;
        let acks = scenario == Scenario::Acks;
        let counting = !self.closing_all;
        let echo_more = self.echo_sending;
        let echo_window_end = self.echo_window_end;
        let size = self.cfg.size;
        let op_echo = if self.cfg.binary {
            ws::OP_BINARY
        } else {
            ws::OP_TEXT
        };
        let max_message = self.cfg.max_message;
        let owed = self.cfg.owed();
        let me = self.conns[i].global as u64;
        let Worker {
            conns,
            res,
            rng,
            h_latency,
            h_rtt,
            h_ack,
            inflate,
            ..
        } = self;
        let c = &mut conns[i];
        let Conn {
            dec,
            seq,
            tx,
            acks: ring,
            ack_next,
            echo_out,
            ..
        } = c;
        let mut close: Option<Option<u16>> = None;
        let r = dec.decode(data, max_message, |ev| match ev {
            Event::Message {
                payload,
                compressed,
                ..
            } => {
                let payload = if compressed {
                    match inflate.message(payload, max_message) {
                        Some(p) => p,
                        None => return res.inflate_errors += 1,
                    }
                } else {
                    payload
                };
                if scenario == Scenario::Echo {
                    match msg::parse_u64_at(&payload[..payload.len().min(20)], 0) {
                        Some((sent, 20)) if payload.len() == size => {
                            hist::record(h_rtt, now_mono.saturating_sub(sent) / 1000);
                            if now_mono <= echo_window_end {
                                res.echo_in_window += 1;
                            }
                        }
                        _ => res.echo_bad += 1,
                    }
                    res.echo_recv += 1;
                    *echo_out = echo_out.saturating_sub(1);
                    if echo_more {
                        let mask = rng.mask();
                        let start = ws::begin_frame(tx, op_echo, size, mask);
                        msg::push_u64_fixed20(tx, sys::mono_ns());
                        tx.resize(start + size, b'x');
                        ws::mask_from(tx, start, mask);
                        *echo_out += 1;
                        res.echo_sent += 1;
                    }
                    return;
                }
                match msg::classify(payload) {
                    Incoming::Delivery { seq: s, ts } => {
                        if !counting {
                            return;
                        }
                        let Some(own) = owed.local(me, s) else {
                            return res.misdelivered += 1;
                        };
                        res.deliveries += 1;
                        hist::record(h_latency, now_rt.saturating_sub(ts));
                        if res.first_delivery_rt == 0 {
                            res.first_delivery_rt = now_rt;
                        }
                        res.last_delivery_rt = now_rt;
                        seq.record(own);
                        if acks {
                            let mask = rng.mask();
                            let start = ws::begin_frame(tx, ws::OP_TEXT, msg::receipt_len(s), mask);
                            msg::push_receipt(tx, s);
                            ws::mask_from(tx, start, mask);
                            ring[*ack_next as usize] = (s, now_mono);
                            *ack_next = ((*ack_next as usize + 1) % ACK_RING) as u8;
                            res.acks_sent += 1;
                        }
                    }
                    Incoming::Pong { id } => match ring.iter_mut().find(|a| a.0 == id) {
                        Some(slot) => {
                            hist::record(h_ack, now_mono.saturating_sub(slot.1) / 1000);
                            slot.0 = u64::MAX;
                            res.pongs += 1;
                        }
                        None => res.pongs_unmatched += 1,
                    },
                    Incoming::Error => res.server_errors += 1,
                    Incoming::Other => res.other_msgs += 1,
                }
            }
            Event::Ping(p) => {
                res.server_pings += 1;
                ws::encode_frame(tx, ws::OP_PONG, p, rng.mask());
            }
            Event::Pong(_) => {}
            Event::Close { code, .. } => close = Some(code),
        });
        match r {
            Err(_) => {
                self.res.protocol_errors += 1;
                let mask = self.rng.mask();
                ws::encode_close(&mut self.conns[i].tx, 1002, mask);
                // A failed flush has already ended the connection.
                if self.flush(i) {
                    self.end(i, End::Lost);
                }
                0
            }
            Ok(d) => {
                if let Some(code) = close {
                    if self.conns[i].st == St::Closing {
                        self.end(i, End::CloseDone);
                    } else {
                        *self
                            .res
                            .server_closes
                            .entry(code.unwrap_or(1005))
                            .or_default() += 1;
                        let mask = self.rng.mask();
                        ws::encode_close(&mut self.conns[i].tx, code.unwrap_or(1000), mask);
                        if self.flush(i) {
                            self.end(i, End::Lost);
                        }
                    }
                }
                d.consumed
            }
        }
    }

    /// Ends an upgraded connection: settles its delivery accounting, closes the socket, maybe reconnects.
    fn end(&mut self, i: usize, why: End) {
        use std::sync::atomic::Ordering::Acquire;
        let phase = self.sh.phase();
        let hdr = self.sh.hdr();
        let owed = self.cfg.owed();
        let c = &mut self.conns[i];
        if c.seq.is_active() {
            let end = if c.close_at_ns != 0 {
                c.lifetime_end
            } else if phase >= PHASE_DRAIN {
                hdr.end_seq.load(Acquire)
            } else {
                hdr.acked.load(Acquire)
            };
            let t = c.finish_lifetime(owed, self.sh, end);
            self.res.seq.add(&t);
        }
        if matches!(c.st, St::Open | St::Closing) {
            self.open -= 1;
        }
        let churned = c.close_at_ns != 0;
        sys::close(c.fd);
        c.fd = -1;
        c.gen = c.gen.wrapping_add(1);
        c.st = St::Idle;
        c.rx.clear();
        c.tx.clear();
        c.dec.reset();
        c.echo_out = 0;
        c.acks = [(u64::MAX, 0); ACK_RING];
        c.close_at_ns = 0;
        if why == End::CloseDone && churned && phase == PHASE_GO && !self.closing_all {
            self.reconnect.push(i as u32);
        } else if why == End::Lost {
            c.st = St::Dead;
        }
    }

    /// Sends our close frame and waits (up to `deadline`) for the server's.
    fn begin_close(&mut self, i: usize, deadline: u64) {
        let mask = self.rng.mask();
        let c = &mut self.conns[i];
        ws::encode_close(&mut c.tx, 1000, mask);
        c.st = St::Closing;
        c.deadline_ns = deadline;
        self.flush(i);
    }

    /// Timeouts, scheduled churn closes, close-handshake deadlines, and the drain completion check.
    fn sweep(&mut self, now: u64, phase: u32) {
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            match c.st {
                St::Connecting | St::Handshake if now >= c.deadline_ns => {
                    self.fail(i, FailKind::Timeout)
                }
                // A departing subscriber first waits (up to --timeout) until it has everything published before it
                // decided to leave: a publish acknowledged by the API may still be on its way through the server,
                // and closing under it would count the server's queueing delay as loss.
                St::Open
                    if c.close_at_ns != 0
                        && now >= c.close_at_ns
                        && (c.has_all(self.cfg.owed(), c.lifetime_end)
                            || now >= c.close_at_ns + self.cfg.timeout_ns()) =>
                {
                    self.begin_close(i, now + self.cfg.timeout_ns())
                }
                St::Closing if now >= c.deadline_ns => {
                    self.res.close_timeouts += 1;
                    self.end(i, End::CloseDone);
                }
                _ => {}
            }
        }
        if phase == PHASE_DRAIN && self.cfg.scenario.subscribes() {
            let end = self
                .sh
                .hdr()
                .end_seq
                .load(std::sync::atomic::Ordering::Acquire);
            let owed = self.cfg.owed();
            self.drain_complete = self.conns.iter().all(|c| match c.st {
                St::Open => c.has_all(owed, end) && !c.acks_pending(),
                St::Closing => false,
                _ => true,
            });
        }
    }

    fn on_go(&mut self, now: u64) {
        self.cpu_at_go_ms = sys::rusage_ms(libc::RUSAGE_SELF);
        self.go_ns = self
            .sh
            .hdr()
            .go_mono_ns
            .load(std::sync::atomic::Ordering::Acquire)
            .max(1);
        if self.cfg.scenario == Scenario::Echo {
            self.echo_sending = true;
            self.echo_window_end = self.go_ns + self.cfg.duration_ns();
            for i in 0..self.conns.len() {
                if self.conns[i].st == St::Open {
                    for _ in 0..self.cfg.inflight {
                        self.send_echo(i);
                    }
                    self.flush(i);
                }
            }
        }
        let _ = now;
    }

    /// Schedules --churn-rate departures: a random open connection closes after the grace period and reconnects.
    fn churn(&mut self, now: u64) {
        if self.cfg.scenario != Scenario::Churn || self.churn_rate <= 0.0 || self.conns.is_empty() {
            return;
        }
        let due = ((now.saturating_sub(self.go_ns)) as f64 * self.churn_rate / 1e9) as u64;
        let acked = self
            .sh
            .hdr()
            .acked
            .load(std::sync::atomic::Ordering::Acquire);
        let grace = self.cfg.churn_grace_ms * 1_000_000;
        let n = self.conns.len();
        while self.churned < due {
            self.churned += 1;
            let mut k = self.rng.below(n as u64) as usize;
            let mut found = false;
            for _ in 0..32 {
                let c = &self.conns[k];
                if c.st == St::Open && c.close_at_ns == 0 {
                    found = true;
                    break;
                }
                k = (k + 1) % n;
            }
            if !found {
                self.res.churn_skipped += 1;
                continue;
            }
            let c = &mut self.conns[k];
            c.close_at_ns = now + grace;
            c.lifetime_end = acked;
            self.res.churn_closes += 1;
        }
    }

    /// Settles every lifetime, closes every connection with a close handshake (bounded), then the sockets.
    fn shutdown(&mut self) {
        let now = sys::mono_ns();
        // Everything still open is expected to have received all publishes.
        let phase = self.sh.phase();
        let hdr = self.sh.hdr();
        let end = if phase >= PHASE_DRAIN {
            hdr.end_seq.load(std::sync::atomic::Ordering::Acquire)
        } else {
            hdr.acked.load(std::sync::atomic::Ordering::Acquire)
        };
        let owed = self.cfg.owed();
        for c in &mut self.conns {
            if c.seq.is_active() {
                let e = if c.close_at_ns != 0 {
                    c.lifetime_end
                } else {
                    end
                };
                let t = c.finish_lifetime(owed, self.sh, e);
                self.res.seq.add(&t);
            }
        }
        self.closing_all = true;
        self.reconnect.clear();
        let deadline = now + FINAL_CLOSE_NS.min(self.cfg.timeout_ns());
        for i in 0..self.conns.len() {
            match self.conns[i].st {
                St::Open => self.begin_close(i, deadline),
                St::Closing => self.conns[i].deadline_ns = self.conns[i].deadline_ns.min(deadline),
                St::Connecting | St::Handshake => {
                    let c = &mut self.conns[i];
                    if c.first_round {
                        // Never finished: neither a success nor a failure of its own.
                        c.first_round = false;
                        self.res.failures.record(FailKind::Timeout);
                        self.settled_first += 1;
                    }
                    sys::close(c.fd);
                    c.fd = -1;
                    c.st = St::Dead;
                }
                _ => {}
            }
        }
        while sys::mono_ns() < deadline && self.conns.iter().any(|c| c.st == St::Closing) {
            let n = self.ep.wait(10);
            for k in 0..n {
                let (tok, ev) = self.ep.event(k);
                self.on_event(tok, ev);
            }
        }
        for c in &mut self.conns {
            if c.st == St::Closing {
                self.res.close_timeouts += 1;
            }
            sys::close(c.fd);
            c.fd = -1;
        }
        self.publish_progress();
    }

    fn into_result(mut self) -> WorkerResult {
        self.res.handshake_us = hist::export(&self.h_handshake);
        self.res.latency_us = hist::export(&self.h_latency);
        self.res.rtt_us = hist::export(&self.h_rtt);
        self.res.ack_rtt_us = hist::export(&self.h_ack);
        self.res.cpu_ms = sys::rusage_ms(libc::RUSAGE_SELF);
        self.res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::{resolve, Cli};
    use crate::ws::fixtures::server_frame;
    use clap::Parser;

    fn delivery(seq: u64, pad: usize) -> Vec<u8> {
        let mut data = Vec::new();
        msg::push_data(&mut data, seq, sys::real_us(), pad, false);
        let mut m = br#"{"channel":"bench","data":"#.to_vec();
        m.extend_from_slice(&data);
        m.push(b'}');
        m
    }

    /// Feeds a stream of server frames to one open subscriber connection in chunks of varying sizes and checks that
    /// every delivery is seen exactly once, pings are answered, and the carry buffer stays within one frame.
    #[test]
    fn ingest_handles_any_chunking() {
        let cli = Cli::parse_from([
            "wsgate-bench",
            "fanout",
            "--conns",
            "1",
            "--messages",
            "100",
        ]);
        let cfg = resolve(&cli.cmd).unwrap();
        let sh = Shared::new(100).unwrap();
        let mut stream = Vec::new();
        let mut largest = 0;
        for s in 0..60u64 {
            // Sizes across the 7-, 16- and 64-bit length forms; every 7th message fragmented; pings in between.
            let size = [10usize, 200, 70_000][s as usize % 3];
            let m = delivery(s, size);
            largest = largest.max(m.len() + 10);
            if s % 7 == 0 {
                let (a, b) = m.split_at(m.len() / 2);
                stream.extend(server_frame(false, ws::OP_TEXT, a));
                stream.extend(server_frame(true, ws::OP_PING, b"hb"));
                stream.extend(server_frame(true, ws::OP_CONTINUATION, b));
            } else {
                stream.extend(server_frame(true, ws::OP_TEXT, &m));
            }
        }
        for chunk in [1usize, 3, 9, 10, 11, 100, 4096, 65_536, 1 << 20] {
            let mut w = Worker::new(&cfg, &sh, 0, sys::mono_ns()).unwrap();
            w.conns[0].st = St::Open;
            w.conns[0].fd = 1_000_000; // never touched: nothing is flushed or closed in this test
            w.conns[0].seq.begin(0);
            for part in stream.chunks(chunk) {
                w.ingest(0, part);
                assert!(w.conns[0].rx.len() <= largest, "carry grew past one frame");
            }
            assert!(w.conns[0].rx.is_empty());
            assert_eq!(w.res.deliveries, 60, "chunk {chunk}");
            assert_eq!(w.res.server_pings, 9);
            assert!(w.conns[0].seq.is_complete(60));
            let pongs = w.conns[0].tx.len();
            assert_eq!(pongs, 9 * (2 + 4 + 2), "masked pong frames queued");
            w.conns[0].fd = -1;
        }
    }

    #[test]
    fn shares_cover_everything_once() {
        for total in [1usize, 7, 100, 15000] {
            for procs in 1..6 {
                let sum: usize = (0..procs).map(|i| share_of(total, procs, i)).sum();
                assert_eq!(sum, total);
            }
        }
        assert_eq!(token(5, 3) >> 32, 3);
        assert_eq!(token(5, 3) & 0xffff_ffff, 5);
    }
}
