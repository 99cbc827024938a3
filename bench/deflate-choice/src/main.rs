//! Compresses the same ~1 KiB JSON publish many times, one shot each (no context kept, as a shared
//! permessage-deflate frame is made), and prints ns per message and the compressed size per level and crate;
//! then the gateway's inbound cost: inflating one compressed ~1 KiB client message (flate2, reset per message as
//! the shared no-context inflater does); then MessagePack: the size of the same publishes as MessagePack (plain and
//! compressed) and the cost of transcoding one, done as the gateway does it (JSON → serde_json::Value → rmp-serde).
use std::time::Instant;

fn payload(i: usize) -> Vec<u8> {
    let mut s = format!("{{\"channel\":\"doc.{i}\",\"data\":{{\"id\":{i},\"items\":[");
    let mut k = 0;
    while s.len() < 1000 {
        s.push_str(&format!(
            "{{\"user\":\"user-{}\",\"text\":\"comment number {k} on the document\",\"ts\":{}}},",
            (i * 31 + k) % 97,
            1_700_000_000 + k * 7
        ));
        k += 1;
    }
    s.pop();
    s.push_str("]}}");
    s.into_bytes()
}

const N: usize = 200_000;

fn main() {
    let msgs: Vec<Vec<u8>> = (0..64).map(payload).collect();
    let plain: usize = msgs[0].len();
    for level in [1u32, 6] {
        let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
        let mut out = Vec::with_capacity(4096);
        let mut size = 0;
        let t = Instant::now();
        for i in 0..N {
            c.reset();
            out.clear();
            c.compress_vec(&msgs[i % 64], &mut out, flate2::FlushCompress::Sync).unwrap();
            size += out.len() - 4; // the 00 00 ff ff tail is stripped on the wire
        }
        let ns = t.elapsed().as_nanos() as f64 / N as f64;
        println!("flate2/zlib-rs level {level}: {ns:.0} ns/msg, {} -> {} bytes", plain, size / N);

        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level as i32).unwrap());
        let mut out = vec![0u8; 4096];
        let mut size = 0;
        let t = Instant::now();
        for i in 0..N {
            // libdeflate ends with a final block; a permessage-deflate frame then needs no tail to strip.
            size += c.deflate_compress(&msgs[i % 64], &mut out).unwrap();
        }
        let ns = t.elapsed().as_nanos() as f64 / N as f64;
        println!("libdeflater level {level}: {ns:.0} ns/msg, {} -> {} bytes", plain, size / N);
    }

    let mut c = flate2::Compress::new(flate2::Compression::new(6), false);
    let wire: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| {
            c.reset();
            let mut out = Vec::with_capacity(4096);
            c.compress_vec(m, &mut out, flate2::FlushCompress::Sync).unwrap();
            out
        })
        .collect();
    let mut d = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(4096);
    let t = Instant::now();
    for i in 0..N {
        d.reset(false);
        out.clear();
        d.decompress_vec(&wire[i % 64], &mut out, flate2::FlushDecompress::Sync).unwrap();
        assert_eq!(out.len(), msgs[i % 64].len());
    }
    let ns = t.elapsed().as_nanos() as f64 / N as f64;
    println!("flate2/zlib-rs inflate of one {}-byte client message ({} compressed): {ns:.0} ns/msg", plain, wire[0].len() - 4);

    let t = Instant::now();
    for i in 0..N / 4 {
        let v: serde_json::Value = serde_json::from_slice(&msgs[i % 64]).unwrap();
        std::hint::black_box(rmp_serde::to_vec(&v).unwrap());
    }
    let ns = t.elapsed().as_nanos() as f64 / (N / 4) as f64;
    let v: serde_json::Value = serde_json::from_slice(&msgs[0]).unwrap();
    let packed = rmp_serde::to_vec(&v).unwrap();
    c.reset();
    let mut z = Vec::with_capacity(4096);
    c.compress_vec(&packed, &mut z, flate2::FlushCompress::Sync).unwrap();
    println!(
        "MessagePack: {plain}-byte JSON publish -> {} bytes ({} compressed at level 6, JSON {}); JSON -> MessagePack: {ns:.0} ns/publish",
        packed.len(),
        z.len() - 4,
        wire[0].len() - 4
    );
}
