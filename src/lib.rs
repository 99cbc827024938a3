//! wsgate: an epoll-native, zero-copy WebSocket edge gateway.
pub mod frame;
