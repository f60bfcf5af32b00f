//! The host firewall of hardening option B (upstream
//! docs/guide/network-hardening.md): Cube's internal ports only from
//! `allow_from`, as an nftables ruleset in its own table and the unit that
//! loads it at every boot.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Result};

use super::super::host::{CommandSpec, Host};
use super::super::{Ctx, StepFailure};
use super::real;
use crate::net::{Cidr, IpNet, Ipv4Net};

pub const FIREWALL_PATH: &str = "/etc/cubeboot/firewall.nft";
pub const FIREWALL_UNIT: &str = "cubeboot-firewall.service";
pub const FIREWALL_UNIT_PATH: &str = "/etc/systemd/system/cubeboot-firewall.service";
/// Where Debian and the RHEL family install nft.
const NFT: &str = "/usr/sbin/nft";
/// Where a host may keep nft; none of them: `allow_from` cannot be had.
const NFT_PATHS: [&str; 3] = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"];
const NEEDS_NFTABLES: &str = "cube.allow_from needs nftables for its firewall";

/// `err`, from installing `missing`, with why nftables was wanted when it
/// was among them (prereqs adds it for `allow_from`).
pub fn explain_missing_nftables(err: anyhow::Error, missing: &[String]) -> anyhow::Error {
    if !missing.iter().any(|p| p == "nftables") {
        return err;
    }
    let hint = err
        .downcast_ref::<StepFailure>()
        .and_then(|f| f.hint.clone());
    let mut failure = StepFailure::new(format!(
        "{err:#}; {NEEDS_NFTABLES}, and nftables is not installed"
    ));
    failure.hint = hint;
    failure.into()
}

/// Write the ruleset for `allow_from` and `ports`, load it now, and enable
/// the unit that loads it at every boot. Needs nothing from the Cube
/// install, so it runs before it (docs/cube-stage.md).
pub fn load(host: &dyn Host, allow_from: &[Cidr], ports: &[u16]) -> Result<String> {
    let ruleset = firewall_ruleset(allow_from, ports);
    // A dry run did not install nftables in cube-prereqs.
    if !host.is_dry_run() && !NFT_PATHS.iter().any(|p| host.exists(p)) {
        return Err(StepFailure::new(format!(
            "{NEEDS_NFTABLES}, and nft is not installed (looked in {})",
            NFT_PATHS.join(", ")
        ))
        .hint("install the nftables package (cube-prereqs does when its mirror works), or leave allow_from empty")
        .into());
    }
    host.write_atomic(FIREWALL_PATH, ruleset.as_bytes(), 0o600)?;
    let file = real(host, FIREWALL_PATH);
    host.run(&CommandSpec::new("nft").args(["-c", "-f", &file]))?;
    host.run(&CommandSpec::new("nft").args(["-f", &file]))?;
    host.write_atomic(FIREWALL_UNIT_PATH, firewall_unit().as_bytes(), 0o644)?;
    host.write_atomic(NFTABLES_DROPIN_PATH, nftables_dropin().as_bytes(), 0o644)?;
    // `enable` reloads systemd, so the drop-in holds from now on.
    host.run(&CommandSpec::new("systemctl").args(["enable", FIREWALL_UNIT]))?;
    Ok(format!(
        "ports {} only from {}",
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(","),
        allow_from
            .iter()
            .map(Cidr::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// cube-install's preamble: the plan's firewall, when hardening has
/// `allow_from`, loaded before the installer starts Cube's services.
pub fn load_before_install(ctx: &mut Ctx, ports: &[u16]) -> Result<()> {
    let cube = &ctx.plan.cube;
    if !cube.hardening || cube.allow_from.is_empty() {
        return Ok(());
    }
    let loaded = load(ctx.host, &cube.allow_from, ports)?;
    ctx.host
        .say(&format!("firewall before the install: {loaded}"));
    Ok(())
}

/// Harden's verdict on the loaded firewall, by [`probe`] of the node IP:
/// an error naming every restricted port that accepted from outside
/// `allow_from`, a warning when the probe could show nothing.
pub fn prove_closed(
    host: &dyn Host,
    node_ip: Ipv4Addr,
    allow_from: &[Cidr],
    ports: &[u16],
) -> Result<Option<String>> {
    match probe(host, node_ip, allow_from, ports)? {
        ProbeVerdict::Closed => Ok(None),
        ProbeVerdict::Open(open) => Err(StepFailure::new(format!(
            "firewall: port(s) {} of {node_ip} accepted a connection from outside allow_from",
            port_list(&open)
        ))
        .hint("another firewall or NAT rule admits them before the cubeboot table; see `nft list ruleset`")
        .into()),
        ProbeVerdict::Inconclusive(why) => Ok(Some(format!(
            "hardening: the firewall is loaded but could not be probed: {why}"
        ))),
    }
}

/// Probe `target` from outside `allow_from` (see [`PROBE_SCRIPT`]).
pub fn probe(
    host: &dyn Host,
    target: Ipv4Addr,
    allow_from: &[Cidr],
    ports: &[u16],
) -> Result<ProbeVerdict> {
    let Some(at) = probe_source(allow_from) else {
        return Ok(ProbeVerdict::Inconclusive(
            "allow_from admits every address the probe could use".into(),
        ));
    };
    let out = host.run(&probe_command(PROBE_NETNS, target, at, ports))?;
    if !out.success() {
        return Ok(ProbeVerdict::Inconclusive(format!(
            "the probe's network namespace could not be set up: {}",
            out.stderr.trim()
        )));
    }
    Ok(judge_probe(&parse_probe(&out.stdout, ports)?, ports))
}

/// An nftables ruleset in its own table (other rules stay untouched):
/// accept by default, drop the restricted ports unless the source is in
/// `allow_from`, loopback, or a Docker bridge (the WebUI container reaches
/// CubeAPI through host.docker.internal, network-hardening.md).
///
/// The chain hooks prerouting before `dstnat`: a port Docker publishes is
/// DNAT'd there to its container and then goes through `forward`, never
/// `input` (issue 21). Before the DNAT the packet still carries the node's
/// own address and the port the client asked for, so one rule covers
/// Cube's own listeners and published ports alike; traffic the node only
/// routes (sandboxes, containers going out) is not for a local address and
/// passes, and the node's own connections to itself arrive on `lo`.
pub fn firewall_ruleset(allow_from: &[Cidr], ports: &[u16]) -> String {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in allow_from {
        match net.net() {
            IpNet::V4(n) => v4.push(n.network().to_string()),
            IpNet::V6(..) => v6.push(net.as_str()),
        }
    }
    let ports = port_list(ports);
    let mut s = String::from(
        "# Generated by cubeboot; do not edit.\n\
         # Cube Sandbox control ports only from the plan's allow_from (network-hardening.md).\n\
         table inet cubeboot\n\
         delete table inet cubeboot\n\
         table inet cubeboot {\n",
    );
    if !v4.is_empty() {
        s.push_str(&format!(
            "  set allow_v4 {{\n    type ipv4_addr\n    flags interval\n    elements = {{ {} }}\n  }}\n",
            v4.join(", ")
        ));
    }
    if !v6.is_empty() {
        s.push_str(&format!(
            "  set allow_v6 {{\n    type ipv6_addr\n    flags interval\n    elements = {{ {} }}\n  }}\n",
            v6.join(", ")
        ));
    }
    s.push_str(
        "  chain prerouting {\n    type filter hook prerouting priority dstnat - 10; policy accept;\n    iif \"lo\" accept\n    iifname { \"docker0\", \"br-*\" } accept\n    fib daddr type != local accept\n",
    );
    if !v4.is_empty() {
        s.push_str(&format!(
            "    ip saddr @allow_v4 tcp dport {{ {ports} }} accept\n"
        ));
    }
    if !v6.is_empty() {
        s.push_str(&format!(
            "    ip6 saddr @allow_v6 tcp dport {{ {ports} }} accept\n"
        ));
    }
    s.push_str(&format!("    tcp dport {{ {ports} }} drop\n  }}\n}}\n"));
    s
}

/// Loads the ruleset at every boot, before the network comes up and after
/// an enabled nftables.service has flushed the ruleset.
pub fn firewall_unit() -> String {
    format!(
        "# Generated by cubeboot; do not edit.\n\
         [Unit]\n\
         Description=cubeboot: Cube Sandbox port restrictions\n\
         DefaultDependencies=no\n\
         After=nftables.service\n\
         Before=network-pre.target\n\
         Wants=network-pre.target\n\n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart={NFT} -f {FIREWALL_PATH}\n\n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

fn port_list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The network namespace and veth pair the probe makes on the node; names
/// fit IFNAMSIZ (15).
pub const PROBE_NETNS: &str = "cubeboot-probe";
/// How long a probe waits for a port; a dropped SYN is never answered.
pub const PROBE_WAIT: Duration = Duration::from_secs(3);
/// A port the probe expects the node to answer (connect or refuse): it is
/// in no restricted set, so only a path that does not work, or another
/// firewall dropping everything from the probe, keeps it silent.
pub const PROBE_CONTROL_PORT: u16 = 9;

/// Probe the node as a client outside `allow_from` would: a network
/// namespace behind a veth pair, `source` on its end, connecting to every
/// port at `target` at once. Prints one `PORT open|refused|silent|error`
/// line per port. Docker's published ports are DNAT'd for traffic that
/// arrives from an interface, so this path meets them as a remote client
/// does; the namespace and link are removed on every exit.
const PROBE_SCRIPT: &str = r#"set -eu
ns=$1 host_if=$2 probe_if=$3 gw=$4 src=$5 target=$6 wait=$7
shift 7
cleanup() {
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$host_if" 2>/dev/null || true
}
cleanup
trap cleanup EXIT
ip netns add "$ns"
ip link add "$host_if" type veth peer name "$probe_if" netns "$ns"
ip addr add "$gw/30" dev "$host_if"
ip link set "$host_if" up
ip -n "$ns" link set lo up
ip -n "$ns" addr add "$src/30" dev "$probe_if"
ip -n "$ns" link set "$probe_if" up
ip -n "$ns" route add default via "$gw"
set +e
for port in "$@"; do
  (
    err=$(ip netns exec "$ns" timeout "$wait" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$target" "$port" 2>&1)
    rc=$?
    if [ "$rc" -eq 0 ]; then echo "$port open"
    elif [ "$rc" -eq 124 ]; then echo "$port silent"
    else case $err in
      *"Connection refused"*) echo "$port refused" ;;
      *) echo "$port error $(printf %s "$err" | tr -c '[:print:]' ' ' | cut -c1-120)" ;;
    esac
    fi
  ) &
done
wait
"#;

/// Where the probe stands: `source` and the node-side `gateway` of a /30
/// that `allow_from` does not cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSource {
    pub gateway: Ipv4Addr,
    pub source: Ipv4Addr,
}

/// The first /30 of the benchmarking range 198.18.0.0/15 (RFC 2544, never
/// routed on the internet) outside every IPv4 network of `allow_from`;
/// `None` when `allow_from` admits all of them (then no IPv4 source is
/// outside it).
pub fn probe_source(allow_from: &[Cidr]) -> Option<ProbeSource> {
    let allowed: Vec<Ipv4Net> = allow_from.iter().filter_map(Cidr::v4).collect();
    let first = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    let last = u32::from(Ipv4Addr::new(198, 19, 255, 252));
    // Walk back from the top: the start of the range is the likelier in use.
    let mut base = last;
    while base >= first {
        let net = Ipv4Net::new(Ipv4Addr::from(base), 30);
        if !allowed.iter().any(|a| a.overlaps(&net)) {
            return Some(ProbeSource {
                gateway: Ipv4Addr::from(base + 1),
                source: Ipv4Addr::from(base + 2),
            });
        }
        // Skip the whole allowed network that covers this /30.
        let below = allowed
            .iter()
            .filter(|a| a.overlaps(&net))
            .map(|a| a.range().0)
            .min()
            .unwrap_or(base);
        match below.checked_sub(4) {
            Some(b) => base = b & !3,
            None => break,
        }
    }
    None
}

/// The probe as a command: from `at` in namespace `netns` (made and
/// removed by the probe) toward `target`, the control port first, then
/// `ports`.
pub fn probe_command(netns: &str, target: Ipv4Addr, at: ProbeSource, ports: &[u16]) -> CommandSpec {
    let mut args = vec![
        "-c".to_string(),
        PROBE_SCRIPT.to_string(),
        "cubeboot-firewall-probe".to_string(), // $0
        netns.to_string(),
        "cubeprobe0".to_string(),
        "cubeprobe1".to_string(),
        at.gateway.to_string(),
        at.source.to_string(),
        target.to_string(),
        PROBE_WAIT.as_secs().to_string(),
        PROBE_CONTROL_PORT.to_string(),
    ];
    args.extend(ports.iter().map(u16::to_string));
    CommandSpec::new("bash").args(args).allow_failure()
}

/// What one port did for the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortAnswer {
    /// The connection was accepted.
    Open,
    /// Refused with a reset: the node answered, nothing listens.
    Refused,
    /// No answer within [`PROBE_WAIT`]: dropped.
    Silent,
    /// Anything else the connect said.
    Error(String),
}

/// The probe's lines as (port, answer), bounded to the ports asked.
pub fn parse_probe(stdout: &str, asked: &[u16]) -> Result<Vec<(u16, PortAnswer)>> {
    let mut out = Vec::new();
    for line in stdout.lines().take(asked.len() + 1) {
        let (port, rest) = line.split_once(' ').unwrap_or((line, ""));
        let port: u16 = match port.parse() {
            Ok(p) if asked.contains(&p) || p == PROBE_CONTROL_PORT => p,
            _ => bail!("firewall probe printed {line:?}"),
        };
        let answer = match rest {
            "open" => PortAnswer::Open,
            "refused" => PortAnswer::Refused,
            "silent" => PortAnswer::Silent,
            r => PortAnswer::Error(r.strip_prefix("error ").unwrap_or(r).to_string()),
        };
        out.push((port, answer));
    }
    Ok(out)
}

/// What the probe proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// The node answered the control port and refused every restricted one.
    Closed,
    /// Restricted ports that accepted a connection from outside `allow_from`.
    Open(Vec<u16>),
    /// The probe could not show anything (why).
    Inconclusive(String),
}

pub fn judge_probe(answers: &[(u16, PortAnswer)], ports: &[u16]) -> ProbeVerdict {
    let answer = |p: u16| answers.iter().find(|(q, _)| *q == p).map(|(_, a)| a);
    let open: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|p| answer(*p) == Some(&PortAnswer::Open))
        .collect();
    if !open.is_empty() {
        return ProbeVerdict::Open(open);
    }
    if let Some(p) = ports.iter().find(|p| answer(**p).is_none()) {
        return ProbeVerdict::Inconclusive(format!("the probe gave no answer for port {p}"));
    }
    match answer(PROBE_CONTROL_PORT) {
        Some(PortAnswer::Open | PortAnswer::Refused) => ProbeVerdict::Closed,
        other => ProbeVerdict::Inconclusive(format!(
            "the node did not answer the probe on unrestricted port {PROBE_CONTROL_PORT} ({})",
            match other {
                Some(PortAnswer::Error(e)) => e.clone(),
                Some(_) => "no answer".to_string(),
                None => "not probed".to_string(),
            }
        )),
    }
}

/// A drop-in for Debian's nftables.service (disabled by default): it starts
/// and reloads with `nft -f /etc/nftables.conf`, whose first line is
/// `flush ruleset`, wiping our table. Drop-in Exec lines append, so ours is
/// loaded again right after each start and reload, however the operator
/// brings nftables.service up (issue 21).
pub const NFTABLES_DROPIN_PATH: &str = "/etc/systemd/system/nftables.service.d/cubeboot.conf";

pub fn nftables_dropin() -> String {
    format!(
        "# Generated by cubeboot; do not edit.\n\
         # nftables.service flushes every table: load the cubeboot table again after it.\n\
         [Service]\n\
         ExecStartPost={NFT} -f {FIREWALL_PATH}\n\
         ExecReload={NFT} -f {FIREWALL_PATH}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: [u16; 7] = [8089, 9999, 9998, 3000, 12088, 9000, 9966];

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn ruleset_admits_only_the_planned_networks() {
        let rs = firewall_ruleset(&nets(&["10.0.0.7/24", "fd00::/64"]), &PORTS);
        assert!(rs.contains("elements = { 10.0.0.0/24 }"), "{rs}");
        assert!(rs.contains("elements = { fd00::/64 }"), "{rs}");
        assert!(rs.contains(
            "ip saddr @allow_v4 tcp dport { 8089, 9999, 9998, 3000, 12088, 9000, 9966 } accept"
        ));
        assert!(rs.ends_with(
            "    tcp dport { 8089, 9999, 9998, 3000, 12088, 9000, 9966 } drop\n  }\n}\n"
        ));
        assert!(!rs.contains(" 22") && !rs.contains("443"));
        // Before Docker's DNAT, for the node's own addresses only.
        assert!(rs.contains("type filter hook prerouting priority dstnat - 10;"));
        assert!(rs.contains("    fib daddr type != local accept\n"));
    }

    #[test]
    fn the_probe_stands_outside_every_allowed_network() {
        let at = |list: &[&str]| probe_source(&nets(list));
        let top = ProbeSource {
            gateway: Ipv4Addr::new(198, 19, 255, 253),
            source: Ipv4Addr::new(198, 19, 255, 254),
        };
        assert_eq!(at(&["10.0.0.0/8", "fd00::/64"]), Some(top));
        assert_eq!(
            at(&["198.19.0.0/16"]),
            Some(ProbeSource {
                gateway: Ipv4Addr::new(198, 18, 255, 253),
                source: Ipv4Addr::new(198, 18, 255, 254),
            })
        );
        assert_eq!(at(&["198.18.0.0/15"]), None);
        assert_eq!(at(&["0.0.0.0/0"]), None);
    }

    #[test]
    fn probe_answers_decide_the_verdict() {
        let ports = [8089, 12088];
        let answers = |text: &str| parse_probe(text, &ports).unwrap();
        assert_eq!(
            judge_probe(&answers("9 refused\n12088 silent\n8089 silent\n"), &ports),
            ProbeVerdict::Closed
        );
        assert_eq!(
            judge_probe(&answers("9 open\n8089 silent\n12088 open\n"), &ports),
            ProbeVerdict::Open(vec![12088])
        );
        // A silent control port proves nothing about the others.
        assert_eq!(
            judge_probe(&answers("9 silent\n8089 silent\n12088 silent\n"), &ports),
            ProbeVerdict::Inconclusive(
                "the node did not answer the probe on unrestricted port 9 (no answer)".into()
            )
        );
        assert_eq!(
            judge_probe(&answers("9 refused\n8089 silent\n"), &ports),
            ProbeVerdict::Inconclusive("the probe gave no answer for port 12088".into())
        );
        let err = parse_probe("9 refused\n22 open\n", &ports).unwrap_err();
        assert_eq!(err.to_string(), "firewall probe printed \"22 open\"");
    }
}
