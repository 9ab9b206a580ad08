//! Per-client token buckets on the routes a single client can abuse cheaply but that cost the
//! node dearly or skew its results: signup and login (each an argon2 hash, deliberately slow)
//! and vote. Over its budget a client gets 429 with the time until its next token.
//!
//! Buckets are keyed by the client's address ([`ClientAddr`]). One bucket per address ever seen
//! would let a crowd of addresses grow memory without bound, so buckets that have refilled
//! completely (indistinguishable from a fresh one) are evicted periodically
//! ([`RateLimits::evict_idle`]): memory follows the number of *recently active* clients.
//!
//! The buckets are governor's GCRA limiters over a sharded map; governor has no notion of a
//! trusted proxy, which is the small part written here.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;
use ipnet::IpNet;

use crate::config::RateLimitConfig;

/// The routes with a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Signup,
    Login,
    Vote,
    /// Creating a resumable upload.
    UploadCreation,
}

/// A client spent its budget; its next token comes after `wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("over its request budget for {wait:?}")]
pub struct OverBudget {
    pub wait: Duration,
}

/// A per-client bucket set for one route; `None` when the route is unlimited.
type Buckets = Option<DefaultKeyedRateLimiter<IpAddr>>;

pub struct RateLimits {
    signup: Buckets,
    login: Buckets,
    vote: Buckets,
    upload_creation: Buckets,
    clock: DefaultClock,
}

fn buckets(per_minute: u32, burst: u32) -> Buckets {
    let per_minute = NonZeroU32::new(per_minute)?;
    let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
    Some(RateLimiter::keyed(
        Quota::per_minute(per_minute).allow_burst(burst),
    ))
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            signup: buckets(config.signup_per_minute, config.signup_burst),
            login: buckets(config.login_per_minute, config.login_burst),
            vote: buckets(config.vote_per_minute, config.vote_burst),
            upload_creation: buckets(
                config.upload_creation_per_minute,
                config.upload_creation_burst,
            ),
            clock: DefaultClock::default(),
        }
    }

    fn of(&self, route: Limited) -> &Buckets {
        match route {
            Limited::Signup => &self.signup,
            Limited::Login => &self.login,
            Limited::Vote => &self.vote,
            Limited::UploadCreation => &self.upload_creation,
        }
    }

    /// Takes a token of `client` for `route`, or says how long until one is there.
    pub fn check(&self, route: Limited, client: IpAddr) -> Result<(), OverBudget> {
        match self.of(route) {
            None => Ok(()),
            Some(buckets) => {
                buckets
                    .check_key(&bucket_key(client))
                    .map_err(|not_until| OverBudget {
                        wait: not_until.wait_time_from(self.clock.now()),
                    })
            }
        }
    }

    /// Drops the buckets that are full again (their clients have been idle long enough), and
    /// gives the memory back.
    pub fn evict_idle(&self) {
        for buckets in [&self.signup, &self.login, &self.vote, &self.upload_creation]
            .into_iter()
            .flatten()
        {
            buckets.retain_recent();
            buckets.shrink_to_fit();
        }
    }

    /// How many client buckets exist now, over all routes.
    pub fn tracked_clients(&self) -> usize {
        [&self.signup, &self.login, &self.vote, &self.upload_creation]
            .into_iter()
            .flatten()
            .map(|b| b.len())
            .sum()
    }
}

/// The bucket a client address spends from. An IPv6 client is its /64: a single subscriber
/// usually holds a whole /64 and can pick any address in it, so per-address buckets would give
/// it 2^64 budgets. An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is that IPv4 address.
pub fn bucket_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// Which peers' forwarding header is believed, and which header that is.
#[derive(Debug, Clone, Default)]
pub struct ClientAddressing {
    pub header: Option<http::HeaderName>,
    pub trusted: Vec<IpNet>,
}

impl ClientAddressing {
    /// `trusted` is a comma-separated list of addresses or networks (`10.0.0.0/8, 127.0.0.1`).
    pub fn parse(header: &str, trusted: &str) -> Result<Self, String> {
        let trusted = trusted
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("not an address or network: {s:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let header = if header.trim().is_empty() || trusted.is_empty() {
            None
        } else {
            Some(
                http::HeaderName::from_bytes(header.trim().as_bytes())
                    .map_err(|_| format!("not a header name: {header:?}"))?,
            )
        };
        Ok(Self { header, trusted })
    }

    fn is_trusted(&self, addr: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&addr))
    }

    /// The client a request comes from. The peer is the client unless it is a trusted proxy;
    /// then the forwarding header (`client, proxy1, proxy2`, each proxy appending the address
    /// it received from) is read from the right, skipping trusted proxies: the first address
    /// not trusted is the client. Entries left of it could be forged by the client itself.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let Some(header) = &self.header else {
            return peer;
        };
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = headers
            .get_all(header)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(addr) => {
                    client = addr;
                    if !self.is_trusted(addr) {
                        break;
                    }
                }
                // A garbled entry: nothing left of it can be trusted.
                Err(_) => break,
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(per_minute: u32, burst: u32) -> RateLimitConfig {
        RateLimitConfig {
            signup_per_minute: per_minute,
            signup_burst: burst,
            login_per_minute: 0,
            login_burst: 0,
            vote_per_minute: per_minute,
            vote_burst: burst,
            upload_creation_per_minute: 0,
            upload_creation_burst: 0,
            evict_every_s: 60,
        }
    }

    #[test]
    fn ipv6_clients_share_the_bucket_of_their_64() {
        let key = |s: &str| bucket_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:203.0.113.7"), key("203.0.113.7"));
        assert_ne!(key("203.0.113.7"), key("203.0.113.8"));
        // One subscriber rotating through its /64 spends one budget.
        let limits = RateLimits::new(&config(60, 3));
        for i in 0..3u16 {
            let addr = format!("2001:db8:5:6:{i:x}::{i:x}").parse().unwrap();
            assert!(limits.check(Limited::Vote, addr).is_ok());
        }
        assert!(limits
            .check(Limited::Vote, "2001:db8:5:6:9::9".parse().unwrap())
            .is_err());
        assert!(limits
            .check(Limited::Vote, "2001:db8:5:7::1".parse().unwrap())
            .is_ok());
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_for_the_next_token() {
        let limits = RateLimits::new(&config(60, 3));
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limits.check(Limited::Signup, client), Ok(()));
        }
        let wait = limits.check(Limited::Signup, client).unwrap_err().wait;
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another client and another route have budgets of their own.
        assert_eq!(
            limits.check(Limited::Signup, "203.0.113.8".parse().unwrap()),
            Ok(())
        );
        assert_eq!(limits.check(Limited::Vote, client), Ok(()));
        // A route set to 0 per minute is unlimited.
        for _ in 0..100 {
            assert_eq!(limits.check(Limited::Login, client), Ok(()));
        }
    }

    #[test]
    fn full_buckets_are_evicted() {
        // 6000 per minute: a bucket is full again 10 ms after its one use.
        let limits = RateLimits::new(&config(6000, 1));
        for i in 0..1000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            limits.check(Limited::Signup, addr).unwrap();
        }
        assert_eq!(limits.tracked_clients(), 1000);
        std::thread::sleep(Duration::from_millis(50));
        limits.evict_idle();
        assert_eq!(limits.tracked_clients(), 0);
    }

    fn headers(forwarded: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", forwarded.parse().unwrap());
        h
    }

    #[test]
    fn the_forwarding_header_is_believed_only_from_trusted_proxies() {
        let addressing =
            ClientAddressing::parse("X-Forwarded-For", "10.0.0.0/8, 127.0.0.1").unwrap();
        let lb: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(addressing.client(lb, &headers("203.0.113.9")), client);
        // A client cannot hide behind an address it writes itself: the rightmost untrusted wins.
        assert_eq!(
            addressing.client(lb, &headers("1.2.3.4, 203.0.113.9, 10.0.0.5")),
            client
        );
        // From an untrusted peer the header means nothing.
        assert_eq!(
            addressing.client(stranger, &headers("203.0.113.9")),
            stranger
        );
        // No header, or a garbled one: the proxy itself.
        assert_eq!(addressing.client(lb, &HeaderMap::new()), lb);
        assert_eq!(addressing.client(lb, &headers("not-an-ip")), lb);
        // Not configured: never read.
        let off = ClientAddressing::parse("x-forwarded-for", "").unwrap();
        assert_eq!(off.client(lb, &headers("203.0.113.9")), lb);
        assert!(ClientAddressing::parse("x-forwarded-for", "10.0.0.0/33").is_err());
    }
}
