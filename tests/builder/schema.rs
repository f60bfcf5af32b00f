//! Issue 6 §1: real `cloud-init schema` (Debian's package) accepts the
//! user-data of every profile × role × boot-param set × mirror, and of every
//! profile × role with the real helper embedded (`--cloud none`), and every
//! user-data.gz.b64 decodes to the identical document.
//!
//! Two cloud-inits cover the target distros' range: Debian 12's 22.4 (the
//! system package) always, and Debian 13's 25.1 when `CUBEBOOT_CLOUD_INIT_25`
//! names its unpacked tree (`scripts/fetch-cloud-init-25.sh`, which `.ci/run`
//! runs; tests themselves never reach the network). With 25.1, deprecation
//! notices count as failures; 25.1 checks one profile per option combination
//! (20 payloads covering every combination and, rotating, every profile),
//! 22.4 all 180.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::build::{gunzip_b64, PROFILES};
use crate::support::*;

/// Which cloud-init validates.
#[derive(Clone, Copy)]
enum CloudInit<'a> {
    /// Debian 12's package (22.4), on PATH.
    System,
    /// Debian 13's (25.1), unpacked under this directory.
    Trixie(&'a Path),
}

/// Run `cloud-init schema --config-file F`; Ok only for rc 0 with nothing
/// but the "Valid …" line (so 25.1's deprecation notices fail too).
fn cloud_init_schema(which: CloudInit<'_>, file: &Path) -> Result<(), String> {
    let mut cmd = match which {
        CloudInit::System => Command::new("cloud-init"),
        CloudInit::Trixie(dir) => {
            // Debian 12's python3 with the modules its cloud-init pulled in.
            let mut c = Command::new("/usr/bin/python3");
            c.arg(dir.join("usr/bin/cloud-init"))
                .env("PYTHONPATH", dir.join("usr/lib/python3/dist-packages"));
            c
        }
    };
    let out = cmd
        .args(["schema", "--config-file"])
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run cloud-init (apt-get install cloud-init): {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let valid = match which {
        CloudInit::System => format!("Valid cloud-config: {}\n", file.display()),
        CloudInit::Trixie(_) => format!("Valid schema {}\n", file.display()),
    };
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
    let mut sample: Vec<PathBuf> = Vec::new();
    let roles: [&[&str]; 2] = [
        &["--role", "control"],
        &["--role", "compute", "--control-plane-ip", "10.0.0.5"],
    ];
    let boots = [
        "minimal",
        "tencent",
        "pti=off console=ttyS0,115200 console=tty0",
    ];
    // The real helper inlined makes a 1.9 MB document (NoCloud seeds only):
    // it changes one write_files entry and the runcmd, whatever the boot
    // set or mirror, so it is checked once per role (boot set 0, github).
    let embeds: [&[&str]; 2] = [&[], &["--embed-helper", "--cloud", "none"]];
    let mirrors = ["github", "cn", "http://10.0.2.2:8080/release"];
    let mut n = 0;
    for role in roles {
        for (bi, boot) in boots.iter().enumerate() {
            for (ei, embed) in embeds.into_iter().enumerate() {
                for (mi, mirror) in mirrors.iter().copied().enumerate() {
                    if ei == 1 && (bi, mi) != (0, 0) {
                        continue;
                    }
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
                    // 25.1 is slower to start: it checks one profile per
                    // option combination, rotating, so every combination and
                    // every profile (four times) is covered.
                    sample.push(
                        out.join(PROFILES[(n - 1) % PROFILES.len()])
                            .join("user-data"),
                    );
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
    assert_eq!(files.len(), 9 * 2 * (3 * 3 + 1));

    // The real decoders agree too (what a user's pipeline would run).
    sh(
        &format!(
            "base64 -d {0}/c1/debian-12/user-data.gz.b64 | gzip -dc | cmp - {0}/c1/debian-12/user-data",
            root.path().display()
        ),
        root.path(),
    );

    let trixie = std::env::var_os("CUBEBOOT_CLOUD_INIT_25").map(PathBuf::from);
    let mut validators = vec![CloudInit::System];
    match &trixie {
        Some(dir) => {
            assert!(
                dir.join("usr/bin/cloud-init").is_file(),
                "CUBEBOOT_CLOUD_INIT_25={} holds no cloud-init; run scripts/fetch-cloud-init-25.sh",
                dir.display()
            );
            validators.push(CloudInit::Trixie(dir));
        }
        None => eprintln!(
            "cloud-init 25.1 not checked: set CUBEBOOT_CLOUD_INIT_25=$(scripts/fetch-cloud-init-25.sh)"
        ),
    }

    // The harness can fail: an unquoted octal mode is rejected by every
    // cloud-init, and 25.1's deprecation notice fails as well.
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let bad_mode = root.path().join("bad-mode");
    std::fs::write(
        &bad_mode,
        text.replacen("permissions: \"0600\"", "permissions: 0600", 1),
    )
    .unwrap();
    let deprecated = root.path().join("deprecated");
    std::fs::write(&deprecated, format!("{text}apt_update: true\n")).unwrap();
    for v in &validators {
        assert!(
            cloud_init_schema(*v, &bad_mode).is_err(),
            "cloud-init accepted a bad mode"
        );
        assert!(cloud_init_schema(*v, &files[0]).is_ok());
        if let CloudInit::Trixie(_) = v {
            assert!(
                cloud_init_schema(*v, &deprecated).is_err(),
                "deprecation passed"
            );
        }
    }

    // Validate all, two at a time (the machine has two cores).
    let mut jobs: Vec<(CloudInit<'_>, PathBuf)> = Vec::new();
    for v in &validators {
        let set = match v {
            CloudInit::System => &files,
            CloudInit::Trixie(_) => &sample,
        };
        jobs.extend(set.iter().map(|f| (*v, f.clone())));
    }
    let queue = Mutex::new(jobs);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some((v, f)) = queue.lock().unwrap().pop() else {
                    break;
                };
                if let Err(e) = cloud_init_schema(v, &f) {
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
