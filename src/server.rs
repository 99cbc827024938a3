//! Start-up: bind the listeners, start one reactor per core (each serving clients and the API) and the API's
//! workers, and shut them down in order.

use crate::api::{self, GatewayWithApi};
use crate::cluster::Cluster;
use crate::config::{Config, IoBackend};
use crate::gateway::{stats::GatewayStats, Gateway};
use crate::hub::{Hub, ReactorHandle};
use crate::pool::MemoryBudget;
use crate::reactor::sys::{net, probe, Epoll, Uring, Waker};
use crate::reactor::{self, BusiestChannels, ReactorLatency, ReactorSetup, ReactorStats};
use crate::tls::TlsAcceptor;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Commands waiting for one reactor. When a reactor falls this far behind, publishers block (the API stops reading
/// their requests), so memory stays bounded: at most this many distinct frames per reactor, shared between reactors.
const COMMAND_QUEUE: usize = 1024;

/// Listen backlog for the client and API listeners (capped by net.core.somaxconn).
const BACKLOG: i32 = 65535;

/// A running gateway.
pub struct Server {
    /// The client listener (`server.listen`); it speaks TLS when `tls` is set.
    pub ws_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// The extra plaintext client listener (`tls.plain_listen`), if any.
    pub plain_addr: Option<SocketAddr>,
    /// The reloadable TLS configuration, if `tls.cert` is set.
    pub tls: Option<Arc<TlsAcceptor>>,
    pub hub: Arc<Hub>,
    config: Arc<Config>,
    reactors: Vec<JoinHandle<()>>,
    /// The API's workers (src/api/worker.rs).
    api_worker: Option<api::Worker>,
    /// The merge thread (src/hub/merge.rs), when a namespace has a merge window.
    merge: Option<JoinHandle<()>>,
    merge_stop: Arc<AtomicBool>,
    cluster: Option<Cluster>,
}

/// The reactors' backend for `wanted` on this kernel: whether it is io_uring, and the log line saying which and why.
/// An error when io_uring is demanded and the kernel refuses it.
pub fn choose_io_backend(wanted: IoBackend) -> io::Result<(bool, String)> {
    // The probe builds a ring: not asked when epoll is configured.
    let (uring, why) = match wanted {
        IoBackend::Epoll => (false, "server.io_backend = \"epoll\"".to_string()),
        IoBackend::Uring => match probe::uring_support() {
            Ok(()) => (true, "server.io_backend = \"uring\"".to_string()),
            Err(why) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("server.io_backend = \"uring\", but this kernel refuses it: {why}"),
                ))
            }
        },
        IoBackend::Auto => match probe::uring_support() {
            Ok(()) => (true, "auto: the kernel offers io_uring".to_string()),
            Err(why) => (false, format!("auto: io_uring unavailable: {why}")),
        },
    };
    let name = if uring { "io_uring" } else { "epoll" };
    Ok((uring, format!("io backend: {name} ({why})")))
}

impl Server {
    pub fn start(config: Config) -> io::Result<Server> {
        let mut config = Arc::new(config);
        let threads = config.reactor_threads();
        // Before anything listens: a demanded backend the kernel refuses stops start-up.
        let (uring, line) = choose_io_backend(config.server.io_backend)?;
        log::info!("{line}");
        // Built (and its key files checked) before anything listens; shared once the node id is final.
        let mut sessions = crate::gateway::Shared::from_config(&config)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;

        // TLS first: a missing or broken certificate stops start-up before anything listens.
        let tls = if config.tls.enabled() {
            let acceptor = TlsAcceptor::load(&config.tls.cert, &config.tls.key)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            Some(Arc::new(acceptor))
        } else {
            None
        };

        // The first bind resolves port 0; the other reactors join the same port through SO_REUSEPORT.
        let first = net::listen_reuseport(config.listen_addr(), BACKLOG).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("server.listen {}: {e}", config.server.listen),
            )
        })?;
        let ws_addr = net::local_addr(first)?;
        let mut listeners = vec![first];
        for _ in 1..threads {
            listeners.push(net::listen_reuseport(ws_addr, BACKLOG)?);
        }
        let mut plain_listeners = Vec::new();
        let mut plain_addr = None;
        if let Some(addr) = config.plain_listen_addr() {
            let first = net::listen_reuseport(addr, BACKLOG).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("tls.plain_listen {}: {e}", config.tls.plain_listen),
                )
            })?;
            let bound = net::local_addr(first)?;
            plain_listeners.push(first);
            for _ in 1..threads {
                plain_listeners.push(net::listen_reuseport(bound, BACKLOG)?);
            }
            plain_addr = Some(bound);
        }
        let mut plain_listeners = plain_listeners.into_iter();
        // The API listener: one socket per reactor as well, separate from the client listener.
        let api_fd = net::listen_reuseport(config.api_addr(), 1024).map_err(|e| {
            io::Error::new(e.kind(), format!("api.listen {}: {e}", config.api.listen))
        })?;
        let api_addr = net::local_addr(api_fd)?;
        let mut api_listeners = vec![api_fd];
        for _ in 1..threads {
            api_listeners.push(net::listen_reuseport(api_addr, 1024)?);
        }
        let mut api_listeners = api_listeners.into_iter();

        // Cluster mode: lease the node id before anything uses it; the effective id goes into the config.
        let mut cluster = None;
        if config.cluster.enabled() {
            let c = Cluster::connect(&config, ws_addr, api_addr)?;
            Arc::make_mut(&mut config).server.node_id = c.node_id();
            // Socket ids carry the leased node id, so they stay unique across the cluster.
            sessions.node_id = c.node_id();
            // Reactors hand session state, replay requests and acks to the bridge.
            sessions.bridge = Some(Arc::new(c.link()));
            // Client connects, messages and disconnects go to the upstream stream.
            sessions.sink = c.upstream_sink();
            cluster = Some(c);
        }
        // The demo page's channels: client messages to `demo:*` are published there too.
        let demo_relay = if config.debug.demo_relay {
            let (sink, rx) = crate::gateway::demo_relay::DemoRelaySink::wrap(sessions.sink.clone());
            sessions.sink = sink;
            Some(rx)
        } else {
            None
        };
        // The command queues first: a reactor's gateway hands fallback ops to the others through them.
        let mut queues = Vec::new();
        for _ in 0..threads {
            queues.push((
                crossbeam_channel::bounded(COMMAND_QUEUE),
                Arc::new(Waker::new()?),
            ));
        }
        sessions.peers = Some(Arc::new(crate::hub::peers::Peers {
            reactors: queues
                .iter()
                .map(|((tx, _), waker)| (tx.clone(), waker.clone()))
                .collect(),
        }));
        let sessions = Arc::new(sessions);

        let live = Arc::new(AtomicUsize::new(0));
        let budget = Arc::new(MemoryBudget::new(config.buffered_bytes_limit()));
        let mut handles = Vec::new();
        let mut setups = Vec::new();
        let mut gateways = Vec::new();
        for ((id, listener), ((tx, rx), waker)) in listeners.into_iter().enumerate().zip(queues) {
            let stats = Arc::new(ReactorStats::default());
            let gateway_stats = Arc::new(GatewayStats::default());
            let latency = Arc::new(ReactorLatency::default());
            let busiest = Arc::new(BusiestChannels::default());
            handles.push(ReactorHandle {
                tx,
                waker: waker.clone(),
                stats: stats.clone(),
                gateway: gateway_stats.clone(),
                latency: latency.clone(),
                busiest: busiest.clone(),
                batches_total: Default::default(),
            });
            setups.push(ReactorSetup {
                id,
                listener,
                rx,
                waker,
                stats,
                config: config.clone(),
                live_connections: live.clone(),
                tls: tls.clone(),
                plain_listener: plain_listeners.next(),
                side_listener: api_listeners.next(),
                budget: budget.clone(),
                latency,
                busiest,
            });
            gateways.push((sessions.clone(), gateway_stats));
        }
        let hub = Arc::new(Hub {
            reactors: handles,
            live_connections: live,
            started: std::time::Instant::now(),
            gateway: sessions,
            merger: crate::hub::merge::Merger::from_config(&config.channels),
            handoff: Default::default(),
        });
        let merge_stop = Arc::new(AtomicBool::new(false));
        let merge = match hub.merger.clone() {
            Some(merger) => {
                let (hub, stop) = (hub.clone(), merge_stop.clone());
                Some(
                    std::thread::Builder::new()
                        .name("merge".into())
                        .spawn(move || merger.run(&hub, &stop))?,
                )
            }
            None => None,
        };

        if let Some(rx) = demo_relay {
            api::demo_relay::spawn(hub.clone(), cluster.as_ref().map(|c| c.handle()), rx)?;
        }
        let (spread, handed) = api::Spread::new(threads);
        let ctx = Arc::new(api::Context::new(
            hub.clone(),
            config.clone(),
            tls.clone(),
            cluster.as_ref().map(|c| c.handle()),
            budget,
            spread,
        ));
        let (done_tx, done_rx): (Vec<_>, Vec<_>) =
            (0..threads).map(|_| crossbeam_channel::unbounded()).unzip();
        let api_worker = api::Worker::start(ctx.clone(), done_tx)?;

        let mut reactors = Vec::new();
        // Each reactor says once whether it got set up; `start` returns only when all have, so a started server
        // serves (and holds every descriptor it needs at rest), and a reactor that cannot start stops start-up.
        let mut started = Vec::new();
        let inboxes = done_rx.into_iter().zip(handed);
        for ((setup, (shared, stats)), (done, handed)) in
            setups.into_iter().zip(gateways).zip(inboxes)
        {
            let id = setup.id;
            let config = config.clone();
            let (ctx, worker) = (ctx.clone(), api_worker.queue());
            let (started_tx, started_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
            started.push((id, started_rx));
            let handle = std::thread::Builder::new()
                .name(format!("reactor-{id}"))
                .spawn(move || {
                    net::pin_to_cpu(id);
                    let handler = || {
                        let gateway = Gateway::new(&config, shared, id, stats);
                        GatewayWithApi::new(gateway, id, ctx, worker, done, handed)
                    };
                    let up = started_tx.clone();
                    let serving = move || {
                        let _ = up.send(Ok(()));
                    };
                    let ran = if uring {
                        reactor::run::<Uring, GatewayWithApi>(setup, handler, serving)
                    } else {
                        reactor::run::<Epoll, GatewayWithApi>(setup, handler, serving)
                    };
                    if let Err(e) = ran {
                        log::error!("reactor {id} stopped: {e}");
                        // Only read while starting up; later the receiver is gone and this goes nowhere.
                        let _ = started_tx.try_send(Err(e.to_string()));
                    }
                })?;
            reactors.push(handle);
        }
        for (id, rx) in started {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(io::Error::other(format!("reactor {id}: {e}"))),
                Err(_) => {
                    return Err(io::Error::other(format!(
                        "reactor {id} ended while starting"
                    )))
                }
            }
        }

        if let Some(c) = cluster.as_mut() {
            c.start(hub.clone(), hub.live_connections.clone())?;
        }

        Ok(Server {
            ws_addr,
            api_addr,
            plain_addr,
            tls,
            hub,
            config,
            reactors,
            api_worker: Some(api_worker),
            merge,
            merge_stop,
            cluster,
        })
    }

    /// Re-reads the TLS certificate and key (SIGHUP, `POST /api/reload-tls`). Existing connections keep their
    /// sessions; new handshakes use the new certificate. On error the old one stays and the error is returned.
    pub fn reload_tls(&self) -> Result<(), String> {
        crate::tls::reload(self.tls.as_deref())
    }

    /// Stops accepting, closes every client with 1001 and waits for the reactors to drain (bounded by
    /// `server.shutdown_timeout`).
    pub fn shutdown(mut self) {
        let drain_ms = self.config.server.shutdown_timeout * 1000;
        self.hub.outbox().shutdown(drain_ms);
        for r in self.reactors.drain(..) {
            let _ = r.join();
        }
        if let Some(worker) = self.api_worker.take() {
            worker.stop();
        }
        // Pending batches leave (to reactors that are gone by now: nothing is sent) and the thread ends.
        self.merge_stop.store(true, Ordering::Relaxed);
        if let (Some(merge), Some(merger)) = (self.merge.take(), &self.hub.merger) {
            merger.wake();
            let _ = merge.join();
        }
        // Last: nothing queues events any more, so the bridge can flush its outbox and release the node id.
        if let Some(cluster) = self.cluster.take() {
            cluster.stop();
        }
    }
}
