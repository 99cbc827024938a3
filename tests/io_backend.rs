//! `server.io_backend`: the start-up choice between epoll and io_uring, its one log line, and what happens where the
//! kernel refuses io_uring (simulated for one process with a seccomp filter that fails `io_uring_setup` with EPERM,
//! as a container policy does).

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IO_URING_SETUP: u32 = 425;

/// The gateway with `extra` under a seccomp filter that fails io_uring_setup with EPERM.
fn refusing_io_uring(extra: &[&str]) -> Command {
    let mut cmd = command(&args_with_base(extra), &[]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: runs in the forked child before exec and only makes two prctl calls on a filter that lives on the
    // child's stack until the second returns (no allocation, no locks).
    unsafe {
        cmd.pre_exec(|| {
            let filter = [
                // A = the syscall number (offset 0 of struct seccomp_data)
                libc::sock_filter {
                    code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                libc::sock_filter {
                    code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 1,
                    k: IO_URING_SETUP,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Stderr lines until the ready line (or exit, or 10 s).
fn lines_until_ready(child: &mut std::process::Child) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    let reader = BufReader::new(child.stderr.take().unwrap());
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let ready = line.starts_with("wsgate ready ");
        lines.push(line);
        if ready || Instant::now() > deadline {
            break;
        }
    }
    lines
}

fn backend_lines(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains("io backend:")).collect()
}

#[test]
fn each_choice_logs_one_line_naming_the_backend_and_why() {
    for (flag, expect) in [
        ("epoll", "io backend: epoll (server.io_backend = \"epoll\")"),
        (
            "uring",
            "io backend: io_uring (server.io_backend = \"uring\")",
        ),
        ("auto", "io backend: io_uring (auto:"),
    ] {
        let s = Server::start(&["--io-backend", flag]);
        let lines = s.startup_lines();
        let found = backend_lines(&lines);
        assert_eq!(found.len(), 1, "{flag}: {found:?}\n{}", s.describe());
        assert!(found[0].contains(expect), "{flag}: {}", found[0]);
        // And it serves: an upgrade is answered.
        let r = upgrade_response(s.ws, "/ws", &[]);
        assert_eq!(r.status, 101, "{flag}");
    }
}

#[test]
fn forced_uring_where_the_kernel_refuses_it_is_a_start_up_error() {
    let mut child = refusing_io_uring(&["--io-backend", "uring"])
        .spawn()
        .unwrap();
    let lines = lines_until_ready(&mut child);
    let status = child.wait().unwrap();
    assert!(!status.success(), "started although io_uring is refused");
    let text = lines.join("\n");
    assert!(
        text.contains("server.io_backend = \"uring\"") && text.contains("EPERM"),
        "the error names the key and the cause:\n{text}"
    );
    assert!(!text.contains("wsgate ready"), "{text}");

    // The check scripts use before running the suite on io_uring says the same.
    let out = refusing_io_uring(&["--io-backend", "uring", "--print-io-backend"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EPERM"));
}

#[test]
fn auto_falls_back_to_epoll_where_the_kernel_refuses_io_uring() {
    let mut child = refusing_io_uring(&["--io-backend", "auto"])
        .spawn()
        .unwrap();
    let lines = lines_until_ready(&mut child);
    let served = lines
        .last()
        .and_then(|l| parse_ready(l))
        .and_then(|ready| ready.ws)
        .map(|ws| upgrade_response(ws, "/ws", &[]).status);
    let _ = child.kill();
    let _ = child.wait();
    let found = backend_lines(&lines);
    assert_eq!(found.len(), 1, "{lines:#?}");
    assert!(
        found[0].contains(
            "io backend: epoll (auto: io_uring unavailable: io_uring_setup refused (EPERM)"
        ),
        "{}",
        found[0]
    );
    assert_eq!(served, Some(101), "ready and serving on epoll: {lines:#?}");
}
