//! Latency histograms (HdrHistogram, microseconds, 3 significant digits) and their transport between processes:
//! a histogram travels as its non-empty buckets, (highest equivalent value, count) pairs, which re-record into the
//! same buckets on the other side, so merging is exact.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// One hour in microseconds: anything slower is clamped (and would be a failure anyway).
const MAX_US: u64 = 3_600_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_US));
}

/// Serialized histogram: non-empty buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistData(pub Vec<(u64, u64)>);

pub fn export(h: &Histogram<u64>) -> HistData {
    HistData(
        h.iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect(),
    )
}

pub fn import_into(h: &mut Histogram<u64>, d: &HistData) {
    for &(v, n) in &d.0 {
        let _ = h.record_n(v.clamp(1, MAX_US), n);
    }
}

/// The figures reported for a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        min: h.min(),
        mean: (h.mean() * 10.0).round() / 10.0,
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

/// Human form of a microsecond figure: "850µs", "12.3ms", "1.20s".
pub fn fmt_us(us: u64) -> String {
    if us < 1000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

pub fn fmt_percentiles(p: &Percentiles) -> String {
    if p.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
        fmt_us(p.p50),
        fmt_us(p.p90),
        fmt_us(p.p99),
        fmt_us(p.p999),
        fmt_us(p.max),
        p.count
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_import_is_exact() {
        let mut a = new_hist();
        for v in [1u64, 5, 5, 100, 1234, 99_999, 5_000_000] {
            record(&mut a, v);
        }
        record(&mut a, 0); // clamped to 1
        let mut b = new_hist();
        import_into(&mut b, &export(&a));
        assert_eq!(percentiles(&a), percentiles(&b));
        assert_eq!(b.len(), 8);
        // Merging two halves equals recording everything in one.
        let mut c = new_hist();
        import_into(&mut c, &export(&a));
        import_into(&mut c, &export(&a));
        assert_eq!(c.len(), 16);
        assert_eq!(c.value_at_quantile(0.5), a.value_at_quantile(0.5));
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_us(850), "850µs");
        assert_eq!(fmt_us(12_345), "12.3ms");
        assert_eq!(fmt_us(1_200_000), "1.20s");
        assert_eq!(fmt_percentiles(&Percentiles::default()), "no samples");
    }
}
