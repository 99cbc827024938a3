//! Can this process use the io_uring backend? Asked once at start-up, so a kernel, container or policy that
//! refuses io_uring turns into one log line (or, when io_uring was demanded, one start-up error) naming the reason.

use io_uring::{opcode, register::Probe};
use std::io;

/// The oldest kernel the backend runs on: edge-triggered multishot polls and cancelling by descriptor (5.19), and
/// the ring set-up flags it uses (single issuer: 6.0).
const MIN_KERNEL: (u32, u32) = (6, 0);

/// Ok if the io_uring backend can run here; otherwise why not, in words for the log.
pub fn uring_support() -> Result<(), String> {
    let release = kernel_release();
    match parse_version(&release) {
        Some(v) if v < MIN_KERNEL => {
            return Err(format!(
                "kernel {release} is older than {}.{}",
                MIN_KERNEL.0, MIN_KERNEL.1
            ))
        }
        _ => {}
    }
    let ring = super::uring::ring(8).map_err(|e| explain_setup(&e))?;
    if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
        return Err(format!(
            "kernel {release} lacks io_uring features the backend needs (timed waits, no dropped completions)"
        ));
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring opcode probe refused: {e}"))?;
    for (code, name) in [
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::Writev::CODE, "WRITEV"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("io_uring does not offer {name} here"));
        }
    }
    Ok(())
}

/// The reason behind a refused `io_uring_setup`, with what an operator can do about it.
fn explain_setup(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => {
            let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            match sysctl.as_str() {
                "1" => "io_uring_setup refused (EPERM): kernel.io_uring_disabled = 1 allows it only to \
                        kernel.io_uring_group"
                    .into(),
                "2" => "io_uring_setup refused (EPERM): kernel.io_uring_disabled = 2".into(),
                _ => "io_uring_setup refused (EPERM): a seccomp or container policy forbids it".into(),
            }
        }
        Some(libc::ENOSYS) => {
            "io_uring_setup not available (ENOSYS): the kernel is built without io_uring, \
                               or a seccomp or container policy hides it"
                .into()
        }
        Some(libc::ENOMEM) => {
            "io_uring_setup cannot lock the ring's memory (ENOMEM): RLIMIT_MEMLOCK is too \
                               low (kernels before 5.12 charge rings to it; raise `ulimit -l`)"
                .into()
        }
        Some(libc::EINVAL) => {
            "io_uring_setup rejected the ring's set-up flags (EINVAL): the kernel is too old".into()
        }
        _ => format!("io_uring_setup failed: {e}"),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `major.minor` of a kernel release string such as `6.18.0-1-amd64`.
fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse_and_compare() {
        assert_eq!(parse_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse_version("5.4.0"), Some((5, 4)));
        assert_eq!(parse_version("garbage"), None);
        assert!(parse_version("5.19.3").unwrap() < MIN_KERNEL);
        assert!(parse_version("6.1.0").unwrap() >= MIN_KERNEL);
    }

    #[test]
    fn refusals_name_their_cause() {
        let e = |n| explain_setup(&io::Error::from_raw_os_error(n));
        assert!(e(libc::ENOSYS).contains("ENOSYS"));
        assert!(e(libc::ENOMEM).contains("RLIMIT_MEMLOCK"));
        assert!(e(libc::EPERM).contains("EPERM"));
    }
}
