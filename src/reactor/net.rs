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
    // SAFETY: accept4 with null address pointers is allowed; the result is checked.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
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
    Ok(fd)
}

/// Best-effort write of a small response on a fresh socket (used when refusing a connection).
pub fn write_all_nonblocking(fd: RawFd, bytes: &[u8]) {
    // SAFETY: writes from a live slice of the given length; partial writes are acceptable here.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
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

pub fn shutdown_write(fd: RawFd) {
    // SAFETY: plain syscall on a descriptor we own.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and forgets it after this call.
    unsafe { libc::close(fd) };
}
