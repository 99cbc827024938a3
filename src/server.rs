//! Start-up: bind the listeners, start one reactor per core and the API thread, and shut them down in order.

use crate::api::Api;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::hub::{Hub, ReactorHandle, ReactorStats};
use crate::reactor::{self, net, ReactorSetup, Waker};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Listen backlog for the client and API listeners (capped by net.core.somaxconn).
const BACKLOG: i32 = 65535;

/// A running gateway.
pub struct Server {
    pub ws_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub hub: Arc<Hub>,
    config: Arc<Config>,
    reactors: Vec<JoinHandle<()>>,
    api: Option<JoinHandle<()>>,
    api_stop: Arc<AtomicBool>,
    cluster: Option<Cluster>,
}

impl Server {
    pub fn start(config: Config) -> io::Result<Server> {
        let mut config = Arc::new(config);
        let threads = config.reactor_threads();

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
        let api_fd = net::listen_reuseport(config.api_addr(), 1024).map_err(|e| {
            io::Error::new(e.kind(), format!("api.listen {}: {e}", config.api.listen))
        })?;
        let api_addr = net::local_addr(api_fd)?;

        // Cluster mode: lease the node id before anything uses it; the effective id goes into the config.
        let mut cluster = None;
        if config.cluster.enabled() {
            let c = Cluster::connect(&config, ws_addr, api_addr)?;
            Arc::make_mut(&mut config).server.node_id = c.node_id();
            cluster = Some(c);
        }

        let live = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        let mut setups = Vec::new();
        for (id, listener) in listeners.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::unbounded();
            let waker = Arc::new(Waker::new()?);
            let stats = Arc::new(ReactorStats::default());
            handles.push(ReactorHandle {
                tx,
                waker: waker.clone(),
                stats: stats.clone(),
            });
            setups.push(ReactorSetup {
                id,
                listener,
                rx,
                waker,
                stats,
                config: config.clone(),
                live_connections: live.clone(),
            });
        }
        let hub = Arc::new(Hub {
            reactors: handles,
            api: Default::default(),
            live_connections: live,
            started: std::time::Instant::now(),
            cluster: cluster.as_ref().map(|c| c.handle()),
        });

        let mut reactors = Vec::new();
        for setup in setups {
            let id = setup.id;
            let handle = std::thread::Builder::new()
                .name(format!("reactor-{id}"))
                .spawn(move || {
                    pin_to_cpu(id);
                    if let Err(e) = reactor::run(setup) {
                        log::error!("reactor {id} stopped: {e}");
                    }
                })?;
            reactors.push(handle);
        }

        let api_stop = Arc::new(AtomicBool::new(false));
        let mut api = Api::new(api_fd, hub.clone(), config.clone(), api_stop.clone())?;
        let api = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                if let Err(e) = api.run() {
                    log::error!("api stopped: {e}");
                }
            })?;

        if let Some(c) = cluster.as_mut() {
            c.start(hub.clone(), hub.live_connections.clone())?;
        }

        Ok(Server {
            ws_addr,
            api_addr,
            hub,
            config,
            reactors,
            api: Some(api),
            api_stop,
            cluster,
        })
    }

    /// Stops accepting, closes every client with 1001 and waits for the reactors to drain (bounded by
    /// `server.shutdown_timeout`).
    pub fn shutdown(mut self) {
        let drain_ms = self.config.server.shutdown_timeout * 1000;
        self.hub.shutdown(drain_ms);
        for r in self.reactors.drain(..) {
            let _ = r.join();
        }
        self.api_stop.store(true, Ordering::Relaxed);
        if let Some(api) = self.api.take() {
            let _ = api.join();
        }
        // Last: nothing queues events any more, so the bridge can flush its outbox and release the node id.
        if let Some(cluster) = self.cluster.take() {
            cluster.stop();
        }
    }
}

/// Pins a reactor to one CPU so its connections' data stays in that core's caches.
fn pin_to_cpu(id: usize) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it; sched_setaffinity(0) targets this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(id % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
