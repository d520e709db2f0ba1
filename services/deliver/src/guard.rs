//! The SSRF guard: deliver sends requests to URLs its callers chose, so
//! without this it would be an open proxy into the network it runs in
//! (cloud metadata at 169.254.169.254, Redis itself, internal admin pages).
//!
//! A target is refused, without any connection, when its host is, or
//! resolves to, any address that is not globally routable: loopback,
//! private, link-local, CGNAT, multicast, unspecified, documentation,
//! benchmarking and reserved ranges, in IPv4 and IPv6, including IPv4 hidden
//! in IPv6 (IPv4-mapped, IPv4-compatible, 6to4, NAT64). If *any* resolved
//! address is refused, the target is refused. Names are resolved once, by
//! [`GuardedResolver`], and the connection is made only to the addresses
//! that were checked, so a DNS answer that changes between a check and the
//! connection (rebinding) cannot slip through. IP literals never reach a
//! resolver, so they are checked before sending ([`Guard::check_url`]), and
//! so is every redirect hop.
//!
//! Through an egress proxy the client never resolves a target; how the
//! guard works then is told in [`crate::http`].
//!
//! Operators can allow hosts or networks (`POSTBACK_TARGET_ALLOW`), and
//! `POSTBACK_ALLOW_PRIVATE_TARGETS=true` turns the guard off (local
//! development and tests only).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address is not a place deliver sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Range {
    /// 0.0.0.0/8, ::/128.
    Unspecified,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7 (unique local).
    Private,
    /// 169.254/16, fe80::/10 (and the deprecated fec0::/10 site-local).
    LinkLocal,
    /// 100.64.0.0/10, carrier-grade NAT.
    SharedCgnat,
    /// 224/4, ff00::/8.
    Multicast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18/15.
    Benchmarking,
    /// 240/4, 255.255.255.255, 192.0.0/24, 192.88.99/24, 100::/64,
    /// 2001::/23, 64:ff9b:1::/48 and other special-purpose blocks.
    Reserved,
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Range::Unspecified => "unspecified",
            Range::Loopback => "loopback",
            Range::Private => "private",
            Range::LinkLocal => "link-local",
            Range::SharedCgnat => "shared (CGNAT)",
            Range::Multicast => "multicast",
            Range::Documentation => "documentation",
            Range::Benchmarking => "benchmarking",
            Range::Reserved => "reserved",
        })
    }
}

/// The non-global range `ip` falls in, or `None` for a global address.
pub(crate) fn classify(ip: IpAddr) -> Option<Range> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Range> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => Range::Unspecified,
        (127, _, _) => Range::Loopback,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => Range::Private,
        (169, 254, _) => Range::LinkLocal,
        (100, 64..=127, _) => Range::SharedCgnat,
        (224..=239, _, _) => Range::Multicast,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Range::Documentation,
        (198, 18..=19, _) => Range::Benchmarking,
        (240..=255, _, _) | (192, 0, 0) | (192, 88, 99) => Range::Reserved,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Range> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some(Range::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Range::Loopback);
    }
    // IPv4 inside IPv6: judged by the IPv4 address it carries.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        // ::a.b.c.d, IPv4-compatible (deprecated).
        [0, 0, 0, 0, 0, 0, hi, lo] => return classify_v4(embedded(hi, lo)).or(Some(Range::Reserved)),
        // 64:ff9b::/96, NAT64 well-known prefix.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return classify_v4(embedded(hi, lo)),
        // 2002::/16, 6to4: the IPv4 address is in bits 16..48.
        [0x2002, hi, lo, ..] => return classify_v4(embedded(hi, lo)),
        _ => {}
    }
    Some(match s[0] {
        0xfc00..=0xfdff => Range::Private,
        0xfe80..=0xfeff => Range::LinkLocal,
        0xff00..=0xffff => Range::Multicast,
        0x2001 if s[1] == 0x0db8 => Range::Documentation,
        0x3fff if s[1] <= 0x0fff => Range::Documentation,
        // 2001::/23: IETF protocol assignments (Teredo, ORCHIDv2, ...).
        0x2001 if s[1] < 0x0200 => Range::Reserved,
        // 64:ff9b:1::/48, local-use NAT64; 100::/64, discard-only.
        0x0064 if s[1] == 0xff9b && s[2] == 1 => Range::Reserved,
        0x0100 if s[1..4] == [0, 0, 0] => Range::Reserved,
        // Everything else outside 2000::/3 is unassigned or special.
        0x0000..=0x1fff | 0x4000..=0xfbff => Range::Reserved,
        _ => return None,
    })
}

/// A refused target; the error reqwest reports when the guard says no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host} is {ip}, a {range} address (SSRF guard)")]
pub(crate) struct Refused {
    /// The host as written in the URL.
    pub(crate) host: String,
    /// The offending address.
    pub(crate) ip: IpAddr,
    /// Its range.
    pub(crate) range: Range,
}

/// Operators' exceptions: host names and networks deliver may reach even
/// though they are not global.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

impl AllowList {
    /// Parses a comma-separated list of host names and CIDRs (or single IPs).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut list = Self::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Ok(net) = item.parse::<IpNet>() {
                list.nets.push(net);
            } else if let Ok(ip) = item.parse::<IpAddr>() {
                list.nets.push(IpNet::from(ip));
            } else if item.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
                list.hosts.push(item.to_ascii_lowercase());
            } else {
                return Err(format!("{item:?} is neither a host name nor an IP network"));
            }
        }
        Ok(list)
    }

    fn allows_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host.trim_end_matches('.')))
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// The guard's settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct Guard {
    /// Exceptions.
    pub(crate) allow: AllowList,
}

impl Guard {
    /// Checks one address of `host`.
    pub(crate) fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        if self.allow.allows_host(host) || self.allow.allows_ip(ip) {
            return Ok(());
        }
        match classify(ip) {
            Some(range) => Err(Refused { host: host.to_owned(), ip, range }),
            None => Ok(()),
        }
    }

    /// Whether the operator allowed this host name by name.
    pub(crate) fn allows_name(&self, host: &str) -> bool {
        self.allow.allows_host(host)
    }

    /// Checks a URL whose host is an IP literal (names are checked when
    /// they are resolved). Other URLs pass.
    pub(crate) fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        self.check_ip(url.host_str().unwrap_or_default(), ip)
    }
}

/// A resolver that refuses names with any non-global address, and hands
/// the connection exactly the addresses it checked.
pub(crate) struct GuardedResolver {
    guard: Arc<Guard>,
    exempt: Option<String>,
}

impl GuardedResolver {
    /// A resolver enforcing `guard`.
    pub(crate) fn new(guard: Arc<Guard>) -> Self {
        Self { guard, exempt: None }
    }

    /// The same, resolving `host` (the egress proxy) unchecked.
    pub(crate) fn exempting(self, host: Option<String>) -> Self {
        Self { exempt: host, ..self }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        let exempt = self.exempt.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(name.as_str()));
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in addrs.iter().filter(|_| !exempt) {
                guard.check_ip(&host, addr.ip())?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The `Refused` somewhere in an error's chain of causes, if any.
pub(crate) fn refused_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> Option<Range> {
        classify(text.parse().expect("ip"))
    }

    #[test]
    fn ipv4_ranges() {
        let cases = [
            ("0.0.0.0", Some(Range::Unspecified)),
            ("0.1.2.3", Some(Range::Unspecified)),
            ("127.0.0.1", Some(Range::Loopback)),
            ("127.255.255.254", Some(Range::Loopback)),
            ("10.0.0.1", Some(Range::Private)),
            ("172.16.0.1", Some(Range::Private)),
            ("172.31.255.255", Some(Range::Private)),
            ("192.168.1.1", Some(Range::Private)),
            ("169.254.169.254", Some(Range::LinkLocal)),
            ("100.64.0.1", Some(Range::SharedCgnat)),
            ("100.127.255.255", Some(Range::SharedCgnat)),
            ("224.0.0.1", Some(Range::Multicast)),
            ("239.255.255.255", Some(Range::Multicast)),
            ("192.0.2.1", Some(Range::Documentation)),
            ("198.51.100.1", Some(Range::Documentation)),
            ("203.0.113.1", Some(Range::Documentation)),
            ("198.18.0.1", Some(Range::Benchmarking)),
            ("198.19.255.255", Some(Range::Benchmarking)),
            ("240.0.0.1", Some(Range::Reserved)),
            ("255.255.255.255", Some(Range::Reserved)),
            ("192.0.0.8", Some(Range::Reserved)),
            ("192.88.99.1", Some(Range::Reserved)),
            // Just outside the ranges: global.
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("169.253.255.255", None),
            ("198.17.255.255", None),
            ("198.20.0.0", None),
            ("223.255.255.255", None),
            ("192.0.1.1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(range(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_ranges() {
        let cases = [
            ("::", Some(Range::Unspecified)),
            ("::1", Some(Range::Loopback)),
            ("fc00::1", Some(Range::Private)),
            ("fd12:3456::1", Some(Range::Private)),
            ("fe80::1", Some(Range::LinkLocal)),
            ("fec0::1", Some(Range::LinkLocal)),
            ("ff02::1", Some(Range::Multicast)),
            ("2001:db8::1", Some(Range::Documentation)),
            ("3fff::1", Some(Range::Documentation)),
            ("2001::1", Some(Range::Reserved)),
            ("2001:1ff::1", Some(Range::Reserved)),
            ("100::1", Some(Range::Reserved)),
            ("64:ff9b:1::1", Some(Range::Reserved)),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001::1", None),
            ("2001:4860:4860::8888", None),
        ];
        for (ip, want) in cases {
            assert_eq!(range(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv4_hidden_in_ipv6_is_judged_as_ipv4() {
        let cases = [
            // IPv4-mapped
            ("::ffff:127.0.0.1", Some(Range::Loopback)),
            ("::ffff:169.254.169.254", Some(Range::LinkLocal)),
            ("::ffff:8.8.8.8", None),
            // IPv4-compatible (deprecated)
            ("::127.0.0.1", Some(Range::Loopback)),
            ("::10.0.0.1", Some(Range::Private)),
            // NAT64 well-known prefix
            ("64:ff9b::7f00:1", Some(Range::Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(Range::LinkLocal)),
            ("64:ff9b::808:808", None),
            // 6to4
            ("2002:7f00:1::1", Some(Range::Loopback)),
            ("2002:c0a8:101::1", Some(Range::Private)),
            ("2002:808:808::1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(range(ip), want, "{ip}");
        }
    }

    #[test]
    fn allow_list_of_hosts_and_networks() {
        let guard = Guard { allow: AllowList::parse("hooks.internal, 10.1.0.0/16, 127.0.0.2").expect("parse") };
        assert!(guard.check_ip("hooks.internal", "10.9.9.9".parse().expect("ip")).is_ok());
        assert!(guard.check_ip("HOOKS.internal.", "10.9.9.9".parse().expect("ip")).is_ok());
        assert!(guard.check_ip("x", "10.1.2.3".parse().expect("ip")).is_ok());
        assert!(guard.check_ip("x", "127.0.0.2".parse().expect("ip")).is_ok());
        let refused = guard.check_ip("x", "10.2.0.1".parse().expect("ip")).expect_err("not allowed");
        assert_eq!(refused.range, Range::Private);
        assert!(AllowList::parse("not a host!").is_err());
        assert!(AllowList::parse("").is_ok());
    }

    #[test]
    fn ip_literal_urls_are_checked_and_names_left_to_the_resolver() {
        let guard = Guard::default();
        let url = |u: &str| url::Url::parse(u).expect("url");
        assert!(guard.check_url(&url("http://127.0.0.1:8080/x")).is_err());
        assert!(guard.check_url(&url("http://[::1]/x")).is_err());
        assert!(guard.check_url(&url("http://[::ffff:10.0.0.1]/x")).is_err());
        // The url crate reads these odd IPv4 spellings as 127.0.0.1 too.
        assert!(guard.check_url(&url("http://2130706433/x")).is_err());
        assert!(guard.check_url(&url("http://0x7f.1/x")).is_err());
        assert!(guard.check_url(&url("http://8.8.8.8/x")).is_ok());
        assert!(guard.check_url(&url("http://example.com/x")).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_with_a_loopback_address() {
        let resolver = GuardedResolver::new(Arc::new(Guard::default()));
        let name: Name = "localhost".parse().expect("name");
        let error = match resolver.resolve(name).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e,
        };
        let refused = refused_in(error.as_ref()).expect("a Refused error");
        assert_eq!(refused.range, Range::Loopback);
    }
}
