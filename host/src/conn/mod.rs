//! Limits on both listeners' connections, against slow and hostile clients: a cap on open
//! connections (past it a new one is answered 503 and closed), on the event listener a cap per
//! client address (`server.max_connections_per_address`, off by default), a whole-request read
//! deadline ([`DeadlineIo`], `deadline.rs`), accepting with back-off instead of spinning when
//! the process is out of descriptors ([`Acceptor`], `accept.rs`), and the open-file limit
//! raised at start and shared between the listeners ([`Budget`], `fds.rs`).

mod accept;
mod deadline;
mod fds;

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv6Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

pub use accept::Acceptor;
pub use deadline::{DeadlineIo, RequestRead};
pub use fds::{Budget, fd_limit, raise_fd_limit};

/// Counts open connections against a cap.
#[derive(Clone)]
pub struct Limiter {
    open: Arc<AtomicUsize>,
    max: usize,
    refusing: Arc<AtomicUsize>,
    max_refusing: usize,
}

/// One open connection; dropping it frees the slot.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The answer past the cap.
pub const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 42\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many open connections; try again soon\n";

/// The answer past `server.max_connections_per_address`.
pub const BUSY_ADDRESS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 60\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many open connections from your address; try again soon\n";

impl Limiter {
    /// A cap of `max` open connections; at most `max_refusing` refusals answered at once.
    pub fn new(max: usize, max_refusing: usize) -> Limiter {
        Limiter { open: Arc::default(), max, refusing: Arc::default(), max_refusing }
    }

    /// A slot for a new connection, or `None` past the cap.
    pub fn try_acquire(&self) -> Option<Slot> {
        let mut now = self.open.load(Ordering::Acquire);
        loop {
            if now >= self.max {
                return None;
            }
            match self.open.compare_exchange_weak(now, now + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Slot(self.open.clone())),
                Err(actual) => now = actual,
            }
        }
    }

    /// Answers `answer` (a whole 503) on a connection that is not served, and closes it (in the
    /// background, within half a second). Past the refusals allowed at once it is closed at once.
    pub fn reject(&self, mut stream: TcpStream, answer: &'static [u8]) {
        if self.refusing.fetch_add(1, Ordering::AcqRel) >= self.max_refusing {
            self.refusing.fetch_sub(1, Ordering::AcqRel);
            return; // dropped: closed at once
        }
        let refusing = self.refusing.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                stream.write_all(answer).await?;
                stream.shutdown().await?;
                // Read what the client sent, so that closing does not reset the connection
                // before it has read the answer.
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await? > 0 {}
                Ok::<_, io::Error>(())
            })
            .await;
            refusing.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Open connections per client address (an IPv6 client by its /64, the block one subscriber
/// usually has), against `server.max_connections_per_address`.
#[derive(Clone)]
pub struct PerAddress {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection counted against its address; dropping it frees the slot.
pub struct AddressSlot {
    key: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl PerAddress {
    /// At most `max` open connections from one address.
    pub fn new(max: usize) -> PerAddress {
        PerAddress { max, open: Arc::default() }
    }

    /// A slot for a connection from `peer`, or `None` when that address has its `max` open.
    pub fn try_acquire(&self, peer: IpAddr) -> Option<AddressSlot> {
        let key = address_key(peer);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot { key, open: self.open.clone() })
    }
}

/// What one client is counted by: an IPv4 address (also when mapped into IPv6), or an IPv6
/// address's /64.
fn address_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_open_connections() {
        let limiter = Limiter::new(2, 1);
        let a = limiter.try_acquire().expect("first");
        let _b = limiter.try_acquire().expect("second");
        assert!(limiter.try_acquire().is_none());
        drop(a);
        assert!(limiter.try_acquire().is_some());
    }

    #[test]
    fn the_cap_per_address_counts_each_address_and_an_ipv6_block_as_one() {
        let cap = PerAddress::new(2);
        let one: IpAddr = "127.0.0.1".parse().unwrap();
        let a = cap.try_acquire(one).expect("first");
        let _b = cap.try_acquire("::ffff:127.0.0.1".parse().unwrap()).expect("second, mapped");
        assert!(cap.try_acquire(one).is_none());
        assert!(cap.try_acquire("127.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(cap.try_acquire(one).is_some());
        let _c = cap.try_acquire("2001:db8::1".parse().unwrap()).unwrap();
        let _d = cap.try_acquire("2001:db8::ffff:2".parse().unwrap()).unwrap();
        assert!(cap.try_acquire("2001:db8:0:0:1::3".parse().unwrap()).is_none(), "same /64");
        assert!(cap.try_acquire("2001:db8:0:1::1".parse().unwrap()).is_some(), "another /64");
        drop((_c, _d));
        assert_eq!(cap.open.lock().unwrap().len(), 1, "freed addresses are forgotten");
    }
}
