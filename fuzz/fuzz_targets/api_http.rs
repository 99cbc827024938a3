//! The HTTP API's request parser (`api::http::parse`) on hostile bytes.
//!
//! Checked: a request lies within the bytes present, its body within `max_body`, and parsing exactly its bytes
//! gives the same request (pipelined requests do not depend on what follows); `Partial` only while the buffered
//! bytes are bounded (head limit + body limit), so a client cannot make the API buffer without end; errors are
//! 4xx with a well-formed JSON response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::api::http::{self, Parsed};

/// Small so the fuzzer reaches the 413 path; the API's own limit is `api.max_body`.
const MAX_BODY: usize = 4096;
/// The parser's head limit (api/http.rs).
const MAX_HEAD: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    match http::parse(data, MAX_BODY) {
        Parsed::Partial => assert!(data.len() <= MAX_HEAD + MAX_BODY, "unbounded Partial"),
        Parsed::Error(status, message) => {
            assert!((400..500).contains(&status), "status {status}");
            let out = http::error_response(status, message);
            let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
            serde_json::from_slice::<&serde_json::value::RawValue>(&out[end..]).expect("JSON body");
        }
        Parsed::Request(r) => {
            assert!(r.total_len <= data.len());
            assert!(r.body.len() <= MAX_BODY);
            let again = match http::parse(&data[..r.total_len], MAX_BODY) {
                Parsed::Request(again) => again,
                _ => panic!("the request's own bytes do not parse alone"),
            };
            assert_eq!(
                (
                    again.method,
                    again.path,
                    again.query,
                    again.body,
                    again.total_len
                ),
                (r.method, r.path, r.query, r.body, r.total_len)
            );
            assert_eq!(again.keep_alive, r.keep_alive);
            assert_eq!(again.authorization, r.authorization);
        }
    }
});
