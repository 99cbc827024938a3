//! The publishing side, run by the coordinating parent: HTTP/1.1 keep-alive connections to the gateway's API with
//! pipelined `POST /api/publish` requests, at most --inflight outstanding in total, either back-to-back or one every
//! --interval-ms. Progress goes into shared memory (`sent` before each write, `acked` as responses come back, failed
//! publishes into the failure bitmap) so subscribers can tell which publishes they were entitled to.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::{Config, UserAddressing};
use crate::hist::{self, new_hist, Percentiles};
use crate::msg;
use crate::shared::Shared;
use crate::sys::{self, Epoll, EPOLLIN, EPOLLOUT};

#[derive(Debug, Default, Clone, Serialize)]
pub struct PubResult {
    pub published: u64,
    pub ok: u64,
    pub failed: u64,
    /// Non-200 answers by status code (0 = connection lost before an answer).
    pub failed_by_status: std::collections::BTreeMap<u16, u64>,
    pub first_rt_us: u64,
    pub last_rt_us: u64,
    pub elapsed_s: f64,
    pub publishes_per_s: f64,
    pub response_us: Percentiles,
    pub request_bytes: usize,
    pub reconnects: u64,
}

struct ApiConn {
    fd: RawFd,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    /// (first seq, publishes, send mono ns) of requests awaiting their response, in order (a batch carries
    /// several publishes, numbered from its first seq).
    waiting: VecDeque<(u64, u64, u64)>,
}

/// Parses one HTTP response at the start of `buf`: Some((status, total length)) once complete.
pub fn parse_http_response(buf: &[u8]) -> Result<Option<(u16, usize)>, String> {
    let Some(head_end) = msg::find_from(buf, b"\r\n\r\n", 0) else {
        if buf.len() > 64 * 1024 {
            return Err("response head too large".into());
        }
        return Ok(None);
    };
    let head = &buf[..head_end];
    if !head.starts_with(b"HTTP/1.") || head.len() < 12 {
        return Err(format!(
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&head[..head.len().min(40)])
        ));
    }
    let status = msg::parse_u64_at(&head[9..12], 0)
        .map(|(s, _)| s as u16)
        .ok_or("bad status")?;
    let mut len = 0usize;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = &line[..colon];
            if name.eq_ignore_ascii_case(b"content-length") {
                let v = String::from_utf8_lossy(&line[colon + 1..]);
                len = v.trim().parse().map_err(|_| "bad content-length")?;
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                return Err("chunked responses are not supported by the bench publisher".into());
            }
        }
    }
    let total = head_end + 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((status, total)))
}

/// A batch response (or any other) without failed commands: it does not end in `"failed":N}` with N > 0.
fn batch_ok(response: &[u8]) -> bool {
    !response.ends_with(b"}") || response.ends_with(b"\"failed\":0}") || {
        let tail = &response[response.len().saturating_sub(24)..];
        msg::find_from(tail, b"\"failed\":", 0).is_none()
    }
}

pub struct Publisher<'a> {
    cfg: &'a Config,
    sh: &'a Shared,
    ep: Epoll,
    conns: Vec<ApiConn>,
    body: Vec<u8>,
    answered: Vec<bool>,
    acked_prefix: u64,
    res: PubResult,
    h: Histogram<u64>,
}

impl<'a> Publisher<'a> {
    pub fn new(cfg: &'a Config, sh: &'a Shared) -> Result<Publisher<'a>, String> {
        let ep = Epoll::new(64).map_err(|e| e.to_string())?;
        let mut p = Publisher {
            cfg,
            sh,
            ep,
            conns: Vec::new(),
            body: Vec::with_capacity(cfg.size + 256),
            answered: vec![false; cfg.messages as usize],
            acked_prefix: 0,
            res: PubResult::default(),
            h: new_hist(),
        };
        for _ in 0..cfg.pub_conns {
            let c = p.open_conn()?;
            p.conns.push(c);
        }
        Ok(p)
    }

    fn open_conn(&mut self) -> Result<ApiConn, String> {
        let fd = sys::tcp_connect_blocking(self.cfg.api_addr).map_err(|e| {
            format!(
                "cannot connect to the API at {}: {}",
                self.cfg.api,
                sys::errno_name(e)
            )
        })?;
        self.ep
            .add(fd, fd as u64, EPOLLIN | EPOLLOUT | sys::EPOLLET)
            .map_err(|e| sys::errno_name(e).to_string())?;
        Ok(ApiConn {
            fd,
            out: Vec::with_capacity(8192),
            inbuf: Vec::with_capacity(8192),
            waiting: VecDeque::new(),
        })
    }

    fn outstanding(&self) -> usize {
        self.conns
            .iter()
            .map(|c| c.waiting.iter().map(|w| w.1 as usize).sum::<usize>())
            .sum()
    }

    /// Appends the body of one publish (or broadcast, or push to one user) of `seq` sent at `ts` to `self.body`.
    fn push_publish(&mut self, seq: u64, ts: u64) {
        let owed = self.cfg.owed();
        if self.cfg.broadcast {
            self.body.extend_from_slice(b"{\"data\":");
        } else if let Some(how) = &self.cfg.users {
            let target: &[u8] = match how {
                UserAddressing::Jwt => b"{\"user\":\"u",
                UserAddressing::Topics => b"{\"channel\":\"user:",
            };
            self.body.extend_from_slice(target);
            msg::push_u64(&mut self.body, owed.target(seq));
            self.body.extend_from_slice(b"\",\"data\":");
        } else {
            self.body.extend_from_slice(b"{\"channel\":");
            self.body.extend_from_slice(
                serde_json::to_string(&self.cfg.channel)
                    .expect("string")
                    .as_bytes(),
            );
            self.body.extend_from_slice(b",\"data\":");
        }
        msg::push_data(&mut self.body, seq, ts, self.cfg.size, self.cfg.text_pad);
        self.body.push(b'}');
    }

    /// Builds and writes the request for publishes `seq..seq + count` on the least loaded connection: one
    /// `POST /api/publish` (or broadcast), or with --batch one `POST /api/batch` carrying them all.
    fn send(&mut self, seq: u64, count: u64) {
        let k = (0..self.conns.len())
            .min_by_key(|&k| self.conns[k].waiting.len())
            .unwrap_or(0);
        // Announce the publishes before they can reach the server (see SeqTracker::begin).
        self.sh.hdr().sent.store(seq + count, Ordering::Release);
        let ts = sys::real_us();
        if self.res.first_rt_us == 0 {
            self.res.first_rt_us = ts;
        }
        self.res.last_rt_us = ts;
        self.body.clear();
        let path: &[u8] = if self.cfg.batch > 1 {
            self.body.push(b'[');
            for s in seq..seq + count {
                if s > seq {
                    self.body.push(b',');
                }
                let wrap: &[u8] = if self.cfg.broadcast {
                    b"{\"broadcast\":"
                } else {
                    b"{\"publish\":"
                };
                self.body.extend_from_slice(wrap);
                self.push_publish(s, ts);
                self.body.push(b'}');
            }
            self.body.push(b']');
            b"/api/batch"
        } else {
            self.push_publish(seq, ts);
            if self.cfg.broadcast {
                b"/api/broadcast"
            } else {
                b"/api/publish"
            }
        };
        let c = &mut self.conns[k];
        let start = c.out.len();
        c.out.extend_from_slice(b"POST ");
        c.out.extend_from_slice(path);
        c.out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        c.out.extend_from_slice(self.cfg.api_host.as_bytes());
        c.out
            .extend_from_slice(b"\r\nContent-Type: application/json\r\n");
        if let Some(key) = &self.cfg.api_key {
            c.out.extend_from_slice(b"Authorization: apikey ");
            c.out.extend_from_slice(key.as_bytes());
            c.out.extend_from_slice(b"\r\n");
        }
        c.out.extend_from_slice(b"Content-Length: ");
        msg::push_u64(&mut c.out, self.body.len() as u64);
        c.out.extend_from_slice(b"\r\n\r\n");
        c.out.extend_from_slice(&self.body);
        self.res.request_bytes = c.out.len() - start;
        c.waiting.push_back((seq, count, sys::mono_ns()));
        self.res.published += count;
        self.flush(k);
    }

    fn flush(&mut self, k: usize) {
        let c = &mut self.conns[k];
        let mut off = 0;
        while off < c.out.len() {
            let n = sys::write(c.fd, &c.out[off..]);
            if n > 0 {
                off += n as usize;
            } else if sys::errno() == libc::EINTR {
                continue;
            } else if sys::errno() == libc::EAGAIN {
                break;
            } else {
                self.broken(k);
                return;
            }
        }
        c.out.drain(..off);
    }

    fn answer(&mut self, seq: u64, status: u16, sent_ns: u64) {
        hist::record(&mut self.h, sys::mono_ns().saturating_sub(sent_ns) / 1000);
        if status == 200 {
            self.res.ok += 1;
        } else {
            self.res.failed += 1;
            *self.res.failed_by_status.entry(status).or_default() += 1;
            self.sh.mark_failed(seq);
        }
        if let Some(a) = self.answered.get_mut(seq as usize) {
            *a = true;
        }
        while (self.acked_prefix as usize) < self.answered.len()
            && self.answered[self.acked_prefix as usize]
        {
            self.acked_prefix += 1;
        }
        self.sh
            .hdr()
            .acked
            .store(self.acked_prefix, Ordering::Release);
    }

    /// The connection broke: its outstanding publishes failed; replace it.
    fn broken(&mut self, k: usize) {
        let waiting: Vec<(u64, u64, u64)> = self.conns[k].waiting.drain(..).collect();
        for (seq, count, t) in waiting {
            for s in seq..seq + count {
                self.answer(s, 0, t);
            }
        }
        sys::close(self.conns[k].fd);
        self.res.reconnects += 1;
        match self.open_conn() {
            Ok(c) => self.conns[k] = c,
            Err(_) => {
                self.conns[k].fd = -1;
            }
        }
    }

    fn read(&mut self, k: usize) {
        let mut buf = [0u8; 16384];
        loop {
            let c = &mut self.conns[k];
            if c.fd < 0 {
                return;
            }
            let n = sys::read(c.fd, &mut buf);
            if n > 0 {
                c.inbuf.extend_from_slice(&buf[..n as usize]);
                loop {
                    let c = &mut self.conns[k];
                    match parse_http_response(&c.inbuf) {
                        Ok(None) => break,
                        Ok(Some((status, len))) => {
                            // A batch answers 200 with per-command results: any failed one fails them all here.
                            let status = if status == 200 && !batch_ok(&c.inbuf[..len]) {
                                207
                            } else {
                                status
                            };
                            c.inbuf.drain(..len);
                            match c.waiting.pop_front() {
                                Some((seq, count, t)) => {
                                    for s in seq..seq + count {
                                        self.answer(s, status, t);
                                    }
                                }
                                None => break,
                            }
                        }
                        Err(e) => {
                            eprintln!("wsgate-bench: API: {e}");
                            self.conns[k].inbuf.clear();
                            self.broken(k);
                            return;
                        }
                    }
                }
            } else if n == 0 {
                self.broken(k);
                return;
            } else {
                let e = sys::errno();
                if e == libc::EINTR {
                    continue;
                }
                if e != libc::EAGAIN {
                    self.broken(k);
                }
                return;
            }
        }
    }

    /// Publishes up to --messages within --duration, then waits up to --timeout for the last answers.
    pub fn run(mut self, progress: &mut dyn FnMut(u64, u64)) -> PubResult {
        let start = sys::mono_ns();
        let stop_at = start + self.cfg.duration_ns();
        let interval = self.cfg.interval_ms * 1_000_000;
        let mut next_due = start;
        let mut seq = 0u64;
        let mut last_progress = start;
        let mut answer_deadline = u64::MAX;
        loop {
            let now = sys::mono_ns();
            let publishing =
                seq < self.cfg.messages && now < stop_at && self.conns.iter().any(|c| c.fd >= 0);
            if publishing {
                while seq < self.cfg.messages
                    && self.outstanding() < self.cfg.inflight
                    && (interval == 0 || next_due <= sys::mono_ns())
                {
                    let count = (self.cfg.batch as u64).min(self.cfg.messages - seq);
                    self.send(seq, count);
                    seq += count;
                    next_due += interval;
                    if interval != 0 {
                        break;
                    }
                }
            } else {
                if answer_deadline == u64::MAX {
                    answer_deadline = now + self.cfg.timeout_ns();
                }
                if self.outstanding() == 0 || now >= answer_deadline {
                    break;
                }
            }
            if now - last_progress >= 1_000_000_000 {
                progress(seq, self.res.ok);
                last_progress = now;
            }
            let wait_ms = if publishing && interval != 0 {
                (next_due.saturating_sub(sys::mono_ns()) / 1_000_000).min(50) as i32
            } else {
                5
            };
            let n = self.ep.wait(wait_ms);
            for e in 0..n {
                let (tok, ev) = self.ep.event(e);
                if let Some(k) = self.conns.iter().position(|c| c.fd as u64 == tok) {
                    if ev & EPOLLOUT != 0 && !self.conns[k].out.is_empty() {
                        self.flush(k);
                    }
                    if ev & (EPOLLIN | sys::EPOLLERR | sys::EPOLLHUP) != 0 {
                        self.read(k);
                    }
                }
            }
        }
        // Whatever never got an answer counts as failed.
        for k in 0..self.conns.len() {
            let waiting: Vec<(u64, u64, u64)> = self.conns[k].waiting.drain(..).collect();
            for (seq, count, t) in waiting {
                for s in seq..seq + count {
                    self.answer(s, 0, t);
                }
            }
            sys::close(self.conns[k].fd);
        }
        let elapsed = (sys::mono_ns() - start) as f64 / 1e9;
        self.res.elapsed_s = (elapsed * 1000.0).round() / 1000.0;
        let span = (self.res.last_rt_us.saturating_sub(self.res.first_rt_us)) as f64 / 1e6;
        self.res.publishes_per_s = if span > 0.0 {
            (self.res.published as f64 / span).round()
        } else {
            0.0
        };
        self.res.response_us = hist::percentiles(&self.h);
        self.sh.hdr().end_seq.store(seq, Ordering::Release);
        self.res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}HTTP/1.1 4";
        assert_eq!(parse_http_response(r), Ok(Some((200, r.len() - 10))));
        assert_eq!(parse_http_response(&r[..20]), Ok(None));
        assert_eq!(parse_http_response(&r[..r.len() - 12]), Ok(None));
        let e = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_http_response(e), Ok(Some((400, e.len()))));
        assert!(parse_http_response(b"garbage\r\n\r\n").is_err());
        assert!(
            parse_http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err()
        );
    }
}
