//! The Cube stage against a temporary root and a scripted host. The
//! installer is the real fixture bundle (tests/fixtures/bundle), run for
//! real through bash with CUBE_SANDBOX_INSTALL_ROOT inside the temp root;
//! HTTP goes only to servers these tests start on 127.0.0.1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cubeboot::bundle_facts::{BundleFacts, BundleRole, CubeOpsFacts, Listener, RequiredEnv};
use cubeboot::digest::Sha256Digest;
use cubeboot::firstboot::cube::{self, verify::Endpoints};
use cubeboot::firstboot::host::{under_root, CmdOutput, CommandSpec, Host, ScriptedHost};
use cubeboot::firstboot::journal::{DnsmasqMode, Journal, KvmInUse, Quickcheck};
use cubeboot::firstboot::{Ctx, Outcome, StepFailure};
use cubeboot::plan::testing::sample_plan;
use cubeboot::plan::*;

/// The fixture bundles (tests/fixtures/bundle/README.md): PLAIN, PITFALL and
/// HANG model a bundle with CubeOps, PRE_CUBEOPS one from before it.
const PLAIN: &str = "tests/fixtures/bundle/cube-sandbox-one-click-v0.0.0-fixture-amd64.tar.gz";
const PRE_CUBEOPS: &str =
    "tests/fixtures/bundle/cube-sandbox-one-click-v0.0.0-fixture-precubeops-amd64.tar.gz";
const ARM64: &str = "tests/fixtures/bundle/cube-sandbox-one-click-v0.0.0-fixture-arm64.tar.gz";
const PITFALL: &str =
    "tests/fixtures/bundle/cube-sandbox-one-click-v0.0.0-fixture-pitfall-amd64.tar.gz";
const HANG: &str = "tests/fixtures/bundle/cube-sandbox-one-click-v0.0.0-fixture-hang-amd64.tar.gz";
const TOOLBOX: &str = "/usr/local/services/cubetoolbox";
/// The cluster's ops-agent token in these tests' plans (a secret).
const OPS_TOKEN: &str = "opsagent-7f3c9a1e5b2d4c86";

const IP_ADDR: &str = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
 {"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet","local":"10.0.2.15","prefixlen":24,"scope":"global"}]}]"#;
const IP_ROUTE: &str = r#"[{"dst":"default","gateway":"10.0.2.2","dev":"eth0"},{"dst":"10.0.2.0/24","dev":"eth0","prefsrc":"10.0.2.15"}]"#;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn plan_for(bundle_rel: &str) -> Plan {
    let bytes = std::fs::read(repo(bundle_rel)).unwrap();
    let name = Path::new(bundle_rel)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // The shared sample plan, with this stage's fixture bundle and budgets
    // small enough for tests.
    let mut plan = sample_plan();
    plan.generator = "cubeboot test".into();
    plan.target.bootloader.dropin_dir = None;
    plan.target.quirks = Quirks::default();
    plan.assets.kernel = Asset {
        name: "k.deb".into(),
        urls: vec!["file:///k.deb".into()],
        sha256: Sha256Digest::of(b"k"),
        size: 1,
    };
    plan.assets.bundle = Asset {
        name,
        urls: vec![format!("file:///{bundle_rel}")],
        sha256: Sha256Digest::of(&bytes),
        size: bytes.len() as u64,
    };
    plan.kernel.kver = "6.6.69-opencloudos9.cubesandbox.pvm.host-gfixture1".into();
    plan.kernel.package = "linux-image".into();
    plan.kernel.package_version = "1".into();
    plan.cube.install_timeout_secs = 120;
    plan.cube.loopback_size_gib = 1;
    // What `cubeboot lock` records for a bundle with CubeOps, and the
    // cluster's token build puts beside it.
    if bundle_rel != PRE_CUBEOPS {
        plan.cube.bundle = Some(cubeops_facts(3010));
        plan.cube.ops_token = Some(OPS_TOKEN.into());
    }
    plan
}

/// The facts of the fixture bundles with CubeOps (tests/fixtures/bundle/
/// README.md), with CubeOps on `ops_port`.
fn cubeops_facts(ops_port: u16) -> BundleFacts {
    let listener = |service: &str, port, role, bind_env: Option<&str>| Listener {
        service: service.into(),
        port,
        role,
        bind_env: bind_env.map(Into::into),
    };
    BundleFacts {
        version: "v0.0.0-fixture".into(),
        arch: "amd64".into(),
        pvm_version: Some("6.6.69-opencloudos9.cubesandbox.pvm.host-gfixture1".into()),
        cube_ops: Some(CubeOpsFacts {
            port: ops_port,
            registration_path: "/internal/v1/nodes/{ip}".into(),
        }),
        required_env: vec![RequiredEnv {
            key: "CUBE_OPS_OPSAGENT_TOKEN".into(),
            role: BundleRole::Compute,
            source: "scripts/systemd/prepare-compute-role.sh".into(),
        }],
        listeners: vec![
            listener(
                "CubeOps",
                ops_port,
                BundleRole::Control,
                Some("CUBE_OPS_BIND"),
            ),
            listener("cube-lifecycle-manager", 8083, BundleRole::Control, None),
            listener("ops-agent", 8890, BundleRole::All, None),
        ],
        unknown: Vec::new(),
    }
}

/// Run a command on this machine for real (tests may; the helper may not).
fn run_real(c: &CommandSpec, root: &Path, extra: &[(&str, String)]) -> anyhow::Result<CmdOutput> {
    let mut cmd = std::process::Command::new(&c.program);
    cmd.args(&c.args).envs(&c.env).stdin(Stdio::null());
    if let Some(cwd) = &c.cwd {
        cmd.current_dir(under_root(root, cwd));
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    Ok(CmdOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        timed_out: false,
    })
}

/// A host whose root holds the cached bundle, a PVM kernel state, and whose
/// `timeout … install.sh` runs the fixture installer for real.
fn host_with_bundle(dir: &Path, plan: &Plan, bundle_rel: &str, ip_addr: &str) -> ScriptedHost {
    let host = ScriptedHost::new(dir);
    host.put(
        &format!("/var/lib/cubeboot/cache/{}", plan.assets.bundle.sha256),
        std::fs::read(repo(bundle_rel)).unwrap(),
    );
    host.put(
        "/proc/modules",
        "kvm_pvm 102400 0 - Live 0x0\nkvm 1138688 1 kvm_pvm, Live 0x0\n",
    );
    host.put("/dev/kvm", "");
    host.put("/etc/resolv.conf", "nameserver 10.0.2.3\n");
    host.put("/data/log/CubeAPI/cube-api.log", "cube-api: starting\n");
    let addr = ip_addr.to_string();
    host.on(move |c| {
        (c.program == "ip" && c.args == ["-j", "addr"]).then(|| Ok(CmdOutput::ok(addr.clone())))
    });
    host.on(|c| {
        (c.program == "ip" && c.args == ["-j", "route"]).then(|| Ok(CmdOutput::ok(IP_ROUTE)))
    });
    host.on_program("journalctl", CmdOutput::ok("-- No entries --\n"));
    let root = dir.to_path_buf();
    host.on(move |c| (c.program == "timeout").then(|| run_real(c, &root, &fixture_env(&root))));
    model_services(&host, dir);
    host
}

/// The fixture's service stand-ins as systemd would run them: Cubelet is
/// active, and `systemctl restart` re-runs the installed services script,
/// which re-reads config.toml and rewrites the sockets in <root>/proc/net.
/// `nft list` shows the ruleset last loaded with `nft -f`.
fn model_services(host: &ScriptedHost, dir: &Path) {
    host.on_program("systemctl", CmdOutput::ok(""));
    host.put("/usr/sbin/nft", "");
    host.on_program("nft", CmdOutput::ok(""));
    let root = dir.to_path_buf();
    host.on(move |c| {
        (c.program == "systemctl" && c.args.first().map(String::as_str) == Some("restart")).then(
            || {
                run_real(
                    &CommandSpec::new("bash").args([
                        under_root(&root, &format!("{TOOLBOX}/fixture/services.sh"))
                            .display()
                            .to_string(),
                        "restart".into(),
                    ]),
                    &root,
                    &fixture_env(&root),
                )
            },
        )
    });
    host.on(|c| {
        (c.program == "systemctl" && c.args.first().map(String::as_str) == Some("is-active"))
            .then(|| Ok(CmdOutput::ok("active\n")))
    });
    let loaded = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = loaded.clone();
    let probed = loaded.clone();
    host.on(move |c| {
        (c.program == "nft" && c.args.first().map(String::as_str) == Some("-f")).then(|| {
            *seen.lock().unwrap() = std::fs::read_to_string(&c.args[1]).unwrap();
            Ok(CmdOutput::ok(""))
        })
    });
    host.on(move |c| {
        (c.program == "nft" && c.args.first().map(String::as_str) == Some("list"))
            .then(|| Ok(CmdOutput::ok(loaded.lock().unwrap().clone())))
    });
    host.on(move |c| {
        probe_ports(c).map(|ports| {
            Ok(CmdOutput::ok(probe_answers(
                &ports,
                &probed.lock().unwrap(),
            )))
        })
    });
}

/// A plain control node whose plan admits 10.0.2.0/24 through the firewall.
fn firewalled_node() -> Node {
    let mut node = Node::with_bundle(PLAIN, IP_ADDR);
    node.plan.cube.allow_from = vec!["10.0.2.0/24".parse().unwrap()];
    node
}

/// Answer the firewall probe with `answers(ports)` from now on.
fn answer_probe(host: &ScriptedHost, answers: fn(&[u16]) -> String) {
    host.on(move |c| probe_ports(c).map(|ports| Ok(CmdOutput::ok(answers(&ports)))));
}

/// The ports the harden firewall probe asks about (control port first),
/// when `c` is that probe.
fn probe_ports(c: &CommandSpec) -> Option<Vec<u16>> {
    (c.program == "bash" && c.args.get(2).map(String::as_str) == Some("cubeboot-firewall-probe"))
        .then(|| c.args[10..].iter().map(|p| p.parse().unwrap()).collect())
}

/// The probe's answer from outside allow_from, modelled on the ruleset
/// last loaded (tests/firewall_netns.rs runs the real probe against real
/// nft): the control port is refused; a port the prerouting chain's last
/// rule drops is silent, any other port accepts.
fn probe_answers(ports: &[u16], loaded: &str) -> String {
    let drops = loaded
        .split("chain prerouting")
        .nth(1)
        .and_then(|chain| chain.lines().find(|l| l.trim_end().ends_with("drop")))
        .unwrap_or("");
    let mut out = format!("{} refused\n", ports[0]);
    for p in &ports[1..] {
        let dropped = drops
            .split(|ch: char| !ch.is_ascii_digit())
            .any(|w| w == p.to_string());
        out.push_str(&format!(
            "{p} {}\n",
            if dropped { "silent" } else { "open" }
        ));
    }
    out
}

/// What the fixture needs to run in a temp root with modelled sockets.
fn fixture_env(root: &Path) -> Vec<(&'static str, String)> {
    vec![
        (
            "CUBE_SANDBOX_INSTALL_ROOT",
            under_root(root, TOOLBOX).display().to_string(),
        ),
        ("ONE_CLICK_FIXTURE_ALLOW_NONROOT", "1".into()),
        (
            "ONE_CLICK_FIXTURE_PROC_NET",
            under_root(root, "/proc/net").display().to_string(),
        ),
    ]
}

/// A network made of the node's modelled sockets: a GET answers when a
/// listener in <root>/proc/net accepts its address, as a real service would.
fn model_get(host: &ScriptedHost) -> impl Fn(&str) -> anyhow::Result<String> + '_ {
    move |url: &str| {
        let hostport = url
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .unwrap();
        let (addr, port) = hostport.rsplit_once(':').unwrap();
        let addr: std::net::IpAddr = addr.trim_matches(|c| c == '[' || c == ']').parse()?;
        let port: u16 = port.parse()?;
        let ls = cube::listeners::read(host)?;
        if ls.iter().any(|l| l.port == port && l.accepts(addr)) {
            Ok("ok".into())
        } else {
            anyhow::bail!("connection refused")
        }
    }
}

/// A tiny HTTP server on 127.0.0.1: `answer(path, n)` gives status and body
/// for the n-th request (from 0). Returns the port and a request counter.
fn fake_server(
    answer: impl Fn(&str, usize) -> (u16, String) + Send + 'static,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Skip headers.
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_string();
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let (status, body) = answer(&path, n);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, count)
}

/// A named check as `ok: detail` / `fail: detail`.
fn check(journal: &Journal, name: &str) -> Option<String> {
    journal
        .checks
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, c)| format!("{}: {}", if c.ok { "ok" } else { "fail" }, c.detail))
}

fn failure_text(err: &anyhow::Error) -> String {
    err.downcast_ref::<StepFailure>()
        .map(|f| f.message.clone())
        .unwrap_or_else(|| format!("{err:#}"))
}

fn tar_listing(bytes: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        out.insert(name, s);
    }
    out
}

/// A node under test: its temporary root (deleted on drop), the plan it
/// runs and the scripted host on that root. A test changes the plan as its
/// scenario needs; the hosts read only the plan's bundle digest.
struct Node {
    dir: tempfile::TempDir,
    plan: Plan,
    host: ScriptedHost,
}

impl Node {
    /// A node with `bundle_rel` in the verified cache and the fixture
    /// installer behind it (see [`host_with_bundle`]); `ip_addr` is what
    /// `ip -j addr` shows.
    fn with_bundle(bundle_rel: &str, ip_addr: &str) -> Self {
        Self::new(plan_for(bundle_rel), |dir, plan| {
            host_with_bundle(dir, plan, bundle_rel, ip_addr)
        })
    }

    /// A node for the /data/cubelet step whose block devices are `lsblk`
    /// (see [`disk_host`]).
    fn for_disks(lsblk: &'static str) -> Self {
        Self::new(plan_for(PLAIN), |dir, _| disk_host(dir, lsblk))
    }

    /// A Debian node for the host prerequisites step (see [`prereq_host`]).
    fn for_prereqs() -> Self {
        Self::new(plan_for(PLAIN), |dir, _| prereq_host(dir))
    }

    /// A node with an empty root and no command answered yet.
    fn empty() -> Self {
        Self::new(plan_for(PLAIN), |dir, _| ScriptedHost::new(dir))
    }

    fn new(plan: Plan, host_on: impl FnOnce(&Path, &Plan) -> ScriptedHost) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = host_on(dir.path(), &plan);
        Self { dir, plan, host }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn ctx<'a>(&'a self, journal: &'a mut Journal) -> Ctx<'a> {
        ctx_on(&self.host, &self.plan, journal)
    }

    /// The .one-click.env the installer keeps in the toolbox.
    fn one_click_env(&self) -> String {
        self.host
            .read_string(&format!("{TOOLBOX}/.one-click.env"))
            .unwrap()
    }

    /// The command line the helper ran the installer with (`timeout … bash -c
    /// … install.sh …`).
    fn installer_command(&self) -> String {
        self.host
            .commands()
            .into_iter()
            .find(|c| c.contains("timeout"))
            .unwrap()
    }

    /// The data-disk step with `disk` in an otherwise unchanged plan.
    fn data_disk(&self, disk: DataDisk) -> anyhow::Result<Outcome> {
        let mut plan = self.plan.clone();
        plan.cube.data_disk = disk;
        let mut journal = Journal::new("test");
        cube::data_disk(&mut ctx_on(&self.host, &plan, &mut journal))
    }
}

/// What a step function takes, to run one step on `host`.
fn ctx_on<'a>(host: &'a dyn Host, plan: &'a Plan, journal: &'a mut Journal) -> Ctx<'a> {
    Ctx::new(host, plan, journal)
}

/// A fixture bundle unpacked into a temporary directory, for running its
/// installer directly (without the helper) into <dir>/toolbox.
struct UnpackedBundle {
    dir: tempfile::TempDir,
    installer: PathBuf,
}

impl UnpackedBundle {
    fn new(bundle_rel: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ar = std::fs::read(repo(bundle_rel)).unwrap();
        tar::Archive::new(flate2::read::GzDecoder::new(&ar[..]))
            .unpack(dir.path())
            .unwrap();
        // The archive holds one directory named as the archive.
        let name = Path::new(bundle_rel).file_name().unwrap().to_string_lossy();
        let installer = dir
            .path()
            .join(name.trim_end_matches(".tar.gz"))
            .join("install.sh");
        Self { dir, installer }
    }

    /// Where the installer installs (its CUBE_SANDBOX_INSTALL_ROOT).
    fn toolbox(&self) -> PathBuf {
        self.dir.path().join("toolbox")
    }

    /// `install.sh --node-ip=10.0.2.15 ARGS` with `env` added to what the
    /// fixture needs to run unprivileged.
    fn install(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        std::process::Command::new("bash")
            .arg(&self.installer)
            .arg("--node-ip=10.0.2.15")
            .args(args)
            .envs(env.iter().copied())
            .env("CUBE_SANDBOX_INSTALL_ROOT", self.toolbox())
            .env("ONE_CLICK_FIXTURE_ALLOW_NONROOT", "1")
            .output()
            .unwrap()
    }
}

/// The guest kernel the installed toolbox's `vmlinux` link names.
fn guest_kernel(host: &dyn Host) -> Option<String> {
    host.read_link(&format!("{TOOLBOX}/cube-kernel-scf/vmlinux"))
        .unwrap()
}

/// A journal whose kernel stage ended with the PVM kernel's KVM in use.
fn pvm_journal() -> Journal {
    let mut journal = Journal::new("test");
    journal.facts.kvm_mode = Some(KvmInUse::Pvm);
    journal
}

#[test]
fn env_pitfall_bundle_still_ends_pvm_enabled_and_verified() {
    let mut node = Node::with_bundle(PITFALL, IP_ADDR);
    node.plan.cube.allow_from = vec!["10.0.2.0/24".parse().unwrap()];
    let mut journal = pvm_journal();
    let mut ctx = node.ctx(&mut journal);

    let out = cube::install(&mut ctx).unwrap();
    assert_eq!(
        out,
        Outcome::Done("installed the control role at 10.0.2.15 (CUBE_PVM_ENABLE=1)".into())
    );
    // State, not log text: the .env's CUBE_PVM_ENABLE=0 did not win.
    let env = node.one_click_env();
    assert!(env.contains("\nCUBE_PVM_ENABLE=1\n"), "{env}");
    assert!(
        !env.lines().any(|l| l.starts_with("CUBE_PVM_ENABLE=0")),
        "{env}"
    );
    // The bundle's own .env was defused in place.
    let bundle_env = node
        .host
        .read_string(&format!(
            "/var/lib/cubeboot/bundle-{}/cube-sandbox-one-click-v0.0.0-fixture-pitfall-amd64/.env",
            node.plan.assets.bundle.sha256
        ))
        .unwrap();
    assert!(
        bundle_env.contains("\nCUBE_PVM_ENABLE=1\nONE_CLICK_DEPLOY_ROLE=control\n"),
        "{bundle_env}"
    );
    assert!(env.contains("CUBEMASTER_HTTP_BIND=10.0.2.15\n"), "{env}");
    // The installer's own quickcheck probes ${CUBEMASTER_ADDR:-127.0.0.1:8089};
    // a CubeMaster bound to the node IP only answers there if it is set too.
    assert!(env.contains("CUBEMASTER_ADDR=10.0.2.15:8089\n"), "{env}");
    assert_eq!(ctx.journal.facts.installer_quickcheck, Some(Quickcheck::Ok));
    assert_eq!(guest_kernel(&node.host).as_deref(), Some("vmlinux-pvm"));
    assert_eq!(ctx.journal.facts.node_ip, "10.0.2.15".parse().ok());
    let log = node.host.read_string(cube::INSTALL_LOG).unwrap();
    assert!(
        log.contains("[one-click] install complete (role=control)"),
        "{log}"
    );
    assert!(node
        .host
        .said()
        .iter()
        .any(|l| l == "install | [one-click] install complete (role=control)"));

    // Credentials: generated, root-only, never on a command line or in the outcome.
    let creds = node.host.read_string(cube::CREDENTIALS_PATH).unwrap();
    let redis = creds
        .lines()
        .find_map(|l| l.strip_prefix("CUBE_SANDBOX_REDIS_PASSWORD="))
        .unwrap()
        .to_string();
    assert_eq!(redis.len(), 40);
    assert!(env.contains(&format!("CUBE_SANDBOX_REDIS_PASSWORD={redis}")));
    assert!(node.host.commands().iter().all(|c| !c.contains(&redis)));

    // Verify, with the health endpoints on a fake CubeAPI/CubeMaster.
    let (port, _) = fake_server(|path, _| match path {
        "/health" | "/notify/health" => (200, "ok".into()),
        _ => (404, String::new()),
    });
    let endpoints = Endpoints {
        cube_api: Some(format!("http://127.0.0.1:{port}/health")),
        cube_master: Some(format!("http://127.0.0.1:{port}/notify/health")),
        registration: None,
        node_ip: "10.0.2.15".into(),
    };
    let out = cube::verify::verify_with_probe(
        &mut ctx,
        &endpoints,
        Duration::from_secs(30),
        &cube::http::get,
    )
    .unwrap();
    assert_eq!(out, Outcome::Done("6 checks passed".into()));
    assert_eq!(
        check(ctx.journal, "one-click-env").as_deref(),
        Some("ok: CUBE_PVM_ENABLE=1")
    );
    assert_eq!(
        check(ctx.journal, "guest-kernel").as_deref(),
        Some("ok: vmlinux -> vmlinux-pvm")
    );
    assert_eq!(
        check(ctx.journal, "kvm-module").as_deref(),
        Some("ok: kvm_pvm loaded")
    );

    // Verify where the services really listen (the model network answers
    // only where a socket accepts): CubeMaster and CubeAPI on the node IP.
    let out = cube::verify::run_with_probe(&mut ctx, &model_get(&node.host)).unwrap();
    assert_eq!(out, Outcome::Done("6 checks passed".into()));
    assert_eq!(
        check(ctx.journal, "cube-master").as_deref(),
        Some("ok: http://10.0.2.15:8089/notify/health answers")
    );

    // Harden: Cubelet binds (upstream's port-only form), firewall, credentials.
    let listening = |port: u16| -> Vec<String> {
        cube::listeners::on_port(&cube::listeners::read(&node.host).unwrap(), port)
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(listening(9998), ["[::]:9998"]);
    let out = cube::harden(&mut ctx).unwrap();
    assert_eq!(
        out,
        Outcome::Done("CubeMaster on 10.0.2.15:8089, CubeAPI on 10.0.2.15:3000; Cubelet listens on 10.0.2.15:9998,9999 and 127.0.0.1:9966; ports 8089,9999,9998,3000,12088,9000,9966,3010,8890,8083 only from 10.0.2.0/24 (probed: refused from outside); credentials in /etc/cubeboot/credentials.env".into())
    );
    let cfg = node
        .host
        .read_string(&format!("{TOOLBOX}/Cubelet/config/config.toml"))
        .unwrap();
    assert!(cfg.contains("tcp_address = \"10.0.2.15:9999\""), "{cfg}");
    assert!(cfg.contains("address = \"10.0.2.15:9998\""), "{cfg}");
    assert!(cfg.contains("address = \"127.0.0.1:9966\""), "{cfg}");
    assert!(
        cfg.contains("address = \"/data/cubelet/cubelet.sock\""),
        "{cfg}"
    );
    // What listens after the restart, not what the file says.
    assert_eq!(listening(9998), ["10.0.2.15:9998"]);
    assert_eq!(listening(9999), ["10.0.2.15:9999"]);
    assert_eq!(listening(9966), ["127.0.0.1:9966"]);
    let fw = node
        .host
        .path("/etc/cubeboot/firewall.nft")
        .display()
        .to_string();
    let cmds = node.host.commands();
    assert!(cmds.contains(&format!("nft -c -f {fw}")), "{cmds:?}");
    assert!(cmds.contains(&"systemctl restart cube-sandbox-cubelet.service".to_string()));
    assert!(cmds.contains(&"systemctl enable cubeboot-firewall.service".to_string()));
}

#[test]
fn without_the_defusal_the_pitfall_bundle_would_disable_pvm() {
    // The control experiment for the test above: the same bundle, run with
    // only CUBE_PVM_ENABLE=1 exported, selects the ordinary guest kernel.
    let bundle = UnpackedBundle::new(PITFALL);
    let root = bundle.toolbox();
    let out = bundle.install(&[], &[("CUBE_PVM_ENABLE", "1")]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_link(root.join("cube-kernel-scf/vmlinux")).unwrap(),
        PathBuf::from("vmlinux-bm")
    );
}

#[test]
fn cidr_conflict_passes_another_range_to_the_installer() {
    let lan = r#"[{"ifname":"eth0","addr_info":[{"family":"inet","local":"192.168.10.7","prefixlen":24,"scope":"global"}]}]"#;
    let mut node = Node::with_bundle(PLAIN, lan);
    node.plan.cube.hardening = false;
    // A control node without the cluster's token: nothing secret for .env.
    node.plan.cube.ops_token = None;
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    cube::install(&mut ctx).unwrap();
    assert_eq!(
        ctx.journal.facts.network_cidr,
        "192.168.64.0/18".parse().ok()
    );
    assert_eq!(ctx.journal.facts.node_ip, "192.168.10.7".parse().ok());
    let env = node.one_click_env();
    assert!(
        env.contains("CUBE_SANDBOX_NETWORK_CIDR=192.168.64.0/18\n"),
        "{env}"
    );
    assert!(node.host.said().contains(
        &"sandbox network: 192.168.0.0/18 overlaps address 192.168.10.7/24; using 192.168.64.0/18"
            .to_string()
    ));
    // No hardening and no .env in the plain bundle: nothing written there.
    let extracted = format!(
        "/var/lib/cubeboot/bundle-{}",
        node.plan.assets.bundle.sha256
    );
    assert!(!node.host.exists(&format!(
        "{extracted}/cube-sandbox-one-click-v0.0.0-fixture-amd64/.env"
    )));
    assert!(node.host.exists(&format!(
        "{extracted}/cube-sandbox-one-click-v0.0.0-fixture-amd64/install.sh"
    )));
}

#[test]
fn hanging_installer_hits_the_timeout_and_leaves_diagnostics() {
    let mut node = Node::with_bundle(HANG, IP_ADDR);
    node.plan.cube.install_timeout_secs = 1;
    node.plan.cube.hardening = false;
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    let err = cube::install(&mut ctx).unwrap_err();
    let diag = "/var/log/cubeboot/diagnostics-1800000000.tar.gz";
    assert_eq!(
        failure_text(&err),
        format!("cube installer timed out after 1 s; log: /var/log/cubeboot/install.log (diagnostics: {diag})")
    );
    assert_eq!(
        err.downcast_ref::<StepFailure>().unwrap().hint.as_deref(),
        Some("the installer hung (CubeSandbox #1753: services that never start); see the diagnostics")
    );
    assert_eq!(ctx.journal.facts.diagnostics.as_deref(), Some(diag));
    let files = tar_listing(&node.host.read(diag).unwrap());
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        vec![
            "diagnostics/checks.txt",
            "diagnostics/data-log/CubeAPI/cube-api.log",
            "diagnostics/facts.txt",
            "diagnostics/install.log",
            "diagnostics/journalctl-cube-sandbox.txt",
            "diagnostics/reason.txt",
        ]
    );
    assert!(files["diagnostics/install.log"].contains("this fixture variant hangs here"));
    assert_eq!(
        files["diagnostics/journalctl-cube-sandbox.txt"],
        "-- No entries --\n"
    );
    assert_eq!(
        files["diagnostics/data-log/CubeAPI/cube-api.log"],
        "cube-api: starting\n"
    );
    assert!(node
        .host
        .commands()
        .contains(&"journalctl --no-pager -o short-iso -u 'cube-sandbox-*'".to_string()));
}

#[test]
fn compute_waits_for_the_control_plane_then_installs_and_registers() {
    let (port, requests) = fake_server(|path, n| match path {
        // Not ready for the first two probes.
        "/notify/health" if n < 2 => (503, "starting".into()),
        "/notify/health" => (200, "ok".into()),
        "/internal/meta/nodes/10.0.2.15" => {
            (200, r#"{"host_ip": "10.0.2.15", "healthy": true}"#.into())
        }
        _ => (404, String::new()),
    });
    // A bundle from before CubeOps: the node registers with CubeMaster.
    let mut node = Node::with_bundle(PRE_CUBEOPS, IP_ADDR);
    node.plan.cube.role = Role::Compute;
    node.plan.cube.control_plane_ip = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);

    cube::install(&mut ctx).unwrap();
    // Three waits by us, then the installer's quickcheck: health, registration.
    assert_eq!(requests.load(Ordering::SeqCst), 5);
    assert_eq!(
        ctx.journal.warnings,
        vec!["compute role without the control node's CUBE_S3_* (optional upstream): this node will have no S3 volume plugin (cubeboot build --s3-env)"]
    );
    let log = node.host.read_string(cube::INSTALL_LOG).unwrap();
    assert!(
        log.contains("[one-click] WARNING: CUBE_S3_* not set on this compute node (optional)"),
        "{log}"
    );
    let said = node.host.said();
    let waits: Vec<&String> = said
        .iter()
        .filter(|l| l.starts_with("control plane not answering yet"))
        .collect();
    assert_eq!(
        waits,
        vec![
            "control plane not answering yet (HTTP 503); waited 0 s of 1200 s",
            "control plane not answering yet (HTTP 503); waited 10 s of 1200 s",
        ]
    );
    let env = node.one_click_env();
    assert!(env.contains("ONE_CLICK_DEPLOY_ROLE=compute\n"), "{env}");
    assert!(
        env.contains(&format!(
            "ONE_CLICK_CONTROL_PLANE_CUBEMASTER_ADDR=127.0.0.1:{port}\n"
        )),
        "{env}"
    );
    // One name for the control plane: with a custom port only the address
    // (upstream's preflight dies when the IP form disagrees with it).
    assert!(!env.contains("ONE_CLICK_CONTROL_PLANE_IP"), "{env}");
    // A compute node gets no CubeMaster/CubeAPI binds and no credentials.
    assert!(!env.contains("CUBEMASTER_HTTP_BIND"), "{env}");
    assert!(!node.host.exists(cube::CREDENTIALS_PATH));

    let out = cube::verify(&mut ctx).unwrap();
    assert_eq!(out, Outcome::Done("5 checks passed".into()));
    assert_eq!(
        check(ctx.journal, "registered").as_deref(),
        Some(format!("ok: http://127.0.0.1:{port}/internal/meta/nodes/10.0.2.15 answers").as_str())
    );
}

#[test]
fn compute_gives_up_when_the_control_plane_never_answers() {
    let (port, requests) = fake_server(|_, _| (503, "down".into()));
    let mut node = Node::with_bundle(PLAIN, IP_ADDR);
    node.plan.cube.role = Role::Compute;
    node.plan.cube.control_plane_ip = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    let err = cube::install(&mut ctx).unwrap_err();
    assert_eq!(
        failure_text(&err),
        format!("control plane http://127.0.0.1:{port}/notify/health did not answer within 1200 s: HTTP 503 (diagnostics: /var/log/cubeboot/diagnostics-1800001200.tar.gz)")
    );
    assert_eq!(requests.load(Ordering::SeqCst), 121);
    // The wait is the plan's (cubeboot build --control-plane-wait).
    node.plan.cube.control_plane_wait_secs = 60;
    let mut ctx = node.ctx(&mut journal);
    let err = cube::install(&mut ctx).unwrap_err();
    assert!(
        failure_text(&err).contains("did not answer within 60 s: HTTP 503"),
        "{err:#}"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 121 + 7);
    // The installer never ran.
    assert!(!node
        .host
        .commands()
        .iter()
        .any(|c| c.starts_with("timeout ")));
}

#[test]
fn verification_fails_by_state_and_names_each_check() {
    let node = Node::empty();
    node.host.on_program("journalctl", CmdOutput::ok(""));
    node.host
        .put(&format!("{TOOLBOX}/.one-click.env"), "CUBE_PVM_ENABLE=0\n");
    node.host
        .put(&format!("{TOOLBOX}/cube-kernel-scf/vmlinux-bm"), "bm");
    std::os::unix::fs::symlink(
        "vmlinux-bm",
        node.host
            .path(&format!("{TOOLBOX}/cube-kernel-scf/vmlinux")),
    )
    .unwrap();
    node.host.put("/proc/modules", "kvm_intel 1 0 - Live 0x0\n");
    let mut journal = pvm_journal();
    let mut ctx = node.ctx(&mut journal);
    let endpoints = Endpoints {
        cube_api: Some("http://127.0.0.1:9/health".into()),
        cube_master: None,
        registration: None,
        node_ip: "10.0.2.15".into(),
    };
    let err = cube::with_diagnostics(&mut ctx, |ctx| {
        cube::verify::verify_with_probe(ctx, &endpoints, Duration::from_secs(20), &cube::http::get)
    })
    .unwrap_err();
    assert_eq!(
        failure_text(&err),
        "cube verification failed: one-click-env, guest-kernel, kvm-module, dev-kvm, cube-api (diagnostics: /var/log/cubeboot/diagnostics-1800000020.tar.gz)"
    );
    let f = |k: &str| check(ctx.journal, k).unwrap();
    assert_eq!(f("one-click-env"), "fail: CUBE_PVM_ENABLE=0, expected 1");
    assert_eq!(
        f("guest-kernel"),
        "fail: vmlinux -> vmlinux-bm, expected vmlinux-pvm"
    );
    assert_eq!(f("kvm-module"), "fail: kvm_pvm not in /proc/modules");
    assert_eq!(f("dev-kvm"), "fail: /dev/kvm is missing");
    assert!(f("cube-api").starts_with("fail: http://127.0.0.1:9/health: "));
    let files = tar_listing(
        &node
            .host
            .read("/var/log/cubeboot/diagnostics-1800000020.tar.gz")
            .unwrap(),
    );
    assert!(files["diagnostics/checks.txt"]
        .contains("one-click-env: FAIL: CUBE_PVM_ENABLE=0, expected 1\n"));
}

#[test]
fn native_kvm_installs_with_pvm_off() {
    let mut node = Node::with_bundle(PLAIN, IP_ADDR);
    node.plan.cube.hardening = false;
    node.plan.cube.mirror = Some(cubeboot::plan::InstallerMirror::Cn);
    let mut journal = Journal::new("test");
    journal.facts.kvm_mode = Some(KvmInUse::Native);
    let mut ctx = node.ctx(&mut journal);
    cube::install(&mut ctx).unwrap();
    let env = node.one_click_env();
    assert!(
        env.contains("CUBE_PVM_ENABLE=0\n") && env.contains("MIRROR=cn\n"),
        "{env}"
    );
    let cmd = node.installer_command();
    assert!(cmd.starts_with("CUBE_PVM_ENABLE=0 CUBE_SANDBOX_NODE_IP=10.0.2.15 MIRROR=cn ONE_CLICK_DEPLOY_ROLE=control timeout --kill-after=30 120 bash -c"), "{cmd}");
    assert!(
        cmd.ends_with("install.sh --node-ip=10.0.2.15 --mode=install"),
        "{cmd}"
    );
}

#[test]
fn a_tampered_cache_file_is_not_extracted() {
    let node = Node::with_bundle(PLAIN, IP_ADDR);
    node.host.put(
        &format!("/var/lib/cubeboot/cache/{}", node.plan.assets.bundle.sha256),
        b"evil",
    );
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    let err = cube::install(&mut ctx).unwrap_err();
    let sha = node.plan.assets.bundle.sha256;
    assert_eq!(
        failure_text(&err),
        format!(
            "bundle /var/lib/cubeboot/cache/{sha} does not match the plan: computed sha256 {} but expected {sha} (diagnostics: /var/log/cubeboot/diagnostics-1800000000.tar.gz)",
            Sha256Digest::of(b"evil")
        )
    );
    assert!(!node.host.exists(&format!("/var/lib/cubeboot/bundle-{sha}")));
    assert!(!node
        .host
        .commands()
        .iter()
        .any(|c| c.contains("install.sh")));
}

// ---- /data/cubelet ----

const LSBLK_ROOT_AND_EMPTY: &str = r#"{"blockdevices":[
  {"name":"vda","type":"disk","size":21474836480,"fstype":null,"mountpoint":null,"pttype":"gpt","children":[
    {"name":"vda1","type":"part","size":21473787392,"fstype":"ext4","mountpoint":"/","pttype":"gpt"}]},
  {"name":"vdb","type":"disk","size":107374182400,"fstype":null,"mountpoint":null,"pttype":null}]}"#;

fn disk_host(dir: &Path, lsblk: &'static str) -> ScriptedHost {
    let host = ScriptedHost::new(dir);
    host.put("/proc/self/mounts", "/dev/vda1 / ext4 rw,relatime 0 0\n");
    host.put("/etc/fstab", "UUID=aaaa / ext4 defaults 0 1\n");
    host.on(move |c| (c.program == "lsblk").then(|| Ok(CmdOutput::ok(lsblk))));
    host.on(|c| {
        (c.program == "systemctl" && c.args == ["daemon-reload"]).then(|| Ok(CmdOutput::ok("")))
    });
    // mount(8) reads our fstab line; the fake mounts what it names.
    let root = dir.to_path_buf();
    host.on(move |c| {
        (c.program == "mount").then(|| {
            let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
            // Like mount(8): comment lines are not entries.
            let line = fstab
                .lines()
                .find(|l| !l.trim_start().starts_with('#') && l.contains(" /data/cubelet "))
                .unwrap();
            let source = line.split_whitespace().next().unwrap();
            let mounts = root.join("proc/self/mounts");
            let mut m = std::fs::read_to_string(&mounts).unwrap();
            m.push_str(&format!("{source} /data/cubelet xfs rw 0 0\n"));
            std::fs::write(&mounts, m).unwrap();
            Ok(CmdOutput::ok(""))
        })
    });
    host
}

#[test]
fn existing_xfs_at_the_nearest_mount_is_kept() {
    let node = Node::for_disks(LSBLK_ROOT_AND_EMPTY);
    node.host.put(
        "/proc/self/mounts",
        "/dev/vda1 / ext4 rw 0 0\n/dev/vdc /data xfs rw 0 0\n",
    );
    assert_eq!(
        node.data_disk(DataDisk::Auto).unwrap(),
        Outcome::Skipped("/data/cubelet is already on XFS (/dev/vdc at /data)".into())
    );
    assert!(node.host.commands().is_empty());
}

#[test]
fn disks_with_data_are_never_formatted() {
    let table: [(&'static str, &str, &str); 3] = [
        (
            r#"{"blockdevices":[{"name":"vdb","type":"disk","size":1,"fstype":null,"mountpoint":null,"pttype":"gpt"}]}"#,
            "/dev/vdb",
            "refusing to format /dev/vdb: it has a partition table (gpt)",
        ),
        (
            r#"{"blockdevices":[{"name":"vdb","type":"disk","size":1,"fstype":"ext4","mountpoint":null,"pttype":null}]}"#,
            "/dev/vdb",
            "refusing to format /dev/vdb: it has a filesystem signature (ext4)",
        ),
        (
            LSBLK_ROOT_AND_EMPTY,
            "/dev/vda",
            "refusing to format /dev/vda: it is mounted (vda1 at /)",
        ),
    ];
    for (lsblk, dev, msg) in table {
        let node = Node::for_disks(lsblk);
        let err = node.data_disk(DataDisk::Device(dev.into())).unwrap_err();
        assert_eq!(failure_text(&err), msg);
        assert_eq!(
            node.host.commands(),
            vec!["lsblk -J -b -o NAME,TYPE,SIZE,FSTYPE,MOUNTPOINT,PTTYPE"]
        );
    }
}

#[test]
fn a_signature_lsblk_missed_stops_the_format() {
    let node = Node::for_disks(LSBLK_ROOT_AND_EMPTY);
    node.host.on(|c| {
        (c.program == "blkid").then(|| Ok(CmdOutput::ok("DEVNAME=/dev/vdb\nUUID=x\nTYPE=ext4\n")))
    });
    let err = node.data_disk(DataDisk::Auto).unwrap_err();
    assert_eq!(
        failure_text(&err),
        "refusing to format /dev/vdb: blkid found TYPE=ext4"
    );
    assert!(!node.host.commands().iter().any(|c| c.starts_with("mkfs")));
}

#[test]
fn auto_formats_the_one_empty_disk_and_mounts_it_by_uuid() {
    let node = Node::for_disks(LSBLK_ROOT_AND_EMPTY);
    node.host
        .on(|c| (c.program == "blkid" && c.args[0] == "-p").then(|| Ok(CmdOutput::failed(2, ""))));
    // mkfs.xfs writes the UUID it is given; blkid then reads it back.
    let made = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let m = made.clone();
    node.host.on(move |c| {
        (c.program == "mkfs.xfs").then(|| {
            let uuid = c.args.iter().find_map(|a| a.strip_prefix("uuid=")).unwrap();
            *m.lock().unwrap() = uuid.to_string();
            Ok(CmdOutput::ok(""))
        })
    });
    let m = made.clone();
    node.host.on(move |c| {
        (c.program == "blkid" && c.args[0] == "-s")
            .then(|| Ok(CmdOutput::ok(format!("{}\n", m.lock().unwrap()))))
    });
    node.host.on_program("wipefs", CmdOutput::ok(""));
    let out = node.data_disk(DataDisk::Auto).unwrap();
    let uuid = made.lock().unwrap().clone();
    assert_eq!(uuid.len(), 36, "{uuid}");
    assert_eq!(
        out,
        Outcome::Done(format!(
            "formatted /dev/vdb as XFS (UUID {uuid}) at /data/cubelet"
        ))
    );
    assert_eq!(
        node.host.commands(),
        vec![
            "lsblk -J -b -o NAME,TYPE,SIZE,FSTYPE,MOUNTPOINT,PTTYPE".to_string(),
            "blkid -p -o export /dev/vdb".into(),
            "wipefs -n /dev/vdb".into(),
            format!("mkfs.xfs -m reflink=1 -L cubelet -m uuid={uuid} /dev/vdb"),
            "blkid -s UUID -o value /dev/vdb".into(),
            "systemctl daemon-reload".into(),
            "mount /data/cubelet".into(),
        ]
    );
    assert_eq!(
        node.host.read_string("/etc/fstab").unwrap(),
        format!("UUID=aaaa / ext4 defaults 0 1\n# cubeboot: /data/cubelet on XFS for Cube Sandbox\nUUID={uuid} /data/cubelet xfs defaults,nofail 0 2\n")
    );
    // A second run finds XFS and leaves everything alone.
    assert!(matches!(
        node.data_disk(DataDisk::Auto).unwrap(),
        Outcome::Skipped(_)
    ));

    // The step runs before the reboot. A new kernel that could not mount the
    // `nofail` line boots without it; cube-install mounts it again first.
    cube::disk::remount_after_reboot(&node.host).unwrap();
    let mounts_before = node.host.commands().len();
    node.host
        .put("/proc/self/mounts", "/dev/vda1 / ext4 rw,relatime 0 0\n");
    cube::disk::remount_after_reboot(&node.host).unwrap();
    assert_eq!(
        node.host.commands()[mounts_before..],
        ["systemctl daemon-reload", "mount /data/cubelet"]
    );
    let mounts = node.host.read_string("/proc/self/mounts").unwrap();
    assert!(
        mounts.contains(&format!("UUID={uuid} /data/cubelet xfs")),
        "{mounts}"
    );
}

#[test]
fn auto_with_no_spare_disk_refuses_a_loopback_the_root_cannot_hold() {
    // One disk, the root: auto falls back to a loopback image, which the
    // root's 5 GiB free cannot back at the plan's 50 GiB.
    const LSBLK_ROOT_ONLY: &str = r#"{"blockdevices":[
  {"name":"vda","type":"disk","size":21474836480,"fstype":null,"mountpoint":null,"pttype":"gpt","children":[
    {"name":"vda1","type":"part","size":21473787392,"fstype":"ext4","mountpoint":"/","pttype":"gpt"}]}]}"#;
    let mut node = Node::for_disks(LSBLK_ROOT_ONLY);
    node.host.set_free_bytes(Some(5 << 30));
    node.plan.cube.data_disk = DataDisk::Auto;
    node.plan.cube.loopback_size_gib = 50;
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    let err = cube::data_disk(&mut ctx).unwrap_err();
    let failure = err.downcast_ref::<StepFailure>().unwrap();
    assert_eq!(
        failure.to_string(),
        "auto found no single empty disk for /data/cubelet, and a 50 GiB loopback image does not fit the root filesystem (5 GiB free)"
    );
    assert!(
        failure
            .hint
            .as_deref()
            .unwrap()
            .contains("--data-disk loopback"),
        "{failure:?}"
    );
    assert!(!node.host.exists("/data/cubelet.img"));
    assert!(!node.host.commands().iter().any(|c| c.contains("mkfs")));
}

#[test]
fn loopback_is_a_real_sparse_xfs_image() {
    let mut node = Node::for_disks(LSBLK_ROOT_AND_EMPTY);
    let root = node.root().to_path_buf();
    for tool in ["truncate", "blkid", "mkfs.xfs"] {
        let root = root.clone();
        node.host
            .on(move |c| (c.program == tool).then(|| run_real(c, &root, &[])));
    }
    node.host.set_free_bytes(Some(512 << 20));
    node.plan.cube.data_disk = DataDisk::Loopback;
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    let out = cube::data_disk(&mut ctx).unwrap();
    assert_eq!(
        ctx.journal.warnings,
        vec!["/data/cubelet.img may grow to 1 GiB but its filesystem has 0 GiB free"]
    );
    assert_eq!(
        out,
        Outcome::Done(
            "loopback XFS image /data/cubelet.img (1 GiB, sparse) mounted at /data/cubelet".into()
        )
    );
    let img = node.host.path("/data/cubelet.img");
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 256 << 20,
        "not sparse"
    );
    let probe = std::process::Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "xfs");
    assert!(node
        .host
        .read_string("/etc/fstab")
        .unwrap()
        .ends_with("/data/cubelet.img /data/cubelet xfs loop,defaults,nofail 0 0\n"));
}

// ---- host prerequisites ----

fn prereq_host(dir: &Path) -> ScriptedHost {
    let host = ScriptedHost::new(dir);
    host.on(|c| {
        (c.program == "dpkg-query").then(|| {
            Ok(match c.args.last().map(String::as_str) {
                Some("curl") => CmdOutput::ok("install ok installed"),
                _ => CmdOutput::failed(1, "dpkg-query: no packages found"),
            })
        })
    });
    host.on_program("systemctl", CmdOutput::ok(""));
    host.on(|c| {
        (c.program == "apt-get" && c.args.last().map(String::as_str) == Some("update")).then(|| {
            Ok(CmdOutput::ok(
                "Hit:1 http://deb.debian.org/debian bookworm InRelease\nReading package lists...\n",
            ))
        })
    });
    host.on(|c| {
        (c.program == "apt-get" && c.args.contains(&"install".to_string()))
            .then(|| Ok(CmdOutput::ok("")))
    });
    host.put("/usr/bin/resolvectl", "");
    host.put("/usr/sbin/mkfs.ext4", "");
    host.put("/usr/sbin/losetup", "");
    host.put(
        "/proc/self/mounts",
        "/dev/vda1 / ext4 rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0\n",
    );
    host.put(
        "/sys/fs/cgroup/cgroup.controllers",
        "cpuset cpu io memory pids\n",
    );
    host.put("/sys/fs/cgroup/cgroup.subtree_control", "memory pids\n");
    host
}

#[test]
fn prereqs_wait_for_the_lock_and_install_only_what_is_missing() {
    let mut node = Node::for_prereqs();
    let pgrep_calls = Arc::new(AtomicUsize::new(0));
    let calls = pgrep_calls.clone();
    node.host.on(move |c| {
        (c.program == "pgrep").then(|| {
            Ok(if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                CmdOutput::ok("4242 unattended-upgr\n")
            } else {
                CmdOutput::failed(1, "")
            })
        })
    });
    node.plan.target.quirks.multipathd_cgroup_fix = true;
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    assert_eq!(
        cube::prereqs(&mut ctx).unwrap(),
        Outcome::Done("installed xfsprogs; multipathd disabled; cpu delegated".into())
    );
    assert_eq!(pgrep_calls.load(Ordering::SeqCst), 3);
    assert!(node
        .host
        .said()
        .contains(&"waiting for the package manager: 4242 unattended-upgr".to_string()));
    let cmds = node.host.commands();
    assert!(cmds.contains(&"DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 install xfsprogs".to_string()), "{cmds:?}");
    assert!(
        cmds.contains(&"systemctl disable --now multipathd.service multipathd.socket".to_string())
    );
    assert_eq!(
        node.host
            .read_string("/sys/fs/cgroup/cgroup.subtree_control")
            .unwrap(),
        "+cpu"
    );
}

#[test]
fn apt_update_fetch_failures_fail_the_step_even_with_exit_0() {
    let node = Node::for_prereqs();
    node.host.on_program("pgrep", CmdOutput::failed(1, ""));
    let updates = Arc::new(AtomicUsize::new(0));
    let n = updates.clone();
    node.host.on(move |c| {
        (c.program == "apt-get" && c.args.last().map(String::as_str) == Some("update")).then(|| {
            n.fetch_add(1, Ordering::SeqCst);
            Ok(CmdOutput::ok("Err:1 http://deb.example bookworm InRelease\n  Could not resolve 'deb.example'\nReading package lists...\nW: Failed to fetch http://deb.example/dists/bookworm/InRelease  Could not resolve 'deb.example'\nW: Some index files failed to download. They have been ignored, or old ones used instead.\n"))
        })
    });
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    let err = cube::prereqs(&mut ctx).unwrap_err();
    assert_eq!(
        failure_text(&err),
        "apt-get update failed: W: Failed to fetch http://deb.example/dists/bookworm/InRelease  Could not resolve 'deb.example'; W: Some index files failed to download. They have been ignored, or old ones used instead."
    );
    assert_eq!(updates.load(Ordering::SeqCst), 3);
    assert!(!node.host.commands().iter().any(|c| c.contains(" install ")));
}

#[test]
fn without_nftables_the_failure_says_allow_from_needs_it() {
    // A host without nft whose mirror fails: the operator learns why the
    // step wanted a package at all (issue 21).
    let mut node = Node::for_prereqs();
    node.plan.cube.allow_from = vec!["10.0.2.0/24".parse().unwrap()];
    node.host.on_program("pgrep", CmdOutput::failed(1, ""));
    node.host.on(|c| {
        (c.program == "apt-get" && c.args.last().map(String::as_str) == Some("update"))
            .then(|| Ok(CmdOutput::ok("W: Failed to fetch http://deb.example/dists/bookworm/InRelease  Could not resolve 'deb.example'\n")))
    });
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    let text = failure_text(&cube::prereqs(&mut ctx).unwrap_err());
    assert_eq!(
        text,
        "apt-get update failed: W: Failed to fetch http://deb.example/dists/bookworm/InRelease  Could not resolve 'deb.example'; cube.allow_from needs nftables for its firewall, and nftables is not installed"
    );
}

#[test]
fn the_firewall_is_loaded_before_the_installer_runs() {
    // CubeMaster and CubeAPI answer from the installer on; the ruleset
    // needs nothing from it, so no window is left open until harden.
    let node = firewalled_node();
    let mut journal = pvm_journal();
    let mut ctx = node.ctx(&mut journal);
    cube::install(&mut ctx).unwrap();
    let cmds = node.host.commands();
    let at = |what: &str| cmds.iter().position(|c| c.contains(what));
    let loaded = at("nft -f ").unwrap_or_else(|| panic!("no nft -f: {cmds:?}"));
    let installer = at("install.sh --node-ip=").unwrap();
    assert!(loaded < installer, "{cmds:?}");
    assert!(cmds.contains(&"systemctl enable cubeboot-firewall.service".to_string()));
    assert!(node
        .host
        .read_string("/etc/cubeboot/firewall.nft")
        .unwrap()
        .contains(
            "tcp dport { 8089, 9999, 9998, 3000, 12088, 9000, 9966, 3010, 8890, 8083 } drop"
        ));
}

#[test]
fn without_nft_cube_install_stops_before_the_installer_saying_why() {
    let node = firewalled_node();
    std::fs::remove_file(node.root().join("usr/sbin/nft")).unwrap();
    let mut journal = pvm_journal();
    let mut ctx = node.ctx(&mut journal);
    let text = failure_text(&cube::install(&mut ctx).unwrap_err());
    assert!(
        text.starts_with("cube.allow_from needs nftables for its firewall, and nft is not installed (looked in /usr/sbin/nft, /sbin/nft, /usr/bin/nft) (diagnostics: "),
        "{text}"
    );
    assert!(!node
        .host
        .commands()
        .iter()
        .any(|c| c.contains("install.sh")));
}

#[test]
fn rhel_family_gets_docker_ce_and_dnsmasq_when_no_resolver() {
    let mut node = Node::empty();
    node.host.on(|c| {
        (c.program == "rpm").then(|| {
            Ok(match c.args.last().map(String::as_str) {
                Some("docker-ce" | "dnsmasq" | "e2fsprogs") => {
                    CmdOutput::failed(1, "no package provides")
                }
                _ => CmdOutput::ok("installed"),
            })
        })
    });
    node.host.on_program("pgrep", CmdOutput::failed(1, ""));
    node.host.on_program("dnf", CmdOutput::ok(""));
    node.host.on(|c| {
        (c.program == "systemctl" && c.args[0] == "show").then(|| Ok(CmdOutput::ok("not-found\n")))
    });
    node.host
        .on(|c| (c.program == "systemctl" && c.args[0] == "enable").then(|| Ok(CmdOutput::ok(""))));
    // bpffs not mounted yet: mounted once asked.
    let root = node.root().to_path_buf();
    node.host.on(move |c| {
        (c.program == "mount").then(|| {
            std::fs::write(
                root.join("proc/self/mounts"),
                "/dev/vda1 / xfs rw 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n",
            )
            .unwrap();
            Ok(CmdOutput::ok(""))
        })
    });
    node.host
        .put("/proc/self/mounts", "/dev/vda1 / xfs rw 0 0\n");
    node.host.put("/usr/sbin/losetup", "");
    node.plan.target.packages.manager = PackageManager::Dnf;
    node.plan.target.packages.docker = DockerSource::DockerCeRepo;
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    assert_eq!(
        cube::prereqs(&mut ctx).unwrap(),
        Outcome::Done("mounted bpffs at /sys/fs/bpf; dnsmasq (no resolvectl or NetworkManager); installed dnsmasq e2fsprogs; Docker CE from download.docker.com".into())
    );
    assert!(node
        .host
        .commands()
        .contains(&"mount -t bpf bpf /sys/fs/bpf".to_string()));
    assert_eq!(
        ctx.journal.facts.dnsmasq_mode,
        Some(DnsmasqMode::Standalone)
    );
    let cmds = node.host.commands();
    assert!(
        cmds.contains(&"dnf -y install dnsmasq e2fsprogs".to_string()),
        "{cmds:?}"
    );
    assert!(cmds.contains(
        &"dnf -y install docker-ce docker-ce-cli containerd.io docker-compose-plugin".to_string()
    ));
    assert!(cmds.contains(&"systemctl enable --now docker.service".to_string()));
    assert!(node
        .host
        .read_string("/etc/yum.repos.d/docker-ce.repo")
        .unwrap()
        .contains(
            "baseurl=https://download.docker.com/linux/centos/$releasever/$basearch/stable\n"
        ));
}

#[test]
fn a_dry_run_of_the_whole_stage_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = plan_for(PITFALL);
    plan.cube.allow_from = vec!["10.0.0.0/8".parse().unwrap()];
    plan.target.quirks.multipathd_cgroup_fix = true;
    let host = ScriptedHost::new(dir.path()).dry_run();
    // A dry run still runs queries: here they answer as on a fresh machine
    // (nothing installed, nothing running, no NetworkManager).
    host.on(|c| c.read_only.then(|| Ok(CmdOutput::failed(1, ""))));
    // ... one root disk and one empty disk, and this network.
    host.on_program("lsblk", CmdOutput::ok(LSBLK_ROOT_AND_EMPTY));
    host.on(|c| (c.program == "blkid" && c.args[0] == "-p").then(|| Ok(CmdOutput::failed(2, ""))));
    host.on_program("wipefs", CmdOutput::ok(""));
    host.on(|c| {
        (c.program == "ip" && c.args == ["-j", "addr"]).then(|| Ok(CmdOutput::ok(IP_ADDR)))
    });
    host.on(|c| {
        (c.program == "ip" && c.args == ["-j", "route"]).then(|| Ok(CmdOutput::ok(IP_ROUTE)))
    });
    let cache = format!("/var/lib/cubeboot/cache/{}", plan.assets.bundle.sha256);
    host.put(&cache, std::fs::read(repo(PITFALL)).unwrap());
    host.put("/proc/self/mounts", "/dev/vda1 / ext4 rw 0 0\n");
    host.put(
        "/sys/fs/cgroup/cgroup.controllers",
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    );
    let before = walk(dir.path());
    let mut journal = Journal::new("test");
    let mut ctx = ctx_on(&host, &plan, &mut journal);
    type Step = fn(&mut Ctx) -> anyhow::Result<Outcome>;
    let steps: [Step; 5] = [
        cube::prereqs,
        cube::data_disk,
        cube::install,
        cube::verify,
        cube::harden,
    ];
    for step in steps {
        step(&mut ctx).unwrap();
    }
    assert_eq!(walk(dir.path()), before);
    let cmds = host.commands();
    assert!(
        cmds.iter()
            .any(|c| c.starts_with("mkfs.xfs -m reflink=1 -L cubelet -m uuid=")),
        "{cmds:?}"
    );
    assert!(
        cmds.iter()
            .any(|c| c.ends_with("install.sh --node-ip=10.0.2.15 --mode=install")),
        "{cmds:?}"
    );
    assert!(cmds.iter().any(|c| c.starts_with("nft -f ")), "{cmds:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out.sort();
    out
}

#[test]
fn the_firewall_ruleset_passes_nft_check() {
    // Real nft in check mode (-c): parses and validates, changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let rules = cube::firewall::firewall_ruleset(
        &[
            "10.0.2.0/24".parse().unwrap(),
            "172.16.5.9".parse().unwrap(),
            "fd00:1::/64".parse().unwrap(),
        ],
        &cubeboot::layout::restricted_ports([]),
    );
    let file = dir.path().join("firewall.nft");
    std::fs::write(&file, &rules).unwrap();
    let out = std::process::Command::new("nft")
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("nft (package nftables) is installed by .ci/run");
    assert!(
        out.status.success(),
        "{}\n{rules}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the check can fail: a broken set element is refused.
    std::fs::write(&file, rules.replace("10.0.2.0/24", "10.0.2.0/99")).unwrap();
    let out = std::process::Command::new("nft")
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// The production host in a temporary root: real `ip`, real `timeout`, real
/// bash running the fixture installer, output streamed line by line.
fn real_host_plan(bundle_rel: &str, root: &Path) -> (cubeboot::firstboot::host::RealHost, Plan) {
    let mut plan = plan_for(bundle_rel);
    // Independent of this machine's addresses and routes.
    plan.cube.node_ip = "10.0.2.15".parse().unwrap();
    let extra = [
        (
            "CUBE_SANDBOX_INSTALL_ROOT",
            under_root(root, TOOLBOX).display().to_string(),
        ),
        ("ONE_CLICK_FIXTURE_ALLOW_NONROOT", "1".into()),
        ("CUBE_SANDBOX_NETWORK_CIDR", "10.251.0.0/18".into()),
    ];
    for (k, v) in extra {
        plan.cube.extra_env.insert(k.into(), v);
    }
    let cache = under_root(
        root,
        &format!("/var/lib/cubeboot/cache/{}", plan.assets.bundle.sha256),
    );
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    std::fs::copy(repo(bundle_rel), cache).unwrap();
    // The stand-in installer installs under CUBE_SANDBOX_INSTALL_ROOT, so it
    // may run with a temporary root (the shipped helper refuses that).
    (cubeboot::firstboot::host::RealHost::unconfined(root), plan)
}

#[test]
fn real_host_runs_the_fixture_installer_in_a_temp_root() {
    let dir = tempfile::tempdir().unwrap();
    let (host, plan) = real_host_plan(PITFALL, dir.path());
    let mut journal = Journal::new("test");
    let mut ctx = ctx_on(&host, &plan, &mut journal);
    assert_eq!(
        cube::install(&mut ctx).unwrap(),
        Outcome::Done("installed the control role at 10.0.2.15 (CUBE_PVM_ENABLE=1)".into())
    );
    let env = host
        .read_string(&format!("{TOOLBOX}/.one-click.env"))
        .unwrap();
    assert!(env.contains("\nCUBE_PVM_ENABLE=1\n"), "{env}");
    assert!(
        env.contains("CUBE_SANDBOX_NETWORK_CIDR=10.251.0.0/18\n"),
        "{env}"
    );
    assert_eq!(guest_kernel(&host).as_deref(), Some("vmlinux-pvm"));
    let log = host.read_string(cube::INSTALL_LOG).unwrap();
    assert!(
        log.contains("[one-click] CUBE_PVM_ENABLE=1, selected PVM guest kernel"),
        "{log}"
    );
}

#[test]
fn real_host_stops_a_hanging_installer_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (host, mut plan) = real_host_plan(HANG, dir.path());
    plan.cube.install_timeout_secs = 1;
    plan.cube.hardening = false;
    let mut journal = Journal::new("test");
    let mut ctx = ctx_on(&host, &plan, &mut journal);
    let started = std::time::Instant::now();
    let err = cube::install(&mut ctx).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let text = failure_text(&err);
    let diag = ctx
        .journal
        .facts
        .diagnostics
        .as_deref()
        .unwrap()
        .to_string();
    assert_eq!(
        text,
        format!("cube installer timed out after 1 s; log: /var/log/cubeboot/install.log (diagnostics: {diag})")
    );
    assert!(diag.starts_with("/var/log/cubeboot/diagnostics-") && diag.ends_with(".tar.gz"));
    let files = tar_listing(&host.read(&diag).unwrap());
    assert!(files["diagnostics/install.log"].contains("this fixture variant hangs here"));
}

#[test]
fn the_committed_fixture_bundles_are_what_the_recipe_builds() {
    // Same inputs, same bytes: rebuild all five into a temp dir and compare.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg(repo("tests/fixtures/bundle/make.sh"))
        .env("BUNDLE_OUT_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for committed in [PLAIN, PITFALL, HANG, PRE_CUBEOPS, ARM64] {
        let name = Path::new(committed).file_name().unwrap();
        let rebuilt = std::fs::read(dir.path().join(name)).unwrap();
        assert!(
            rebuilt == std::fs::read(repo(committed)).unwrap(),
            "{committed} differs from what tests/fixtures/bundle/make.sh builds; rerun it and commit"
        );
    }
}

#[test]
fn another_filesystem_mounted_at_data_cubelet_is_left_alone() {
    let node = Node::for_disks(LSBLK_ROOT_AND_EMPTY);
    node.host.put(
        "/proc/self/mounts",
        "/dev/vda1 / ext4 rw 0 0\n/dev/vdc /data/cubelet ext4 rw 0 0\n",
    );
    let err = node.data_disk(DataDisk::Auto).unwrap_err();
    assert_eq!(
        failure_text(&err),
        "/data/cubelet is a mounted ext4 filesystem (/dev/vdc); Cube needs XFS there"
    );
    assert!(node.host.commands().is_empty());
}

#[test]
fn hardening_off_skips_and_without_allow_from_warns() {
    let mut node = Node::empty();
    node.plan.cube.hardening = false;
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    assert_eq!(
        cube::harden(&mut ctx).unwrap(),
        Outcome::Skipped("hardening is off in the plan".into())
    );
    assert!(node.host.commands().is_empty());

    // Hardening on, no allow_from: binds and credentials, firewall untouched,
    // a warning naming what listens beyond loopback. No key in an env file:
    // the sockets decide (CubeMaster on the node IP, WebUI everywhere).
    node.plan = plan_for(PLAIN);
    node.host.put(
        "/proc/net/tcp",
        "  sl  local_address rem_address   st\n   0: 0F02000A:1F99 00000000:0000 0A\n   1: 0100007F:0BB8 00000000:0000 0A\n   2: 00000000:2F38 00000000:0000 0A\n",
    );
    node.host.put(cube::CREDENTIALS_PATH, "E2B_API_KEY=e2b_x\n");
    std::fs::set_permissions(
        node.host.path(cube::CREDENTIALS_PATH),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut journal = Journal::new("test");
    journal.facts.node_ip = "10.0.2.15".parse().ok();
    let mut ctx = node.ctx(&mut journal);
    assert_eq!(
        cube::harden(&mut ctx).unwrap(),
        Outcome::Done(
            "CubeMaster on 10.0.2.15:8089, CubeAPI on 127.0.0.1:3000; no Cubelet config; credentials in /etc/cubeboot/credentials.env"
                .into()
        )
    );
    assert_eq!(
        ctx.journal.warnings,
        vec!["hardening: no allow_from networks in the plan, so CubeMaster on 10.0.2.15:8089, WebUI on 0.0.0.0:12088 (all interfaces) stay open to every network (no auth: CubeMaster, WebUI)"]
    );
    assert!(!node.host.exists("/etc/cubeboot/firewall.nft"));

    // A world-readable credentials file is a failure.
    std::fs::set_permissions(
        node.host.path(cube::CREDENTIALS_PATH),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    node.host.on_program("journalctl", CmdOutput::ok(""));
    let err = cube::harden(&mut ctx).unwrap_err();
    assert!(
        failure_text(&err)
            .starts_with("/etc/cubeboot/credentials.env has mode 644, expected 600 (diagnostics: "),
        "{err:#}"
    );
}

// ---- issue 12: the fixture as upstream behaves; verdicts by what runs ----

/// Install, verify and harden a control node whose installer is a held-out
/// variant (a fixture knob in `extra_env`), with the model network.
fn control_node_with(
    knob: Option<&str>,
    hardening: bool,
) -> (Node, anyhow::Result<()>, Vec<(String, String)>) {
    let mut node = Node::with_bundle(PLAIN, IP_ADDR);
    node.plan.cube.hardening = hardening;
    node.plan.cube.allow_from = vec!["10.0.2.0/24".parse().unwrap()];
    if let Some(k) = knob {
        node.plan.cube.extra_env.insert(k.into(), "1".into());
    }
    let mut journal = pvm_journal();
    let mut ctx = node.ctx(&mut journal);
    let result = (|| {
        cube::install(&mut ctx)?;
        cube::with_diagnostics(&mut ctx, |ctx| {
            cube::verify::run_with_probe(ctx, &model_get(&node.host))
        })?;
        cube::harden(&mut ctx)?;
        Ok(())
    })();
    let checks = ctx
        .journal
        .checks
        .iter()
        .map(|(k, c)| {
            (
                k.to_string(),
                format!("{}: {}", if c.ok { "ok" } else { "fail" }, c.detail),
            )
        })
        .collect();
    (node, result, checks)
}

#[test]
fn held_out_installer_variants_end_verified_and_hardened() {
    // Each knob is a small, upstream-legal difference (docs/cube-installer.md):
    // CubeAPI that only listens on loopback; no bind keys in .one-click.env;
    // .one-click.env copied from the bundle's .env instead of rebuilt.
    for (knob, hardening) in [
        (None, true),
        (Some("ONE_CLICK_FIXTURE_API_LOOPBACK"), true),
        (Some("ONE_CLICK_FIXTURE_NO_BIND_KEYS"), true),
        (Some("ONE_CLICK_FIXTURE_COPY_ENV"), true),
        (Some("ONE_CLICK_FIXTURE_COPY_ENV"), false),
    ] {
        let (_node, result, checks) = control_node_with(knob, hardening);
        assert!(
            result.is_ok(),
            "{knob:?} (hardening {hardening}): {:#}\n{checks:#?}",
            result.unwrap_err()
        );
        let api = &checks.iter().find(|(k, _)| k == "cube-api").unwrap().1;
        let want = if knob == Some("ONE_CLICK_FIXTURE_API_LOOPBACK") || !hardening {
            "ok: http://127.0.0.1:3000/health answers"
        } else {
            "ok: http://10.0.2.15:3000/health answers"
        };
        assert_eq!(api, want, "{knob:?}");
    }
}

#[test]
fn upstreams_quickcheck_still_passes_on_a_hardened_node() {
    // Newer upstream quickcheck.sh probes Cubelet's HTTP (the embedded
    // network runtime's /v1/policies/dump) at 127.0.0.1:9998 unless
    // CUBELET_EGRESS_DUMP_URL says otherwise; up.sh and smoke.sh re-run it
    // on a running node. Harden moves Cubelet's HTTP to the node IP, so the
    // node must tell quickcheck where, as it does for CubeMaster and CubeAPI.
    for (role, node) in hardened_nodes() {
        let root = node.root();
        let quickcheck = CommandSpec::new("bash").args([
            under_root(root, &format!("{TOOLBOX}/fixture/services.sh"))
                .display()
                .to_string(),
            "quickcheck".into(),
        ]);
        let out = run_real(&quickcheck, root, &fixture_env(root)).unwrap();
        assert_eq!(
            out.code,
            Some(0),
            "{role:?}: quickcheck after harden:\n{}{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout
                .contains("cubelet-egress-dump=http://10.0.2.15:9998/"),
            "{role:?}: {}",
            out.stdout
        );
    }
}

#[test]
fn cube_egress_still_bootstraps_from_cubelet_on_a_hardened_node() {
    // In bundles whose network agent lives in Cubelet, cube-egress fetches
    // its policies on every start from Cubelet's HTTP at 127.0.0.1:9998,
    // unless CUBE_EGRESS_BOOTSTRAP_URL in .one-click.env says otherwise
    // (CubeSandbox: deploy/one-click/scripts/systemd/cube-egress-start.sh,
    // scripts/systemd/common.sh). Harden moves Cubelet's HTTP to the node
    // IP: after the next reboot cube-egress must still find it.
    for (role, node) in hardened_nodes() {
        let root = node.root();
        let start = CommandSpec::new("bash").arg(
            under_root(
                root,
                &format!("{TOOLBOX}/scripts/systemd/cube-egress-start.sh"),
            )
            .display()
            .to_string(),
        );
        let out = run_real(&start, root, &fixture_env(root)).unwrap();
        assert_eq!(
            out.code,
            Some(0),
            "{role:?}: cube-egress start after harden:\n{}{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout
                .contains("[cube-egress] bootstrap http://10.0.2.15:9998/v1/policies/dump"),
            "{role:?}: {}",
            out.stdout
        );
    }
}

#[test]
fn only_bundles_whose_egress_bootstraps_from_cubelet_are_told_where_it_moved() {
    // Older bundles bootstrap cube-egress from the network agent on
    // 127.0.0.1:19090, which harden leaves alone: pointing them at Cubelet
    // would break them.
    let node = Node::empty();
    let script = "/b/scripts/systemd/cube-egress-start.sh";
    assert!(!cube::install::bundle_egress_bootstraps_from_cubelet(&node.host, "/b").unwrap());
    node.host.put(
        script,
        "BOOTSTRAP_URL=\"${CUBE_EGRESS_BOOTSTRAP_URL:-http://127.0.0.1:19090/v1/policies/dump}\"\n",
    );
    assert!(!cube::install::bundle_egress_bootstraps_from_cubelet(&node.host, "/b").unwrap());
    node.host.put(
        script,
        "BOOTSTRAP_URL=\"${CUBE_EGRESS_BOOTSTRAP_URL:-http://127.0.0.1:9998/v1/policies/dump}\"\n",
    );
    assert!(cube::install::bundle_egress_bootstraps_from_cubelet(&node.host, "/b").unwrap());
}

/// A control and a compute node, each installed, verified and hardened.
fn hardened_nodes() -> Vec<(Role, Node)> {
    [Role::Control, Role::Compute]
        .into_iter()
        .map(|role| {
            let (node, result, checks) = if role == Role::Control {
                control_node_with(None, true)
            } else {
                compute_node_hardened()
            };
            assert!(
                result.is_ok(),
                "{role:?}: {:#}\n{checks:#?}",
                result.unwrap_err()
            );
            (role, node)
        })
        .collect()
}

/// A compute node whose control plane (a 127.0.0.1 model of CubeMaster
/// and CubeOps, both on one custom port) is healthy and has registered it.
fn compute_node_registered() -> Node {
    let (port, _) = control_plane_model();
    let mut node = Node::with_bundle(PLAIN, IP_ADDR);
    node.plan.cube.role = Role::Compute;
    node.plan.cube.control_plane_ip = Some(format!("127.0.0.1:{port}").parse().unwrap());
    node.plan.cube.bundle = Some(cubeops_facts(port));
    node
}

/// CubeMaster's health and node record, CubeOps' health and node record
/// (`"IP"`, scripts/one-click/quickcheck.sh) for 10.0.2.15, on one port.
fn control_plane_model() -> (u16, Arc<AtomicUsize>) {
    fake_server(|path, _| match path {
        "/notify/health" | "/health" => (200, "ok".into()),
        "/internal/meta/nodes/10.0.2.15" => (200, r#"{"host_ip":"10.0.2.15"}"#.into()),
        "/internal/v1/nodes/10.0.2.15" => (200, r#"{"IP":"10.0.2.15","Healthy":true}"#.into()),
        _ => (404, String::new()),
    })
}

/// A compute node installed (against a model control plane), verified and
/// hardened.
fn compute_node_hardened() -> (Node, anyhow::Result<()>, Vec<(String, String)>) {
    let mut node = compute_node_registered();
    node.plan.cube.hardening = true;
    node.plan.cube.allow_from = vec!["10.0.2.0/24".parse().unwrap()];
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    let result = (|| {
        cube::install(&mut ctx)?;
        cube::verify(&mut ctx)?;
        cube::harden(&mut ctx)?;
        Ok(())
    })();
    let checks = ctx
        .journal
        .checks
        .iter()
        .map(|(k, c)| (k.to_string(), c.detail.clone()))
        .collect();
    (node, result, checks)
}

#[test]
fn when_our_verdict_and_the_installers_quickcheck_disagree_the_status_says_both() {
    let mut node = Node::with_bundle(PLAIN, IP_ADDR);
    node.plan.cube.hardening = false;
    node.host.put("/dev/kvm", "");
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    cube::install(&mut ctx).unwrap();
    assert_eq!(ctx.journal.facts.installer_quickcheck, Some(Quickcheck::Ok));
    // CubeAPI stops answering after the installer's quickcheck.
    let get = |url: &str| -> anyhow::Result<String> {
        if url.ends_with("/health") && !url.contains("notify") {
            anyhow::bail!("HTTP 502")
        }
        model_get(&node.host)(url)
    };
    node.plan.cube.verify_budget_secs = 10;
    let mut ctx = node.ctx(&mut journal);
    let err = cube::verify::run_with_probe(&mut ctx, &get).unwrap_err();
    assert_eq!(
        failure_text(&err),
        "cube verification failed: cube-api; the installer's own quickcheck passed (see install.log)"
    );
}

#[test]
fn the_control_plane_is_named_one_way_as_upstream_expects() {
    let net = cube::install::Network {
        addrs: vec![(
            "eth0".into(),
            cube::cidr::Ipv4Net::parse("10.0.2.15/24").unwrap(),
        )],
        default_dev: Some("eth0".into()),
        parsed: cube::cidr::HostNetwork::parse(IP_ADDR, IP_ROUTE, "").unwrap(),
    };
    let mut plan = plan_for(PLAIN);
    plan.cube.role = Role::Compute;
    let env_for = |cp: &str| {
        let mut cube = plan.cube.clone();
        cube.control_plane_ip = Some(cp.parse().unwrap());
        let input = cube::install::Input {
            cube: &cube,
            pvm: true,
            dnsmasq: None,
        };
        let env = cube::install::prepare(&input, &net).unwrap().env;
        (
            env.get("ONE_CLICK_CONTROL_PLANE_IP").cloned(),
            env.get("ONE_CLICK_CONTROL_PLANE_CUBEMASTER_ADDR").cloned(),
        )
    };
    assert_eq!(env_for("10.0.2.9"), (Some("10.0.2.9".into()), None));
    assert_eq!(env_for("10.0.2.9:8089"), (Some("10.0.2.9".into()), None));
    assert_eq!(
        env_for("10.0.2.9:18089"),
        (None, Some("10.0.2.9:18089".into()))
    );
}

#[test]
fn compute_nodes_get_the_control_nodes_object_storage_through_env_only() {
    let mut node = compute_node_registered();
    node.plan.cube.s3 = Some(S3Settings {
        endpoint: "http://10.0.2.9:9000".into(),
        access_key_id: "cubeminio".into(),
        secret_access_key: "s3-secret-value".into(),
        bucket: "cube-volumes".into(),
        region: None,
        s3fs_extra_opts: Some("-ouse_path_request_style".into()),
    });
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    cube::install(&mut ctx).unwrap();
    assert!(
        ctx.journal.warnings.is_empty(),
        "{:?}",
        ctx.journal.warnings
    );
    let env = node.one_click_env();
    assert!(
        env.contains("CUBE_S3_ENDPOINT=http://10.0.2.9:9000\n"),
        "{env}"
    );
    assert!(
        env.contains("CUBE_S3_SECRET_ACCESS_KEY=s3-secret-value\n"),
        "{env}"
    );
    let log = node.host.read_string(cube::INSTALL_LOG).unwrap();
    assert!(!log.contains("CUBE_S3_* not set"), "{log}");
    assert!(node
        .host
        .commands()
        .iter()
        .all(|c| !c.contains("s3-secret-value")));
}

#[test]
fn networkmanager_hosts_get_standalone_dnsmasq_where_the_bundle_knows_it() {
    let mut prereqs = Node::for_prereqs();
    prereqs.host.on_program("pgrep", CmdOutput::failed(1, ""));
    prereqs.host.on(|c| {
        (c.program == "systemctl" && c.args[0] == "show").then(|| Ok(CmdOutput::ok("loaded\n")))
    });
    prereqs.plan.cube.hardening = false;
    let mut journal = Journal::new("test");
    let mut ctx = prereqs.ctx(&mut journal);
    assert_eq!(
        cube::prereqs(&mut ctx).unwrap(),
        Outcome::Done(
            "dnsmasq (NetworkManager host: standalone DNS mode); installed dnsmasq xfsprogs".into()
        )
    );
    let fact = ctx.journal.facts.dnsmasq_mode.unwrap();

    let mut node = Node::with_bundle(PLAIN, IP_ADDR);
    node.plan.cube.hardening = false;
    let mut journal = Journal::new("test");
    journal.facts.dnsmasq_mode = Some(fact);
    cube::install(&mut node.ctx(&mut journal)).unwrap();
    let cmd = node.installer_command();
    assert!(cmd.contains("CUBE_PROXY_DNSMASQ_MODE=standalone "), "{cmd}");

    // A bundle older than the mode (no CUBE_PROXY_DNSMASQ_MODE anywhere) dies
    // on it: not passed.
    let old = Node::empty();
    old.host
        .put("/b/install.sh", "#!/bin/bash\necho old installer\n");
    assert!(!cube::install::bundle_supports_standalone_dns(&old.host, "/b").unwrap());
    old.host.put(
        "/b/lib/common.sh",
        "case \"${CUBE_PROXY_DNSMASQ_MODE:-networkmanager}\" in standalone) ;; esac\n",
    );
    assert!(cube::install::bundle_supports_standalone_dns(&old.host, "/b").unwrap());
}

#[test]
fn snap_docker_and_a_missing_bpffs_stop_prereqs_with_clear_messages() {
    let node = Node::for_prereqs();
    node.host.put("/snap/bin/docker", "");
    let mut journal = Journal::new("test");
    let err = cube::prereqs(&mut node.ctx(&mut journal)).unwrap_err();
    assert_eq!(
        failure_text(&err),
        "Docker is installed from snap (/snap/bin/docker); the Cube installer refuses snap Docker"
    );
    assert!(node.host.commands().is_empty());

    let node = Node::for_prereqs();
    node.host
        .put("/proc/self/mounts", "/dev/vda1 / ext4 rw 0 0\n");
    node.host.on(|c| {
        (c.program == "mount").then(|| {
            Ok(CmdOutput::failed(
                32,
                "mount: /sys/fs/bpf: unknown filesystem type 'bpf'.",
            ))
        })
    });
    let err = cube::prereqs(&mut node.ctx(&mut journal)).unwrap_err();
    assert_eq!(
        failure_text(&err),
        "/sys/fs/bpf is not a mounted bpf filesystem and mounting it failed: mount: /sys/fs/bpf: unknown filesystem type 'bpf'."
    );
}

#[test]
fn cubelet_that_keeps_listening_everywhere_fails_harden_with_diagnostics() {
    // A Cubelet whose restart does not pick up the new binds (the services
    // model is not re-run): the listeners decide, not the edited file.
    let node = Node::with_bundle(PLAIN, IP_ADDR);
    let mut journal = pvm_journal();
    let mut ctx = node.ctx(&mut journal);
    cube::install(&mut ctx).unwrap();
    node.host.on(|c| {
        (c.program == "systemctl" && c.args[0] == "restart").then(|| Ok(CmdOutput::ok("")))
    });
    let err = cube::harden(&mut ctx).unwrap_err();
    let text = failure_text(&err);
    assert!(
        text.starts_with("Cubelet after rebinding: port 9998 listens on [::]:9998 (all interfaces), expected 10.0.2.15:9998; port 9999 listens on [::]:9999 (all interfaces), expected 10.0.2.15:9999; port 9966 listens on [::]:9966 (all interfaces), expected 127.0.0.1:9966 (diagnostics: /var/log/cubeboot/diagnostics-"),
        "{text}"
    );
    assert!(ctx.journal.facts.diagnostics.is_some());
}

#[test]
fn a_port_the_probe_reaches_from_outside_allow_from_fails_harden() {
    // As in the held-out VM run (issue 21): the ruleset is loaded, but a
    // port Docker publishes still answers a client outside allow_from.
    let node = firewalled_node();
    let mut journal = pvm_journal();
    let mut ctx = node.ctx(&mut journal);
    cube::install(&mut ctx).unwrap();
    answer_probe(&node.host, |ports| {
        probe_answers(ports, "").replace("8089 open", "8089 silent")
    });
    let text = failure_text(&cube::harden(&mut ctx).unwrap_err());
    assert!(
        text.starts_with("firewall: port(s) 9999, 9998, 3000, 12088, 9000, 9966, 3010, 8890, 8083 of 10.0.2.15 accepted a connection from outside allow_from (diagnostics: "),
        "{text}"
    );
    let cmds = node.host.commands();
    let probe = cmds
        .iter()
        .find(|c| c.contains("cubeboot-firewall-probe"))
        .unwrap();
    // From the first /30 of 198.18.0.0/15 outside allow_from (10.0.2.0/24),
    // to the node IP, the control port first.
    assert!(
        probe.ends_with(" cubeboot-probe cubeprobe0 cubeprobe1 198.19.255.253 198.19.255.254 10.0.2.15 3 9 8089 9999 9998 3000 12088 9000 9966 3010 8890 8083"),
        "{probe}"
    );
}

#[test]
fn a_probe_that_cannot_reach_the_node_warns_instead_of_passing_silently() {
    // Another firewall drops the probe's every packet, control port included:
    // nothing is proven either way, and the status says so.
    let node = firewalled_node();
    let mut journal = pvm_journal();
    let mut ctx = node.ctx(&mut journal);
    cube::install(&mut ctx).unwrap();
    answer_probe(&node.host, |ports| {
        ports.iter().map(|p| format!("{p} silent\n")).collect()
    });
    let Outcome::Done(done) = cube::harden(&mut ctx).unwrap() else {
        panic!("harden did not finish")
    };
    assert!(
        done.contains(
            "ports 8089,9999,9998,3000,12088,9000,9966,3010,8890,8083 only from 10.0.2.0/24; "
        ),
        "{done}"
    );
    assert_eq!(
        ctx.journal.warnings,
        ["hardening: the firewall is loaded but could not be probed: the node did not answer the probe on unrestricted port 9 (no answer)"]
    );
}

#[test]
fn the_fixture_installer_keeps_upstreams_mode_semantics() {
    // deploy/one-click/install.sh: auto upgrades an existing install,
    // upgrade needs one, and a role change needs --allow-role-change.
    let bundle = UnpackedBundle::new(PLAIN);
    let root = bundle.toolbox();
    let install = |args: &[&str], env: &[(&str, &str)]| {
        let out = bundle.install(args, env);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = install(&["--mode=upgrade"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("ERROR: --mode=upgrade: no existing installation"),
        "{err}"
    );
    let (code, err) = install(&[], &[("CUBE_PVM_ENABLE", "1")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("mode auto resolved to install"), "{err}");
    // No --mode on an installed node: an upgrade that keeps old values
    // (CUBE_PVM_ENABLE=1 survives an environment that says 0).
    let (code, err) = install(&[], &[("CUBE_PVM_ENABLE", "0")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("mode auto resolved to upgrade"), "{err}");
    assert_eq!(
        std::fs::read_link(root.join("cube-kernel-scf/vmlinux")).unwrap(),
        PathBuf::from("vmlinux-pvm")
    );
    assert!(root.join(".one-click.env.bak").exists());
    // The old runtime role beats the environment; a .env that says otherwise
    // (differing from env.example) is a role change, refused.
    let env_file = bundle.dir.path().join("compute.env");
    std::fs::write(
        &env_file,
        "ONE_CLICK_DEPLOY_ROLE=compute\nONE_CLICK_CONTROL_PLANE_IP=10.0.2.9\n",
    )
    .unwrap();
    let (code, err) = install(
        &["--mode=upgrade"],
        &[("ONE_CLICK_ENV_FILE", env_file.to_str().unwrap())],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("refusing to upgrade it as compute without --allow-role-change"),
        "{err}"
    );
}

#[test]
fn upgrade_runs_the_installer_in_upgrade_mode_and_rolls_the_status_forward() {
    use cubeboot::firstboot::cube::upgrade::{self, PinnedBundle};
    use cubeboot::firstboot::journal::StepState;
    use cubeboot::firstboot::StepId;

    let mut node = Node::with_bundle(PLAIN, IP_ADDR);
    node.plan.cube.allow_from = vec!["10.0.2.0/24".parse().unwrap()];
    // The newer bundle, served from a file:// URL on the node.
    let new_bytes = std::fs::read(repo(PITFALL)).unwrap();
    let new_name = "cube-sandbox-one-click-v0.0.0-fixture-pitfall-amd64.tar.gz";
    node.host
        .put(&format!("/srv/{new_name}"), new_bytes.clone());
    let pin: PinnedBundle = format!("file:///srv/{new_name}#{}", Sha256Digest::of(&new_bytes))
        .parse()
        .unwrap();
    let cfg = cubeboot::transport::FetchConfig {
        attempts_per_mirror: 1,
        ..Default::default()
    };
    let get = model_get(&node.host);

    // Not before the first run is done.
    let err =
        upgrade::run_with_probe(&node.host, &node.plan, "plan-1", &pin, &cfg, &get).unwrap_err();
    assert_eq!(
        failure_text(&err),
        "upgrade needs a node whose first run is done (harden not complete)"
    );

    // The first run: install, verify, harden, all done.
    let mut journal = Journal::new("plan-1");
    journal.facts.kvm_mode = Some(KvmInUse::Pvm);
    let mut ctx = node.ctx(&mut journal);
    cube::install(&mut ctx).unwrap();
    cube::verify::run_with_probe(&mut ctx, &get).unwrap();
    cube::harden(&mut ctx).unwrap();
    journal.mark(&node.host, StepId::Harden, StepState::Done, "hardened");
    journal.save(&node.host).unwrap();

    let out = upgrade::run_with_probe(&node.host, &node.plan, "plan-1", &pin, &cfg, &get).unwrap();
    assert_eq!(
        out,
        Outcome::Done(format!(
            "upgraded to {new_name}: upgraded the control role at 10.0.2.15 (CUBE_PVM_ENABLE=1)"
        ))
    );
    let cmds = node.host.commands();
    let runs: Vec<&String> = cmds.iter().filter(|c| c.contains("install.sh")).collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs[0].ends_with("--mode=install"), "{}", runs[0]);
    assert!(runs[1].ends_with("--mode=upgrade"), "{}", runs[1]);
    assert!(
        runs[1].contains(new_name.trim_end_matches(".tar.gz")),
        "{}",
        runs[1]
    );
    // The installer took its upgrade path (backup, merge) and the node still
    // runs the PVM guest kernel: the pitfall .env's CUBE_PVM_ENABLE=0 lost.
    let log = node.host.read_string(cube::INSTALL_LOG).unwrap();
    assert!(
        log.contains("upgrade: previous runtime config kept"),
        "{log}"
    );
    assert!(node.host.exists(&format!("{TOOLBOX}/.one-click.env.bak")));
    assert_eq!(guest_kernel(&node.host).as_deref(), Some("vmlinux-pvm"));
    // Status and journal roll forward to the new bundle.
    let status: serde_json::Value = serde_json::from_str(
        &node
            .host
            .read_string(cubeboot::firstboot::STATUS_PATH)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["state"], "done");
    assert_eq!(
        status["message"],
        format!(
            "upgraded to {new_name}: upgraded the control role at 10.0.2.15 (CUBE_PVM_ENABLE=1)"
        )
    );
    let j = Journal::load(&node.host, "plan-1").unwrap();
    assert_eq!(
        j.facts.bundle_sha256.as_deref(),
        Some(pin.sha256.to_string().as_str())
    );
    assert!(j.is_complete(StepId::CubeVerify) && j.is_complete(StepId::Harden));

    // A pin that does not match the bytes installs nothing.
    let bad: PinnedBundle = format!("file:///srv/{new_name}#{}", Sha256Digest::of(b"other"))
        .parse()
        .unwrap();
    let before = node.host.commands().len();
    let err =
        upgrade::run_with_probe(&node.host, &node.plan, "plan-1", &bad, &cfg, &get).unwrap_err();
    assert!(failure_text(&err).contains("checksum mismatch"), "{err:#}");
    assert!(!node.host.commands()[before..]
        .iter()
        .any(|c| c.contains("install.sh")));
}

#[test]
fn a_node_rolled_onto_a_new_plan_gets_the_installer_in_upgrade_mode_from_the_standard_step() {
    let node = Node::with_bundle(PLAIN, IP_ADDR);
    let mut first = Journal::new("plan-1");
    first.facts.kvm_mode = Some(KvmInUse::Pvm);
    cube::install(&mut node.ctx(&mut first)).unwrap();
    // The journal `cube-firstboot upgrade --to` seeds for the next plan
    // (src/firstboot/upgrade.rs): the facts, and the plan it came from.
    let mut next = Journal::new("plan-2");
    next.facts = first.facts.clone();
    next.facts.upgrade_from = Some("plan-1".into());
    cube::install(&mut node.ctx(&mut next)).unwrap();
    let cmds = node.host.commands();
    let runs: Vec<&String> = cmds.iter().filter(|c| c.contains("install.sh")).collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs[0].ends_with("--mode=install"), "{}", runs[0]);
    assert!(runs[1].ends_with("--mode=upgrade"), "{}", runs[1]);
    let log = node.host.read_string(cube::INSTALL_LOG).unwrap();
    assert!(
        log.contains("upgrade: previous runtime config kept"),
        "{log}"
    );
}

// ---- Bundles with CubeOps (issue 19; docs/cube-installer.md) ----

#[test]
fn the_bundles_compute_role_dies_without_the_token_in_one_click_env() {
    // CubeSandbox: scripts/systemd/prepare-compute-role.sh, Cubelet's
    // ExecStartPre, reads the token from .one-click.env: a token passed to
    // the installer only through the environment does not count.
    let bundle = UnpackedBundle::new(PLAIN);
    let base = [
        ("ONE_CLICK_DEPLOY_ROLE", "compute"),
        ("ONE_CLICK_CONTROL_PLANE_IP", "10.0.2.2"),
        ("ONE_CLICK_RUN_QUICKCHECK", "0"),
    ];
    let mut env = base.to_vec();
    env.push(("CUBE_OPS_OPSAGENT_TOKEN", OPS_TOKEN));
    let out = bundle.install(&["--mode=install"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ERROR: CUBE_OPS_OPSAGENT_TOKEN is required for the compute role"),
        "{stderr}"
    );
    // In the bundle's .env it reaches .one-click.env, and Cubelet starts.
    let dir = bundle.installer.parent().unwrap();
    std::fs::write(
        dir.join(".env"),
        format!("CUBE_OPS_OPSAGENT_TOKEN={OPS_TOKEN}\n"),
    )
    .unwrap();
    let out = bundle.install(&["--mode=install"], &base);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = bundle.toolbox().join("ops-agent/conf/config.yaml");
    let text = std::fs::read_to_string(&agent).unwrap();
    assert!(
        text.contains(&format!("shared_token: \"{OPS_TOKEN}\"")),
        "{text}"
    );
    assert!(
        text.contains("cubeops_url: \"http://10.0.2.2:3010\""),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        agent.metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn a_compute_plan_without_the_token_the_bundle_requires_stops_before_the_installer() {
    let mut node = compute_node_registered();
    node.plan.cube.ops_token = None;
    let mut journal = Journal::new("test");
    let err = cube::install(&mut node.ctx(&mut journal)).unwrap_err();
    assert!(failure_text(&err).starts_with(
        "this bundle's scripts/systemd/prepare-compute-role.sh requires CUBE_OPS_OPSAGENT_TOKEN for the compute role, and the plan has no cube.ops_token"
    ), "{}", failure_text(&err));
    assert!(!node.host.commands().iter().any(|c| c.contains("timeout")));
}

#[test]
fn compute_joins_through_cubeops_with_the_token_and_registers_there() {
    // Both control-plane ports custom (the model serves CubeMaster and
    // CubeOps on one port): the installer gets CubeMaster's address and
    // CubeOps' address (no IP to expand to <ip>:3010).
    let node = compute_node_registered();
    let port = node
        .plan
        .cube
        .bundle
        .as_ref()
        .unwrap()
        .cube_ops
        .as_ref()
        .unwrap()
        .port;
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    let out = cube::install(&mut ctx).unwrap();
    assert_eq!(
        out,
        Outcome::Done("installed the compute role at 10.0.2.15 (CUBE_PVM_ENABLE=1)".into())
    );
    let env = node.one_click_env();
    for line in [
        format!("ONE_CLICK_CONTROL_PLANE_CUBEMASTER_ADDR=127.0.0.1:{port}\n"),
        format!("ONE_CLICK_CONTROL_PLANE_CUBEOPS_ADDR=127.0.0.1:{port}\n"),
        format!("CUBE_OPS_OPSAGENT_TOKEN={OPS_TOKEN}\n"),
    ] {
        assert!(env.contains(&line), "{line}in\n{env}");
    }
    assert!(!env.contains("ONE_CLICK_CONTROL_PLANE_IP"), "{env}");
    let mode = |p: &str| node.host.metadata(p).unwrap().unwrap().mode & 0o777;
    assert_eq!(mode(&format!("{TOOLBOX}/.one-click.env")), 0o600);
    assert_eq!(
        mode(&format!("{TOOLBOX}/ops-agent/conf/config.yaml")),
        0o600
    );
    // Cubelet's meta server is CubeOps (prepare-compute-role.sh).
    let dynamic = node
        .host
        .read_string(&format!("{TOOLBOX}/Cubelet/dynamicconf/conf.yaml"))
        .unwrap();
    assert!(
        dynamic.contains(&format!("meta_server_endpoint: \"127.0.0.1:{port}\"")),
        "{dynamic}"
    );
    // The token stays off command lines and out of what the helper said,
    // and is masked wherever the helper prints it (even without a
    // reporter, which registers the plan's secrets at its start).
    assert_eq!(node.host.secrets().scrub(OPS_TOKEN), "***");
    assert!(node.host.commands().iter().all(|c| !c.contains(OPS_TOKEN)));
    assert!(node.host.said().iter().all(|c| !c.contains(OPS_TOKEN)));
    let log = node.host.read_string(cube::INSTALL_LOG).unwrap();
    assert!(
        log.contains("[quickcheck] 2/2 check CubeOps node registration"),
        "{log}"
    );

    let out = cube::verify(&mut ctx).unwrap();
    assert_eq!(out, Outcome::Done("5 checks passed".into()));
    assert_eq!(
        check(ctx.journal, "registered").as_deref(),
        Some(format!("ok: http://127.0.0.1:{port}/internal/v1/nodes/10.0.2.15 answers").as_str())
    );
}

#[test]
fn compute_waits_for_cubeops_and_the_control_nodes_minio_too() {
    let (port, _) = control_plane_model();
    // CubeOps not up yet, MinIO down: the wait names what it waits for.
    let (ops_port, ops_requests) = fake_server(|path, n| match path {
        "/health" if n < 1 => (503, "starting".into()),
        "/health" => (200, "ok".into()),
        _ => (404, String::new()),
    });
    let (minio_port, _) = fake_server(|_, _| (503, "down".into()));
    let mut node = Node::with_bundle(PLAIN, IP_ADDR);
    node.plan.cube.role = Role::Compute;
    node.plan.cube.control_plane_ip = Some(format!("127.0.0.1:{port}").parse().unwrap());
    node.plan.cube.bundle = Some(cubeops_facts(ops_port));
    node.plan.cube.control_plane_wait_secs = 30;
    node.plan.cube.s3 = Some(S3Settings {
        endpoint: format!("http://127.0.0.1:{minio_port}"),
        access_key_id: "cubeminio".into(),
        secret_access_key: "s3-secret-value".into(),
        bucket: "cube-volumes".into(),
        region: None,
        s3fs_extra_opts: None,
    });
    let mut journal = Journal::new("test");
    let err = cube::install(&mut node.ctx(&mut journal)).unwrap_err();
    assert!(
        failure_text(&err).starts_with(&format!(
            "control plane http://127.0.0.1:{minio_port}/minio/health/live did not answer within 30 s: HTTP 503"
        )),
        "{}",
        failure_text(&err)
    );
    assert_eq!(ops_requests.load(Ordering::SeqCst), 2);
    let said = node.host.said();
    assert!(said.contains(&format!(
        "control plane http://127.0.0.1:{ops_port}/health answers"
    )));
}

#[test]
fn cubeops_listeners_are_firewalled_after_harden_and_after_a_reboot() {
    for (role, node) in hardened_nodes() {
        let root = node.root();
        let listening = cube::listeners::read(&node.host).unwrap();
        // What listens beyond loopback of the CubeOps era's new listeners.
        let new: Vec<u16> = [3010, 8890, 8083]
            .into_iter()
            .filter(|p| !cube::listeners::exposed(&listening, *p).is_empty())
            .collect();
        let want: &[u16] = if role == Role::Control {
            &[3010, 8890, 8083]
        } else {
            &[8890]
        };
        assert_eq!(new, want, "{role:?}");
        // Each is dropped unless from allow_from, in the rules nft loaded.
        let rules = node
            .host
            .read_string(cube::firewall::FIREWALL_PATH)
            .unwrap();
        for p in want {
            assert!(
                rules.contains(&format!(", {p}")),
                "{role:?}: {p} in\n{rules}"
            );
        }
        let ports = cubeboot::layout::restricted_ports_for(node.plan.cube.bundle.as_ref());
        let drop_line = rules
            .lines()
            .find(|l| l.contains("tcp dport") && l.trim_end().ends_with("drop"))
            .unwrap_or_else(|| panic!("{role:?}: no drop rule in\n{rules}"));
        for p in &ports {
            assert!(
                drop_line
                    .split(|c: char| !c.is_ascii_digit())
                    .any(|w| w == p.to_string()),
                "{role:?}: port {p} not dropped by {drop_line:?}"
            );
        }
        // A reboot: systemd starts the units again (ExecStartPre runs
        // prepare-compute-role.sh again, from .one-click.env), then the
        // bundle's quickcheck as up.sh runs it.
        for action in ["restart", "quickcheck"] {
            let cmd = CommandSpec::new("bash").args([
                under_root(root, &format!("{TOOLBOX}/fixture/services.sh"))
                    .display()
                    .to_string(),
                action.into(),
            ]);
            let out = run_real(&cmd, root, &fixture_env(root)).unwrap();
            assert_eq!(
                out.code,
                Some(0),
                "{role:?} {action}:\n{}{}",
                out.stdout,
                out.stderr
            );
        }
        let after = cube::listeners::read(&node.host).unwrap();
        for p in want {
            assert_eq!(
                cube::listeners::exposed(&after, *p),
                cube::listeners::exposed(&listening, *p),
                "{role:?}: {p}"
            );
        }
    }
}

#[test]
fn the_pre_cubeops_bundle_keeps_todays_join_and_firewall() {
    let (port, _) = control_plane_model();
    let mut node = Node::with_bundle(PRE_CUBEOPS, IP_ADDR);
    assert!(node.plan.cube.bundle.is_none());
    node.plan.cube.role = Role::Compute;
    node.plan.cube.control_plane_ip = Some(format!("127.0.0.1:{port}").parse().unwrap());
    node.plan.cube.allow_from = vec!["10.0.2.0/24".parse().unwrap()];
    let mut journal = Journal::new("test");
    let mut ctx = node.ctx(&mut journal);
    cube::install(&mut ctx).unwrap();
    cube::verify(&mut ctx).unwrap();
    let out = cube::harden(&mut ctx).unwrap();
    assert!(
        matches!(&out, Outcome::Done(d) if d.contains("ports 8089,9999,9998,3000,12088,9000,9966 only from")),
        "{out:?}"
    );
    let env = node.one_click_env();
    assert!(
        !env.contains("CUBEOPS_ADDR") && !env.contains("OPSAGENT"),
        "{env}"
    );
    assert!(!node
        .host
        .exists(&format!("{TOOLBOX}/ops-agent/conf/config.yaml")));
}

#[test]
fn the_cluster_cidr_goes_to_every_role_and_is_still_checked_against_the_host() {
    let (port, _) = control_plane_model();
    for role in [Role::Control, Role::Compute] {
        let mut node = Node::with_bundle(PLAIN, IP_ADDR);
        node.plan.cube.role = role;
        node.plan.cube.hardening = false;
        node.plan.cube.cluster_cidr = Some("172.31.0.0/18".parse().unwrap());
        if role == Role::Compute {
            node.plan.cube.control_plane_ip = Some(format!("127.0.0.1:{port}").parse().unwrap());
            node.plan.cube.bundle = Some(cubeops_facts(port));
        }
        let mut journal = Journal::new("test");
        let mut ctx = node.ctx(&mut journal);
        cube::install(&mut ctx).unwrap();
        assert_eq!(ctx.journal.facts.network_cidr, "172.31.0.0/18".parse().ok());
        let env = node.one_click_env();
        assert!(
            env.contains("CUBE_SANDBOX_NETWORK_CIDR=172.31.0.0/18\n"),
            "{role:?}: {env}"
        );
    }
    // A cluster CIDR this host's network overlaps: refused, not replaced.
    let mut node = Node::with_bundle(PLAIN, IP_ADDR);
    node.plan.cube.cluster_cidr = Some("10.0.0.0/16".parse().unwrap());
    let mut journal = Journal::new("test");
    let err = cube::install(&mut node.ctx(&mut journal)).unwrap_err();
    assert!(
        failure_text(&err).starts_with(
            "cube.cluster_cidr 10.0.0.0/16 overlaps address 10.0.2.15/24, route 10.0.2.2/32, route 10.0.2.0/24, nameserver 10.0.2.3 on this host"
        ),
        "{}",
        failure_text(&err)
    );
}

#[test]
fn the_control_node_keeps_the_planned_token_for_cubeops() {
    // install.sh neither generates nor replaces CUBE_OPS_OPSAGENT_TOKEN:
    // the bundle .env's value is what CubeOps reads from .one-click.env.
    let (node, result, checks) = control_node_with(None, true);
    assert!(result.is_ok(), "{:#}\n{checks:#?}", result.unwrap_err());
    let env = node.one_click_env();
    assert!(
        env.contains(&format!("CUBE_OPS_OPSAGENT_TOKEN={OPS_TOKEN}\n")),
        "{env}"
    );
    let agent = node
        .host
        .read_string(&format!("{TOOLBOX}/ops-agent/conf/config.yaml"))
        .unwrap();
    assert!(
        agent.contains(&format!("shared_token: \"{OPS_TOKEN}\"")),
        "{agent}"
    );
    assert!(node.host.commands().iter().all(|c| !c.contains(OPS_TOKEN)));
}

#[test]
fn on_aarch64_the_kvm_check_accepts_the_kernels_own_kvm_and_names_what_is_missing() {
    // Debian's arm64 kernels build KVM in (CONFIG_KVM=y): no module in
    // /proc/modules, /sys/module/kvm present. Seen in the aarch64 VM tier.
    let mut node = Node::empty();
    node.plan.target.arch = cubeboot::arch::Arch::Aarch64;
    node.host.on_program("journalctl", CmdOutput::ok(""));
    node.host.put("/proc/modules", "xfs 1 0 - Live 0x0\n");
    let endpoints = Endpoints {
        cube_api: None,
        cube_master: None,
        registration: None,
        node_ip: "10.0.2.15".into(),
    };
    let mut journal = Journal::new("test");
    journal.facts.kvm_mode = Some(KvmInUse::Native);
    let kvm_check = |journal: &mut Journal| {
        let mut ctx = node.ctx(journal);
        let _ = cube::verify::verify_with_probe(
            &mut ctx,
            &endpoints,
            Duration::from_secs(1),
            &cube::http::get,
        );
        check(ctx.journal, "kvm-module").unwrap()
    };
    assert_eq!(
        kvm_check(&mut journal),
        "fail: kvm is neither in /proc/modules nor built into the kernel (/sys/module/kvm)"
    );
    node.host
        .put("/sys/module/kvm/parameters/halt_poll_ns", "0\n");
    assert_eq!(kvm_check(&mut journal), "ok: kvm built into the kernel");
    node.host.put("/proc/modules", "kvm 1 0 - Live 0x0\n");
    assert_eq!(kvm_check(&mut journal), "ok: kvm loaded");
}

#[test]
fn a_bundle_unpacked_ahead_is_used_once_then_unpacked_fresh() {
    let mut node = Node::with_bundle(PLAIN, IP_ADDR);
    node.plan.cube.hardening = false;
    let asset = node.plan.assets.bundle.clone();
    let cached = format!("/var/lib/cubeboot/cache/{}", asset.sha256);
    cube::bundle::extract_ahead(&node.host, &cached, &asset.sha256).unwrap();
    // A file the bundle does not have: it survives only if cube-install
    // runs from what was unpacked ahead instead of unpacking again.
    let dir = cube::bundle::extract_dir(&asset.sha256);
    let witness = format!("{dir}/{}/ahead-witness", cube::bundle::stem(&asset.name));
    node.host.put(&witness, "unpacked ahead");
    let mut journal = Journal::new("test");
    journal.facts.kvm_mode = Some(KvmInUse::Pvm);
    cube::install(&mut node.ctx(&mut journal)).unwrap();
    assert!(node.host.exists(&witness), "cube-install unpacked again");
    assert!(
        !node.host.exists(&format!("{dir}.ahead")),
        "the marker is taken once"
    );
    // A second cube-install (a retry) re-verifies and unpacks fresh.
    let mut journal = Journal::new("test");
    journal.facts.kvm_mode = Some(KvmInUse::Pvm);
    cube::install(&mut node.ctx(&mut journal)).unwrap();
    assert!(!node.host.exists(&witness), "a retry must unpack fresh");
}

#[test]
fn a_bundle_that_changed_before_it_was_unpacked_ahead_leaves_nothing() {
    let node = Node::with_bundle(PLAIN, IP_ADDR);
    let asset = node.plan.assets.bundle.clone();
    let cached = format!("/var/lib/cubeboot/cache/{}", asset.sha256);
    node.host.put(&cached, b"evil");
    assert!(cube::bundle::extract_ahead(&node.host, &cached, &asset.sha256).is_err());
    let dir = cube::bundle::extract_dir(&asset.sha256);
    assert!(!node.host.exists(&dir) && !node.host.exists(&format!("{dir}.ahead")));
    assert_eq!(
        cube::bundle::take_extracted_ahead(&node.host, &asset.sha256).unwrap(),
        None
    );
}
