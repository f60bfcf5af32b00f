//! Bundle extraction speed: the helper's verified extraction (SHA-256 check,
//! then one pass that hashes while it unpacks with every entry checked)
//! against the standard tools doing the same job (`sha256sum` then
//! `tar -xzf`), on the same synthetic ~300 MB bundle (the size of v0.7.2's
//! amd64 bundle, docs/cube-installer.md "Time budgets"), in the same run.
//!
//! Run: `cargo bench --bench bundle_extract` (writes into a temp dir).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cubeboot::digest::{hash_reader, Sha256Digest};
use cubeboot::firstboot::cube::bundle;
use cubeboot::firstboot::host::RealHost;

const TOTAL_MB: usize = 300;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = dir.path().join("bundle.tar.gz");
    make_bundle(&archive);
    let size = std::fs::metadata(&archive).expect("archive").len();
    let digest: Sha256Digest = hash_reader(std::fs::File::open(&archive).expect("open"))
        .expect("hash")
        .0;
    println!(
        "bundle: {:.1} MB compressed, {TOTAL_MB} MB unpacked",
        size as f64 / 1e6
    );

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..3 {
        let root = dir.path().join(format!("root-{round}"));
        std::fs::create_dir_all(&root).expect("root");
        std::fs::copy(&archive, root.join("bundle.tar.gz")).expect("copy");
        let host = RealHost::new(&root);
        let t = Instant::now();
        bundle::verify(&host, "/bundle.tar.gz", &digest).expect("verify");
        bundle::extract_verified(&host, "/bundle.tar.gz", &digest, "/out").expect("extract");
        ours.push(t.elapsed());

        let out = dir.path().join(format!("tar-{round}"));
        std::fs::create_dir_all(&out).expect("out");
        let t = Instant::now();
        run(Command::new("sha256sum")
            .arg(&archive)
            .stdout(std::process::Stdio::null()));
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&out));
        theirs.push(t.elapsed());
        std::fs::remove_dir_all(&root).ok();
        std::fs::remove_dir_all(&out).ok();
    }
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let (a, b) = (best(&ours), best(&theirs));
    println!(
        "cube-firstboot verify+extract: best {:.2} s ({:.0} MB/s unpacked)",
        a.as_secs_f64(),
        TOTAL_MB as f64 / a.as_secs_f64()
    );
    println!(
        "sha256sum + tar -xzf:          best {:.2} s ({:.0} MB/s unpacked)",
        b.as_secs_f64(),
        TOTAL_MB as f64 / b.as_secs_f64()
    );
    println!(
        "ratio (ours / tools): {:.2}",
        a.as_secs_f64() / b.as_secs_f64()
    );
    // Includes the generator's 60 MB chunk buffer: extraction itself streams.
    println!("peak RSS of the bench process: {}", peak_rss());
}

/// A bundle-shaped archive: a few large files (the package tarball, guest
/// kernels) and many small ones, partly compressible like real binaries.
fn make_bundle(path: &Path) {
    let f = std::fs::File::create(path).expect("create");
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut chunk = |n: usize| -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            // xorshift: incompressible bytes, then a run of zeros (half compressible).
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v.extend_from_slice(&state.to_le_bytes());
            v.extend_from_slice(&[0u8; 8]);
        }
        v.truncate(n);
        v
    };
    let add = |tar: &mut tar::Builder<_>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1);
        h.set_cksum();
        tar.append_data(&mut h, name, data).expect("append");
    };
    let top = "cube-sandbox-one-click-v0.0.0-bench-amd64";
    for i in 0..4 {
        add(
            &mut tar,
            &format!("{top}/assets/big-{i}.bin"),
            &chunk(60 << 20),
        );
    }
    for i in 0..2400 {
        add(
            &mut tar,
            &format!("{top}/scripts/d{}/f{i}.sh", i % 40),
            &chunk(25 << 10),
        );
    }
    let gz = tar.into_inner().expect("tar");
    let mut f = gz.finish().expect("gzip");
    f.flush().expect("flush");
}

fn run(c: &mut Command) {
    let st = c.status().expect("run tool");
    assert!(st.success(), "{c:?} failed");
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l[6..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
