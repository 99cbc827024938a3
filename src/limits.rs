//! Start-up resource limits: every connection is a file descriptor.

use crate::config::Config;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors the process needs besides client connections (listeners, epoll, eventfds, API clients, logs).
const RESERVED_FDS: u64 = 64;

/// Raises RLIMIT_NOFILE's soft limit to the hard limit and tells the operator the resulting capacity.
pub fn raise_nofile(config: &Config) {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            log::warn!("cannot read RLIMIT_NOFILE: {e}");
            return;
        }
    };
    let limit = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                log::warn!("cannot raise RLIMIT_NOFILE from {soft} to {hard}: {e}");
                soft
            }
        }
    } else {
        soft
    };
    let capacity = limit.saturating_sub(RESERVED_FDS);
    log::info!("file-descriptor limit {limit}: room for about {capacity} connections");
    let wanted = config.server.max_connections as u64;
    if capacity < wanted {
        log::warn!(
            "file-descriptor limit {limit} is below server.max_connections ({wanted}); raise LimitNOFILE / \
             `ulimit -Hn` (see scripts/sysctl.sh and deploy/wsgate.service) to hold more connections"
        );
    }
}
