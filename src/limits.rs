//! Per-client-IP limits: a publish rate (token bucket), a cap on open SSE connections and on connections
//! still sending their first head.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Buckets idle this long are forgotten, so a scan of many addresses cannot grow memory for ever.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// The map is swept for forgotten entries whenever it grows past this many.
const SWEEP_ABOVE: usize = 10_000;

pub struct PerIp {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    connections: Slots,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Counts what each client address holds of something (open streams, unfinished heads), up to `max`
/// each (0 = no limit). Only addresses holding something have an entry.
pub struct Slots {
    max: usize,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Holds one of an IP's slots; dropping it gives the slot back.
pub struct Slot {
    ip: IpAddr,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Slots {
    pub fn new(max: usize) -> Self {
        Slots {
            max,
            held: Arc::default(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes one of `ip`'s slots, or `None` when it holds its maximum.
    pub fn take(&self, ip: IpAddr) -> Option<Slot> {
        let mut map = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let held = map.entry(ip).or_insert(0);
        if self.max > 0 && *held >= self.max {
            return None;
        }
        *held += 1;
        Some(Slot {
            ip,
            held: Arc::clone(&self.held),
        })
    }
}

impl PerIp {
    /// `rate` publishes per second with bursts of `burst` (0 = unlimited); `max_connections` per IP
    /// (0 = unlimited).
    pub fn new(rate: u32, burst: u32, max_connections: usize) -> Self {
        PerIp {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
            connections: Slots::new(max_connections),
        }
    }

    /// Takes one publish from `ip`'s bucket, or says how long until one is available.
    pub fn publish(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, b| now.duration_since(b.at) < FORGET_AFTER);
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    /// Takes one of `ip`'s connection slots, or `None` when it holds its maximum.
    pub fn connect(&self, ip: IpAddr) -> Option<Slot> {
        self.connections.take(ip)
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the nearest address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: Option<IpAddr>, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let Some(chain) = forwarded_for else {
        return Some(peer);
    };
    let mut client = peer;
    for hop in chain.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted.contains(&ip) {
                    break;
                }
            }
            // A malformed entry ends what can be believed.
            Err(_) => break,
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bucket_allows_the_burst_then_refuses_with_a_wait() {
        let limits = PerIp::new(10, 3, 0);
        for _ in 0..3 {
            assert!(limits.publish(ip("10.0.0.1")).is_ok());
        }
        let wait = limits.publish(ip("10.0.0.1")).unwrap_err();
        assert!(wait <= Duration::from_millis(100));
        assert!(
            limits.publish(ip("10.0.0.2")).is_ok(),
            "other addresses have their own bucket"
        );
    }

    #[test]
    fn connection_slots_come_back() {
        let limits = PerIp::new(0, 0, 2);
        let a = limits.connect(ip("::1")).unwrap();
        let _b = limits.connect(ip("::1")).unwrap();
        assert!(limits.connect(ip("::1")).is_none());
        drop(a);
        assert!(limits.connect(ip("::1")).is_some());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [ip("127.0.0.1"), ip("10.0.0.9")];
        let xff = Some("203.0.113.7, 198.51.100.1, 10.0.0.9");
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), xff, &trusted),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            client_ip(Some(ip("192.0.2.1")), xff, &trusted),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), Some("junk"), &trusted),
            Some(ip("127.0.0.1"))
        );
    }
}
