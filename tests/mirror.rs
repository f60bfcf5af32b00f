//! `cubeboot mirror` round trip: mirror the example lock (downloading from a
//! 127.0.0.1 origin), serve the directory on 127.0.0.1, build with
//! `--mirror` pointing at it, and run the helper's fetch against it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use cubeboot::firstboot::fetch::{fetch_asset, Fetched};
use cubeboot::firstboot::host::ScriptedHost;
use cubeboot::plan::Plan;
use cubeboot::transport::FetchConfig;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The path of the example lock's release URLs.
const RELEASE_PATH: &str = "TencentCloud/CubeSandbox/releases/download/v0.0.0-fixture";

/// Serve `dir` over HTTP on 127.0.0.1 as a static web server does (GET by
/// path, the URL path mapped under `dir` after `strip`); returns the base
/// URL. With `corrupt`, every body has its first byte flipped.
fn serve(dir: PathBuf, strip: &'static str, corrupt: bool) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = server.server_addr().to_ip().unwrap();
    thread::spawn(move || {
        for request in server.incoming_requests() {
            let path = request.url().split('?').next().unwrap_or("");
            let name = path
                .trim_start_matches('/')
                .strip_prefix(strip)
                .unwrap_or("\0")
                .trim_start_matches('/')
                .to_string();
            match std::fs::read(dir.join(&name)) {
                Ok(mut bytes) if !name.contains("..") => {
                    if corrupt {
                        bytes[0] ^= 1;
                    }
                    let _ = request.respond(tiny_http::Response::from_data(bytes));
                }
                _ => {
                    let _ = request.respond(tiny_http::Response::empty(404));
                }
            }
        }
    });
    format!("http://{addr}")
}

fn cubeboot(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cubeboot"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `cubeboot mirror --lock LOCK --to DIR`.
fn mirror_to(lock: &Path, dir: &Path) -> (bool, String) {
    cubeboot(&[
        "mirror",
        "--lock",
        lock.to_str().unwrap(),
        "--to",
        dir.to_str().unwrap(),
    ])
}

/// The example lock, alone in `dir` (no local copies beside it), its
/// primary URLs moved to `origin` (same paths) and its cn mirrors dropped.
fn lock_pointing_at(dir: &Path, origin: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("examples/release/cubeboot.lock")).unwrap();
    let mut lines = Vec::new();
    let mut skip = false;
    for line in text.lines() {
        if line.trim() == "mirrors:" {
            skip = true;
            continue;
        }
        if skip && line.trim_start().starts_with("cn:") {
            continue;
        }
        skip = false;
        lines.push(line.replace("https://github.com", origin));
    }
    let lock = dir.join("cubeboot.lock");
    std::fs::write(&lock, lines.join("\n") + "\n").unwrap();
    lock
}

#[test]
fn mirror_serve_build_and_fetch_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    // Step 1: mirror from an origin, downloading every asset.
    let origin = serve(repo().join("examples/release"), RELEASE_PATH, false);
    let lock_dir = tmp.path().join("lock");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let lock = lock_pointing_at(&lock_dir, &origin);
    let mirror = tmp.path().join("mirror");
    let (ok, said) = mirror_to(&lock, &mirror);
    assert!(ok, "{said}");
    assert_eq!(
        said.matches(": downloaded from http://127.0.0.1").count(),
        4,
        "{said}"
    );
    for name in [
        "cube-firstboot",
        "cube-sandbox-one-click-v0.0.0-fixture-amd64.tar.gz",
        "kernel-6.6.69_opencloudos9.cubesandbox.pvm.host_gfixture1-1.x86_64.rpm",
        "linux-image-6.6.69-opencloudos9.cubesandbox.pvm.host-gfixture1_6.6.69-gfixture1-1_amd64.deb",
    ] {
        // Under the URL's path, so a base-URL swap finds it.
        assert_eq!(
            std::fs::read(mirror.join(RELEASE_PATH).join(name)).unwrap(),
            std::fs::read(repo().join("examples/release").join(name)).unwrap(),
            "{name}"
        );
    }
    // Again: nothing to do.
    let (ok, said) = mirror_to(&lock, &mirror);
    assert!(ok, "{said}");
    assert_eq!(said.matches(": up to date").count(), 4, "{said}");

    // Step 2: serve the mirror, build against it.
    let served = serve(mirror.clone(), "", false);
    let out = tmp.path().join("out");
    let (ok, said) = cubeboot(&[
        "build",
        "--lock",
        repo()
            .join("examples/release/cubeboot.lock")
            .to_str()
            .unwrap(),
        "--profile",
        "debian-12",
        "--mirror",
        &served,
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{said}");
    let plan = Plan::from_json(&std::fs::read_to_string(out.join("debian-12/plan.json")).unwrap())
        .unwrap();
    let user_data = std::fs::read_to_string(out.join("debian-12/user-data")).unwrap();
    assert!(
        user_data.contains(&format!("{served}/{RELEASE_PATH}/cube-firstboot")),
        "the bootstrap fetches the helper from the mirror first"
    );

    // Step 3: the helper's fetch, against the mirror only.
    let target = tempfile::tempdir().unwrap();
    let host = ScriptedHost::new(target.path());
    for (kind, asset) in plan.assets.all() {
        assert!(asset.urls[0].starts_with(&served), "{:?}", asset.urls);
        let mut only_mirror = asset.clone();
        only_mirror.urls.truncate(1);
        let got = fetch_asset(&host, kind, &only_mirror, &FetchConfig::default()).unwrap();
        assert!(
            matches!(&got, Fetched::Downloaded { url, .. } if url.starts_with(&served)),
            "{kind}: {got:?}"
        );
    }
}

#[test]
fn a_mirror_source_with_wrong_bytes_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = serve(repo().join("examples/release"), RELEASE_PATH, true);
    let lock = lock_pointing_at(tmp.path(), &origin);
    let mirror = tmp.path().join("mirror");
    let (ok, said) = mirror_to(&lock, &mirror);
    assert!(!ok, "{said}");
    assert!(
        said.contains("the lock pins 7432 bytes with sha256 98f055ca"),
        "{said}"
    );
    assert_eq!(files_under(&mirror), Vec::<String>::new());
}

/// Every file under `dir`, relative.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn two_assets_on_one_path_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("examples/release/cubeboot.lock")).unwrap();
    // The bundle's URL: another host, the same path as the helper's.
    let bundle_url = format!(
        "https://github.com/{RELEASE_PATH}/cube-sandbox-one-click-v0.0.0-fixture-amd64.tar.gz"
    );
    let text = text.replace(
        &format!("url: {bundle_url}"),
        &format!("url: https://downloads.example.com/{RELEASE_PATH}/cube-firstboot"),
    );
    assert!(text.contains("downloads.example.com"));
    let lock = tmp.path().join("cubeboot.lock");
    std::fs::write(&lock, text).unwrap();
    let mirror = tmp.path().join("mirror");
    let (ok, said) = mirror_to(&lock, &mirror);
    assert!(!ok, "{said}");
    assert!(
        said.contains(&format!(
            "assets bundle (https://downloads.example.com/{RELEASE_PATH}/cube-firstboot) and \
             helper (https://github.com/{RELEASE_PATH}/cube-firstboot) collide in the mirror, \
             with different bytes: {RELEASE_PATH}/cube-firstboot"
        )),
        "{said}"
    );
    assert!(!mirror.exists(), "the mirror directory was created");
}

/// Issue 21 item 7: when a later asset fails verification, the earlier
/// good ones are not copied either: every asset is fetched and verified
/// before any takes its place, and a failure leaves the directory empty.
#[test]
fn a_bad_later_asset_leaves_no_earlier_one_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = serve(repo().join("examples/release"), RELEASE_PATH, false);
    let lock = lock_pointing_at(tmp.path(), &origin);
    // The helper (mirrored last) pinned to other bytes.
    let text = std::fs::read_to_string(&lock).unwrap();
    // The helper's sha256 is the lock's last one (it is pinned last).
    let helper_pin = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("sha256: "))
        .unwrap()
        .to_string();
    let helper_pin = helper_pin.as_str();
    assert!(text.contains(&format!(
        "size: {}\n    sha256: {helper_pin}",
        std::fs::metadata(repo().join("examples/release/cube-firstboot"))
            .unwrap()
            .len()
    )));
    std::fs::write(&lock, text.replace(helper_pin, &"ab".repeat(32))).unwrap();
    let mirror = tmp.path().join("mirror");
    let (ok, said) = mirror_to(&lock, &mirror);
    assert!(!ok, "{said}");
    assert!(said.contains("mirroring cube-firstboot (helper)"), "{said}");
    assert_eq!(files_under(&mirror), Vec::<String>::new());
}
