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
    set_nodelay(fd);
    Ok((fd, ip_of(&storage, len)))
}

/// Readies a socket accepted elsewhere (non-blocking and close-on-exec already, e.g. by an io_uring accept) like
/// [`accept_peer`] does and returns its peer's IP address. A connection the peer has already reset has none
/// (ENOTCONN): the socket is closed and the error returned.
pub fn adopt_accepted(fd: RawFd) -> io::Result<(RawFd, Option<std::net::IpAddr>)> {
    // SAFETY: sockaddr_storage is plain data, valid when zeroed.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into `storage`, a live local of that size; checked.
    let rc = unsafe {
        libc::getpeername(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        close(fd);
        return Err(e);
    }
    set_nodelay(fd);
    Ok((fd, ip_of(&storage, len)))
}

fn set_nodelay(fd: RawFd) {
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
}

/// The IP address in a socket address the kernel filled `len` bytes of.
fn ip_of(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<std::net::IpAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel filled an AF_INET address of sufficient length into the storage.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(std::net::IpAddr::from(a.sin_addr.s_addr.to_ne_bytes()))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the kernel filled an AF_INET6 address of sufficient length into the storage.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(std::net::IpAddr::from(a.sin6_addr.s6_addr))
        }
        _ => None,
    }
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

// ---- zero-copy sends (MSG_ZEROCOPY) -----------------------------------------------------------------------------

/// `SO_ZEROCOPY`, `SO_EE_ORIGIN_ZEROCOPY`, `SO_EE_CODE_ZEROCOPY_COPIED` (linux/socket.h, linux/errqueue.h).
const SO_ZEROCOPY: libc::c_int = 60;
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;

/// Lets `fd` take `MSG_ZEROCOPY` sends.
pub fn enable_zerocopy(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ZEROCOPY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One non-blocking `sendmsg(MSG_ZEROCOPY)` of `iov`: the kernel keeps references to the pages instead of copying
/// them, and reports on the socket's error queue when it has let go of them ([`zerocopy_notifications`]).
///
/// # Safety
/// The memory `iov` points to must stay allocated and unchanged until the notification for this send (the
/// socket's next zero-copy sequence number) has been read, or the kernel sends whatever is there by then.
pub unsafe fn send_zerocopy(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    let flags = libc::MSG_ZEROCOPY | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: `msg` points to `iov`, live for the call; the kernel reads the pages until the notification, which
    // the caller guarantees (see the function's contract).
    let n = unsafe { libc::sendmsg(fd, &msg, flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reads the zero-copy notifications waiting on `fd`'s error queue: `notified(from, to, copied)` per range of
/// sends whose pages the kernel released (`copied`: it had copied them after all). Returns false if the queue held
/// something else (a real socket error: check [`socket_error`]).
pub fn zerocopy_notifications(fd: RawFd, mut notified: impl FnMut(u32, u32, bool)) -> bool {
    let mut only_zerocopy = true;
    loop {
        // Room for one control message with a `sock_extended_err` (and the offender address that may follow).
        let mut control = [0u64; 16];
        // SAFETY: a zeroed msghdr is valid; it gets a control buffer owned by this frame.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: recvmsg writes at most `msg_controllen` bytes into `control` and reads no data (no iovec).
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            return only_zerocopy;
        }
        // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR stay within `msg_controllen`.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: `cmsg` points to a complete header inside `control` (checked by CMSG_FIRSTHDR/NXTHDR).
            let header = unsafe { &*cmsg };
            let recverr = (header.cmsg_level == libc::SOL_IP
                && header.cmsg_type == libc::IP_RECVERR)
                || (header.cmsg_level == libc::SOL_IPV6 && header.cmsg_type == libc::IPV6_RECVERR);
            if recverr {
                // SAFETY: IP_RECVERR / IPV6_RECVERR data is a `sock_extended_err` (read unaligned: the control
                // buffer gives no alignment guarantee for it).
                let err = unsafe {
                    std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>(),
                    )
                };
                if err.ee_origin == SO_EE_ORIGIN_ZEROCOPY && err.ee_errno == 0 {
                    notified(
                        err.ee_info,
                        err.ee_data,
                        err.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0,
                    );
                } else {
                    only_zerocopy = false;
                }
            } else {
                only_zerocopy = false;
            }
            // SAFETY: as above.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
    }
}

/// The socket's pending error (`SO_ERROR`, cleared by reading), 0 if none.
pub fn socket_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: passes a live c_int and its size for getsockopt to fill.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return libc::EBADF;
    }
    err
}

/// Resets the connection (RST) and drops what its send queue still holds, keeping the descriptor open: the kernel
/// lets go of the pages of zero-copy sends it had not sent yet, and their notifications follow.
pub fn abort_keep_open(fd: RawFd) {
    // SAFETY: a zeroed sockaddr with family AF_UNSPEC: connect(2) with it disconnects a TCP socket.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: passes a live sockaddr and its size.
    unsafe {
        libc::connect(
            fd,
            &addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
}

/// One writev(2) of `iov`.
pub fn writev(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: the iovecs point into buffers the caller keeps alive across the call; writev only reads them.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn zero_copy_sends_are_notified_on_the_error_queue_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut client, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let fd = server.as_raw_fd();
        enable_zerocopy(fd).unwrap();
        let payload = vec![9u8; 64 * 1024];
        let iov = [libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        }];
        let mut sends = 0u32;
        let mut sent = 0;
        for _ in 0..3 {
            // SAFETY: `payload` outlives every notification read below (it is dropped at the end of the test).
            sent += unsafe { send_zerocopy(fd, &iov) }.unwrap();
            sends += 1;
        }
        let mut got = vec![0u8; sent];
        client.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&b| b == 9));
        // Every send is notified once, as ranges in order from 0.
        let mut done_below = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while done_below < sends && std::time::Instant::now() < deadline {
            let only = zerocopy_notifications(fd, |from, to, _copied| {
                assert_eq!(from, done_below, "ranges arrive in order on TCP");
                done_below = to + 1;
            });
            assert!(only, "nothing but notifications on the error queue");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(done_below, sends);
        assert_eq!(socket_error(fd), 0);
    }
}
