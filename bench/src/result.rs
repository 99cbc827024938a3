//! What a worker process measured, sent to the parent as one JSON document over a pipe and merged there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hist::HistData;
use crate::seq::SeqTotals;

/// Why a connection attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    Refused,
    Timeout,
    BadHandshake,
    Reset,
    /// The server closed the TCP connection before answering the upgrade.
    Eof,
    AddrUnavailable,
    FdLimit,
    Other,
}

impl FailKind {
    pub fn from_errno(e: i32) -> FailKind {
        match e {
            libc::ECONNREFUSED => FailKind::Refused,
            libc::ETIMEDOUT => FailKind::Timeout,
            libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED => FailKind::Reset,
            libc::EADDRNOTAVAIL | libc::EADDRINUSE => FailKind::AddrUnavailable,
            libc::EMFILE | libc::ENFILE => FailKind::FdLimit,
            _ => FailKind::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    pub refused: u64,
    pub timeout: u64,
    pub bad_handshake: u64,
    pub reset: u64,
    pub eof: u64,
    pub addr_unavailable: u64,
    pub fd_limit: u64,
    pub other: u64,
}

impl Failures {
    pub fn record(&mut self, k: FailKind) {
        *match k {
            FailKind::Refused => &mut self.refused,
            FailKind::Timeout => &mut self.timeout,
            FailKind::BadHandshake => &mut self.bad_handshake,
            FailKind::Reset => &mut self.reset,
            FailKind::Eof => &mut self.eof,
            FailKind::AddrUnavailable => &mut self.addr_unavailable,
            FailKind::FdLimit => &mut self.fd_limit,
            FailKind::Other => &mut self.other,
        } += 1;
    }

    pub fn total(&self) -> u64 {
        self.refused
            + self.timeout
            + self.bad_handshake
            + self.reset
            + self.eof
            + self.addr_unavailable
            + self.fd_limit
            + self.other
    }

    pub fn add(&mut self, o: &Failures) {
        self.refused += o.refused;
        self.timeout += o.timeout;
        self.bad_handshake += o.bad_handshake;
        self.reset += o.reset;
        self.eof += o.eof;
        self.addr_unavailable += o.addr_unavailable;
        self.fd_limit += o.fd_limit;
        self.other += o.other;
    }

    /// "refused 3, timeout 1" (only non-zero kinds), or "none".
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("refused", self.refused),
            ("timeout", self.timeout),
            ("bad handshake", self.bad_handshake),
            ("reset", self.reset),
            ("closed before upgrade", self.eof),
            ("no source port", self.addr_unavailable),
            ("fd limit", self.fd_limit),
            ("other", self.other),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub workers: u64,
    /// Connection attempts of the first round (reconnects are counted apart).
    pub attempted: u64,
    pub connected: u64,
    pub failures: Failures,
    pub reconnects: u64,
    pub reconnect_failures: Failures,
    /// Monotonic ns of the first attempt and the last successful upgrade of the first round.
    pub first_attempt_ns: u64,
    pub last_connected_ns: u64,
    /// Upgrades completed in each second since the common start.
    pub connect_per_sec: Vec<u64>,
    pub handshake_us: HistData,

    pub deliveries: u64,
    /// Users scenario: pushes that arrived at a user they were not addressed to (not counted as deliveries).
    pub misdelivered: u64,
    pub seq: SeqTotals,
    pub latency_us: HistData,
    /// Realtime µs of the first and last delivery.
    pub first_delivery_rt: u64,
    pub last_delivery_rt: u64,
    pub server_errors: u64,
    pub other_msgs: u64,
    pub server_pings: u64,
    /// Close frames the server sent on its own, by status code.
    pub server_closes: BTreeMap<u16, u64>,
    pub protocol_errors: u64,
    /// Compressed messages that did not inflate (`--deflate`).
    pub inflate_errors: u64,
    /// Compressed messages inflated (identical ones in a row are inflated once per worker, src/inflate.rs).
    pub inflated: u64,
    /// Open connections that the server dropped without a close frame (EOF or reset).
    pub dropped: u64,
    /// Our close handshakes the server did not complete in time.
    pub close_timeouts: u64,
    pub churn_closes: u64,
    pub churn_skipped: u64,

    pub echo_sent: u64,
    pub echo_recv: u64,
    /// Echoes received inside the measured window (start of load + duration).
    pub echo_in_window: u64,
    pub echo_bad: u64,
    pub rtt_us: HistData,

    pub acks_sent: u64,
    pub pongs: u64,
    pub pongs_unmatched: u64,
    pub ack_rtt_us: HistData,

    pub bytes_in: u64,
    pub bytes_out: u64,
    /// read() calls that returned data: deliveries per read shows how much the gateway coalesced its writes.
    pub reads: u64,
    pub cpu_ms: u64,
    /// CPU used between the start of the load phase and the end of the worker's main loop.
    pub cpu_load_ms: u64,
}

fn min_nonzero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (x, y) => x.min(y),
    }
}

impl WorkerResult {
    pub fn merge(&mut self, o: &WorkerResult) {
        self.workers += o.workers;
        self.attempted += o.attempted;
        self.connected += o.connected;
        self.failures.add(&o.failures);
        self.reconnects += o.reconnects;
        self.reconnect_failures.add(&o.reconnect_failures);
        self.first_attempt_ns = min_nonzero(self.first_attempt_ns, o.first_attempt_ns);
        self.last_connected_ns = self.last_connected_ns.max(o.last_connected_ns);
        if self.connect_per_sec.len() < o.connect_per_sec.len() {
            self.connect_per_sec.resize(o.connect_per_sec.len(), 0);
        }
        for (a, b) in self.connect_per_sec.iter_mut().zip(&o.connect_per_sec) {
            *a += b;
        }
        self.handshake_us.0.extend_from_slice(&o.handshake_us.0);
        self.deliveries += o.deliveries;
        self.misdelivered += o.misdelivered;
        self.seq.add(&o.seq);
        self.latency_us.0.extend_from_slice(&o.latency_us.0);
        self.first_delivery_rt = min_nonzero(self.first_delivery_rt, o.first_delivery_rt);
        self.last_delivery_rt = self.last_delivery_rt.max(o.last_delivery_rt);
        self.server_errors += o.server_errors;
        self.other_msgs += o.other_msgs;
        self.server_pings += o.server_pings;
        for (k, v) in &o.server_closes {
            *self.server_closes.entry(*k).or_default() += v;
        }
        self.protocol_errors += o.protocol_errors;
        self.inflate_errors += o.inflate_errors;
        self.inflated += o.inflated;
        self.dropped += o.dropped;
        self.close_timeouts += o.close_timeouts;
        self.churn_closes += o.churn_closes;
        self.churn_skipped += o.churn_skipped;
        self.echo_sent += o.echo_sent;
        self.echo_recv += o.echo_recv;
        self.echo_in_window += o.echo_in_window;
        self.echo_bad += o.echo_bad;
        self.rtt_us.0.extend_from_slice(&o.rtt_us.0);
        self.acks_sent += o.acks_sent;
        self.pongs += o.pongs;
        self.pongs_unmatched += o.pongs_unmatched;
        self.ack_rtt_us.0.extend_from_slice(&o.ack_rtt_us.0);
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.reads += o.reads;
        self.cpu_ms += o.cpu_ms;
        self.cpu_load_ms += o.cpu_load_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_roundtrip() {
        let mut a = WorkerResult {
            workers: 1,
            connected: 3,
            connect_per_sec: vec![1, 2],
            ..Default::default()
        };
        a.failures.record(FailKind::Refused);
        a.server_closes.insert(1008, 2);
        a.first_attempt_ns = 50;
        let mut b = WorkerResult {
            workers: 1,
            connected: 4,
            connect_per_sec: vec![0, 1, 5],
            ..Default::default()
        };
        b.failures.record(FailKind::from_errno(libc::ETIMEDOUT));
        b.server_closes.insert(1008, 1);
        b.first_attempt_ns = 20;
        let json = serde_json::to_string(&b).unwrap();
        let b: WorkerResult = serde_json::from_str(&json).unwrap();
        a.merge(&b);
        assert_eq!(a.workers, 2);
        assert_eq!(a.connected, 7);
        assert_eq!(a.connect_per_sec, vec![1, 3, 5]);
        assert_eq!(a.failures.total(), 2);
        assert_eq!(a.failures.describe(), "refused 1, timeout 1");
        assert_eq!(a.server_closes[&1008], 3);
        assert_eq!(a.first_attempt_ns, 20);
    }
}
