//! The coordinating parent: forks the worker processes (each with its share of the connections), steps them through
//! the phases via shared memory, runs the publisher itself, collects the workers' results over pipes and merges them.
//! Only PIDs it forked itself are ever signalled.

use std::io::Write;
use std::sync::atomic::Ordering;

use crate::config::{Config, Scenario};
use crate::publisher::{PubResult, Publisher};
use crate::report::{self, Context};
use crate::result::WorkerResult;
use crate::shared::{Shared, PHASE_ABORT, PHASE_CONNECT, PHASE_DRAIN, PHASE_GO};
use crate::sys;
use crate::worker::{share_of, Worker};

struct Child {
    pid: libc::pid_t,
    fd: i32,
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Seconds the connection phase may take: the ramp at --rate (bounded by --duration) plus one --timeout.
fn connect_bound_ns(cfg: &Config) -> u64 {
    let ramp = if cfg.rate > 0.0 {
        (cfg.conns as f64 / cfg.rate).min(cfg.duration_s)
    } else {
        0.0
    };
    ((ramp + cfg.timeout_s + 1.0) * 1e9) as u64
}

/// The latest a whole run may last; workers are killed by SIGALRM past it, the parent stops waiting for them.
fn hard_bound_ns(cfg: &Config) -> u64 {
    connect_bound_ns(cfg)
        + cfg.settle_ms * 1_000_000
        + cfg.duration_ns()
        + 3 * cfg.timeout_ns()
        + 30_000_000_000
}

fn progress(cfg: &Config, s: String) {
    if !cfg.quiet {
        eprintln!("wsgate-bench: {s}");
    }
}

pub fn run(cfg: &Config) -> Result<(), String> {
    let (soft, hard) = sys::raise_nofile();
    progress(cfg, format!("RLIMIT_NOFILE soft {soft} hard {hard}"));
    let per_proc = share_of(cfg.conns, cfg.procs, 0) as u64;
    if per_proc + 64 > soft {
        return Err(format!(
            "{per_proc} connections per process exceed RLIMIT_NOFILE {soft}; use --procs {}",
            (cfg.conns as u64).div_ceil(soft.saturating_sub(64).max(1))
        ));
    }
    let sh = Shared::new(cfg.messages).map_err(|e| format!("shared memory: {e}"))?;
    let mut ctx = Context {
        nofile_soft: soft,
        nofile_hard: hard,
        ..Default::default()
    };
    ctx.rss_before = cfg.server_pid.and_then(sys::vm_rss_bytes);
    ctx.sock_before = sys::sockstat();
    ctx.tcp_before = sys::tcp_counters();
    if let Some(pid) = cfg.server_pid {
        if ctx.rss_before.is_none() {
            return Err(format!(
                "--server-pid {pid}: no such process (or /proc unreadable)"
            ));
        }
    }
    sh.set_phase(PHASE_CONNECT);
    let cpu_start = cfg.server_pid.and_then(sys::proc_cpu_ms);
    let start = sys::mono_ns();
    let hard_deadline = start + hard_bound_ns(cfg);
    let children = spawn(cfg, &sh, start)?;
    let mut pub_result: Option<PubResult> = None;

    // Phase 1: connections.
    let conn_deadline = start + connect_bound_ns(cfg);
    let mut last_print = start;
    loop {
        let now = sys::mono_ns();
        let done = (0..cfg.procs).all(|i| sh.slot(i).conn_done.load(Ordering::Acquire) == 1);
        if done || now >= conn_deadline {
            break;
        }
        if let Some(pid) = exited_child(&children) {
            ctx.aborted = Some(format!("worker {pid} exited during the connection phase"));
            break;
        }
        if now - last_print >= 1_000_000_000 {
            let (open, failed) = totals(cfg, &sh);
            progress(
                cfg,
                format!("connecting: {open}/{} up, {failed} failed", cfg.conns),
            );
            last_print = now;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    ctx.connect_s = secs(sys::mono_ns() - start);
    if let (Some(a), Some(b)) = (cpu_start, cfg.server_pid.and_then(sys::proc_cpu_ms)) {
        ctx.server_cpu_connect_ms = Some(b.saturating_sub(a));
    }
    let (open, failed) = totals(cfg, &sh);
    progress(
        cfg,
        format!(
            "connected: {open}/{} up, {failed} failed in {:.2}s",
            cfg.conns,
            secs(sys::mono_ns() - start)
        ),
    );
    std::thread::sleep(std::time::Duration::from_millis(cfg.settle_ms));
    ctx.rss_up = cfg.server_pid.and_then(sys::vm_rss_bytes);
    ctx.sock_up = sys::sockstat();

    // Phase 2: load.
    let cpu0 = cfg.server_pid.and_then(sys::proc_cpu_ms);
    let machine0 = sys::cpu_times();
    let self_cpu0 = sys::rusage_ms(libc::RUSAGE_SELF);
    let load_start = sys::mono_ns();
    if ctx.aborted.is_some() {
        sh.set_phase(PHASE_ABORT);
    } else {
        match cfg.scenario {
            Scenario::Connect => {
                sh.hdr()
                    .drain_deadline_ns
                    .store(sys::mono_ns(), Ordering::Release);
                sh.set_phase(PHASE_DRAIN);
            }
            Scenario::Echo => {
                sh.hdr().go_mono_ns.store(sys::mono_ns(), Ordering::Release);
                sh.set_phase(PHASE_GO);
                wait_echo(cfg, &sh, load_start);
            }
            Scenario::Fanout | Scenario::Churn | Scenario::Acks | Scenario::Users => {
                match Publisher::new(cfg, &sh) {
                    Err(e) => {
                        ctx.aborted = Some(e);
                        sh.set_phase(PHASE_ABORT);
                    }
                    Ok(p) => {
                        sh.hdr().go_mono_ns.store(sys::mono_ns(), Ordering::Release);
                        sh.set_phase(PHASE_GO);
                        let mut tick = |sent: u64, ok: u64| {
                            let d: u64 = (0..cfg.procs)
                                .map(|i| sh.slot(i).deliveries.load(Ordering::Relaxed))
                                .sum();
                            progress(
                                cfg,
                                format!("publishing: {sent} sent, {ok} ok, {d} deliveries"),
                            );
                        };
                        let r = p.run(&mut tick);
                        progress(
                            cfg,
                            format!(
                                "published {} ({} failed); waiting for stragglers",
                                r.published, r.failed
                            ),
                        );
                        sh.hdr()
                            .drain_deadline_ns
                            .store(sys::mono_ns() + cfg.timeout_ns(), Ordering::Release);
                        sh.set_phase(PHASE_DRAIN);
                        pub_result = Some(r);
                    }
                }
            }
        }
    }

    // The load phase ends when every worker has left its main loop (stragglers included, final closes not).
    while sys::mono_ns() < hard_deadline
        && !(0..cfg.procs).all(|i| sh.slot(i).finished.load(Ordering::Acquire) == 1)
        && exited_child(&children).is_none()
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let load_end = sys::mono_ns();
    ctx.load_s = secs(load_end - load_start);
    if let (Some(a), Some(b)) = (cpu0, cfg.server_pid.and_then(sys::proc_cpu_ms)) {
        ctx.server_cpu_ms = Some(b.saturating_sub(a));
    }
    if let (Some(a), Some(b)) = (machine0, sys::cpu_times()) {
        ctx.machine_load = Some(sys::CpuTimes {
            busy_ms: b.busy_ms.saturating_sub(a.busy_ms),
            idle_ms: b.idle_ms.saturating_sub(a.idle_ms),
            irq_ms: b.irq_ms.saturating_sub(a.irq_ms),
        });
    }
    let parent_load_ms = sys::rusage_ms(libc::RUSAGE_SELF).saturating_sub(self_cpu0);

    // Phase 3: results.
    let mut merged = WorkerResult::default();
    for c in &children {
        let (bytes, eof) = sys::read_to_end_until(c.fd, hard_deadline);
        sys::close(c.fd);
        if !eof {
            // Our own child, past every bound: stop it.
            // SAFETY: kill(2) on a PID this process forked and has not yet reaped.
            unsafe { libc::kill(c.pid, libc::SIGKILL) };
            ctx.aborted.get_or_insert_with(|| {
                format!("worker {} did not finish in time and was killed", c.pid)
            });
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(c.pid, &mut status, 0) };
        match serde_json::from_slice::<WorkerResult>(&bytes) {
            Ok(r) => merged.merge(&r),
            Err(_) => {
                ctx.aborted.get_or_insert_with(|| {
                    format!("worker {} returned no result (status {status})", c.pid)
                });
            }
        }
    }
    let end = sys::mono_ns();
    ctx.generator_load_ms = parent_load_ms + merged.cpu_load_ms;
    ctx.total_s = secs(end - start);
    ctx.tcp_after = sys::tcp_counters();
    ctx.generator_cpu_ms =
        sys::rusage_ms(libc::RUSAGE_SELF) + sys::rusage_ms(libc::RUSAGE_CHILDREN);
    let (text, doc) = report::build(cfg, &merged, pub_result.as_ref(), &ctx);
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(text.as_bytes());
    let _ = writeln!(so, "{doc}");
    let _ = so.flush();
    match ctx.aborted {
        Some(a) => Err(a),
        None => Ok(()),
    }
}

fn totals(cfg: &Config, sh: &Shared) -> (u64, u64) {
    let open = (0..cfg.procs)
        .map(|i| sh.slot(i).open.load(Ordering::Relaxed))
        .sum();
    let failed = (0..cfg.procs)
        .map(|i| sh.slot(i).failed.load(Ordering::Relaxed))
        .sum();
    (open, failed)
}

fn wait_echo(cfg: &Config, sh: &Shared, start: u64) {
    let mut last = start;
    while sys::mono_ns() < start + cfg.duration_ns() {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = sys::mono_ns();
        if now - last >= 1_000_000_000 {
            let e: u64 = (0..cfg.procs)
                .map(|i| sh.slot(i).echoes.load(Ordering::Relaxed))
                .sum();
            progress(cfg, format!("echo: {e} round trips so far"));
            last = now;
        }
    }
}

/// A worker that has already exited (before being asked to), if any.
fn exited_child(children: &[Child]) -> Option<libc::pid_t> {
    for c in children {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: queries only our own child; WNOWAIT leaves it waitable for the final waitpid.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                c.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: after a successful waitid, si_pid is set (0 when no child changed state).
        if r == 0 && unsafe { info.si_pid() } != 0 {
            return Some(c.pid);
        }
    }
    None
}

/// Forks one worker per process share. Each child runs its event loop, writes its result as JSON to its pipe and
/// exits with _exit (no destructors, no atexit handlers of the parent's state).
fn spawn(cfg: &Config, sh: &Shared, start: u64) -> Result<Vec<Child>, String> {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let alarm_s = hard_bound_ns(cfg).div_ceil(1_000_000_000) as u32;
    let mut children: Vec<Child> = Vec::new();
    for w in 0..cfg.procs {
        let (rfd, wfd) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
        // SAFETY: the process is single-threaded here (no threads are ever started), so the child may run
        // arbitrary code after fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: plain syscalls in the freshly forked child.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::alarm(alarm_s);
            }
            sys::close(rfd);
            for c in &children {
                sys::close(c.fd);
            }
            let code = match Worker::new(cfg, sh, w, start) {
                Ok(worker) => {
                    let r = worker.run();
                    let bytes = serde_json::to_vec(&r).unwrap_or_default();
                    if sys::write_all_fd(wfd, &bytes) {
                        0
                    } else {
                        1
                    }
                }
                Err(e) => {
                    eprintln!("wsgate-bench worker {w}: {e}");
                    1
                }
            };
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        sys::close(wfd);
        children.push(Child { pid, fd: rfd });
    }
    Ok(children)
}
