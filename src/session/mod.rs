//! Identity and sessions: socket ids, per-reactor registries (socket id → connection, user → connections), the
//! adaptive heartbeat and the session frames.

pub mod frames;
pub mod heartbeat;
pub mod registry;
pub mod sid;
pub mod users;
