//! The sandbox network CIDR. The installer dies when its CIDR (default
//! `192.168.0.0/18`) overlaps an interface address, a route or a resolv.conf
//! nameserver (docs/cube-installer.md; troubleshooting "sandbox CIDR overlaps
//! LAN"), which is common on VPCs using 192.168.0.0/16. We pick a free /18
//! first and pass it as `CUBE_SANDBOX_NETWORK_CIDR`.

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The network type is shared with the plan (`cube.cluster_cidr`, `allow_from`).
pub use crate::net::Ipv4Net;

/// The installer's packaged default.
pub const DEFAULT_CIDR: Ipv4Net = Ipv4Net::new(Ipv4Addr::new(192, 168, 0, 0), 18);

/// Tried in order when the default conflicts: the rest of 192.168.0.0/16,
/// then private ranges clouds rarely hand out to VPCs.
pub const CANDIDATES: [Ipv4Net; 9] = [
    DEFAULT_CIDR,
    Ipv4Net::new(Ipv4Addr::new(192, 168, 64, 0), 18),
    Ipv4Net::new(Ipv4Addr::new(192, 168, 128, 0), 18),
    Ipv4Net::new(Ipv4Addr::new(192, 168, 192, 0), 18),
    Ipv4Net::new(Ipv4Addr::new(10, 250, 0, 0), 18),
    Ipv4Net::new(Ipv4Addr::new(10, 250, 64, 0), 18),
    Ipv4Net::new(Ipv4Addr::new(172, 30, 0, 0), 18),
    Ipv4Net::new(Ipv4Addr::new(172, 30, 64, 0), 18),
    Ipv4Net::new(Ipv4Addr::new(172, 31, 192, 0), 18),
];

/// What the installer checks the CIDR against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNetwork {
    /// Interface networks (address with its prefix).
    pub addresses: Vec<Ipv4Net>,
    pub routes: Vec<Ipv4Net>,
    pub nameservers: Vec<Ipv4Addr>,
}

impl HostNetwork {
    /// From `ip -j addr`, `ip -j route` and /etc/resolv.conf.
    pub fn parse(ip_addr_json: &str, ip_route_json: &str, resolv_conf: &str) -> Result<Self> {
        Ok(Self {
            addresses: parse_ip_addr(ip_addr_json)?
                .into_iter()
                .map(|(_, net)| net)
                .collect(),
            routes: parse_ip_route(ip_route_json)?,
            nameservers: parse_nameservers(resolv_conf),
        })
    }

    /// Everything on the host that overlaps `cidr`, described for a person.
    pub fn conflicts(&self, cidr: &Ipv4Net) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.addresses {
            if a.overlaps(cidr) {
                out.push(format!("address {a}"));
            }
        }
        for r in &self.routes {
            if r.overlaps(cidr) {
                out.push(format!("route {}", r.network()));
            }
        }
        for n in &self.nameservers {
            if Ipv4Net::new(*n, 32).overlaps(cidr) {
                out.push(format!("nameserver {n}"));
            }
        }
        out
    }
}

/// The decision: keep the installer's default, or use another /18.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrChoice {
    Default,
    Alternative { cidr: Ipv4Net, reason: String },
}

/// The first candidate that overlaps nothing on the host.
pub fn choose_cidr(net: &HostNetwork) -> Result<CidrChoice> {
    let default_conflicts = net.conflicts(&DEFAULT_CIDR);
    if default_conflicts.is_empty() {
        return Ok(CidrChoice::Default);
    }
    let reason = format!("{DEFAULT_CIDR} overlaps {}", default_conflicts.join(", "));
    for cidr in CANDIDATES.iter().skip(1) {
        if net.conflicts(cidr).is_empty() {
            return Ok(CidrChoice::Alternative {
                cidr: *cidr,
                reason,
            });
        }
    }
    let tried: Vec<String> = CANDIDATES.iter().map(ToString::to_string).collect();
    bail!(
        "no free /18 for the sandbox network: every candidate overlaps a host address, route or nameserver (tried {}); set CUBE_SANDBOX_NETWORK_CIDR in the plan's extra_env",
        tried.join(", ")
    )
}

/// `ip -j addr`: (interface, network) for each IPv4 address outside loopback.
pub fn parse_ip_addr(json: &str) -> Result<Vec<(String, Ipv4Net)>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(json).context("parsing `ip -j addr` output")?;
    let mut out = Vec::new();
    for link in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let ifname = link["ifname"].as_str().unwrap_or_default().to_string();
        for a in link["addr_info"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if a["family"].as_str() != Some("inet") || a["scope"].as_str() == Some("host") {
                continue;
            }
            let (Some(local), Some(prefix)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else {
                continue;
            };
            let addr: Ipv4Addr = local
                .parse()
                .with_context(|| format!("`ip -j addr`: bad address {local:?} on {ifname}"))?;
            let prefix = u8::try_from(prefix.min(32)).unwrap_or(32);
            out.push((ifname.clone(), Ipv4Net::new(addr, prefix)));
        }
    }
    Ok(out)
}

/// `ip -j route`: destination networks (not `default`), plus gateways.
pub fn parse_ip_route(json: &str) -> Result<Vec<Ipv4Net>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(json).context("parsing `ip -j route` output")?;
    let mut out = Vec::new();
    for r in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        if let Some(dst) = r["dst"].as_str() {
            if dst != "default" {
                if let Ok(net) = Ipv4Net::parse(dst) {
                    out.push(net);
                }
            }
        }
        if let Some(gw) = r["gateway"].as_str().and_then(|g| g.parse().ok()) {
            out.push(Ipv4Net::new(gw, 32));
        }
    }
    Ok(out)
}

/// The default-route interface from `ip -j route` (for the node IP).
pub fn default_route_dev(json: &str) -> Result<Option<String>> {
    if json.trim().is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(json).context("parsing `ip -j route` output")?;
    Ok(v.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .find(|r| r["dst"].as_str() == Some("default"))
        .and_then(|r| r["dev"].as_str())
        .map(str::to_string))
}

/// IPv4 `nameserver` lines of resolv.conf.
pub fn parse_nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|a| a.parse().ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR_LAN: &str = r#"[
      {"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
      {"ifindex":2,"ifname":"eth0","addr_info":[
        {"family":"inet","local":"192.168.10.7","prefixlen":24,"scope":"global"},
        {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}
    ]"#;
    const ROUTE_LAN: &str = r#"[
      {"dst":"default","gateway":"192.168.10.1","dev":"eth0"},
      {"dst":"192.168.10.0/24","dev":"eth0","prefsrc":"192.168.10.7"}
    ]"#;

    #[test]
    fn free_default_is_kept() {
        let net = HostNetwork::parse(
            r#"[{"ifname":"eth0","addr_info":[{"family":"inet","local":"10.0.2.15","prefixlen":24,"scope":"global"}]}]"#,
            r#"[{"dst":"default","gateway":"10.0.2.2","dev":"eth0"},{"dst":"10.0.2.0/24","dev":"eth0"}]"#,
            "nameserver 10.0.2.3\n",
        )
        .unwrap();
        assert_eq!(choose_cidr(&net).unwrap(), CidrChoice::Default);
    }

    #[test]
    fn conflicting_lan_picks_the_next_free_range() {
        let net = HostNetwork::parse(ADDR_LAN, ROUTE_LAN, "nameserver 192.168.10.1\n").unwrap();
        assert_eq!(
            choose_cidr(&net).unwrap(),
            CidrChoice::Alternative {
                cidr: Ipv4Net::parse("192.168.64.0/18").unwrap(),
                reason: "192.168.0.0/18 overlaps address 192.168.10.7/24, route 192.168.10.1/32, route 192.168.10.0/24, nameserver 192.168.10.1".into(),
            }
        );
    }

    #[test]
    fn a_nameserver_alone_is_a_conflict() {
        let net = HostNetwork {
            nameservers: vec![Ipv4Addr::new(192, 168, 0, 2)],
            ..HostNetwork::default()
        };
        let CidrChoice::Alternative { cidr, reason } = choose_cidr(&net).unwrap() else {
            panic!("expected an alternative");
        };
        assert_eq!(cidr.to_string(), "192.168.64.0/18");
        assert_eq!(reason, "192.168.0.0/18 overlaps nameserver 192.168.0.2");
    }

    #[test]
    fn a_whole_192_168_vpc_moves_to_10_250() {
        let net = HostNetwork {
            routes: vec![Ipv4Net::parse("192.168.0.0/16").unwrap()],
            ..HostNetwork::default()
        };
        let CidrChoice::Alternative { cidr, .. } = choose_cidr(&net).unwrap() else {
            panic!("expected an alternative");
        };
        assert_eq!(cidr.to_string(), "10.250.0.0/18");
    }

    #[test]
    fn everything_taken_is_an_error() {
        let net = HostNetwork {
            routes: vec![
                Ipv4Net::parse("0.0.0.0/1").unwrap(),
                Ipv4Net::parse("128.0.0.0/1").unwrap(),
            ],
            ..HostNetwork::default()
        };
        assert_eq!(
            choose_cidr(&net).unwrap_err().to_string(),
            "no free /18 for the sandbox network: every candidate overlaps a host address, route or nameserver (tried 192.168.0.0/18, 192.168.64.0/18, 192.168.128.0/18, 192.168.192.0/18, 10.250.0.0/18, 10.250.64.0/18, 172.30.0.0/18, 172.30.64.0/18, 172.31.192.0/18); set CUBE_SANDBOX_NETWORK_CIDR in the plan's extra_env"
        );
    }

    #[test]
    fn default_route_interface_is_found() {
        assert_eq!(
            default_route_dev(ROUTE_LAN).unwrap().as_deref(),
            Some("eth0")
        );
        assert_eq!(default_route_dev("[]").unwrap(), None);
        assert_eq!(
            parse_ip_addr(ADDR_LAN).unwrap(),
            vec![(
                "eth0".to_string(),
                Ipv4Net::parse("192.168.10.7/24").unwrap()
            )]
        );
    }
}
