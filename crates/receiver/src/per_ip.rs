//! Connections open per source address: one host cannot take every connection slot of the
//! receiver (or every file descriptor) for itself.
//!
//! A TCP connection holds an [`IpSlot`] from accept until it closes, WebSocket session included:
//! the slot travels inside the connection's socket (`socket::ClientIo`), which hyper hands on
//! to the WebSocket after the upgrade.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Connections open now, by source address (addresses with none are not kept).
type OpenByIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The open connections of each source address, bounded by a limit (0: unbounded, uncounted).
#[derive(Debug, Clone)]
pub(crate) struct PerIp {
    limit: usize,
    open: OpenByIp,
}

impl PerIp {
    pub(crate) fn new(limit: usize) -> Self {
        PerIp { limit, open: Arc::default() }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for one more connection from `ip`, or `None` when it has `limit` open already.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<IpSlot> {
        if self.limit == 0 {
            return Some(IpSlot { held: None });
        }
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d: count it as a.b.c.d.
        let ip = ip.to_canonical();
        // A panic elsewhere while holding the lock leaves the counts intact (plain integer
        // updates), so a poisoned lock is still good to use.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(IpSlot { held: Some((self.open.clone(), ip)) })
    }

    /// Connections open now from `ip` (tests).
    #[cfg(test)]
    fn open_from(&self, ip: IpAddr) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

/// One connection's place in its address's count, given back when dropped.
#[derive(Debug)]
pub(crate) struct IpSlot {
    held: Option<(OpenByIp, IpAddr)>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some((open, ip)) = self.held.take() else { return };
        let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&ip) {
            *count = count.saturating_sub(1);
            // Forget addresses with nothing open, so the map holds only current clients.
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_limit_and_its_slots_back() {
        let per_ip = PerIp::new(2);
        let a: IpAddr = "203.0.113.7".parse().expect("an address");
        let b: IpAddr = "203.0.113.8".parse().expect("an address");
        let first = per_ip.admit(a).expect("first");
        let second = per_ip.admit(a).expect("second");
        assert!(per_ip.admit(a).is_none(), "the third from one address is refused");
        assert!(per_ip.admit(b).is_some(), "another address is not affected");
        drop(first);
        assert_eq!(per_ip.open_from(a), 1);
        let third = per_ip.admit(a).expect("a slot given back is free again");
        drop((second, third));
        assert_eq!(per_ip.open_from(a), 0);
        assert!(per_ip.open.lock().unwrap_or_else(PoisonError::into_inner).is_empty(), "no entry left behind");
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_address() {
        let per_ip = PerIp::new(1);
        let _v4 = per_ip.admit("192.0.2.1".parse().expect("an address")).expect("first");
        assert!(per_ip.admit("::ffff:192.0.2.1".parse().expect("an address")).is_none());
    }

    #[test]
    fn zero_means_no_limit() {
        let per_ip = PerIp::new(0);
        let ip: IpAddr = "192.0.2.1".parse().expect("an address");
        let slots: Vec<_> = (0..1000).map(|_| per_ip.admit(ip)).collect();
        assert!(slots.iter().all(Option::is_some));
        assert_eq!(per_ip.open_from(ip), 0, "nothing is counted");
    }
}
