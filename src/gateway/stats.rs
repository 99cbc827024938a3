//! Counters of identity, auth and client connections: a plain tally per reactor (copied into atomics once per
//! loop iteration, like the core counters) and API-side atomics. Their JSON / Prometheus output is in
//! src/api/metrics.rs (the `"sessions"` object of /api/stats).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! gateway_counters {
    ($($name:ident: $help:literal,)*) => {
        /// The reactor's private gateway counters.
        #[derive(Debug, Default, Clone, Copy)]
        pub struct GatewayTally {
            $(pub $name: u64,)*
        }

        /// The published copy other threads read.
        #[derive(Debug, Default)]
        pub struct GatewayStats {
            $(pub $name: AtomicU64,)*
        }

        impl GatewayStats {
            pub fn store(&self, t: &GatewayTally) {
                $(self.$name.store(t.$name, Ordering::Relaxed);)*
            }

            pub fn load(&self) -> GatewayTally {
                GatewayTally {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }

        /// (name, help, accessor); names ending in `_total` are counters, the others gauges.
        pub const FIELDS: &[(&str, &str, fn(&GatewayTally) -> u64)] = &[
            $((stringify!($name), $help, |t| t.$name),)*
        ];
    };
}

gateway_counters! {
    authenticated: "Open connections with a verified token.",
    auth_failures_total: "Upgrades refused with 401 (missing, invalid or expired token).",
    user_limit_refusals_total: "Upgrades refused with 429 over auth.max_connections_per_user.",
    connect_rate_limited_total: "Connections refused with 429 over limits.connect_rate (per source IP).",
    rate_limited_ping_total: "ping messages refused over limits.ping_rate.",
    rate_limited_control_total: "subscribe/unsubscribe/refresh messages refused over limits.control_rate.",
    rate_limited_upstream_total: "msg messages refused over limits.upstream_rate.",
    rate_limit_closes_total: "Connections closed with 4008 after ws.error_budget rate-limited messages in a row.",
    forbidden_subscribes_total: "Subscriptions refused because the token does not allow the channel.",
    token_expired_closes_total: "Connections closed with 4001 because their token expired.",
    refreshes_total: "Tokens refreshed through op refresh.",
    refresh_failures_total: "op refresh requests refused.",
    upstream_messages_total: "Client messages (op msg) handed to the upstream sink.",
    upstream_refused_total: "Client messages the upstream sink refused (answered with 4013).",
    upstream_connects_total: "Connect events handed to the upstream sink.",
    upstream_disconnects_total: "Disconnect events handed to the upstream sink.",
    user_deliveries_total: "Frames queued by user-targeted publishes.",
    acked_messages_total: "User pushes sent with ack that the client acknowledged.",
    ack_retransmits_total: "User pushes sent again because their ack did not come in time.",
    ack_timeout_closes_total: "Connections closed with 4010 after a push had delivery.max_attempts sends without an ack.",
    unacked_overflow_closes_total: "Connections closed with 4010 over delivery.max_unacked (or ws.max_outbound_bytes) unacknowledged pushes.",
    sid_deliveries_total: "Frames queued by socket-id-targeted publishes.",
    sid_misses_total: "Socket-id-targeted publishes for a connection that no longer exists.",
    api_disconnects_total: "Connections closed through POST /api/disconnect.",
    heartbeat_lengthened_total: "Heartbeat intervals lengthened after healthy beats.",
    heartbeat_snapbacks_total: "Heartbeat intervals reset to the base after a missed beat.",
    replayed_messages_total: "Missed user messages replayed to connections at connect (cluster mode).",
    replay_duplicates_dropped_total: "Live user messages not delivered because the replay already contained them.",
    replay_overflow_closes_total: "Connections closed with 1013 because live messages overflowed during their replay.",
    channel_recoveries_total: "Channel subscriptions with recover (op subscribe or the connect URL).",
    channel_recoveries_failed_total: "Channel recoveries answered recovered:false (history gone, other epoch, too large).",
    channel_recovered_messages_total: "Channel publications replayed by recoveries.",
    channel_recovery_skips_total: "Live channel publications not delivered to a connection because its replay had them.",
    sse_sessions: "Open server-sent-events sessions (GET /sse).",
    poll_sessions: "Open long-poll sessions (POST /poll).",
    fallback_ops_total: "Client ops posted to POST /sse/op and accepted.",
    polls_total: "Polls (POST /poll with a session) taken.",
    fallback_unknown_session_total: "Requests to /sse/op or /poll for an unknown or ended session or with a wrong key (404).",
}

/// Counters of the API side of the gateway (targeted publishes, disconnects).
#[derive(Debug, Default)]
pub struct ApiGatewayStats {
    pub user_publishes_total: AtomicU64,
    pub sid_publishes_total: AtomicU64,
    pub publish_rate_limited_total: AtomicU64,
    pub disconnect_requests_total: AtomicU64,
}

impl ApiGatewayStats {
    pub fn fields(&self) -> [(&'static str, &'static str, u64); 4] {
        let r = Ordering::Relaxed;
        [
            (
                "api_user_publishes_total",
                "User-targeted publishes accepted by the API.",
                self.user_publishes_total.load(r),
            ),
            (
                "api_sid_publishes_total",
                "Socket-id-targeted publishes accepted by the API.",
                self.sid_publishes_total.load(r),
            ),
            (
                "api_publish_rate_limited_total",
                "API publishes refused with 429 over limits.publish_rate (per tenant).",
                self.publish_rate_limited_total.load(r),
            ),
            (
                "api_disconnect_requests_total",
                "POST /api/disconnect requests.",
                self.disconnect_requests_total.load(r),
            ),
        ]
    }
}
