//! A blocking Redis connection dialled here rather than by the client library, so its socket has its timeouts
//! before the first byte goes out: the library's own connection set-up (AUTH, SELECT, CLIENT SETINFO) reads its
//! replies without any timeout, and a Redis that accepts connections but never answers (stopped, swapped out, a
//! wedged proxy) would hold the calling thread for as long as it stays that way. Replies are parsed by the
//! library's RESP parser; commands are the library's `Cmd`s, run through `redis::ConnectionLike`.
//!
//! Only RESP2 over TCP or a Unix socket (the transports this build has); every I/O error leaves the connection
//! broken, and the bridge threads then open a new one.

use redis::{
    ConnectionAddr, ConnectionInfo, ConnectionLike, ErrorKind, RedisError, RedisResult, Value,
};
use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Time to establish a connection to Redis, its set-up (AUTH, SELECT, PING) included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time one command may take to be written or answered (blocking reads add their block time to it).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for &Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => (&*s).read(buf),
            Socket::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Socket {
    fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => (&*s).write_all(bytes),
            Socket::Unix(s) => (&*s).write_all(bytes),
        }
    }

    fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
            Socket::Unix(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
        }
    }
}

/// One open connection with bounded I/O.
pub struct Dialed {
    reader: BufReader<SocketReader>,
    parser: redis::Parser,
    db: i64,
    broken: bool,
}

/// The read half as `BufReader` wants it (owned, `Read`); writes go through the same socket.
struct SocketReader(Socket);

impl Read for SocketReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.0).read(buf)
    }
}

fn timed_out(what: &str) -> RedisError {
    RedisError::from(io::Error::new(io::ErrorKind::TimedOut, what.to_string()))
}

impl Dialed {
    /// Connects and authenticates within `setup` in all (name resolution aside), then bounds every reply by
    /// `reply` and every write by `write`.
    pub fn open(
        info: &ConnectionInfo,
        setup: Duration,
        reply: Duration,
        write: Duration,
    ) -> RedisResult<Dialed> {
        let deadline = Instant::now() + setup;
        let left = || {
            let d = deadline.saturating_duration_since(Instant::now());
            (!d.is_zero()).then_some(d)
        };
        let socket = match &info.addr {
            ConnectionAddr::Tcp(host, port) => {
                let mut last = None;
                let mut found = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    let Some(d) = left() else { break };
                    match TcpStream::connect_timeout(&addr, d) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = match (found, last) {
                    (Some(s), _) => s,
                    (None, Some(e)) => return Err(e.into()),
                    (None, None) => return Err(timed_out("connecting to Redis timed out")),
                };
                s.set_nodelay(true)?;
                Socket::Tcp(s)
            }
            ConnectionAddr::Unix(path) => Socket::Unix(UnixStream::connect(path)?),
            _ => {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "TLS connections to Redis are not supported by this build",
                )))
            }
        };
        let Some(d) = left() else {
            return Err(timed_out("connecting to Redis timed out"));
        };
        socket.set_timeouts(d, d)?;
        let mut conn = Dialed {
            reader: BufReader::new(SocketReader(socket)),
            parser: redis::Parser::new(),
            db: info.redis.db,
            broken: false,
        };
        let r = &info.redis;
        if let Some(password) = &r.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &r.username {
                auth.arg(user);
            }
            auth.arg(password);
            auth.query::<()>(&mut conn)?;
        }
        if r.db != 0 {
            redis::cmd("SELECT").arg(r.db).query::<()>(&mut conn)?;
        }
        // A connection counts as made when Redis answers on it: the kernel completes a TCP connect to a server
        // that is stopped, and calling that "connected" would hide the outage.
        redis::cmd("PING").query::<()>(&mut conn)?;
        conn.reader.get_ref().0.set_timeouts(reply, write)?;
        Ok(conn)
    }

    fn send(&mut self, bytes: &[u8]) -> RedisResult<()> {
        if self.broken {
            return Err(RedisError::from((
                ErrorKind::IoError,
                "connection broken by an earlier error",
            )));
        }
        self.reader.get_ref().0.write_all(bytes).map_err(|e| {
            self.broken = true;
            RedisError::from(e)
        })
    }

    fn read_one(&mut self) -> RedisResult<Value> {
        self.parser.parse_value(&mut self.reader).inspect_err(|_| {
            // A timeout or a broken reply leaves the stream at an unknown place: nothing later can be trusted.
            self.broken = true;
        })
    }
}

/// Redis Cluster mode: the cluster client opens its connections to the shards through this, so their set-up is
/// bounded the same way (by the client's connection timeout; it sets the reply timeout right after).
impl redis::cluster::Connect for Dialed {
    fn connect<T>(info: T, timeout: Option<Duration>) -> RedisResult<Self>
    where
        T: redis::IntoConnectionInfo,
    {
        let setup = timeout.unwrap_or(CONNECT_TIMEOUT);
        Dialed::open(&info.into_connection_info()?, setup, IO_TIMEOUT, IO_TIMEOUT)
    }

    fn send_packed_command(&mut self, cmd: &[u8]) -> RedisResult<()> {
        self.send(cmd)
    }

    fn set_write_timeout(&self, dur: Option<Duration>) -> RedisResult<()> {
        let s = &self.reader.get_ref().0;
        match s {
            Socket::Tcp(t) => t.set_write_timeout(dur)?,
            Socket::Unix(u) => u.set_write_timeout(dur)?,
        }
        Ok(())
    }

    fn set_read_timeout(&self, dur: Option<Duration>) -> RedisResult<()> {
        let s = &self.reader.get_ref().0;
        match s {
            Socket::Tcp(t) => t.set_read_timeout(dur)?,
            Socket::Unix(u) => u.set_read_timeout(dur)?,
        }
        Ok(())
    }

    fn recv_response(&mut self) -> RedisResult<Value> {
        self.read_one()
    }
}

impl ConnectionLike for Dialed {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.send(cmd)?;
        self.read_one()
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.send(cmd)?;
        let mut out = Vec::with_capacity(count);
        for i in 0..offset + count {
            let v = self.read_one()?;
            if i >= offset {
                out.push(v);
            }
        }
        Ok(out)
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        !self.broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that accepts and never answers (a stopped Redis): the set-up must give up within its bound.
    #[test]
    fn setup_against_a_silent_server_is_bounded() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let info = redis::IntoConnectionInfo::into_connection_info(format!(
            "redis://:secret@127.0.0.1:{port}/2"
        ))
        .unwrap();
        let t = Instant::now();
        let r = Dialed::open(
            &info,
            Duration::from_millis(300),
            Duration::from_secs(5),
            Duration::from_secs(5),
        );
        assert!(r.is_err());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        drop(l);
    }
}
