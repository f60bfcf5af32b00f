//! The helper's critical path from first start to `done`: the real runner
//! and the real fetch step against a temp root, with the kernel and Cube
//! stages stood in by steps whose commands take configurable durations on
//! the scripted host (package install, kernel install with its initramfs,
//! the Cube installer), a reboot that takes a configurable time, and the
//! assets served by a 127.0.0.1 server paced to the profile's rate in one of
//! two ways a real network has (src/firstboot/link.rs):
//!   per connection: each connection gets the rate (a long lossy path,
//!                   where a second connection adds to the total)
//!   shared link:    all connections together get the rate (a cloud
//!                   server's bandwidth cap), split between them
//!
//! For each network profile it prints the measured time to `done` against
//!   limit      = max(bundle dl, kernel dl + prereqs + kernel install)
//!                + reboot + Cube install
//!   (on a shared link the bundle's download can only end after both:
//!   max(kernel dl + bundle dl, kernel dl + prereqs + kernel install) ...)
//!   sequential = kernel dl + bundle dl + prereqs + kernel install
//!                + reboot + Cube install
//! (the old strictly sequential order: every download, then the rest), and
//! the time without the kernel's priority (the bundle never gives way: the
//! previous behaviour).
//!
//! Run through `scripts/bench-critical-path.sh`, which passes the sizes,
//! durations and rates; see there for the scaling.

#[path = "../tests/support/target.rs"]
#[allow(dead_code)]
mod target;

#[path = "../tests/support/link.rs"]
mod link;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cubeboot::firstboot::host::{CmdOutput, CommandSpec, Host};
use cubeboot::firstboot::live;
use cubeboot::firstboot::runner::{self, RunEnd, Scope};
use cubeboot::firstboot::{cache_path, StepId};
use link::SharedLink;
use target::{opts, stand_in_steps, AssetFile, Target};

/// What one run is made of (seconds and bytes, already scaled).
#[derive(Clone, Copy)]
struct Profile {
    kernel_bytes: usize,
    bundle_bytes: usize,
    rate: f64,
    shared_link: bool,
    prereqs: f64,
    kernel_install: f64,
    reboot: f64,
    cube_install: f64,
}

impl Profile {
    fn kernel_dl(&self) -> f64 {
        self.kernel_bytes as f64 / self.rate
    }
    fn bundle_dl(&self) -> f64 {
        self.bundle_bytes as f64 / self.rate
    }
    fn limit(&self) -> f64 {
        let bundle_done = if self.shared_link {
            self.kernel_dl() + self.bundle_dl()
        } else {
            self.bundle_dl()
        };
        bundle_done.max(self.kernel_dl() + self.prereqs + self.kernel_install)
            + self.reboot
            + self.cube_install
    }
    fn sequential(&self) -> f64 {
        self.kernel_dl()
            + self.bundle_dl()
            + self.prereqs
            + self.kernel_install
            + self.reboot
            + self.cube_install
    }
}

fn arg(args: &[String], name: &str, default: f64) -> f64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Sizes in MB (1e6 bytes), durations in seconds, rates in MB/s; all
    // already divided by the script's scale.
    let rates: Vec<f64> = args
        .iter()
        .position(|a| a == "--rates")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(|r| r.parse().expect("rate")).collect())
        .unwrap_or_else(|| vec![100.0, 10.0, 2.0]);
    let labels: Vec<String> = args
        .iter()
        .position(|a| a == "--labels")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(String::from).collect())
        .unwrap_or_else(|| rates.iter().map(|r| format!("{r} MB/s")).collect());
    let scale = arg(&args, "--scale", 1.0);
    let base = Profile {
        kernel_bytes: (arg(&args, "--kernel-mb", 70.0) * 1e6) as usize,
        bundle_bytes: (arg(&args, "--bundle-mb", 300.0) * 1e6) as usize,
        rate: 0.0,
        shared_link: false,
        prereqs: arg(&args, "--prereqs-s", 60.0),
        kernel_install: arg(&args, "--kernel-install-s", 90.0),
        reboot: arg(&args, "--reboot-s", 45.0),
        cube_install: arg(&args, "--cube-install-s", 300.0),
    };
    println!(
        "| link | profile | measured | limit | measured/limit | sequential | measured/sequential | without priority | without/limit |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for shared_link in [false, true] {
        for (rate, label) in rates.iter().zip(&labels) {
            let p = Profile {
                rate: rate * 1e6,
                shared_link,
                ..base
            };
            let took = run(&p, scale, true);
            let without = run(&p, scale, false);
            // Shown at full scale: the seconds a real node would take.
            let s = |x: f64| format!("{:.0} s", x * scale);
            println!(
                "| {} | {label} | {} | {} | {:.2}x | {} | {:.2}x | {} | {:.2}x |",
                if shared_link {
                    "shared"
                } else {
                    "per connection"
                },
                s(took),
                s(p.limit()),
                took / p.limit(),
                s(p.sequential()),
                took / p.sequential(),
                s(without),
                without / p.limit(),
            );
        }
    }
}

/// One first boot from the first start to `done`; seconds taken. Without
/// `priority` the bundle never gives way to the kernel.
fn run(p: &Profile, scale: f64, priority: bool) -> f64 {
    let kernel = AssetFile::new("linux-image-pvm_amd64.deb", p.kernel_bytes, 1);
    let bundle = AssetFile::new("cube-sandbox-one-click-bench.tar.gz", p.bundle_bytes, 2);
    let server = PacedServer::start(
        vec![
            (format!("/{}", kernel.name), kernel.bytes.clone()),
            (format!("/{}", bundle.name), bundle.bytes.clone()),
        ],
        p.rate,
        p.shared_link,
    );
    let (ku, bu) = (server.url(&kernel.name), server.url(&bundle.name));
    let t = Target::with_plan_edit(|plan| {
        let set = |a: &mut serde_json::Value, f: &AssetFile, url: &str| {
            a["urls"] = serde_json::json!([url]);
            a["sha256"] = serde_json::json!(f.sha256().to_hex());
            a["size"] = serde_json::json!(f.bytes.len());
            a["name"] = serde_json::json!(f.name);
        };
        set(&mut plan["assets"]["kernel"], &kernel, &ku);
        set(&mut plan["assets"]["bundle"], &bundle, &bu);
    });
    // The commands of the stood-in stages take their profile's time.
    let durations = [
        ("apt-get", p.prereqs),
        ("dpkg", p.kernel_install),
        ("install.sh", p.cube_install),
    ];
    t.host.on(move |c: &CommandSpec| {
        let (_, secs) = durations.iter().find(|(prog, _)| c.program == *prog)?;
        std::thread::sleep(Duration::from_secs_f64(*secs));
        Some(Ok(CmdOutput::ok("")))
    });
    // The link measurement's times shrink with everything else.
    let rules = live::Rules::default();
    let o = runner::RunOptions {
        link: live::Rules {
            probe: rules.probe.div_f64(scale),
            window: rules.window.div_f64(scale),
            stall: rules.stall.div_f64(scale),
            yield_below: if priority { rules.yield_below } else { 0.0 },
        },
        ..opts(Scope::All)
    };
    let steps = stand_in_steps(&o)
        .with(StepId::CubePrereqs, |ctx| {
            ctx.host
                .run(&CommandSpec::new("apt-get").args(["install", "-y", "curl", "xfsprogs"]))?;
            Ok(cubeboot::firstboot::Outcome::Done(
                "packages present".into(),
            ))
        })
        .with(StepId::KernelInstall, |ctx| {
            let cached = cache_path(&ctx.plan.assets.kernel);
            ctx.host
                .run(&CommandSpec::new("dpkg").args(["-i", &cached]))?;
            ctx.host
                .write_atomic("/boot/vmlinuz-pvm", b"kernel image\n", 0o644)?;
            ctx.journal.facts.old_kernel = Some("6.1.0-26-amd64".into());
            Ok(cubeboot::firstboot::Outcome::Done("installed".into()))
        })
        .with(StepId::CubeInstall, |ctx| {
            let cached = cache_path(&ctx.plan.assets.bundle);
            if !ctx.host.exists(&cached) {
                anyhow::bail!("bundle not in the cache");
            }
            ctx.host.run(&CommandSpec::new("install.sh"))?;
            Ok(cubeboot::firstboot::Outcome::Done("installed".into()))
        });
    let start = Instant::now();
    let trace = std::env::var_os("BENCH_TRACE").is_some();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // BENCH_TRACE=1: each console line with the time it appeared.
        if trace {
            let (host, stop) = (&t.host, &stop);
            s.spawn(move || {
                let mut seen = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let said = host.said();
                    for line in &said[seen.min(said.len())..] {
                        eprintln!("{:7.3} {line}", start.elapsed().as_secs_f64());
                    }
                    seen = said.len();
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        starts(&t, &o, &steps, p.reboot);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    start.elapsed().as_secs_f64()
}

/// Start the helper, rebooting (taking `reboot` seconds) when it asks,
/// until it is done.
fn starts(t: &Target, o: &runner::RunOptions, steps: &runner::Steps, reboot: f64) {
    let (plan, digest) = t.plan();
    for boot in 2..6 {
        match runner::run_with(&t.host, &plan, &digest, o, steps).expect("run") {
            RunEnd::Rebooting => {
                std::thread::sleep(Duration::from_secs_f64(reboot));
                // What `Target::reboot` does: a new boot id, /run emptied.
                let _ = std::fs::remove_dir_all(t.host.path("/run/cubeboot"));
                t.host
                    .put("/proc/sys/kernel/random/boot_id", format!("boot-{boot}\n"));
            }
            RunEnd::Done => return,
            other => panic!("run ended {other:?}: {:#?}", t.host.said()),
        }
    }
    panic!("no `done` after 4 starts");
}

/// HTTP/1.1 on 127.0.0.1 serving fixed bodies, honouring `Range: bytes=N-`,
/// paced to `rate` bytes per second per connection, or for all of them
/// together on a shared link.
struct PacedServer {
    port: u16,
}

/// When a connection may send its next chunk.
#[derive(Clone)]
enum Pacer {
    /// Each connection at `rate` from its own start.
    PerConnection(f64),
    /// All connections through one link (tests/support/link.rs).
    Shared(Arc<SharedLink>),
}

impl Pacer {
    /// Sleep until `chunk` bytes, `sent` of them on this connection since
    /// `start`, have had their time on the wire.
    fn pace(&self, start: Instant, sent: usize, chunk: usize) {
        match self {
            Pacer::PerConnection(rate) => {
                let due = Duration::from_secs_f64(sent as f64 / rate);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            Pacer::Shared(link) => link.pace(chunk),
        }
    }
}

impl PacedServer {
    fn start(routes: Vec<(String, Vec<u8>)>, rate: f64, shared_link: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("addr").port();
        let routes = Arc::new(routes);
        let pacer = if shared_link {
            Pacer::Shared(Arc::new(SharedLink::new(rate)))
        } else {
            Pacer::PerConnection(rate)
        };
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let routes = routes.clone();
                let pacer = pacer.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &routes, &pacer);
                });
            }
        });
        Self { port }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

fn serve(conn: TcpStream, routes: &[(String, Vec<u8>)], pacer: &Pacer) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut from = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(r) = lower.strip_prefix("range: bytes=") {
            from = r.trim().trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    let mut out = conn;
    let Some((_, body)) = routes.iter().find(|(p, _)| *p == path) else {
        return out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    };
    let from = from.min(body.len());
    let head = if from > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
            body.len() - from,
            body.len() - 1,
            body.len()
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            body.len()
        )
    };
    out.write_all(head.as_bytes())?;
    let start = Instant::now();
    let mut sent = 0usize;
    for chunk in body[from..].chunks(16 * 1024) {
        out.write_all(chunk)?;
        sent += chunk.len();
        pacer.pace(start, sent, chunk.len());
    }
    out.flush()
}
