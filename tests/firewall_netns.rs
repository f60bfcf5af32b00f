//! The firewall by behaviour (issue 21, items 9 and 10): real nft in
//! network namespaces this test makes, never the machine's own network.
//!
//! A "node" namespace holds the node's address (a dummy link), Cube's
//! listeners, the cubeboot ruleset, and a DNAT rule modelling a port that
//! Docker publishes (upstream publishes the WebUI as <WEB_UI_HOST_PORT>:80)
//! to a listener in a "container" namespace behind a `br-…` bridge link.
//! The harden probe itself runs in the node namespace and must find every
//! restricted port refused from outside `allow_from`, published or not.
//!
//! Needs root, `nft` (nftables) and `ip` (iproute2); .ci/run installs both
//! and runs as root. Without them each test says why and passes.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cubeboot::firstboot::cube::firewall::{
    self, judge_probe, parse_probe, probe_command, PortAnswer, ProbeSource, ProbeVerdict,
};
use cubeboot::firstboot::host::CommandSpec;

/// The restricted ports harden passes today (src/firstboot/cube/harden.rs).
const PORTS: [u16; 7] = [8089, 9999, 9998, 3000, 12088, 9000, 9966];
/// Ports Docker publishes in the model, and where the DNAT sends them.
const PUBLISHED: [(u16, u16); 2] = [(12088, 80), (9000, 9000)];
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const CONTAINER_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const ALLOW: &str = "192.0.2.0/24";

/// The plan's `allow_from`: [`ALLOW`].
fn allow() -> Vec<cubeboot::net::Cidr> {
    vec![ALLOW.parse().unwrap()]
}

/// Why this machine cannot run the namespace tests, if it cannot.
fn cannot_run() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root: network namespaces need CAP_NET_ADMIN".into());
    }
    for (tool, arg, package) in [("nft", "--version", "nftables"), ("ip", "-V", "iproute2")] {
        if Command::new(tool).arg(arg).output().is_err() {
            return Some(format!("`{tool}` is missing (package {package})"));
        }
    }
    None
}

macro_rules! need_netns {
    () => {
        if let Some(why) = cannot_run() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

/// A network namespace with a name no other test or run uses, removed on drop.
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "cbfw-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }

    fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    /// Run `f` on a thread that lives in this namespace: sockets it makes
    /// belong here.
    fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    fn nft_file(&self, text: &str) -> std::process::Output {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.nft");
        std::fs::write(&file, text).unwrap();
        self.exec("nft").arg("-f").arg(&file).output().unwrap()
    }

    fn load(&self, text: &str) {
        let out = self.nft_file(text);
        assert!(
            out.status.success(),
            "{}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The harden probe, run as harden runs it but inside this namespace.
    fn probe(&self, probe_ns: &str, at: ProbeSource) -> Vec<(u16, PortAnswer)> {
        let cmd: CommandSpec = probe_command(probe_ns, NODE_IP, at, &PORTS);
        let out = self.exec(&cmd.program).args(&cmd.args).output().unwrap();
        assert!(
            out.status.success(),
            "probe: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_probe(&String::from_utf8_lossy(&out.stdout), &PORTS).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The modelled node, its container and their listeners (kept open).
struct Node {
    node: Netns,
    container: Netns,
    _uplink: Netns,
    _listeners: Vec<TcpListener>,
}

fn node_with_published_ports() -> Node {
    let node = Netns::new("node");
    let container = Netns::new("ctr");
    let uplink = Netns::new("net");
    let n = node.0.as_str();
    // The node's address on its uplink (the peer end stays unused: this
    // kernel may lack the dummy link type).
    ip(&[
        "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", "uplink0", "netns",
        &uplink.0,
    ]);
    ip(&[
        "-n",
        n,
        "addr",
        "add",
        &format!("{NODE_IP}/24"),
        "dev",
        "eth0",
    ]);
    ip(&["-n", n, "link", "set", "eth0", "up"]);
    // The container's link on the node is named as Docker's bridges are.
    ip(&[
        "-n",
        n,
        "link",
        "add",
        "br-cbfw",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &container.0,
    ]);
    ip(&["-n", n, "addr", "add", "172.30.0.1/24", "dev", "br-cbfw"]);
    ip(&["-n", n, "link", "set", "br-cbfw", "up"]);
    let c = container.0.as_str();
    ip(&[
        "-n",
        c,
        "addr",
        "add",
        &format!("{CONTAINER_IP}/24"),
        "dev",
        "eth0",
    ]);
    ip(&["-n", c, "link", "set", "eth0", "up"]);
    ip(&["-n", c, "route", "add", "default", "via", "172.30.0.1"]);
    run(node.exec("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
    // Docker's published ports: DNAT at dstnat for local destinations
    // (its DOCKER chain, `-m addrtype --dst-type LOCAL`), then forward.
    let dnat: String = PUBLISHED
        .iter()
        .map(|(host, to)| {
            format!("    fib daddr type local tcp dport {host} dnat to {CONTAINER_IP}:{to}\n")
        })
        .collect();
    node.load(&format!(
        "table ip dockermodel {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{dnat}  }}\n}}\n"
    ));
    // Cube's own listeners on the node IP, the published ones in the container.
    let mut listeners: Vec<TcpListener> = node.within(|| {
        PORTS
            .iter()
            .filter(|p| !PUBLISHED.iter().any(|(h, _)| h == *p))
            .map(|p| TcpListener::bind((NODE_IP, *p)).unwrap())
            .collect()
    });
    listeners.extend(container.within(|| {
        PUBLISHED
            .iter()
            .map(|(_, to)| TcpListener::bind((Ipv4Addr::UNSPECIFIED, *to)).unwrap())
            .collect::<Vec<_>>()
    }));
    Node {
        node,
        container,
        _uplink: uplink,
        _listeners: listeners,
    }
}

fn connects(ns: &Netns, to: SocketAddr) -> bool {
    ns.within(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok())
}

#[test]
fn every_restricted_port_is_refused_from_outside_allow_from_published_or_not() {
    need_netns!();
    let m = node_with_published_ports();
    let outside = firewall::probe_source(&allow()).unwrap();
    let inside = ProbeSource {
        gateway: Ipv4Addr::new(192, 0, 2, 1),
        source: Ipv4Addr::new(192, 0, 2, 2),
    };
    let probe_ns = format!("{}-probe", m.node.0);

    // The model is live: without any firewall every port answers, the
    // published ones through Docker's DNAT.
    let before = m.node.probe(&probe_ns, outside);
    assert_eq!(
        judge_probe(&before, &PORTS),
        ProbeVerdict::Open(PORTS.to_vec()),
        "{before:?}"
    );

    m.node.load(&firewall::firewall_ruleset(&allow(), &PORTS));

    let after = m.node.probe(&probe_ns, outside);
    assert_eq!(
        judge_probe(&after, &PORTS),
        ProbeVerdict::Closed,
        "{after:?}"
    );
    for port in PORTS {
        assert!(
            after.contains(&(port, PortAnswer::Silent)),
            "port {port}: {after:?}"
        );
    }

    // allow_from (compute nodes, operators) still reaches every port.
    let allowed = m.node.probe(&probe_ns, inside);
    for port in PORTS {
        assert!(
            allowed.contains(&(port, PortAnswer::Open)),
            "port {port} from {ALLOW}: {allowed:?}"
        );
    }
    // The node's own traffic, on loopback's path and to its own address.
    assert!(connects(&m.node, SocketAddr::from((NODE_IP, 8089))));
    assert!(connects(&m.node, SocketAddr::from((NODE_IP, 3000))));
    // A container reaches CubeAPI on the node (the WebUI through
    // host.docker.internal, network-hardening.md).
    assert!(connects(&m.container, SocketAddr::from((NODE_IP, 3000))));
}

/// Debian's nftables.service (package nftables), which an operator may enable.
const NFTABLES_UNIT: &str = "/lib/systemd/system/nftables.service";

/// The `KEY=` lines of a unit's text, in order.
fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn an_operator_starting_nftables_service_keeps_our_table() {
    need_netns!();
    let debian = std::fs::read_to_string(NFTABLES_UNIT)
        .expect("nftables.service comes with the nftables package");
    let conf = std::fs::read_to_string("/etc/nftables.conf").unwrap();
    // What makes the case: Debian's service starts and reloads by
    // flushing every table, ours included.
    assert!(conf.contains("flush ruleset"), "{conf}");
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("firewall.nft");
    std::fs::write(&ours, firewall::firewall_ruleset(&allow(), &PORTS)).unwrap();
    let here = |line: &str| line.replace(firewall::FIREWALL_PATH, &ours.display().to_string());
    let dropin = firewall::nftables_dropin();
    // systemd's order for a start: our unit at boot (After=nftables.service
    // when both start), or ours already loaded when the operator starts
    // nftables later; then ExecStart, then every ExecStartPost (the drop-in
    // appends). A reload runs every ExecReload in order.
    let start: Vec<String> = directive(&debian, "ExecStart")
        .into_iter()
        .chain(directive(&dropin, "ExecStartPost"))
        .map(here)
        .collect();
    let reload: Vec<String> = directive(&debian, "ExecReload")
        .into_iter()
        .chain(directive(&dropin, "ExecReload"))
        .map(here)
        .collect();
    for (what, lines) in [("start", &start), ("reload", &reload)] {
        let ns = Netns::new("svc");
        let unit_start = here(directive(&firewall::firewall_unit(), "ExecStart")[0]);
        for line in std::iter::once(&unit_start).chain(lines.iter()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let out = ns.exec(words[0]).args(&words[1..]).output().unwrap();
            assert!(
                out.status.success(),
                "{line}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let listed = ns
            .exec("nft")
            .args(["list", "table", "inet", "cubeboot"])
            .output()
            .unwrap();
        assert!(
            listed.status.success(),
            "after nftables.service {what} ({lines:?}) the cubeboot table is gone: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
    }
}

#[test]
fn our_unit_boots_after_nftables_service_without_a_cycle() {
    if !std::path::Path::new(NFTABLES_UNIT).exists() {
        eprintln!("SKIPPED: {NFTABLES_UNIT} is missing (package nftables)");
        return;
    }
    // ExecStart must exist for verify; ours reads a file only the node has.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let unit = firewall::firewall_unit();
    std::fs::write(d.join(firewall::FIREWALL_UNIT), &unit).unwrap();
    let dropin_dir = d.join("nftables.service.d");
    std::fs::create_dir_all(&dropin_dir).unwrap();
    std::fs::write(
        dropin_dir.join("cubeboot.conf"),
        firewall::nftables_dropin(),
    )
    .unwrap();
    // Both enabled: ours as its [Install] says, nftables.service as an
    // operator's `systemctl enable nftables` does (WantedBy=sysinit.target).
    for (target, name, path) in [
        (
            "multi-user.target.wants",
            firewall::FIREWALL_UNIT,
            d.join(firewall::FIREWALL_UNIT),
        ),
        (
            "sysinit.target.wants",
            "nftables.service",
            NFTABLES_UNIT.into(),
        ),
    ] {
        std::fs::create_dir_all(d.join(target)).unwrap();
        std::os::unix::fs::symlink(path, d.join(target).join(name)).unwrap();
    }
    assert_eq!(
        directive(&unit, "WantedBy"),
        ["multi-user.target"],
        "{unit}"
    );
    let out = Command::new("systemd-analyze")
        .args(["verify", "multi-user.target"])
        // A trailing colon keeps the system's unit directories after ours.
        .env("SYSTEMD_UNIT_PATH", format!("{}:", d.display()))
        .output()
        .expect("systemd-analyze (package systemd) is needed");
    let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| {
            l.contains("cubeboot") || l.contains("nftables") || l.contains("ordering cycle")
        })
        .map(str::to_string)
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}");
    // Ours loads after nftables.service's flush when both start at boot.
    assert!(
        directive(&unit, "After")
            .iter()
            .any(|a| a.split_whitespace().any(|u| u == "nftables.service")),
        "{unit}"
    );
}
