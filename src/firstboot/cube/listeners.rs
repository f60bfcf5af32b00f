//! What listens on this node, read from `/proc/net/tcp` and `/proc/net/tcp6`
//! (through the Host seam, so tests read a temp root). The Cube stage
//! judges services and hardening by these sockets, not by the keys an
//! installer version happens to write (docs/cube-installer.md).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};

use super::super::host::Host;

/// A listening TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub addr: IpAddr,
    pub port: u16,
}

impl Listener {
    /// Bound to every address (`0.0.0.0`, or `::`, which Linux makes
    /// dual-stack by default: a Go `":9998"` listener shows up this way).
    pub fn is_wildcard(&self) -> bool {
        self.addr.is_unspecified()
    }

    pub fn is_loopback(&self) -> bool {
        self.addr.is_loopback()
    }

    /// Whether a connection to `addr` on this port reaches this socket.
    pub fn accepts(&self, addr: IpAddr) -> bool {
        self.addr == addr
            || (self.is_wildcard() && (self.addr.is_ipv6() || addr.is_ipv4()))
            || matches!((self.addr, addr), (IpAddr::V6(a), IpAddr::V4(b)) if a.to_ipv4_mapped() == Some(b))
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// TCP state `LISTEN` in /proc/net/tcp (include/net/tcp_states.h: TCP_LISTEN = 10).
const TCP_LISTEN: &str = "0A";

/// Every listening socket of `/proc/net/tcp` and `/proc/net/tcp6`; a missing
/// file (no IPv6) counts as empty.
pub fn read(host: &dyn Host) -> Result<Vec<Listener>> {
    let mut out = Vec::new();
    for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Some(text) = host.read_optional(path)? {
            out.extend(parse(&text, v6).with_context(|| format!("reading {path}"))?);
        }
    }
    Ok(out)
}

/// Parse one /proc/net/tcp{,6} table: `sl local_address rem_address st …`,
/// addresses as hex words in the kernel's byte order, ports big-endian hex.
pub fn parse(text: &str, v6: bool) -> Result<Vec<Listener>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 {
            continue;
        }
        if fields[3] != TCP_LISTEN {
            continue;
        }
        let Some((addr, port)) = fields[1].split_once(':') else {
            bail!("line {}: bad local address {:?}", i + 1, fields[1]);
        };
        let port = u16::from_str_radix(port, 16)
            .with_context(|| format!("line {}: bad port {port:?}", i + 1))?;
        let addr = if v6 {
            IpAddr::V6(parse_v6(addr).with_context(|| format!("line {}", i + 1))?)
        } else {
            let word = u32::from_str_radix(addr, 16)
                .with_context(|| format!("line {}: bad address {addr:?}", i + 1))?;
            // The kernel prints the in-memory (network order) bytes as a
            // host-order word, so the host's byte order turns them back.
            IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
        };
        out.push(Listener { addr, port });
    }
    Ok(out)
}

fn parse_v6(hex: &str) -> Result<Ipv6Addr> {
    if hex.len() != 32 || !hex.is_ascii() {
        bail!("bad IPv6 address {hex:?}");
    }
    let mut bytes = [0u8; 16];
    for w in 0..4 {
        let word = u32::from_str_radix(&hex[w * 8..w * 8 + 8], 16)
            .with_context(|| format!("bad IPv6 address {hex:?}"))?;
        bytes[w * 4..w * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ok(Ipv6Addr::from(bytes))
}

/// The sockets on `port`.
pub fn on_port(listeners: &[Listener], port: u16) -> Vec<Listener> {
    listeners
        .iter()
        .filter(|l| l.port == port)
        .copied()
        .collect()
}

/// Where to reach a service on `port` from this node: loopback when it
/// listens on every address or on loopback (that is what upstream's own
/// checks use), else the one address it is bound to. `None`: nothing listens.
pub fn probe_addr(listeners: &[Listener], port: u16) -> Option<IpAddr> {
    let here = on_port(listeners, port);
    let lo4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let lo6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    if here.iter().any(|l| l.accepts(lo4)) {
        Some(lo4)
    } else if here.iter().any(|l| l.accepts(lo6)) {
        Some(lo6)
    } else {
        here.first().map(|l| l.addr)
    }
}

/// `host:port` for a URL.
pub fn host_port(addr: IpAddr, port: u16) -> String {
    Listener { addr, port }.to_string()
}

/// Sockets on `port` that other machines can reach: not loopback.
pub fn exposed(listeners: &[Listener], port: u16) -> Vec<Listener> {
    on_port(listeners, port)
        .into_iter()
        .filter(|l| !l.is_loopback())
        .collect()
}

pub fn describe(ls: &[Listener]) -> String {
    if ls.is_empty() {
        return "nothing (not listening)".into();
    }
    ls.iter()
        .map(|l| {
            if l.is_wildcard() {
                format!("{l} (all interfaces)")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // As the kernel prints them on x86_64 (little endian).
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0F02000A:1F99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   2: 0F02000A:0016 0202000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:270E 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:26EE 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
";

    #[cfg(target_endian = "little")]
    #[test]
    fn proc_net_tables_parse_to_listening_sockets() {
        let mut ls = parse(TCP, false).unwrap();
        ls.extend(parse(TCP6, true).unwrap());
        let shown: Vec<String> = ls.iter().map(ToString::to_string).collect();
        // The established ssh connection (state 01) is not a listener.
        assert_eq!(
            shown,
            [
                "10.0.2.15:8089",
                "127.0.0.1:3000",
                "[::]:9998",
                "[::1]:9966"
            ]
        );
        // CubeMaster bound to the node IP is not reachable on loopback.
        assert_eq!(probe_addr(&ls, 8089), Some("10.0.2.15".parse().unwrap()));
        assert_eq!(probe_addr(&ls, 3000), Some("127.0.0.1".parse().unwrap()));
        // A dual-stack wildcard answers on 127.0.0.1 too.
        assert_eq!(probe_addr(&ls, 9998), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(probe_addr(&ls, 9966), Some("::1".parse().unwrap()));
        assert_eq!(probe_addr(&ls, 12088), None);
        assert_eq!(describe(&on_port(&ls, 12088)), "nothing (not listening)");
        assert_eq!(describe(&exposed(&ls, 9998)), "[::]:9998 (all interfaces)");
        assert!(exposed(&ls, 3000).is_empty());
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = parse("head\n 0: XYZ:1F99 0:0 0A\n", false).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "line 2: bad address \"XYZ\": invalid digit found in string"
        );
    }
}
