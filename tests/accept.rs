//! Accepting connections (io_uring accepts ahead with a multishot accept and reads each peer's address with
//! getpeername): the per-source limits see each connection's own address, and a descriptor shortage (EMFILE)
//! pauses accepting without losing the waiting connections, which are served once descriptors are free again.

mod common;

use common::*;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// A TCP connection to `addr` from the local address `source` (any 127.0.0.x reaches a loopback listener).
fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only: {addr}")
    };
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket syscalls on a fresh fd that we own; the fd is handed to TcpStream exactly once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let local = sin(source, 0);
        let rc = libc::bind(fd, &local as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "bind {source}: {}", std::io::Error::last_os_error());
        let remote = sin(*v4.ip(), v4.port());
        let rc = libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        let s = TcpStream::from_raw_fd(fd);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }
}

#[test]
fn each_connection_is_limited_by_its_own_source_address() {
    let g = Server::start(&[
        "--set",
        "limits.connect_rate=1",
        "--set",
        "limits.connect_burst=1",
    ]);
    let a = Ipv4Addr::new(127, 0, 0, 1);
    let b = Ipv4Addr::new(127, 0, 0, 2);
    let _first = RawWs::upgrade(connect_from(a, g.ws), g.ws, "/ws", &[]).expect("a's first");
    let refused = RawWs::upgrade(connect_from(a, g.ws), g.ws, "/ws", &[]);
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("429")),
        "a's second connection within the second: {:?}",
        refused.map(|_| ())
    );
    RawWs::upgrade(connect_from(b, g.ws), g.ws, "/ws", &[])
        .expect("another source address has its own bucket");
}

fn open_descriptors(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

/// Sets the gateway's soft RLIMIT_NOFILE (the hard limit stays).
fn limit_descriptors(pid: u32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads and writes rlimit structs that live across the call.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// On epoll only: lowering the limit of a running gateway reaches `accept4` at once, while an armed io_uring
/// multishot accept keeps the limit it was armed with (the kernel reads RLIMIT_NOFILE when it prepares the accept).
/// The io_uring side of a descriptor shortage is a unit test of the backend (src/reactor/sys/uring.rs), in a
/// process of its own whose limit is set before the accept is armed.
#[test]
fn out_of_descriptors_accepting_pauses_and_resumes_without_losing_connections() {
    let g = Server::start(&["--threads", "1", "--io-backend", "epoll"]);
    // Room for exactly two more descriptors: two clients get in, the third waits in the listen backlog.
    limit_descriptors(g.pid, open_descriptors(g.pid) + 2);
    let held: Vec<RawWs> = (0..2).map(|_| RawWs::connect(g.ws, "/ws")).collect();
    let waiting: Vec<TcpStream> = (0..2).map(|_| tcp_connect(g.ws)).collect();
    assert!(
        g.wait_log("pausing accepts", Duration::from_secs(5)),
        "no accept failed for want of descriptors\n{}",
        g.describe()
    );
    drop(held);
    // The waiting connections were accepted once descriptors were free again, and are served.
    for (i, stream) in waiting.into_iter().enumerate() {
        RawWs::upgrade(stream, g.ws, "/ws", &[])
            .unwrap_or_else(|e| panic!("waiting connection {i}: {e}\n{}", g.describe()));
    }
    // Accepting went back to its normal way (on io_uring: the multishot accept armed again): a connection
    // arriving now is served.
    let _late = RawWs::connect(g.ws, "/ws");
}

/// A reactor builds its own poller on its own thread. Start-up waits for every reactor: a gateway that printed its
/// ready line holds every descriptor it needs at rest, and a reactor that cannot get one stops start-up with an
/// error naming it, instead of a ready line over a reactor that never serves.
#[test]
fn a_reactor_that_cannot_start_stops_start_up() {
    let flags = ["--threads", "1", "--io-backend", "epoll"];
    // At rest, right after the ready line: the descriptors a running gateway holds, its poller among them.
    let g = Server::start(&flags);
    let poller = poller_descriptor(g.pid);
    let at_rest = open_descriptors(g.pid);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        open_descriptors(g.pid),
        at_rest,
        "descriptors opened after the ready line"
    );
    drop(g);
    // A new descriptor gets the lowest free number, and the limit bounds that number: with the poller's own number
    // as the limit, everything before it is had and the poller cannot be.
    let out = run_to_exit(
        with_fd_limit(command(&args_with_base(&flags), &[]), poller),
        Duration::from_secs(10),
    );
    let (status, stderr) = (out.status, out.stderr);
    assert!(
        status.is_some_and(|s| !s.success()),
        "with a limit of {poller} descriptors: {status:?}\n{stderr}"
    );
    assert!(
        !stderr.contains("wsgate ready"),
        "ready without a reactor:\n{stderr}"
    );
    assert!(
        stderr.contains("wsgate: reactor 0:"),
        "no start-up error naming the reactor:\n{stderr}"
    );
}

/// `cmd` with RLIMIT_NOFILE (soft and hard) set to `limit` in the child.
fn with_fd_limit(mut cmd: std::process::Command, limit: u64) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let l = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit only reads `l`, which is copied into the closure; it is async-signal-safe, as code between
    // fork and exec must be.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd
}

/// The number of the gateway's epoll descriptor.
fn poller_descriptor(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("eventpoll"))
        })
        .and_then(|e| e.file_name().to_str()?.parse().ok())
        .expect("an epoll descriptor")
}
