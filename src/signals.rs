//! Signals are blocked in every thread and taken synchronously by the main thread with sigwait, so no handler
//! runs inside a reactor.

use nix::sys::signal::{SigSet, SigmaskHow, Signal as NixSignal};

pub enum Signal {
    /// SIGINT or SIGTERM: graceful shutdown.
    Terminate,
    /// SIGHUP: reload (TLS certificates).
    Reload,
}

pub struct Signals {
    set: SigSet,
}

/// Blocks SIGINT, SIGTERM and SIGHUP for this thread and every thread it starts later; ignores SIGPIPE (a write
/// to a reset socket must be an error, not a death).
pub fn block() -> nix::Result<Signals> {
    let mut set = SigSet::empty();
    set.add(NixSignal::SIGINT);
    set.add(NixSignal::SIGTERM);
    set.add(NixSignal::SIGHUP);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    crate::reactor::sys::net::ignore_sigpipe();
    Ok(Signals { set })
}

impl Signals {
    pub fn wait(&self) -> Signal {
        loop {
            match self.set.wait() {
                Ok(NixSignal::SIGHUP) => return Signal::Reload,
                Ok(_) => return Signal::Terminate,
                Err(_) => continue,
            }
        }
    }
}
