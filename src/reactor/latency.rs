//! Latency histograms in microseconds (HDR, two significant digits: ~1 % error, ~20 KiB each). A thread records
//! into its own [`Latency`] with plain additions and hands it over to a [`SharedLatency`] now and then (the
//! reactor: once a second), so readers (the API) merge per-thread histograms without slowing the writer.

use hdrhistogram::Histogram;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Largest value tracked exactly: a minute. Longer samples count as a minute (see [`Latency::record`]).
const HIGHEST_US: u64 = 60_000_000;
const SIGNIFICANT_DIGITS: u8 = 2;

/// The quantiles reported in `/api/stats` and the live stream: (JSON name, quantile).
pub const QUANTILES: [(&str, f64); 4] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)];

/// A histogram of durations in microseconds, with their exact sum (Prometheus `_sum`).
#[derive(Clone)]
pub struct Latency {
    hist: Histogram<u64>,
    sum_us: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            hist: Histogram::new_with_bounds(1, HIGHEST_US, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
            sum_us: 0,
        }
    }
}

impl Latency {
    /// Records `count` samples of `d`. Never allocates: the histogram's range is fixed, and anything above a
    /// minute is recorded as a minute.
    pub fn record_n(&mut self, d: Duration, count: u64) {
        let us = (d.as_micros().min(HIGHEST_US as u128) as u64).max(1);
        self.hist.saturating_record_n(us, count);
        self.sum_us = self.sum_us.saturating_add(us.saturating_mul(count));
    }

    pub fn record(&mut self, d: Duration) {
        self.record_n(d, 1);
    }

    /// Adds every sample of `other` (same bounds, so this cannot fail).
    pub fn merge(&mut self, other: &Latency) {
        let _ = self.hist.add(&other.hist);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// The samples of `self` that are not in `earlier` (an earlier snapshot of the same cumulative histogram).
    pub fn since(&self, earlier: &Latency) -> Latency {
        let mut d = self.clone();
        if d.hist.subtract(&earlier.hist).is_err() {
            // Not an earlier snapshot of this histogram (a reset in between): everything counts as new.
            return self.clone();
        }
        d.sum_us = self.sum_us.saturating_sub(earlier.sum_us);
        d
    }

    pub fn reset(&mut self) {
        self.hist.reset();
        self.sum_us = 0;
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    pub fn max_us(&self) -> u64 {
        self.hist.max()
    }

    /// The value at quantile `q` (0..=1) in microseconds; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.hist.is_empty() {
            return 0;
        }
        self.hist.value_at_quantile(q)
    }

    /// Samples at most `bound_us` (a Prometheus bucket `le`), to the histogram's precision.
    pub fn count_at_most(&self, bound_us: u64) -> u64 {
        self.hist
            .iter_recorded()
            .take_while(|v| v.value_iterated_to() <= bound_us)
            .map(|v| v.count_at_value())
            .sum()
    }
}

/// What one reactor measures, read by the API: publish accepted → its frame written to every local subscriber
/// (delivery), and TCP accept → 101 response sent, TLS included (handshake).
#[derive(Default)]
pub struct ReactorLatency {
    pub delivery: SharedLatency,
    pub handshake: SharedLatency,
}

/// A cumulative histogram one thread adds to and any thread reads.
#[derive(Default)]
pub struct SharedLatency {
    inner: Mutex<Latency>,
}

impl SharedLatency {
    /// Moves everything `local` recorded into the shared histogram and empties `local`.
    pub fn absorb(&self, local: &mut Latency) {
        if local.count() == 0 {
            return;
        }
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .merge(local);
        local.reset();
    }

    /// Records straight into the shared histogram (for threads that record rarely).
    pub fn record(&self, d: Duration) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(d);
    }

    /// Adds this histogram's samples to `into` (merging per-thread histograms on read).
    pub fn merge_into(&self, into: &mut Latency) {
        into.merge(&self.inner.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn percentiles_of_a_known_distribution_are_within_one_percent() {
        let mut l = Latency::default();
        for v in 1..=10_000 {
            l.record(us(v));
        }
        assert_eq!(l.count(), 10_000);
        for (q, want) in [
            (0.5, 5_000.0),
            (0.9, 9_000.0),
            (0.99, 9_900.0),
            (0.999, 9_990.0),
        ] {
            let got = l.quantile_us(q) as f64;
            assert!((got - want).abs() / want < 0.01, "q{q}: {got} vs {want}");
        }
        assert!((l.max_us() as f64 - 10_000.0).abs() < 100.0);
        assert_eq!(l.sum_us(), 10_000 * 10_001 / 2);
    }

    #[test]
    fn merging_per_thread_histograms_equals_recording_into_one() {
        let shared = [SharedLatency::default(), SharedLatency::default()];
        let mut one = Latency::default();
        for (i, s) in shared.iter().enumerate() {
            let mut local = Latency::default();
            for v in 0..1000u64 {
                let d = us(1 + v * (i as u64 + 1) * 7);
                local.record(d);
                one.record(d);
            }
            s.absorb(&mut local);
            assert_eq!(local.count(), 0, "absorb empties the local histogram");
        }
        let mut merged = Latency::default();
        for s in &shared {
            s.merge_into(&mut merged);
        }
        assert_eq!(merged.count(), 2000);
        assert_eq!(merged.sum_us(), one.sum_us());
        for (_, q) in QUANTILES {
            assert_eq!(merged.quantile_us(q), one.quantile_us(q));
        }
        assert_eq!(merged.max_us(), one.max_us());
    }

    #[test]
    fn since_keeps_only_the_new_samples_and_buckets_are_cumulative() {
        let mut l = Latency::default();
        l.record_n(us(100), 10);
        let before = l.clone();
        l.record_n(us(5_000), 5);
        let d = l.since(&before);
        assert_eq!(d.count(), 5);
        assert_eq!(d.sum_us(), 25_000);
        assert_eq!(l.count_at_most(1_000), 10);
        assert_eq!(l.count_at_most(10_000), 15);
        assert_eq!(l.count_at_most(50), 0);
    }

    #[test]
    fn out_of_range_samples_are_clamped_not_lost() {
        let mut l = Latency::default();
        l.record(Duration::from_secs(3600));
        l.record(Duration::ZERO);
        assert_eq!(l.count(), 2);
        assert!(l.max_us() >= HIGHEST_US);
        assert_eq!(Latency::default().quantile_us(0.99), 0);
    }
}
