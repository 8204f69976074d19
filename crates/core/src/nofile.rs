//! The open-file limit (RLIMIT_NOFILE): every connection is a descriptor.
//!
//! Linux starts processes with a soft limit of 1,024 (often 20,000 or so in containers) and a
//! higher hard limit; a process may raise its own soft limit up to the hard limit without any
//! privilege. The receiver and the simulator do so at start, so that holding 100,000
//! connections needs only a hard limit that allows it (`ulimit -Hn`, systemd's `LimitNOFILE`,
//! Docker's `--ulimit nofile=`), not a wrapper script.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The soft limit before and after [`raise`], and the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub was: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit. `Err` only if the limit cannot be read;
/// a refused raise leaves the soft limit as it was (reported in `soft`).
pub fn raise() -> Result<NofileLimit, nix::Error> {
    let (was, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let soft = if was < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { was };
    Ok(NofileLimit { was, soft, hard })
}

/// Raises the limit (see [`raise`]) and logs what the process has; warns when `needed`
/// descriptors do not fit, saying how to get more.
pub fn raise_and_log(who: &str, needed: Option<u64>) {
    match raise() {
        Ok(limit) => {
            tracing::info!(soft = limit.soft, hard = limit.hard, was = limit.was, "open-file limit (RLIMIT_NOFILE)");
            if let Some(needed) = needed.filter(|&n| n > limit.soft) {
                tracing::warn!(
                    needed,
                    limit = limit.soft,
                    "the {who} needs about {needed} open files but may open {}: raise the hard limit (as root `ulimit -Hn {needed}` \
                     in the starting shell, systemd LimitNOFILE=, docker --ulimit nofile=N:N; at most sysctl fs.nr_open); \
                     connections beyond it fail with `Too many open files`",
                    limit.soft
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cannot read the open-file limit (RLIMIT_NOFILE)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_limit() {
        let limit = raise().expect("getrlimit works on Linux");
        assert_eq!(limit.soft, limit.hard, "{limit:?}");
        assert!(limit.was <= limit.soft);
        assert_eq!(raise().expect("again").was, limit.hard, "a second raise finds it raised");
    }
}
