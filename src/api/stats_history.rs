//! The last five minutes, one point a second, for the live status page (`GET /api/stats/stream`): gauges, rates
//! from counter deltas, and latency percentiles of the samples recorded in that second. Taken by an API worker
//! thread whether or not anyone watches, so a page opened at 3 a.m. shows the minutes before it was opened.

use super::latency::{self, Measured};
use super::Context;
use crate::reactor::{Latency, Tally};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds kept.
pub const POINTS: usize = 300;
pub const EVERY: Duration = Duration::from_secs(1);

/// Names of a point's values, in order (the stream sends them once, then rows of numbers).
pub const COLUMNS: [&str; 18] = [
    "seq",
    "t_ms",
    "connections",
    "tls_sessions",
    "handshakes_per_s",
    "deliveries_per_s",
    "bytes_out_per_s",
    "bytes_in_per_s",
    "messages_in_per_s",
    "publishes_per_s",
    "slow_consumer_closes",
    "delivery_p50_us",
    "delivery_p99_us",
    "delivery_p999_us",
    "delivery_max_us",
    "handshake_p99_us",
    "api_request_p99_us",
    "cluster_hop_p99_us",
];

type Point = [u64; COLUMNS.len()];

/// Counters and histograms as of the previous point.
struct Previous {
    at: Instant,
    totals: Tally,
    api_publishes: u64,
    latency: Vec<Measured>,
}

#[derive(Default)]
pub struct History {
    points: VecDeque<Point>,
    seq: u64,
    previous: Option<Previous>,
}

fn sum(per: &[Tally], get: fn(&Tally) -> u64) -> u64 {
    per.iter().map(get).sum()
}

impl History {
    /// Takes a point if a second has passed since the last one.
    pub fn sample(&mut self, ctx: &Context) {
        let now = Instant::now();
        if self
            .previous
            .as_ref()
            .is_some_and(|p| now.duration_since(p.at) < EVERY)
        {
            return;
        }
        let per = ctx.hub.totals();
        let totals = Tally {
            connections: sum(&per, |t| t.connections),
            tls_sessions: sum(&per, |t| t.tls_sessions),
            handshakes_total: sum(&per, |t| t.handshakes_total),
            messages_out_total: sum(&per, |t| t.messages_out_total),
            bytes_out_total: sum(&per, |t| t.bytes_out_total),
            bytes_in_total: sum(&per, |t| t.bytes_in_total),
            messages_in_total: sum(&per, |t| t.messages_in_total),
            slow_consumer_closes_total: sum(&per, |t| t.slow_consumer_closes_total),
            ..Tally::default()
        };
        let r = Ordering::Relaxed;
        let api_publishes = ctx.stats.publishes_total.load(r) + ctx.stats.broadcasts_total.load(r);
        let latency = latency::collect(ctx);
        let current = Previous {
            at: now,
            totals,
            api_publishes,
            latency,
        };
        if let Some(prev) = self.previous.take() {
            self.push(point(&prev, &current, self.seq + 1));
        }
        self.previous = Some(current);
    }

    fn push(&mut self, p: Point) {
        self.seq = p[0];
        if self.points.len() == POINTS {
            self.points.pop_front();
        }
        self.points.push_back(p);
    }

    /// `{"columns":[...],"points":[[...],...]}` with the points after sequence number `since`.
    pub fn json(&self, since: u64) -> String {
        let rows: Vec<&Point> = self.points.iter().filter(|p| p[0] > since).collect();
        json!({
            "ok": true,
            "interval_ms": EVERY.as_millis() as u64,
            "columns": COLUMNS,
            "points": rows,
        })
        .to_string()
    }
}

/// The point for the interval between two readings.
fn point(prev: &Previous, cur: &Previous, seq: u64) -> Point {
    let secs = cur.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let rate = |get: fn(&Tally) -> u64| {
        let d = get(&cur.totals).saturating_sub(get(&prev.totals));
        (d as f64 / secs).round() as u64
    };
    let window = |key: &str| -> Latency {
        let now = cur.latency.iter().find(|m| m.key == key);
        let before = prev.latency.iter().find(|m| m.key == key);
        match (now, before) {
            (Some(n), Some(b)) => n.hist.since(&b.hist),
            (Some(n), None) => n.hist.clone(),
            _ => Latency::default(),
        }
    };
    let delivery = window("delivery");
    let t_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    [
        seq,
        t_ms,
        cur.totals.connections,
        cur.totals.tls_sessions,
        rate(|t| t.handshakes_total),
        rate(|t| t.messages_out_total),
        rate(|t| t.bytes_out_total),
        rate(|t| t.bytes_in_total),
        rate(|t| t.messages_in_total),
        ((cur.api_publishes.saturating_sub(prev.api_publishes)) as f64 / secs).round() as u64,
        cur.totals
            .slow_consumer_closes_total
            .saturating_sub(prev.totals.slow_consumer_closes_total),
        delivery.quantile_us(0.5),
        delivery.quantile_us(0.99),
        delivery.quantile_us(0.999),
        delivery.max_us(),
        window("handshake").quantile_us(0.99),
        window("api_request").quantile_us(0.99),
        window("cluster_hop").quantile_us(0.99),
    ]
}
