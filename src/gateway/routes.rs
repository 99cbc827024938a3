//! What a request on the client listener is for, by path: the WebSocket endpoints (gateway, debug echo), the
//! fallback transports (SSE stream and its ops, long-poll; `OPTIONS` on them is the CORS preflight), the demo page.
//! Anything else is a 404.

use super::handler::{Client, Endpoint, Gateway};
use super::long_poll::POLL_PATH;
use super::session_ops::SSE_OP_PATH;
use super::sse::SSE_PATH;
use crate::frame::handshake::{Reject, Request};
use crate::reactor::{Core, Key, Reply};

impl Gateway {
    pub(super) fn route(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        req: &Request<'_>,
        body: &[u8],
        response: &mut Vec<u8>,
    ) -> Result<Reply, Reject> {
        let policy = &self.policy;
        if req.path == policy.ws_path {
            self.upgrade(core, key, req, Endpoint::Gateway, response)?;
            return Ok(Reply::WebSocket);
        }
        if !policy.echo_path.is_empty() && req.path == policy.echo_path {
            self.upgrade(core, key, req, Endpoint::Echo, response)?;
            return Ok(Reply::WebSocket);
        }
        let fallback = matches!(req.path, SSE_PATH | SSE_OP_PATH | POLL_PATH);
        if fallback && req.method == "OPTIONS" {
            return self.preflight(req, response);
        }
        match req.path {
            SSE_PATH => return self.open_sse(core, key, req, response),
            SSE_OP_PATH => return self.post_op(core, req, body, response),
            POLL_PATH => return self.poll_request(core, key, req, body, response),
            _ => {}
        }
        if let Some(demo) = &self.local.shared.demo {
            if let Some(served) = demo.serve(req, response) {
                return served.map(|()| Reply::Respond);
            }
        }
        Err(Reject::NotFound)
    }
}
