//! Cluster-wide presence and user lookups (`GET /api/presence`, `GET /api/user/{id}` in cluster mode) read Redis,
//! so they run on a worker thread of their own: the API thread hands the request over and answers the next one
//! (publishes, broadcasts, `/healthz`) at once, whatever Redis does; the worker's answer comes back through a
//! channel and an eventfd that wakes the API loop. A connection with a lookup outstanding reads nothing more until
//! it is answered, so pipelined responses keep their order.
//!
//! Bounds: the worker's Redis reads have short timeouts (src/cluster/query.rs) and fail at once while Redis is
//! known to be unreachable, and the answer then comes from this node alone (`"scope":"node"`). When the worker
//! is busy with [`QUEUE`] lookups already, a new one is answered from this node at once, on the API thread.

use super::connection_routes::{self, Lookup};
use super::http::Response;
use crate::cluster::ClusterHandle;
use crate::hub::Hub;
use crate::reactor::sys::Waker;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

/// Lookups waiting for the worker at most.
const QUEUE: usize = 64;

struct Job {
    client: usize,
    ticket: u64,
    lookup: Lookup,
}

/// A finished lookup for the API loop.
pub struct Done {
    pub client: usize,
    pub ticket: u64,
    pub response: Response,
}

/// The API thread's end of the worker.
pub struct Lookups {
    jobs: Sender<Job>,
    done: Receiver<Done>,
    waker: Arc<Waker>,
    hub: Arc<Hub>,
}

impl Lookups {
    /// Starts the worker thread; it ends when this is dropped (after the lookup it is running, if any).
    pub fn start(hub: Arc<Hub>, cluster: ClusterHandle) -> io::Result<Lookups> {
        let (jobs, job_rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        let (done_tx, done) = crossbeam_channel::unbounded();
        let waker = Arc::new(Waker::new()?);
        let (w, h) = (waker.clone(), hub.clone());
        std::thread::Builder::new()
            .name("api-lookups".into())
            .spawn(move || {
                for job in job_rx {
                    let response = connection_routes::look_up(&job.lookup, &h, Some(&cluster));
                    let done = Done {
                        client: job.client,
                        ticket: job.ticket,
                        response,
                    };
                    if done_tx.send(done).is_err() {
                        return;
                    }
                    w.wake();
                }
            })?;
        Ok(Lookups {
            jobs,
            done,
            waker,
            hub,
        })
    }

    /// The eventfd to poll: readable when answers are waiting.
    pub fn fd(&self) -> RawFd {
        self.waker.fd()
    }

    /// Hands `lookup` to the worker; when it is full, answers from this node at once (Err).
    pub fn submit(&self, client: usize, ticket: u64, lookup: Lookup) -> Result<(), Response> {
        match self.jobs.try_send(Job {
            client,
            ticket,
            lookup,
        }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => Err(
                connection_routes::look_up_here(&job.lookup, &self.hub, "lookups queue full"),
            ),
        }
    }

    /// Call before the API loop blocks, then take the answers: one that arrives afterwards wakes the loop.
    pub fn arm(&self) {
        self.waker.arm();
    }

    /// The answers that arrived (consumes the wake-up).
    pub fn take(&self) -> impl Iterator<Item = Done> + '_ {
        self.waker.drain();
        self.done.try_iter()
    }
}
