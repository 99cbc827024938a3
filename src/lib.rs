//! wsgate: an epoll-native, zero-copy WebSocket edge gateway.
pub mod api;
pub mod channels;
pub mod config;
pub mod frame;
pub mod hub;
pub mod limits;
pub mod logging;
pub mod pool;
pub mod protocol;
pub mod reactor;
pub mod server;
pub mod signals;
pub mod tls;
