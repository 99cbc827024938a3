//! Names of the Redis keys the bridge keeps besides the bus stream (the seed's layout; docs/CLUSTER.md describes
//! each). `{...}` in the docs is a placeholder: the key for user `u1` is `ws:user:clients:u1`.

/// Every session of every node: socket id → last-seen ms. The sweeper finds stale sessions here.
pub const CLIENTS_INDEX: &str = "ws:clients";

/// A user's sessions: socket id → last-seen ms.
pub fn user_clients(uid: &str) -> String {
    format!("ws:user:clients:{uid}")
}

/// A channel's members: socket id → last-seen ms.
pub fn guid_clients(channel: &str) -> String {
    format!("ws:guid:clients:{channel}")
}

/// One session: hash with `user`, `channels` (JSON list), `node`, `device`, `tenant`, `connected_ms`.
pub fn client(sid: u64) -> String {
    format!("ws:client:{sid}")
}

/// Messages to a user, kept for replay (`cluster.offline_maxlen`, `cluster.offline_max_age`).
pub fn notify(uid: &str) -> String {
    format!("stream:notify:{uid}")
}

/// The last stream id each device of a user acknowledged: hash device ("" = no device) → id.
pub fn ack(uid: &str) -> String {
    format!("ws:ack:{uid}")
}
