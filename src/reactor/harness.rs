//! A reactor driven by hand, for tests and fuzzing: no thread, no sleeping, a clock that moves only when told,
//! and readiness events that can be injected on top of the real ones (spurious wake-ups, errors). Clients are
//! Unix stream sockets on an abstract address, so no network is involved and a test can run thousands of
//! scenarios a second. Everything else — accept, read, decode, the handler, queues, writev, timers, teardown — is
//! the production code path.

use super::clock::Clock;
use super::command::Command;
use super::sys::{net, Epoll, Poller, Ready, Waker};
use super::{Handler, Reactor, ReactorSetup, ReactorStats, EVENTS_PER_WAIT};
use crate::config::Config;
use crate::pool::MemoryBudget;
use crossbeam_channel::Sender;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{IntoRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Epoll that never blocks, plus the events a script injects.
pub struct Scripted {
    epoll: Epoll,
    injected: Rc<RefCell<Vec<Ready>>>,
}

impl Poller for Scripted {
    fn new(capacity: usize) -> io::Result<Self> {
        Ok(Scripted {
            epoll: Epoll::new(capacity)?,
            injected: Rc::default(),
        })
    }

    fn add(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        self.epoll.add(fd, token)
    }

    fn remove(&mut self, fd: RawFd) -> io::Result<()> {
        self.epoll.remove(fd)
    }

    fn wait(&mut self, out: &mut Vec<Ready>, _timeout_ms: i32) -> io::Result<()> {
        self.epoll.wait(out, 0)?;
        out.append(&mut self.injected.borrow_mut());
        Ok(())
    }
}

/// One reactor with handler `H`, stepped by the caller.
pub struct Harness<H: Handler> {
    reactor: Reactor<Scripted, H>,
    commands: Sender<Command<H::Command>>,
    time: Rc<Cell<u64>>,
    injected: Rc<RefCell<Vec<Ready>>>,
    address: SocketAddr,
    listener: RawFd,
}

impl<H: Handler> Harness<H> {
    /// A reactor with `config`'s limits (its listen addresses are not used) and `handler`.
    pub fn new(config: Arc<Config>, handler: H) -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "wsgate-harness-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let address = SocketAddr::from_abstract_name(name.as_bytes())?;
        let listener = UnixListener::bind_addr(&address)?;
        listener.set_nonblocking(true)?;
        let listener = listener.into_raw_fd();
        let (commands, rx) = crossbeam_channel::bounded(1024);
        let budget = Arc::new(MemoryBudget::new(config.buffered_bytes_limit()));
        let setup = ReactorSetup {
            id: 0,
            listener,
            rx,
            waker: Arc::new(Waker::new()?),
            stats: Arc::new(ReactorStats::default()),
            config,
            live_connections: Arc::new(AtomicUsize::new(0)),
            tls: None,
            plain_listener: None,
            side_listener: None,
            budget,
            latency: Default::default(),
            busiest: Default::default(),
        };
        let poller = Scripted::new(EVENTS_PER_WAIT)?;
        let injected = poller.injected.clone();
        let time = Rc::new(Cell::new(0));
        let reactor = Reactor::new(setup, handler, Clock::Manual(time.clone()), poller)?;
        Ok(Harness {
            reactor,
            commands,
            time,
            injected,
            address,
            listener,
        })
    }

    /// A new client, non-blocking (accepted at the next step).
    pub fn connect(&self) -> io::Result<UnixStream> {
        let client = UnixStream::connect_addr(&self.address)?;
        client.set_nonblocking(true)?;
        Ok(client)
    }

    /// One loop iteration. True once the reactor has shut down.
    pub fn step(&mut self) -> io::Result<bool> {
        self.reactor.iterate()
    }

    /// Moves the reactor's clock forward.
    pub fn advance(&self, ms: u64) {
        self.time.set(self.time.get() + ms);
    }

    /// Hands the reactor a command (dropped when its queue is full, as a blocked publisher would wait).
    pub fn command(&self, cmd: Command<H::Command>) {
        let _ = self.commands.try_send(cmd);
    }

    /// Injects a readiness event for the `index`-th live connection (modulo their number), as a spurious wake-up
    /// or an error report would arrive.
    pub fn inject(&self, index: usize, readable: bool, writable: bool, error: bool) {
        let keys = self.live_keys();
        if keys.is_empty() {
            return;
        }
        self.injected.borrow_mut().push(Ready {
            token: keys[index % keys.len()] as u64,
            readable,
            writable,
            error,
            received: None,
        });
    }

    /// Shrinks the send buffer of the `index`-th live connection's server side, so writes to it come out short.
    pub fn limit_send_buffer(&self, index: usize, bytes: i32) {
        let keys = self.live_keys();
        if keys.is_empty() {
            return;
        }
        let fd = self.reactor.core.conns[keys[index % keys.len()]].fd;
        net::set_send_buffer(fd, bytes);
    }

    fn live_keys(&self) -> Vec<usize> {
        self.reactor.core.conns.iter().map(|(k, _)| k).collect()
    }

    /// Connections the reactor holds (in any state).
    pub fn connections(&self) -> usize {
        self.reactor.core.conns.len()
    }

    /// Read buffers lent out, and the bytes they hold.
    pub fn buffers(&self) -> (usize, usize) {
        let bufs = &self.reactor.core.bufs;
        (bufs.lent_count(), bufs.held())
    }

    /// Subscriptions across all channels.
    pub fn channels(&self) -> usize {
        self.reactor.core.channels.len()
    }

    /// The reactor's counters as of the last step.
    pub fn tally(&self) -> super::Tally {
        self.reactor.core.tally
    }
}

impl<H: Handler> Drop for Harness<H> {
    fn drop(&mut self) {
        // A harness is dropped without a shutdown: close what the reactor still owns.
        for (_, conn) in self.reactor.core.conns.iter() {
            net::close(conn.fd);
        }
        if self.reactor.listener.is_some() {
            net::close(self.listener);
        }
    }
}
