//! IP addresses and networks as the plan and the journal carry them
//! (`cube.allow_from`, `cube.cluster_cidr`, the sandbox network): parsed
//! once, where the text comes in (a flag, the plan, the journal), then
//! passed as types. Shared by the builder and the helper.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// An IPv4 network: the address as written, its prefix length; `network()`
/// masks the address. In JSON it is its text, `a.b.c.d/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Self { addr, prefix }
    }

    /// `a.b.c.d/n` or a bare address (a /32).
    pub fn parse(s: &str) -> Result<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a,
                p.parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 32)
                    .with_context(|| format!("{s:?} has an invalid prefix length"))?,
            ),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("{s:?} is not an IPv4 address or network"))?;
        Ok(Self { addr, prefix })
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// First and last address of the network.
    pub fn range(&self) -> (u32, u32) {
        let first = u32::from(self.addr) & self.mask();
        (first, first | !self.mask())
    }

    pub fn network(&self) -> Self {
        Self::new(Ipv4Addr::from(self.range().0), self.prefix)
    }

    pub fn overlaps(&self, other: &Self) -> bool {
        let (a0, a1) = self.range();
        let (b0, b1) = other.range();
        a0 <= b1 && b0 <= a1
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).map_err(|e| format!("{e:#}"))
    }
}

serde_as_text!(Ipv4Net);

/// An IPv4 or IPv6 network, `addr/len` or a bare address, as an operator
/// wrote it (an `allow_from` entry). The text is kept: it is what the plan,
/// the firewall's IPv6 set and the messages show, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    text: String,
    net: IpNet,
}

/// What a [`Cidr`] denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpNet {
    V4(Ipv4Net),
    /// An IPv6 address with its prefix length (128 when bare).
    V6(Ipv6Addr, u8),
}

impl Cidr {
    /// `a.b.c.d[/n]` (n <= 32) or an IPv6 address with an optional `/n`
    /// (n <= 128).
    pub fn parse(s: &str) -> Result<Self, String> {
        let not_a_network = || format!("{s:?} is not an IP network");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net = match addr.parse::<IpAddr>().map_err(|_| not_a_network())? {
            IpAddr::V4(_) => IpNet::V4(Ipv4Net::parse(s).map_err(|e| format!("{e:#}"))?),
            IpAddr::V6(a) => match prefix.map(str::parse::<u8>) {
                None => IpNet::V6(a, 128),
                Some(Ok(p)) if p <= 128 => IpNet::V6(a, p),
                Some(_) => return Err(not_a_network()),
            },
        };
        Ok(Self {
            text: s.to_string(),
            net,
        })
    }

    pub fn net(&self) -> IpNet {
        self.net
    }

    /// The IPv4 network, if this is one.
    pub fn v4(&self) -> Option<Ipv4Net> {
        match self.net {
            IpNet::V4(n) => Some(n),
            IpNet::V6(..) => None,
        }
    }

    /// As written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

serde_as_text!(Cidr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_keep_their_text_through_json() {
        for text in [
            "10.0.0.7/24",
            "10.0.0.7",
            "fd00::/64",
            "FD00:0::1",
            "0.0.0.0/0",
        ] {
            let json = format!("{text:?}");
            let c: Cidr = serde_json::from_str(&json).unwrap();
            assert_eq!(serde_json::to_string(&c).unwrap(), json);
            assert_eq!(c.to_string(), text);
        }
        let c = Cidr::parse("10.0.0.7/24").unwrap();
        assert_eq!(c.v4().unwrap().network().to_string(), "10.0.0.0/24");
        assert_eq!(Cidr::parse("fd00::/64").unwrap().v4(), None);
        let n: Ipv4Net = serde_json::from_str("\"10.250.0.0/18\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"10.250.0.0/18\"");
    }

    #[test]
    fn overlap_is_symmetric_and_exact_at_edges() {
        let a = Ipv4Net::parse("192.168.0.0/18").unwrap();
        assert!(a.overlaps(&Ipv4Net::parse("192.168.63.255").unwrap()));
        assert!(!a.overlaps(&Ipv4Net::parse("192.168.64.0").unwrap()));
        assert!(Ipv4Net::parse("192.168.0.0/16").unwrap().overlaps(&a));
        assert_eq!(
            Ipv4Net::parse("10.0.0.0/33").unwrap_err().to_string(),
            "\"10.0.0.0/33\" has an invalid prefix length"
        );
    }

    #[test]
    fn bad_networks_say_why() {
        for (bad, why) in [
            ("example.com", "\"example.com\" is not an IP network"),
            (
                "10.0.0.0/40",
                "\"10.0.0.0/40\" has an invalid prefix length",
            ),
            ("fd00::/129", "\"fd00::/129\" is not an IP network"),
            ("", "\"\" is not an IP network"),
        ] {
            assert_eq!(Cidr::parse(bad).unwrap_err(), why);
        }
        assert!(serde_json::from_str::<Ipv4Net>("\"10.0.0.0/33\"").is_err());
    }
}
