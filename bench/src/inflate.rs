//! permessage-deflate on the generator's side. The gateway compresses a publish once and sends every subscriber
//! the same bytes, so a worker inflates each distinct compressed message once and remembers the result for the
//! next subscriber that gets the same bytes (a bounded cache): a real client inflates each message, but one worker
//! stands for thousands of clients and must not become the bottleneck of the gateway it measures. Every delivery
//! is still checked like any other (sequence, latency), from the inflated bytes.

use flate2::{Decompress, FlushDecompress, Status};
use std::collections::HashMap;

/// Distinct compressed messages remembered (cleared when full): far more than the publishes in flight.
const CACHE: usize = 4096;

/// The sync-flush tail a sender leaves off each compressed message (RFC 7692 §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

#[derive(Default)]
pub struct Inflate {
    d: Option<Decompress>,
    seen: HashMap<Vec<u8>, Vec<u8>>,
    /// Messages actually inflated (the rest were bytes already seen).
    pub inflated: u64,
}

impl Inflate {
    /// The message `payload` (compressed, without context) decodes to; None if it is not valid DEFLATE data or
    /// inflates past `max` bytes.
    pub fn message(&mut self, payload: &[u8], max: usize) -> Option<&[u8]> {
        if !self.seen.contains_key(payload) {
            let out = self.inflate(payload, max)?;
            if self.seen.len() >= CACHE {
                self.seen.clear();
            }
            self.seen.insert(payload.to_vec(), out);
            self.inflated += 1;
        }
        self.seen.get(payload).map(Vec::as_slice)
    }

    fn inflate(&mut self, payload: &[u8], max: usize) -> Option<Vec<u8>> {
        let d = self.d.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        let mut out = Vec::with_capacity(payload.len() * 4);
        for chunk in [payload, &TAIL[..]] {
            let mut pos = 0;
            loop {
                if out.len() == out.capacity() {
                    out.reserve(4096.max(out.len()));
                }
                let (before, written) = (d.total_in(), out.len());
                let status = d
                    .decompress_vec(&chunk[pos..], &mut out, FlushDecompress::Sync)
                    .ok()?;
                pos += (d.total_in() - before) as usize;
                if out.len() > max {
                    return None;
                }
                let stalled = written == out.len() && d.total_in() == before;
                if status == Status::StreamEnd
                    || ((pos == chunk.len() || stalled) && out.len() < out.capacity())
                {
                    break;
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    #[test]
    fn inflates_and_reuses_the_last_message() {
        let msg = br#"{"channel":"bench","data":{"seq":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
        let mut c = Compress::new(Compression::default(), false);
        let mut z = Vec::with_capacity(256);
        c.compress_vec(msg, &mut z, FlushCompress::Sync).unwrap();
        z.truncate(z.len() - 4);
        let mut i = Inflate::default();
        assert_eq!(i.message(&z, 1 << 20).unwrap(), msg);
        assert_eq!(i.message(&z, 1 << 20).unwrap(), msg);
        assert_eq!(i.inflated, 1);
        assert_eq!(i.message(&[0xFF, 0xFF, 0xFF], 1 << 20), None);
    }
}
