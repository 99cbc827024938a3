//! permessage-deflate: the offer negotiation (`frame::deflate_offer::negotiate`) on the input read as up to four
//! `Sec-WebSocket-Extensions` values (one per line), and the bounded inflate (`frame::deflate::Inflater`) on the
//! input as one compressed client message.
//!
//! Checked: an accepted offer has a window of 8..=15 and its answer is one header line; the inflate never gives more
//! than its limit, fails only with 1009 or 1007, and what it gives compresses with the server's own deflater and
//! inflates back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::frame::deflate::{split_frame, Deflater, Inflater};
use wsgate::frame::deflate_offer::negotiate;
use wsgate::frame::{encode, OP_BINARY};

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let headers: Vec<&str> = text.split('\n').take(4).collect();
        for client_context in [false, true] {
            if let Some(a) = negotiate(&headers, client_context) {
                assert!((8..=15).contains(&a.server_window_bits));
                assert!(a.client_no_context_takeover || client_context);
                let mut line = Vec::new();
                a.write_header(&mut line);
                assert!(line.ends_with(b"\r\n"));
                assert!(!line[..line.len() - 2].iter().any(|&b| b == b'\r' || b == b'\n'));
            }
        }
    }
    let mut inflater = Inflater::default();
    let mut out = Vec::new();
    match inflater.inflate(data, &mut out, MAX, true) {
        Ok(()) => {
            assert!(out.len() <= MAX);
            let mut frame = Vec::new();
            encode::push_frame(&mut frame, OP_BINARY, &out);
            if let Some(packed) = Deflater::default().compress_frame(&frame, 0) {
                let (_, body) = split_frame(&packed).unwrap();
                let mut back = Vec::new();
                Inflater::default().inflate(body, &mut back, MAX, true).expect("own output inflates");
                assert_eq!(back, out);
            }
        }
        Err(v) => assert!(v.code == 1009 || v.code == 1007, "{v:?}"),
    }
    assert!(out.len() <= MAX + 1);
});
