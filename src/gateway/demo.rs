//! The demo page and the JavaScript SDK, embedded in the binary and served on the client listener under
//! `debug.demo_path` (off when empty): an operator opens it in a browser to check a deployment end to end. No disk
//! access; the page learns the WebSocket path from a meta tag filled in once at start-up.

use crate::frame::handshake::{write_response, Reject, Request};

const PAGE: &str = include_str!("../../clients/js/demo/index.html");
const SDK: &str = include_str!("../../clients/js/src/wsgate.js");

const HTML: &str = "Content-Type: text/html; charset=utf-8\r\nCache-Control: no-cache\r\n";
const JS: &str = "Content-Type: text/javascript; charset=utf-8\r\nCache-Control: no-cache\r\n";

pub struct DemoPages {
    /// `debug.demo_path`, without a trailing slash.
    path: String,
    page: String,
}

impl DemoPages {
    /// None when `demo_path` is empty (the demo is off).
    pub fn new(demo_path: &str, ws_path: &str) -> Option<DemoPages> {
        if demo_path.is_empty() {
            return None;
        }
        Some(DemoPages {
            path: demo_path.trim_end_matches('/').to_string(),
            page: PAGE.replace("{{WS_PATH}}", &html_escape(ws_path)),
        })
    }

    /// Answers a request under the demo path (`None`: not one of its paths). `{path}` redirects to `{path}/` (so
    /// the page's relative import of `./wsgate.js` resolves), `{path}/` is the page, `{path}/wsgate.js` the SDK.
    pub fn serve(&self, req: &Request<'_>, response: &mut Vec<u8>) -> Option<Result<(), Reject>> {
        let rest = req.path.strip_prefix(self.path.as_str())?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        if req.method != "GET" && req.method != "HEAD" {
            return Some(Err(Reject::MethodNotAllowed));
        }
        let (status, headers, body) = match rest {
            "" => {
                let location = format!("Location: {}/\r\n", self.path);
                write_response(response, 308, &location, b"");
                return Some(Ok(()));
            }
            "/" | "/index.html" => (200, HTML, self.page.as_bytes()),
            "/wsgate.js" => (200, JS, SDK.as_bytes()),
            _ => return Some(Err(Reject::NotFound)),
        };
        write_response(response, status, headers, body);
        if req.method == "HEAD" {
            response.truncate(response.len() - body.len());
        }
        Some(Ok(()))
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_gets_the_ws_path_once() {
        let d = DemoPages::new("/demo/", "/live\"x").unwrap();
        assert!(!d.page.contains("{{WS_PATH}}"));
        assert!(d.page.contains("/live&quot;x"));
        assert!(DemoPages::new("", "/ws").is_none());
    }
}
