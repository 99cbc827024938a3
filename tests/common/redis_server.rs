//! A real `redis-server` for tests: started on a free loopback port without persistence, killed (its own PID
//! only) on drop, restartable on the same port to simulate an outage.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    /// Sentinel mode: the body of its config file (it rewrites the file, so it lives in `dir`).
    sentinel_conf: Option<String>,
}

/// A port that was free a moment ago (redis-server cannot bind port 0 and report it back).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments (e.g. `["--cluster-enabled", "yes"]`).
    /// A single-node Redis Cluster owning all 16384 slots, ready to serve.
    pub fn start_cluster() -> RedisServer {
        let redis = RedisServer::start_with(&["--cluster-enabled", "yes"]);
        let mut r = redis.client();
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query(&mut r)
            .unwrap();
        super::eventually(Duration::from_secs(10), || {
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut r).ok()?;
            info.contains("cluster_state:ok").then_some(())
        })
        .expect("single-node Redis Cluster ready");
        redis
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_inner(extra, None)
    }

    /// A Sentinel (quorum 1) watching the primary named `name` on `primary_port`, declaring it down after
    /// `down_after_ms`.
    pub fn start_sentinel(name: &str, primary_port: u16, down_after_ms: u64) -> RedisServer {
        let conf = format!(
            "sentinel monitor {name} 127.0.0.1 {primary_port} 1\n\
             sentinel down-after-milliseconds {name} {down_after_ms}\n\
             sentinel failover-timeout {name} 5000\n"
        );
        RedisServer::start_inner(&[], Some(conf))
    }

    fn start_inner(extra: &[&str], sentinel_conf: Option<String>) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("wsgate-test-redis-{}-{port}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let mut r = RedisServer {
                child: None,
                port,
                dir,
                extra: extra.clone(),
                sentinel_conf: sentinel_conf.clone(),
            };
            match r.spawn() {
                Ok(()) => return r,
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        if let Some(conf) = &self.sentinel_conf {
            let path = self.dir.join("sentinel.conf");
            std::fs::write(&path, conf).map_err(|e| format!("write {}: {e}", path.display()))?;
            cmd.arg(&path).arg("--sentinel");
        }
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "cannot run redis-server ({e}); install it (Debian: apt-get install redis-server)"
            )
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server on port {} exited with {status}",
                    self.port
                ));
            }
            if let Ok(mut c) = self.try_client() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {} not ready in 10 s",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn try_client(&self) -> redis::RedisResult<redis::Connection> {
        let c = redis::Client::open(self.url())?;
        let conn = c.get_connection_with_timeout(Duration::from_secs(1))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(conn)
    }

    /// A plain client connection for assertions.
    pub fn client(&self) -> redis::Connection {
        self.try_client()
            .unwrap_or_else(|e| panic!("connect to test redis on {}: {e}", self.port))
    }

    /// Kills the server (SIGKILL to its own PID) and waits for it: an outage, data lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGSTOP (its own PID): it keeps accepting connections (the kernel completes them)
    /// but answers nothing, as a wedged or swapped-out Redis does.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: a plain syscall on the PID of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// Starts it again on the same port (empty, as after a crash without persistence).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => panic!("restart redis: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
