//! The builder's real output drives the helper: `cubeboot build` renders
//! user-data for Debian 12 from the example release; the plan is read back
//! out of that user-data exactly as cloud-init's `write_files` would decode
//! it (gz+b64), and the helper runs on it against a scripted host, fetching
//! the real release files from a local server and verifying them against
//! the digests the lock pinned.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use cubeboot::firstboot::host::Host;
use cubeboot::firstboot::runner::{RunEnd, Scope};
use cubeboot::firstboot::{cache_path, JOURNAL_PATH, STATUS_PATH};
use cubeboot::plan::Plan;
use support::server::Server;
use support::target::{opts, read_json};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The decoded content of the `write_files` entry for `path`.
fn written_file(user_data: &serde_yaml::Value, path: &str) -> Vec<u8> {
    let entry = user_data["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("user-data writes no {path}"));
    let content = entry["content"].as_str().unwrap();
    match entry["encoding"].as_str() {
        Some("gz+b64") => {
            let gz = base64::engine::general_purpose::STANDARD
                .decode(content.trim())
                .unwrap();
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        None => content.as_bytes().to_vec(),
        Some(other) => panic!("unexpected encoding {other}"),
    }
}

#[test]
fn the_plan_inside_real_user_data_runs_on_the_helper() {
    // Serve the example release the lock pins as `cubeboot mirror` lays it
    // out: under the path of each URL in the lock.
    let server = Server::start();
    let release = manifest_dir().join("examples/release");
    for entry in std::fs::read_dir(&release).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        server.route(
            &format!("/rel/TencentCloud/CubeSandbox/releases/download/v0.0.0-fixture/{name}"),
            &std::fs::read(&p).unwrap(),
            vec![],
        );
    }
    server.route("/hook", b"", vec![]);

    let out_dir = tempfile::tempdir().unwrap();
    let built = Command::new(env!("CARGO_BIN_EXE_cubeboot"))
        .current_dir(manifest_dir())
        .args(["build", "--lock", "examples/release/cubeboot.lock"])
        .args(["--profile", "debian-12", "--mirror"])
        .arg(server.url("/rel/"))
        .arg("--webhook")
        .arg(server.url("/hook"))
        .arg("--output")
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "cubeboot build failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let text = std::fs::read_to_string(out_dir.path().join("debian-12/user-data")).unwrap();
    assert!(text.starts_with("#cloud-config\n"));
    let user_data: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();

    // cloud-init's write_files, by hand: the plan as the helper will read it.
    let plan_bytes = written_file(&user_data, "/etc/cubeboot/plan.json");
    let plan = Plan::from_json(std::str::from_utf8(&plan_bytes).unwrap()).unwrap();
    assert_eq!(plan.target.profile, "debian-12");
    assert!(plan.assets.kernel.urls[0].starts_with(&server.url("/rel/")));
    // The readable copy next to the user-data is the same plan.
    let beside = std::fs::read(out_dir.path().join("debian-12/plan.json")).unwrap();
    assert_eq!(
        Plan::from_json(std::str::from_utf8(&beside).unwrap()).unwrap(),
        plan
    );

    let mut t = support::target::Target::new();
    t.host.put("/etc/cubeboot/plan.json", &plan_bytes);
    assert_eq!(t.run_to_end(&opts(Scope::All), 3), RunEnd::Done);

    // The real release files were fetched and matched the pinned digests.
    for asset in [&plan.assets.kernel, &plan.assets.bundle] {
        let cached = t.host.read(&cache_path(asset)).unwrap();
        assert_eq!(cached, std::fs::read(release.join(&asset.name)).unwrap());
    }
    let status = read_json(&t.host, STATUS_PATH);
    assert_eq!(status["state"], "done");
    assert_eq!(status["profile"], "debian-12");
    assert_eq!(status["generator"], plan.generator.as_str());
    let journal = read_json(&t.host, JOURNAL_PATH);
    assert_eq!(
        journal["plan_sha256"],
        cubeboot::digest::Sha256Digest::of(&plan_bytes).to_hex()
    );
    // The webhook the builder put in the plan heard the end.
    let last = server.requests_to("/hook").pop().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(v["state"], "done");
}
