//! Start-up resource limits: every connection is a file descriptor.

use crate::config::Config;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept free of client connections besides the API's (`api::MAX_API_CONNECTIONS`, and
/// `api::PROBE_CONNECTIONS` per reactor): listeners, epoll and eventfds per reactor, Redis connections, certificate
/// and key files read at reload.
const RESERVED_FDS: u64 = 256;

/// Raises RLIMIT_NOFILE's soft limit to the hard limit, tells the operator the resulting capacity, and lowers
/// `server.max_connections` to it: past that, a client gets a quick 503 instead of waiting in the accept backlog
/// of a reactor that cannot open another descriptor.
pub fn raise_nofile(config: &mut Config) {
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
    let api =
        crate::api::MAX_API_CONNECTIONS + crate::api::PROBE_CONNECTIONS * config.reactor_threads();
    let capacity = limit.saturating_sub(RESERVED_FDS + api as u64).max(1);
    log::info!("file-descriptor limit {limit}: room for about {capacity} connections");
    let wanted = config.server.max_connections as u64;
    if capacity < wanted {
        log::warn!(
            "file-descriptor limit {limit} is below server.max_connections ({wanted}): holding at most {capacity} \
             connections; raise LimitNOFILE / `ulimit -Hn` (see scripts/sysctl.sh and deploy/wsgate.service) to hold \
             more"
        );
        config.server.max_connections = capacity as usize;
    }
}
