//! Identifiers every layer shares: socket ids (minted by the reactors, parsed by the API and the cluster bridge)
//! and Redis stream ids (user message positions). Plain values with no dependency on the rest of the crate, so
//! that config, auth, the gateway and the cluster bridge can all use them without depending on each other.

pub mod sid;
pub mod stream_id;

pub use stream_id::StreamId;
