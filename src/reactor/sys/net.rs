//! Socket set-up for the reactors: SO_REUSEPORT listeners, accept4, socket options.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};

/// A non-blocking listener bound with SO_REUSEPORT, so every reactor can own one on the same port and the
/// kernel spreads new connections across them.
pub fn listen_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<RawFd> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(
        &fd,
        socket::Backlog::new(backlog).unwrap_or(socket::Backlog::MAXCONN),
    )?;
    Ok(fd.into_raw_fd())
}

/// The address a socket is bound to (reads back the port when binding port 0).
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: borrow the descriptor as a std listener only to call getsockname, then give it back unclosed.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    let addr = listener.local_addr();
    let _ = listener.into_raw_fd();
    addr
}

/// Accepts one connection, non-blocking and close-on-exec, with TCP_NODELAY set.
pub fn accept(listener: RawFd) -> io::Result<RawFd> {
    accept_peer(listener).map(|(fd, _)| fd)
}

/// One write(2).
pub fn write(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: writes from a live slice of the given length.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Pins the calling thread to one CPU (`index` modulo the online CPUs) so a reactor's connections stay in that
/// core's caches.
pub fn pin_to_cpu(index: usize) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it; sched_setaffinity(0) targets this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(index % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A write to a reset socket must be an EPIPE error, not a process-killing SIGPIPE.
pub fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN runs no handler code and is async-signal-safe.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Accepts one connection like [`accept`] and also returns the peer's IP address (for per-source rate limits).
pub fn accept_peer(listener: RawFd) -> io::Result<(RawFd, Option<std::net::IpAddr>)> {
    // SAFETY: sockaddr_storage is plain data, valid when zeroed.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: accept4 writes at most `len` bytes into `storage`, a live local of that size; the result is checked.
    let fd = unsafe {
        libc::accept4(
            listener,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads a c_int from a live local for the given length.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let ip = match i32::from(storage.ss_family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel filled an AF_INET address of sufficient length into the storage.
            let a = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            Some(std::net::IpAddr::from(a.sin_addr.s_addr.to_ne_bytes()))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the kernel filled an AF_INET6 address of sufficient length into the storage.
            let a = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(std::net::IpAddr::from(a.sin6_addr.s6_addr))
        }
        _ => None,
    };
    Ok((fd, ip))
}

/// One non-blocking write; returns the bytes written (0 on EAGAIN or error, which the caller's next write or read
/// will surface).
pub fn write_nonblocking(fd: RawFd, bytes: &[u8]) -> usize {
    // SAFETY: writes from a live slice of the given length.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    n.max(0) as usize
}

/// Best-effort write of a small response (used when refusing a connection or closing a slow consumer).
pub fn write_all_nonblocking(fd: RawFd, bytes: &[u8]) {
    write_nonblocking(fd, bytes);
}

/// One write(2) of `bytes` on a non-blocking socket, retried on EINTR. Returns the bytes the socket took.
pub fn write_some(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: writes from a live slice of the given length; write(2) only reads from it.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sets SO_SNDBUF (the kernel doubles it and applies its minimum); errors are ignored.
pub fn set_send_buffer(fd: RawFd, bytes: i32) {
    // SAFETY: setsockopt reads a c_int from a live local for the given length.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
}

pub fn shutdown_write(fd: RawFd) {
    // SAFETY: plain syscall on a descriptor we own.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and forgets it after this call.
    unsafe { libc::close(fd) };
}
