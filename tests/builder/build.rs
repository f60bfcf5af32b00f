//! `cubeboot build`: outputs, budgets, atomicity, reproducibility.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;

use crate::support::*;

pub const PROFILES: [&str; 9] = [
    "almalinux-9",
    "centos-stream-9",
    "debian-12",
    "debian-13",
    "opencloudos-9",
    "rocky-9",
    "tencentos-4",
    "ubuntu-22.04",
    "ubuntu-24.04",
];

fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let rel = entry
                .path()
                .strip_prefix(dir)
                .unwrap()
                .display()
                .to_string();
            out.insert(rel, std::fs::read(entry.path()).unwrap());
        }
    }
    out
}

pub fn gunzip_b64(text: &[u8]) -> Vec<u8> {
    let gz = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn builds_every_profile_with_all_files() {
    let rel = release();
    let out = tempdir();
    ok(&[
        "build",
        "--lock",
        rel.lock.to_str().unwrap(),
        "--profile",
        "all",
        "--output",
        out.path().to_str().unwrap(),
    ]);
    let tree = read_tree(out.path());
    for p in PROFILES {
        let names: Vec<&str> = tree
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{p}/")))
            .collect();
        assert_eq!(
            names,
            [
                "SHA256SUMS",
                "manifest.json",
                "plan.json",
                "user-data",
                "user-data.gz.b64"
            ],
            "{p}"
        );
        let ud = &tree[&format!("{p}/user-data")];
        // Target: plain user-data within 5 KiB with default options (4 KiB
        // until upstream's PVM boot parameters became the default).
        assert!(ud.len() <= 5120, "{p}: user-data is {} bytes", ud.len());
        assert!(ud.starts_with(b"#cloud-config\n"));
        // gz+b64 decodes to the identical document.
        assert_eq!(
            &gunzip_b64(&tree[&format!("{p}/user-data.gz.b64")]),
            ud,
            "{p}"
        );
        // SHA256SUMS is sorted and true (checked by the real sha256sum).
        let sums = String::from_utf8(tree[&format!("{p}/SHA256SUMS")].clone()).unwrap();
        let names: Vec<&str> = sums
            .lines()
            .map(|l| l.split("  ").nth(1).unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(names.len(), 4);
        sh(
            "sha256sum --strict -c SHA256SUMS >/dev/null",
            &out.path().join(p),
        );
        // The plan parses with the helper's own reader and is the one embedded.
        let plan_text = String::from_utf8(tree[&format!("{p}/plan.json")].clone()).unwrap();
        let plan = cubeboot::plan::Plan::from_json(&plan_text).unwrap();
        assert_eq!(plan.target.profile, p);
        assert_eq!(plan.kernel.kver, KVER);
        // The trial boot by kexec is the default (docs/bootloader.md).
        assert_eq!(plan.reboot, Some(cubeboot::plan::RebootMode::Kexec));
        // The default is the PVM part of upstream's host_grub_config.sh
        // (docs/pvm-kernel.md, "Boot parameters"), console and cloud ones left out.
        let params = plan.kernel.boot_params.join(" ");
        for wanted in [
            "nopti",
            "pti=off",
            "kvm.nx_huge_pages=never",
            "mitigations=on",
            "clocksource=tsc",
            "tsc=reliable",
            "no5lvl",
        ] {
            assert!(
                plan.kernel.boot_params.iter().any(|p| p == wanted),
                "{wanted} not in {params}"
            );
        }
        assert!(params.contains(" clearcpuid=27,28,54,"), "{params}");
        for opt_in in [
            "console=",
            "net.ifnames=",
            "biosdevname=",
            "ipv6.disable=",
            "crashkernel=",
            "quiet",
        ] {
            assert!(
                !params.contains(opt_in),
                "{opt_in} is opt-in (tencent) but in {params}"
            );
        }
        let doc: serde_json::Value = serde_yaml::from_slice(ud).unwrap();
        assert_eq!(doc["write_files"][0]["encoding"], "gz+b64");
        let written = gunzip_b64(
            doc["write_files"][0]["content"]
                .as_str()
                .unwrap()
                .as_bytes(),
        );
        assert_eq!(written, plan_text.as_bytes());
        assert_eq!(doc["write_files"][0]["permissions"], "0600");
        let manifest: serde_json::Value =
            serde_json::from_slice(&tree[&format!("{p}/manifest.json")]).unwrap();
        assert_eq!(manifest["cloud"]["name"], "aws");
        assert_eq!(manifest["cloud"]["size"], ud.len());
        assert!(manifest["generator"]
            .as_str()
            .unwrap()
            .starts_with("cubeboot "));
    }
    let deb = String::from_utf8(tree["debian-12/plan.json"].clone()).unwrap();
    assert!(deb.contains(rel.deb.file_name().unwrap().to_str().unwrap()));
    let rpm = String::from_utf8(tree["rocky-9/plan.json"].clone()).unwrap();
    assert!(rpm.contains(rel.rpm.file_name().unwrap().to_str().unwrap()));
    // No temp directories are left behind.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 9);
}

#[test]
fn options_map_into_the_plan() {
    let rel = release();
    let out = tempdir();
    // The control node's object storage, as `grep '^CUBE_S3_' .one-click.env` prints it.
    let s3 = out.path().join("s3.env");
    std::fs::write(
        &s3,
        "CUBE_S3_ENDPOINT=http://10.0.0.5:9000\nCUBE_S3_ACCESS_KEY_ID=cubeminio\nCUBE_S3_SECRET_ACCESS_KEY=k3y-value\nCUBE_S3_BUCKET=cube-volumes\n",
    )
    .unwrap();
    ok(&[
        "build",
        "--lock",
        rel.lock.to_str().unwrap(),
        "--profile",
        "ubuntu-24.04",
        "--output",
        out.path().to_str().unwrap(),
        "--s3-env",
        s3.to_str().unwrap(),
        "--install-timeout",
        "5400",
        "--verify-budget",
        "600",
        "--control-plane-wait",
        "3600",
        "--role",
        "compute",
        "--control-plane-ip",
        "10.0.0.5",
        "--node-ip",
        "10.0.0.9",
        "--mirror",
        "cn",
        "--boot-params",
        "tencent",
        "--webhook",
        "https://hooks.example.invalid/cube",
        "--kvm",
        "pvm",
        "--data-disk",
        "/dev/vdb",
        "--allow-from",
        "10.0.0.0/24",
        "--hardening",
        "off",
        "--cloud",
        "azure",
        "--reboot",
        "firmware",
    ]);
    let plan = std::fs::read_to_string(out.path().join("ubuntu-24.04/plan.json")).unwrap();
    // Firmware is what a plan without the field means: it stays out.
    assert!(!plan.contains("\"reboot\""), "{plan}");
    let plan = cubeboot::plan::Plan::from_json(&plan).unwrap();
    assert_eq!(plan.reboot_mode(), cubeboot::plan::RebootMode::Firmware);
    assert_eq!(plan.cube.role, cubeboot::plan::Role::Compute);
    assert_eq!(
        plan.cube.control_plane_ip.map(|c| c.to_string()).as_deref(),
        Some("10.0.0.5")
    );
    assert_eq!(plan.cube.node_ip.to_string(), "10.0.0.9");
    assert_eq!(plan.cube.mirror.map(|m| m.as_str()), Some("cn"));
    assert!(plan.assets.bundle.urls[0]
        .starts_with("https://cnb.cool/CubeSandbox/CubeSandbox/-/releases/download/"));
    assert_eq!(plan.kernel.boot_params.len(), 26);
    assert_eq!(plan.kernel.kvm, cubeboot::plan::KvmMode::Pvm);
    assert_eq!(
        plan.report.webhook.as_deref(),
        Some("https://hooks.example.invalid/cube")
    );
    assert_eq!(
        plan.cube.data_disk,
        cubeboot::plan::DataDisk::Device("/dev/vdb".into())
    );
    assert_eq!(plan.cube.allow_from, ["10.0.0.0/24".parse().unwrap()]);
    assert!(!plan.cube.hardening);
    assert_eq!(
        (
            plan.cube.install_timeout_secs,
            plan.cube.verify_budget_secs,
            plan.cube.control_plane_wait_secs
        ),
        (5400, 600, 3600)
    );
    let s3 = plan.cube.s3.as_ref().unwrap();
    assert_eq!(s3.endpoint, "http://10.0.0.5:9000");
    assert_eq!(s3.secret_access_key, "k3y-value");
    // The helper comes from the cn mirror first, too.
    let ud = std::fs::read_to_string(out.path().join("ubuntu-24.04/user-data")).unwrap();
    let cn = ud.find("\"https://cnb.cool/").unwrap();
    let gh = ud.find("\"https://github.com/").unwrap();
    assert!(cn < gh);
}

/// The real static helper and the lock that pins it (examples/release).
fn real_release() -> (std::path::PathBuf, Vec<u8>) {
    let dir = repo().join("examples/release");
    let helper = std::fs::read(dir.join("cube-firstboot")).unwrap();
    // The shipped helper, not a stand-in: embedding is judged on its size.
    assert!(helper.len() > 2_000_000, "{}", helper.len());
    (dir.join("cubeboot.lock"), helper)
}

#[test]
fn the_real_helper_embeds_only_in_a_nocloud_seed() {
    let (lock, helper) = real_release();
    let build = |cloud: &str, out: &Path| {
        cubeboot(&[
            "build",
            "--lock",
            lock.to_str().unwrap(),
            "--profile",
            "debian-12",
            "--embed-helper",
            "--cloud",
            cloud,
            "--output",
            out.to_str().unwrap(),
        ])
    };
    // A NoCloud seed has no limit: the real helper goes in whole.
    let out = tempdir();
    let o = build("none", out.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ud = std::fs::read(out.path().join("debian-12/user-data")).unwrap();
    let doc: serde_json::Value = serde_yaml::from_slice(&ud).unwrap();
    let inline = &doc["write_files"][2];
    assert_eq!(inline["encoding"], "gz+b64");
    let inline = inline["content"].as_str().unwrap();
    assert_eq!(gunzip_b64(inline.as_bytes()), helper);
    // No URL after the architecture and the digest: the bootstrap verifies
    // the inline copy.
    assert_eq!(doc["runcmd"][0].as_array().unwrap().len(), 6);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("debian-12/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["helper"], "embedded");

    // Every cloud with a budget refuses it up front, by its own measure:
    // gcp has the largest budget (256 KiB raw); tencent counts base64.
    for (cloud, measure, cost, limit, source) in [
        (
            "gcp",
            "raw",
            inline.len(),
            262_144,
            "GCE metadata value: 256 KiB",
        ),
        (
            "tencent",
            "base64",
            base64::engine::general_purpose::STANDARD
                .encode(inline)
                .len(),
            16_384,
            "CVM RunInstances UserData: 16 KB, budgeted on the base64 text",
        ),
    ] {
        let out = tempdir();
        let o = build(cloud, out.path());
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&o.stderr).trim_end(),
            format!(
                "error: --embed-helper: the helper is {} bytes, {cost} bytes inlined as gz+b64 ({measure}), over the whole {cloud} user-data budget of {limit} bytes ({source}); no cloud's user-data holds the helper: drop --embed-helper (the target downloads it by URL and checks the pinned SHA-256), bake it into an image with --format overlay, or embed it in a NoCloud seed with --cloud none, which has no limit",
                helper.len()
            )
        );
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }
}

#[test]
fn two_builds_are_byte_identical() {
    let rel = release();
    let (a, b) = (tempdir(), tempdir());
    for (dir, umask) in [(&a, "022"), (&b, "077")] {
        // Different umask and cwd; SOURCE_DATE_EPOCH unset.
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {umask} && exec \"$0\" build --lock {} --profile all --profiles-dir {} --output {}",
                rel.lock.display(),
                repo().join("profiles").display(),
                dir.path().display()
            ))
            .arg(env!("CARGO_BIN_EXE_cubeboot"))
            .current_dir(dir.path())
            .env_remove("SOURCE_DATE_EPOCH")
            .status()
            .unwrap();
        assert!(status.success());
    }
    let (ta, tb) = (read_tree(a.path()), read_tree(b.path()));
    assert_eq!(ta.len(), 45);
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (name, bytes) in &ta {
        assert!(bytes == &tb[name], "{name} differs between builds");
    }
}

#[test]
fn overlay_format_carries_helper_unit_plan_and_offline_cache() {
    let rel = release();
    let out = tempdir();
    let o = out.path().to_str().unwrap();
    let lock = rel.lock.to_str().unwrap();
    ok(&[
        "build",
        "--lock",
        lock,
        "--profile",
        "debian-12",
        "--format",
        "overlay",
        "--offline",
        "--output",
        o,
    ]);
    let listing = ok(&[
        "inspect",
        out.path()
            .join("debian-12/overlay.tar.xz")
            .to_str()
            .unwrap(),
    ]);
    let (deb, bundle) = (sha256_hex(&rel.deb), sha256_hex(&rel.bundle));
    let expected = [
        (
            "/usr/local/sbin/cube-firstboot".to_string(),
            sha256_hex(&rel.helper),
        ),
        (format!("/var/lib/cubeboot/cache/{deb}"), deb.clone()),
        (format!("/var/lib/cubeboot/cache/{bundle}"), bundle.clone()),
        (
            "/etc/cubeboot/plan.json".to_string(),
            sha256_hex(&out.path().join("debian-12/plan.json")),
        ),
    ];
    for (path, sha) in expected {
        assert!(
            listing.contains(&format!("{sha} {path}\n")),
            "{path} missing:\n{listing}"
        );
    }
    sh(
        "sha256sum --strict -c SHA256SUMS >/dev/null",
        &out.path().join("debian-12"),
    );
    let err = fails(&["build", "--lock", lock, "--offline", "--output", o]);
    assert_eq!(
        err.trim_end(),
        "error: --offline only applies to --format overlay (user-data cannot carry the assets)"
    );
}
