//! Shared fixtures: a small but real release (a .deb built by dpkg-deb, an
//! .rpm built by rpmbuild, a one-click-shaped tar.gz, the real helper),
//! locked by the real `cubeboot lock`; plus a 127.0.0.1 HTTP server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const KVER: &str = "6.6.69-test.cubesandbox.pvm.host-gt1";
pub const BUNDLE: &str = "cube-sandbox-one-click-v0.0.0-test-amd64.tar.gz";
pub const TAG: &str = "v0.0.0-test";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn cubeboot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cubeboot"))
        .args(args)
        .current_dir(repo())
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("running cubeboot")
}

/// Run and require success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = cubeboot(args);
    assert!(
        out.status.success(),
        "cubeboot {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run and require success; returns stderr (where cubeboot reports).
pub fn ok_stderr(args: &[&str]) -> String {
    let out = cubeboot(args);
    assert!(
        out.status.success(),
        "cubeboot {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run and require failure; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = cubeboot(args);
    assert!(
        !out.status.success(),
        "cubeboot {args:?} unexpectedly succeeded"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn sh(cmd: &str, dir: &Path) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Release {
    pub dir: PathBuf,
    pub lock: PathBuf,
    pub deb: PathBuf,
    pub rpm: PathBuf,
    pub bundle: PathBuf,
    pub helper: PathBuf,
}

/// Build a .deb holding a kernel (and optionally the kvm-pvm module).
pub fn make_deb(dir: &Path, kver: &str, with_module: bool) -> PathBuf {
    let root = dir.join(format!("deb-{kver}-{with_module}"));
    let moddir = root.join(format!("lib/modules/{kver}/kernel/arch/x86/kvm"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::create_dir_all(&moddir).unwrap();
    std::fs::write(root.join(format!("boot/vmlinuz-{kver}")), b"not a kernel").unwrap();
    std::fs::write(moddir.join("kvm.ko"), b"kvm").unwrap();
    if with_module {
        std::fs::write(moddir.join("kvm-pvm.ko"), b"kvm-pvm stand-in").unwrap();
    }
    std::fs::write(
        root.join("DEBIAN/control"),
        format!("Package: linux-image-{kver}\nVersion: 6.6.69-1\nArchitecture: amd64\nMaintainer: cubeboot tests <t@example.invalid>\nDescription: fixture kernel\n"),
    )
    .unwrap();
    let out = dir.join(format!("linux-image-{kver}_6.6.69-1_amd64.deb"));
    sh(
        &format!(
            "dpkg-deb -Zxz --root-owner-group --build {} {} >/dev/null",
            root.display(),
            out.display()
        ),
        dir,
    );
    std::fs::remove_dir_all(&root).unwrap();
    out
}

/// Build an .rpm with rpmbuild; `payload` is e.g. `w9.gzdio`, `w6.xzdio`.
pub fn make_rpm(dir: &Path, kver: &str, payload: &str) -> PathBuf {
    let top = dir.join(format!("rpmbuild-{payload}"));
    std::fs::create_dir_all(top.join("SPECS")).unwrap();
    let spec = format!(
        "Name: kernel\nVersion: 6.6.69\nRelease: 1\nSummary: fixture\nLicense: GPL-2.0\nBuildArch: x86_64\n%description\nfixture kernel\n%install\nmkdir -p %{{buildroot}}/boot %{{buildroot}}/lib/modules/{kver}/kernel/arch/x86/kvm\necho fixture > %{{buildroot}}/boot/vmlinuz-{kver}\necho fixture > %{{buildroot}}/lib/modules/{kver}/kernel/arch/x86/kvm/kvm-pvm.ko.xz\n%files\n/boot/vmlinuz-{kver}\n/lib/modules/{kver}\n"
    );
    std::fs::write(top.join("SPECS/k.spec"), spec).unwrap();
    sh(
        &format!(
            "rpmbuild -bb --define '_topdir {}' --define '_binary_payload {payload}' SPECS/k.spec >/dev/null 2>&1",
            top.display()
        ),
        &top,
    );
    let built = top.join("RPMS/x86_64/kernel-6.6.69-1.x86_64.rpm");
    let out = dir.join(format!(
        "kernel-6.6.69_{}-1.x86_64.rpm",
        payload.replace('.', "_")
    ));
    std::fs::rename(built, &out).unwrap();
    std::fs::remove_dir_all(&top).unwrap();
    out
}

/// `cubeboot lock` of `assets` (with the test release's tag) into
/// DIR/cubeboot.lock.
pub fn lock_assets(dir: &Path, assets: &[&Path]) -> PathBuf {
    let lock = dir.join("cubeboot.lock");
    let mut args = vec!["lock"];
    for a in assets {
        args.extend(["--asset", a.to_str().unwrap()]);
    }
    args.extend(["--tag", TAG, "--output", lock.to_str().unwrap()]);
    ok(&args);
    lock
}

/// Deterministic incompressible bytes (a bundle's payload in the bundle
/// tests).
pub fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn release() -> &'static Release {
    static RELEASE: OnceLock<Release> = OnceLock::new();
    RELEASE.get_or_init(|| {
        // One fixed place under target/, rebuilt per run: nothing leaks into /tmp.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("builder-release");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let deb = make_deb(&dir, KVER, true);
        let rpm = make_rpm(&dir, KVER, "w6.xzdio");
        let stem = BUNDLE.trim_end_matches(".tar.gz");
        std::fs::create_dir_all(dir.join(stem)).unwrap();
        std::fs::write(dir.join(stem).join("install.sh"), "#!/bin/sh\nexit 0\n").unwrap();
        sh(&format!("tar -czf {BUNDLE} {stem} && rm -r {stem}"), &dir);
        // The real static helper (examples/release, ~2.7 MB): its size is
        // what decides where it fits (embedding, budgets, mirrors).
        let helper = dir.join("cube-firstboot");
        std::fs::copy(repo().join("examples/release/cube-firstboot"), &helper).unwrap();
        let lock = dir.join("cubeboot.lock");
        ok(&[
            "lock",
            "--asset",
            deb.to_str().unwrap(),
            "--asset",
            rpm.to_str().unwrap(),
            "--asset",
            dir.join(BUNDLE).to_str().unwrap(),
            "--asset",
            helper.to_str().unwrap(),
            "--tag",
            TAG,
            "--output",
            lock.to_str().unwrap(),
        ]);
        Release {
            bundle: dir.join(BUNDLE),
            dir,
            lock,
            deb,
            rpm,
            helper,
        }
    })
}

/// Serve files from `dir` on 127.0.0.1 until the test process exits.
/// Returns the base URL.
pub fn serve(dir: &Path) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Drain headers.
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) <= 2 {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let file = dir.join(path.trim_start_matches('/'));
            match std::fs::File::open(&file) {
                Ok(mut f) => {
                    let len = f.metadata().unwrap().len();
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                    );
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = f.read(&mut buf).unwrap_or(0);
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
                Err(_) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
            }
        }
    });
    format!("http://{addr}")
}

pub fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cubeboot-test-")
        .tempdir()
        .unwrap()
}
