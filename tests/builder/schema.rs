//! Issue 6 §1: real `cloud-init schema` (Debian's package) accepts the
//! user-data of every profile × role × boot-param set × embed-helper ×
//! mirror, and every user-data.gz.b64 decodes to the identical document.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::build::{gunzip_b64, PROFILES};
use crate::support::*;

/// Run `cloud-init schema --config-file F`; Ok only for rc 0 with nothing
/// but the "Valid cloud-config" line.
fn cloud_init_schema(file: &Path) -> Result<(), String> {
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run cloud-init (apt-get install cloud-init): {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let valid = format!("Valid cloud-config: {}\n", file.display());
    if out.status.success() && stdout == valid && stderr.trim().is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: rc {:?}\nstdout: {stdout}\nstderr: {stderr}",
            file.display(),
            out.status.code()
        ))
    }
}

#[test]
fn cloud_init_schema_accepts_every_payload() {
    let rel = release();
    let root = tempdir();
    let mut files: Vec<PathBuf> = Vec::new();
    let roles: [&[&str]; 2] = [
        &["--role", "control"],
        &["--role", "compute", "--control-plane-ip", "10.0.0.5"],
    ];
    let boots = [
        "minimal",
        "tencent",
        "pti=off console=ttyS0,115200 console=tty0",
    ];
    let embeds: [&[&str]; 2] = [&[], &["--embed-helper", "--cloud", "gcp"]];
    let mirrors = ["github", "cn", "http://10.0.2.2:8080/release"];
    let mut n = 0;
    for role in roles {
        for (bi, boot) in boots.iter().enumerate() {
            for embed in embeds {
                for mirror in mirrors {
                    n += 1;
                    let out = root.path().join(format!("c{n}"));
                    let mut args = vec![
                        "build",
                        "--lock",
                        rel.lock.to_str().unwrap(),
                        "--profile",
                        "all",
                        "--output",
                        out.to_str().unwrap(),
                        "--boot-params",
                        boot,
                        "--mirror",
                        mirror,
                    ];
                    args.extend_from_slice(role);
                    args.extend_from_slice(embed);
                    ok(&args);
                    for p in PROFILES {
                        let ud = out.join(p).join("user-data");
                        let bytes = std::fs::read(&ud).unwrap();
                        let b64 = std::fs::read(out.join(p).join("user-data.gz.b64")).unwrap();
                        assert_eq!(gunzip_b64(&b64), bytes, "{} (boot set {bi})", ud.display());
                        files.push(ud);
                    }
                }
            }
        }
    }
    assert_eq!(files.len(), 9 * 2 * 3 * 2 * 3);

    // The real decoders agree too (what a user's pipeline would run).
    sh(
        &format!(
            "base64 -d {0}/c1/debian-12/user-data.gz.b64 | gzip -dc | cmp - {0}/c1/debian-12/user-data",
            root.path().display()
        ),
        root.path(),
    );

    // The harness can fail: an unquoted octal mode is rejected by cloud-init.
    let bad = root.path().join("bad-user-data");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    std::fs::write(
        &bad,
        text.replacen("permissions: \"0600\"", "permissions: 0600", 1),
    )
    .unwrap();
    assert!(
        cloud_init_schema(&bad).is_err(),
        "cloud-init accepted a bad mode"
    );

    // Validate all, two at a time (the machine has two cores).
    let queue = Mutex::new(files);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some(f) = queue.lock().unwrap().pop() else {
                    break;
                };
                if let Err(e) = cloud_init_schema(&f) {
                    failures.lock().unwrap().push(e);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} invalid payloads:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
