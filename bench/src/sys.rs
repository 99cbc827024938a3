//! Thin wrappers over libc: clocks, non-blocking sockets, epoll, resource limits, fork/pipes, shared memory and the
//! /proc readers used for server-side figures. Everything the hot loop calls is a plain syscall, nothing allocates.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

fn clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in nanoseconds (system-wide, so comparable between our forked processes).
pub fn mono_ns() -> u64 {
    clock(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in microseconds (the `ts` field of published messages).
pub fn real_us() -> u64 {
    clock(libc::CLOCK_REALTIME) / 1000
}

pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) as in force afterwards.
pub fn raise_nofile() -> (u64, u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid rlimit to fill / read.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &want);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
    }
    (rl.rlim_cur, rl.rlim_max)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, val: i32) {
    // SAFETY: passes a pointer to a live i32 and its size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&val as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// Starts a non-blocking TCP connect from `src` (port chosen at connect time, so one source address can hold a
/// connection per free port and destination) to `dst`. Returns the fd, or the errno of the failing step.
pub fn tcp_connect(src: Option<Ipv4Addr>, dst: SocketAddrV4) -> Result<RawFd, i32> {
    // SAFETY: plain socket syscalls on an fd we own; sockaddr pointers point at live stack values.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(errno());
        }
        setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        if let Some(src) = src {
            // Without IP_BIND_ADDRESS_NO_PORT, bind() would reserve a port for the address alone and exhaust the
            // range at ~28k connections per source address regardless of destination.
            setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
            let sa = sockaddr(SocketAddrV4::new(src, 0));
            if libc::bind(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of_val(&sa) as u32,
            ) != 0
            {
                let e = errno();
                libc::close(fd);
                return Err(e);
            }
        }
        let sa = sockaddr(dst);
        let rc = libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of_val(&sa) as u32,
        );
        if rc != 0 {
            let e = errno();
            if e != libc::EINPROGRESS {
                libc::close(fd);
                return Err(e);
            }
        }
        Ok(fd)
    }
}

/// Blocking connect (used by the publisher's few API connections) with TCP_NODELAY, then switched to non-blocking.
pub fn tcp_connect_blocking(dst: SocketAddrV4) -> Result<RawFd, i32> {
    // SAFETY: as in tcp_connect.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(errno());
        }
        setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        let sa = sockaddr(dst);
        if libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of_val(&sa) as u32,
        ) != 0
        {
            let e = errno();
            libc::close(fd);
            return Err(e);
        }
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        Ok(fd)
    }
}

/// The pending error of a socket (SO_ERROR), 0 if none.
pub fn so_error(fd: RawFd) -> i32 {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live and sized for SO_ERROR.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    v
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> isize {
    // SAFETY: the pointer/length pair describes `buf`.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

pub fn write(fd: RawFd, buf: &[u8]) -> isize {
    // SAFETY: the pointer/length pair describes `buf`. MSG_NOSIGNAL: a peer reset is an EPIPE, not a SIGPIPE.
    unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) }
}

pub fn close(fd: RawFd) {
    if fd >= 0 {
        // SAFETY: closes an fd this process owns; callers forget it afterwards.
        unsafe { libc::close(fd) };
    }
}

/// Writes all of `buf` to a blocking fd (pipes), retrying on EINTR.
pub fn write_all_fd(fd: RawFd, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: the pointer/length pair describes `buf`.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
pub const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
pub const EPOLLERR: u32 = libc::EPOLLERR as u32;
pub const EPOLLHUP: u32 = libc::EPOLLHUP as u32;
pub const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
pub const EPOLLET: u32 = libc::EPOLLET as u32;

impl Epoll {
    pub fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY: creating a new epoll fd has no preconditions.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> Result<(), i32> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a live epoll_event; both fds are ours.
        if unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            return Err(errno());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms`; returns the number of ready events, readable with `event(i)`.
    pub fn wait(&mut self, timeout_ms: i32) -> usize {
        // SAFETY: the events buffer is live and its length is passed as maxevents.
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            0
        } else {
            n as usize
        }
    }

    pub fn event(&self, i: usize) -> (u64, u32) {
        let e = self.events[i];
        (e.u64, e.events)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        close(self.fd);
    }
}

/// A page-aligned anonymous MAP_SHARED mapping that survives fork(): parent and workers see the same bytes.
pub struct SharedMap {
    ptr: *mut u8,
    len: usize,
}

impl SharedMap {
    pub fn new(len: usize) -> io::Result<SharedMap> {
        // SAFETY: anonymous mapping, no fd; the kernel zero-fills it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMap {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`; no references outlive the map (they borrow it).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A pipe with O_CLOEXEC on both ends: (read, write).
pub fn pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

/// Reads an fd to EOF, giving up at `deadline_ns` (monotonic). Returns the bytes and whether EOF was reached.
pub fn read_to_end_until(fd: RawFd, deadline_ns: u64) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let now = mono_ns();
        if now >= deadline_ns {
            return (out, false);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = ((deadline_ns - now) / 1_000_000).clamp(1, 1000) as i32;
        // SAFETY: one live pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r <= 0 {
            continue;
        }
        // SAFETY: `buf` is live and its length is passed.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return (out, true);
        }
        if n < 0 {
            if errno() == libc::EINTR || errno() == libc::EAGAIN {
                continue;
            }
            return (out, false);
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

/// Resident set size of a process in bytes (VmRSS in /proc/PID/status).
pub fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) of a process in milliseconds, from /proc/PID/stat.
pub fn proc_cpu_ms(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((utime + stime) * 1000 / hz)
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Sockstat {
    pub tcp_inuse: u64,
    pub tcp_tw: u64,
    pub tcp_alloc: u64,
    /// TCP socket buffer memory in pages (the "mem" field), as counted by the kernel for the whole namespace.
    pub tcp_mem_pages: u64,
}

pub fn sockstat() -> Option<Sockstat> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let get = |name: &str| -> u64 {
        f.iter()
            .position(|x| *x == name)
            .and_then(|i| f.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Sockstat {
        tcp_inuse: get("inuse"),
        tcp_tw: get("tw"),
        tcp_alloc: get("alloc"),
        tcp_mem_pages: get("mem"),
    })
}

/// Kernel TCP counters that explain latency outliers on loopback: retransmitted segments (a dropped segment costs
/// at least one RTO, 200 ms) and accept-queue overflows (a dropped SYN costs a 1 s retry).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct TcpCounters {
    pub retrans_segs: u64,
    /// Tail-loss probes: retransmissions sent because an ACK was late (on a busy loopback: spurious).
    pub loss_probes: u64,
    pub listen_overflows: u64,
    pub listen_drops: u64,
}

/// Looks up `name` in the "Prefix: names" / "Prefix: values" line pairs of /proc/net/snmp and /proc/net/netstat.
fn proc_net_field(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let i = names.split_whitespace().position(|n| n == name);
        if let Some(i) = i {
            return values.split_whitespace().nth(i)?.parse().ok();
        }
    }
    None
}

pub fn tcp_counters() -> Option<TcpCounters> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    Some(TcpCounters {
        retrans_segs: proc_net_field(&snmp, "Tcp:", "RetransSegs")?,
        loss_probes: proc_net_field(&netstat, "TcpExt:", "TCPLossProbes").unwrap_or(0),
        listen_overflows: proc_net_field(&netstat, "TcpExt:", "ListenOverflows").unwrap_or(0),
        listen_drops: proc_net_field(&netstat, "TcpExt:", "ListenDrops").unwrap_or(0),
    })
}

/// Machine-wide CPU time from /proc/stat, in milliseconds summed over all CPUs.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    pub busy_ms: u64,
    pub idle_ms: u64,
    /// Hard and soft interrupt time (loopback TCP receive work mostly runs as softirq).
    pub irq_ms: u64,
}

pub fn cpu_times() -> Option<CpuTimes> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 7 {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ms = |t: u64| t * 1000 / hz;
    // user nice system idle iowait irq softirq steal ...
    let idle = v[3] + v[4];
    let total: u64 = v.iter().take(8).sum();
    Some(CpuTimes {
        busy_ms: ms(total - idle),
        idle_ms: ms(idle),
        irq_ms: ms(v[5] + v[6]),
    })
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64
}

/// CPU time used by this process and by its waited-for children, in milliseconds.
pub fn rusage_ms(who: i32) -> u64 {
    // SAFETY: zeroed rusage is a valid value; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is live.
    unsafe { libc::getrusage(who, &mut ru) };
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::EPIPE => "EPIPE",
        libc::ENOBUFS => "ENOBUFS",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_move_and_proc_readers_work() {
        let a = mono_ns();
        let b = mono_ns();
        assert!(b >= a);
        assert!(real_us() > 1_600_000_000_000_000);
        let me = std::process::id();
        assert!(vm_rss_bytes(me).unwrap() > 0);
        assert!(proc_cpu_ms(me).is_some());
        assert!(sockstat().is_some());
        assert!(tcp_counters().is_some());
        assert!(cpu_times().unwrap().busy_ms > 0);
        let t = "Tcp: A B C\nTcp: 1 2 3\nTcpExt: X Y\nTcpExt: 7 8\n";
        assert_eq!(proc_net_field(t, "Tcp:", "C"), Some(3));
        assert_eq!(proc_net_field(t, "TcpExt:", "Y"), Some(8));
        assert_eq!(proc_net_field(t, "Tcp:", "Z"), None);
    }

    #[test]
    fn shared_map_is_zeroed_and_writable() {
        let m = SharedMap::new(8192).unwrap();
        // SAFETY: in bounds of the mapping.
        unsafe {
            assert_eq!(*m.as_ptr().add(100), 0);
            *m.as_ptr().add(100) = 7;
            assert_eq!(*m.as_ptr().add(100), 7);
        }
    }
}
