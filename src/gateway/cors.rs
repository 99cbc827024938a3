//! The browser's CORS preflight on the fallback routes. The web app's pages often live on another origin than the
//! gateway (app.example.com and ws.example.com); their ops and polls carry `Content-Type: application/json` (and
//! `Authorization`), which a browser first asks about with an `OPTIONS` request. Every fallback answer is readable
//! by any origin (`frame::handshake::ANY_ORIGIN`); `server.allowed_origins`, when set, is enforced here as on the
//! requests themselves.

use super::handler::Gateway;
use crate::frame::handshake::{Reject, Request};
use crate::reactor::Reply;

/// 204 without a body, so without `Content-Length` (RFC 9110, 8.6). The answer holds for 10 minutes.
const PREFLIGHT: &[u8] = b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: *\r\n\
Access-Control-Allow-Methods: GET, POST\r\nAccess-Control-Allow-Headers: Authorization, Content-Type\r\n\
Access-Control-Max-Age: 600\r\nConnection: close\r\n\r\n";

impl Gateway {
    /// `OPTIONS` on a fallback route: what a page of an allowed origin may send there.
    pub(super) fn preflight(
        &self,
        req: &Request<'_>,
        response: &mut Vec<u8>,
    ) -> Result<Reply, Reject> {
        if !self.fallback_origin_allowed(req.origin) {
            return Err(Reject::Forbidden("origin not allowed"));
        }
        response.extend_from_slice(PREFLIGHT);
        Ok(Reply::Respond)
    }
}
