//! The runcmd bootstrap, run for real: the exact argv a built user-data hands
//! to `sh -c`, with curl, wget or python3 as the only downloader, against a
//! 127.0.0.1 server, inside a private mount namespace where /var/lib and
//! /usr/local are fresh tmpfs (we are root; nothing on this machine changes).
//! Only `systemctl` is a stub that records its arguments.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::gunzip_b64;
use crate::support::*;

/// A release served on 127.0.0.1 and a lock pointing at it only, so the
/// bootstrap never has another address to try.
pub(crate) struct Served {
    pub dir: tempfile::TempDir,
    pub lock: PathBuf,
}

pub(crate) fn served() -> Served {
    served_with(&release().helper)
}

/// [`served`] with another helper binary (named `cube-firstboot`).
pub(crate) fn served_with(helper: &Path) -> Served {
    let rel = release();
    let dir = tempdir();
    for f in [&rel.deb, &rel.bundle, helper] {
        std::fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let base = serve(dir.path());
    let lock = dir.path().join("cubeboot.lock");
    let mut args: Vec<String> = vec!["lock".into(), "--base-url".into(), base];
    for f in [&rel.deb, &rel.bundle, helper] {
        args.push("--asset".into());
        args.push(f.to_str().unwrap().into());
    }
    args.extend(["--output".into(), lock.to_str().unwrap().into()]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    Served { dir, lock }
}

/// Build debian-12 and return its parsed user-data.
fn user_data(lock: &Path, extra: &[&str]) -> serde_json::Value {
    let out = tempdir();
    let mut args = vec![
        "build",
        "--lock",
        lock.to_str().unwrap(),
        "--profile",
        "debian-12",
    ];
    args.extend_from_slice(&["--output", out.path().to_str().unwrap()]);
    args.extend_from_slice(extra);
    ok(&args);
    let text = std::fs::read(out.path().join("debian-12/user-data")).unwrap();
    serde_yaml::from_slice(&text).unwrap()
}

struct Outcome {
    ok: bool,
    log: String,
    systemctl: String,
    installed: Option<(Vec<u8>, u32)>,
    leftover_download: bool,
}

/// Run runcmd[0] of `doc` with only `downloader` available.
fn run_bootstrap(doc: &serde_json::Value, downloader: &str, embedded: Option<&[u8]>) -> Outcome {
    let argv: Vec<String> = doc["runcmd"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(&argv[..2], ["sh", "-c"]);
    let work = tempdir();
    let w = work.path();
    let tools = w.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    for t in ["mkdir", "rm", "sha256sum", "install", "uname", downloader] {
        let real = which(t);
        symlink(&real, tools.join(t)).unwrap();
    }
    std::fs::write(
        tools.join("systemctl"),
        format!("#!/bin/sh\necho \"$*\" >> {}/systemctl.log\n", w.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        tools.join("systemctl"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(w.join("script"), &argv[2]).unwrap();
    if let Some(bytes) = embedded {
        std::fs::write(w.join("embedded"), bytes).unwrap();
    }
    // What cloud-init's write_files would have done for an embedded helper
    // happens first, then the runcmd entry exactly as given.
    let runner = format!(
        r#"set -e
mount -t tmpfs tmpfs /var/lib
mount -t tmpfs tmpfs /usr/local
mkdir -p /usr/local/sbin
if [ -f {w}/embedded ]; then mkdir -p /var/lib/cubeboot; cp {w}/embedded /var/lib/cubeboot/cube-firstboot.download; fi
rc=0
env -i PATH={tools} /bin/sh -c "$(cat {w}/script)" "$@" > {w}/log 2>&1 || rc=$?
if [ -f /usr/local/sbin/cube-firstboot ]; then cp -p /usr/local/sbin/cube-firstboot {w}/installed; fi
if [ -e /var/lib/cubeboot/cube-firstboot.download ]; then touch {w}/leftover; fi
exit $rc
"#,
        w = w.display(),
        tools = tools.display()
    );
    std::fs::write(w.join("runner"), runner).unwrap();
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "/bin/sh"])
        .arg(w.join("runner"))
        .args(&argv[3..])
        .status()
        .unwrap();
    let installed = std::fs::read(w.join("installed")).ok().map(|b| {
        let mode = std::fs::metadata(w.join("installed"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        (b, mode)
    });
    Outcome {
        ok: status.success(),
        log: std::fs::read_to_string(w.join("log")).unwrap_or_default(),
        systemctl: std::fs::read_to_string(w.join("systemctl.log")).unwrap_or_default(),
        installed,
        leftover_download: w.join("leftover").exists(),
    }
}

pub(crate) fn which(tool: &str) -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is not installed (apt-get install {tool})");
}

const STARTED: &str =
    "daemon-reload\nenable cube-firstboot.service\nstart --no-block cube-firstboot.service\n";

#[test]
fn bootstrap_fetches_verifies_installs_and_starts_with_each_downloader() {
    let s = served();
    let doc = user_data(&s.lock, &[]);
    let helper = std::fs::read(&release().helper).unwrap();
    for downloader in ["curl", "wget", "python3"] {
        let o = run_bootstrap(&doc, downloader, None);
        assert!(o.ok, "{downloader}: {}", o.log);
        assert_eq!(o.installed, Some((helper.clone(), 0o755)), "{downloader}");
        assert_eq!(o.systemctl, STARTED, "{downloader}");
        assert!(!o.leftover_download, "{downloader}");
    }
}

#[test]
fn bootstrap_installs_nothing_when_the_hash_differs() {
    let s = served();
    let doc = user_data(&s.lock, &[]);
    // The server now hands out different bytes than the lock pinned.
    std::fs::write(
        s.dir.path().join("cube-firstboot"),
        b"#!/bin/sh\necho evil\n",
    )
    .unwrap();
    let o = run_bootstrap(&doc, "curl", None);
    assert!(!o.ok);
    assert_eq!(o.installed, None);
    assert_eq!(o.systemctl, "");
    assert!(!o.leftover_download);
    let want = sha256_hex(&release().helper);
    assert!(
        o.log
            .ends_with(&format!("cubeboot: no helper with sha256 {want}\n")),
        "{}",
        o.log
    );
}

#[test]
fn bootstrap_verifies_an_embedded_helper_before_installing() {
    let s = served();
    // The real helper inlined: only a NoCloud seed has room for it.
    let doc = user_data(&s.lock, &["--embed-helper", "--cloud", "none"]);
    let inline = gunzip_b64(
        doc["write_files"][2]["content"]
            .as_str()
            .unwrap()
            .as_bytes(),
    );
    let o = run_bootstrap(&doc, "curl", Some(&inline));
    assert!(o.ok, "{}", o.log);
    assert_eq!(o.installed.map(|i| i.0), Some(inline.clone()));
    assert_eq!(o.systemctl, STARTED);

    let mut bad = inline.clone();
    bad[0] ^= 1;
    let o = run_bootstrap(&doc, "curl", Some(&bad));
    assert!(!o.ok);
    assert_eq!(o.installed, None);
    assert_eq!(o.systemctl, "");
}

#[test]
fn bootstrap_refuses_a_machine_of_another_architecture_before_fetching() {
    let s = served();
    let mut doc = user_data(&s.lock, &[]);
    // This machine's own payload goes ahead (the test above); the payload
    // of the other architecture differs in its ARCH argument (and its
    // helper's pin, which it never gets to check).
    let machine = String::from_utf8(Command::new("uname").arg("-m").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(doc["runcmd"][0][4], machine.as_str());
    let other = if machine == "aarch64" {
        "x86_64"
    } else {
        "aarch64"
    };
    doc["runcmd"][0][4] = serde_json::json!(other);
    // Nothing may be fetched: the server hands out the wrong bytes, so a
    // fetch would end in the sha256 message instead.
    std::fs::write(s.dir.path().join("cube-firstboot"), b"not fetched").unwrap();
    let o = run_bootstrap(&doc, "curl", None);
    assert!(!o.ok);
    assert_eq!(
        o.log,
        format!(
            "cubeboot: this machine is {machine}, but this payload was built for {other}: build it with cubeboot build --arch {machine}\n"
        )
    );
    assert_eq!(o.installed, None);
    assert_eq!(o.systemctl, "");
    assert!(!o.leftover_download);
}
