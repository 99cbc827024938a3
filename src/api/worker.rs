//! The API routes that wait run off the reactors, on worker threads: `POST /api/disconnect`, `GET /api/presence`
//! and `GET /api/user/{id}` wait for every reactor's answer (a reactor waiting for answers would wait for itself),
//! and in cluster mode `GET /api/history` and publishes to channels with history read Redis; `POST
//! /api/reload-tls` reads files. A reactor hands such a request over and serves its other connections at once;
//! the connection that sent it reads nothing more until the answer is back (so pipelined responses keep their
//! order), which comes through the reactor's own channel and a wake-up of the reactor.
//!
//! Bounds: at most [`QUEUE`] requests wait for the workers; beyond, a request is answered 503 at once. Redis reads
//! have short timeouts (src/cluster/query.rs), reactor queries a deadline (src/hub/targeted.rs). One worker also
//! samples the statistics the status page draws.

use super::http::Request;
use super::{routes, Context};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Requests waiting for the workers at most.
const QUEUE: usize = 64;
/// Worker threads: one waiting on Redis does not hold up a disconnect.
const THREADS: usize = 2;
/// How often the status page's statistics are looked at (a point is taken each second).
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// A request as the worker takes it: owned, since the connection's buffer moves on.
pub struct Job {
    pub reactor: usize,
    pub client: usize,
    pub ticket: u64,
    /// Answer with `Connection: close`.
    pub close: bool,
    method: String,
    path: String,
    query: String,
    body: Vec<u8>,
    authorization: Option<Vec<u8>>,
    msgpack: bool,
}

impl Job {
    pub fn new(reactor: usize, client: usize, ticket: u64, close: bool, req: &Request) -> Job {
        Job {
            reactor,
            client,
            ticket,
            close,
            method: req.method.to_owned(),
            path: req.path.to_owned(),
            query: req.query.to_owned(),
            body: req.body.to_vec(),
            authorization: req.authorization.map(<[u8]>::to_vec),
            msgpack: req.msgpack,
        }
    }

    fn request(&self) -> Request<'_> {
        Request {
            method: &self.method,
            path: &self.path,
            query: &self.query,
            body: &self.body,
            authorization: self.authorization.as_deref(),
            msgpack: self.msgpack,
            keep_alive: !self.close,
            total_len: 0,
        }
    }
}

/// A worker's answer for a reactor's connection.
pub struct Done {
    pub client: usize,
    pub ticket: u64,
    /// The complete response.
    pub response: Vec<u8>,
}

/// The worker threads: they end when [`Worker::stop`] is called.
pub struct Worker {
    jobs: Sender<Job>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Worker {
    /// Starts the workers; `done[i]` takes the answers for reactor i.
    pub fn start(ctx: Arc<Context>, done: Vec<Sender<Done>>) -> io::Result<Worker> {
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(done);
        let mut threads = Vec::new();
        for n in 0..THREADS {
            let (ctx, rx, done, stop) = (ctx.clone(), rx.clone(), done.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("api-worker-{n}"))
                    .spawn(move || work(&ctx, &rx, &done, &stop, n == 0))?,
            );
        }
        Ok(Worker {
            jobs,
            stop,
            threads,
        })
    }

    /// Where the reactors hand requests over.
    pub fn queue(&self) -> WorkerQueue {
        WorkerQueue(self.jobs.clone())
    }

    /// Ends the workers after the requests they are running.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A reactor's end of the workers' queue.
#[derive(Clone)]
pub struct WorkerQueue(Sender<Job>);

impl WorkerQueue {
    /// Hands `job` over; false when the workers are busy with [`QUEUE`] requests already.
    pub fn submit(&self, job: Job) -> bool {
        match self.0.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

fn work(
    ctx: &Context,
    rx: &Receiver<Job>,
    done: &[Sender<Done>],
    stop: &AtomicBool,
    samples: bool,
) {
    while !stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(SAMPLE_EVERY) {
            Ok(job) => {
                // A thread's outbox: it may block on a full queue (reactors never wait for a worker); flushed
                // when dropped, before the answer goes back.
                let response = routes::handle(&job.request(), ctx, &mut ctx.hub.outbox());
                let answer = Done {
                    client: job.client,
                    ticket: job.ticket,
                    response: response.to_bytes(job.close),
                };
                if done[job.reactor].send(answer).is_ok() {
                    ctx.hub.reactors[job.reactor].waker.wake();
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if samples {
            ctx.history
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sample(ctx);
        }
    }
}
