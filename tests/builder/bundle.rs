//! The bundle read at lock time: `lock` records its facts, `inspect` prints
//! them, `check` and `build` refuse what cannot work, and `build` gives
//! every node of a cluster one ops-agent token and one sandbox CIDR.
//!
//! The bundles are real tar.gz files written here from small files modelled
//! on upstream's (each names the TencentCloud/CubeSandbox file it follows),
//! laid out as deploy/one-click/build-release-bundle.sh lays a release out:
//! the top-level files beside `assets/package/sandbox-package.tar.gz`, which
//! holds `scripts/` and `systemd/`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::*;

/// deploy/one-click/build-release-bundle.sh, `generate_release_manifest`.
const MANIFEST: &str = r#"{
  "release_version": "v0.9.0",
  "built_at": "2026-11-30T00:00:00Z",
  "built_by": "github-actions",
  "git_commit": "0123456789abcdef",
  "components": {
    "cubemaster": {"version": "v0.9.0", "commit": "0123456789abcdef", "build_time": "2026-11-30T00:00:00Z", "digest_sha256": "sha256:00"},
    "cubeops": {"version": "v0.9.0", "commit": "0123456789abcdef", "build_time": "2026-11-30T00:00:00Z", "digest_sha256": "sha256:01"},
    "cube-lifecycle-manager": {"version": "v0.9.0", "commit": "0123456789abcdef", "build_time": "2026-11-30T00:00:00Z"}
  },
  "guest_image": {"version": "g1", "digest_sha256": "sha256:02", "base_image": "cube-sandbox-guest-image:one-click", "agent_version": "v0.9.0"},
  "kernel": {"version": "kernel-release-260921-1", "vmlinux_digest_sha256": "sha256:03", "pvm_version": "PVM", "vmlinux_pvm_digest_sha256": "sha256:04"}
}
"#;

/// deploy/one-click/build-release-bundle.sh writes VERSION.txt like this.
const VERSION_TXT: &str =
    "release_version=v0.9.0\ngit_commit=0123456789abcdef\nbuilt_at=2026-11-30T00:00:00Z\nmanifest=release-manifest.json\n";

/// deploy/one-click/env.example (the bind settings).
const ENV_EXAMPLE: &str = "CUBE_PVM_ENABLE=0\nONE_CLICK_DEPLOY_ROLE=control\n# CUBE_SANDBOX_NETWORK_CIDR=10.100.0.0/18\nCUBEMASTER_HTTP_BIND=0.0.0.0\nCUBE_API_BIND=0.0.0.0:3000\nCUBE_API_HEALTH_ADDR=127.0.0.1:3000\nCUBE_OPS_BIND=0.0.0.0:3010\n";

/// deploy/one-click/scripts/systemd/prepare-compute-role.sh (newest).
const PREPARE_COMPUTE: &str = r#"#!/usr/bin/env bash
set -euo pipefail
OPS_ADDR="$(resolve_control_plane_cubeops_addr)"
if [[ -n "${CUBE_SANDBOX_NODE_IP:-}" ]]; then
  if [[ -z "${CUBE_OPS_OPSAGENT_TOKEN:-}" ]]; then
    if is_compute_role; then
      die "CUBE_OPS_OPSAGENT_TOKEN is required for the compute role"
    fi
  else
    OPS_AGENT_CONF_DIR="${TOOLBOX_ROOT}/ops-agent/conf"
    cat > "${OPS_AGENT_CONF_DIR}/config.yaml" <<EOF
node_id: "${CUBE_SANDBOX_NODE_IP}"
listen_addr: "0.0.0.0:8890"
cubeops_url: "http://${OPS_ADDR}"
shared_token: "${CUBE_OPS_OPSAGENT_TOKEN}"
EOF
  fi
fi
[[ -n "${CUBE_SANDBOX_NODE_IP:-}" ]] || die "CUBE_SANDBOX_NODE_IP is required for compute role"
"#;

/// deploy/one-click/scripts/systemd/cubeops-start.sh.
const CUBEOPS_START: &str = "#!/usr/bin/env bash\nexport CUBE_OPS_BIND=\"${CUBE_OPS_BIND:-0.0.0.0:3010}\"\nexport CUBE_MASTER_ADDR=\"${CUBE_MASTER_ADDR:-http://127.0.0.1:8089}\"\nexec \"${CUBE_OPS_BIN}\"\n";

/// deploy/one-click/scripts/one-click/up-cube-lifecycle-manager.sh.
const LCM_UP: &str = "#!/usr/bin/env bash\n# CLM listens on host network so CubeProxy on other nodes can reach it.\nCUBE_LCM_LISTEN_ADDR=\"${CUBE_LCM_LISTEN_ADDR:-0.0.0.0:8083}\"\n";

/// deploy/one-click/scripts/systemd/cubetemplatecenter-start.sh: loopback
/// by default, so not a listener to harden.
const TC_START: &str = "#!/usr/bin/env bash\nexport CUBETEMPLATECENTER_HTTP_BIND=\"${CUBETEMPLATECENTER_HTTP_BIND:-127.0.0.1:8090}\"\n";

/// deploy/one-click/scripts/one-click/quickcheck.sh, `check_node_registration`:
/// at CubeOps (`ops_addr`, `/internal/v1/nodes/`, field `IP`) in the CubeOps
/// era, at CubeMaster (`master_addr`, `/internal/meta/nodes/`, `host_ip`)
/// before it.
fn quickcheck(addr: &str, path: &str, field: &str) -> String {
    format!(
        r#"#!/usr/bin/env bash
check_node_registration() {{
  local node_id="$1"
  local {addr}="$2"
  if registration="$(curl -fsS \
      "http://${{{addr}}}{path}${{node_id}}" 2>/dev/null)"; then
    grep -Fq "\"{field}\":\"${{node_id}}\"" <<<"${{registration}}"
  fi
}}
"#
    )
}

/// deploy/one-click/systemd/cube-sandbox-ops-agent.service.
const OPS_AGENT_UNIT: &str = "[Unit]\nDescription=Cube Sandbox ops-agent\n\n[Service]\nExecStart=/usr/local/services/cubetoolbox/ops-agent/bin/ops-agent --config /usr/local/services/cubetoolbox/ops-agent/conf/config.yaml\n";

fn tar_gz(top: &str, files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(1);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, format!("{top}/{path}"), &bytes[..])
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// A bundle named `name` in `dir`: `top` files beside a nested package of
/// `nested` files (none: no nested package).
fn make_bundle(dir: &Path, name: &str, top: &[(&str, &str)], nested: &[(&str, &str)]) -> PathBuf {
    let stem = name.trim_end_matches(".tar.gz");
    let mut files: Vec<(&str, Vec<u8>)> = top
        .iter()
        .map(|(p, t)| (*p, t.as_bytes().to_vec()))
        .collect();
    if !nested.is_empty() {
        let inner: Vec<(&str, Vec<u8>)> = nested
            .iter()
            .map(|(p, t)| (*p, t.as_bytes().to_vec()))
            .collect();
        files.push((
            "assets/package/sandbox-package.tar.gz",
            tar_gz("sandbox-package", &inner),
        ));
    }
    // Something large and unread, as the guest image is upstream.
    files.push((
        "assets/kernel-artifacts/cube-kernel-scf.zip",
        noise(64 * 1024),
    ));
    let path = dir.join(name);
    std::fs::write(&path, tar_gz(stem, &files)).unwrap();
    path
}

const OPS_NAME: &str = "cube-sandbox-one-click-v0.9.0-amd64.tar.gz";

/// A CubeOps-era bundle; `pvm` is the manifest's `kernel.pvm_version`.
fn cubeops_bundle(dir: &Path, name: &str, pvm: &str, extra_manifest: &str) -> PathBuf {
    let manifest = MANIFEST.replace("\"PVM\"", &format!("{pvm:?}")).replacen(
        '{',
        &format!("{{{extra_manifest}"),
        1,
    );
    make_bundle(
        dir,
        name,
        &[
            ("release-manifest.json", &manifest),
            ("VERSION.txt", VERSION_TXT),
            ("env.example", ENV_EXAMPLE),
            ("install.sh", "#!/usr/bin/env bash\nexit 0\n"),
        ],
        &[
            ("scripts/systemd/prepare-compute-role.sh", PREPARE_COMPUTE),
            ("scripts/systemd/cubeops-start.sh", CUBEOPS_START),
            ("scripts/systemd/cubetemplatecenter-start.sh", TC_START),
            ("scripts/one-click/up-cube-lifecycle-manager.sh", LCM_UP),
            (
                "scripts/one-click/quickcheck.sh",
                &quickcheck("ops_addr", "/internal/v1/nodes/", "IP"),
            ),
            ("systemd/cube-sandbox-ops-agent.service", OPS_AGENT_UNIT),
        ],
    )
}

/// The release's kernels and helper with `bundle`, locked into `dir`.
fn lock_with(dir: &Path, bundle: &Path) -> PathBuf {
    let rel = release();
    lock_assets(dir, &[&rel.deb, &rel.rpm, bundle, &rel.helper])
}

/// The PVM kernel release the test kernels carry (support.rs KVER).
const MATCHING_PVM: &str = "6.6.69-test.cubesandbox";

#[test]
fn lock_records_the_facts_of_a_cubeops_era_bundle() {
    let dir = tempdir();
    let bundle = cubeops_bundle(dir.path(), OPS_NAME, MATCHING_PVM, "");
    let lock = lock_with(dir.path(), &bundle);
    let text = std::fs::read_to_string(&lock).unwrap();
    let want = format!(
        "    bundle:
      version: v0.9.0
      arch: amd64
      pvm_version: {MATCHING_PVM}
      cube_ops:
        port: 3010
        registration_path: /internal/v1/nodes/{{ip}}
      required_env:
      - key: CUBE_OPS_OPSAGENT_TOKEN
        role: compute
        source: assets/package/sandbox-package.tar.gz:scripts/systemd/prepare-compute-role.sh
      - key: CUBE_SANDBOX_NODE_IP
        role: compute
        source: assets/package/sandbox-package.tar.gz:scripts/systemd/prepare-compute-role.sh
      listeners:
      - service: CubeAPI
        port: 3000
        role: control
        bind_env: CUBE_API_BIND
      - service: CubeOps
        port: 3010
        role: control
        bind_env: CUBE_OPS_BIND
      - service: cube-lifecycle-manager
        port: 8083
        role: control
        bind_env: CUBE_LCM_LISTEN_ADDR
      - service: CubeMaster
        port: 8089
        role: control
        bind_env: CUBEMASTER_HTTP_BIND
      - service: ops-agent
        port: 8890
        role: all
"
    );
    assert!(text.contains(&want), "{text}");
    assert!(!text.contains("unknown"), "{text}");
    // Reproducible: the same assets lock to the same bytes.
    let again = dir.path().join("again");
    std::fs::create_dir(&again).unwrap();
    let again = lock_with(&again, &bundle);
    assert_eq!(text, std::fs::read_to_string(&again).unwrap());
    // A facts-bearing lock passes the strict checker.
    ok(&["check", "--strict", "--lock", lock.to_str().unwrap()]);
}

#[test]
fn a_bundle_from_before_cubeops_locks_without_cube_ops() {
    let dir = tempdir();
    // An older layout: a bare VERSION.txt, scripts at the top, no manifest.
    let bundle = make_bundle(
        dir.path(),
        "cube-sandbox-one-click-v0.6.0-amd64.tar.gz",
        &[
            ("VERSION.txt", "v0.6.0\n"),
            ("install.sh", "#!/usr/bin/env bash\nexit 0\n"),
            ("env.example", "CUBE_API_BIND=0.0.0.0:3000\n"),
            (
                "scripts/one-click/quickcheck.sh",
                &quickcheck("master_addr", "/internal/meta/nodes/", "host_ip"),
            ),
        ],
        &[],
    );
    let lock = lock_with(dir.path(), &bundle);
    let text = std::fs::read_to_string(&lock).unwrap();
    assert!(
        text.contains("    bundle:\n      version: v0.6.0\n      arch: amd64\n      listeners:\n      - service: CubeAPI\n"),
        "{text}"
    );
    for absent in ["cube_ops", "pvm_version", "required_env", "unknown"] {
        assert!(!text.contains(absent), "{absent}: {text}");
    }
    let out = ok(&["inspect", bundle.to_str().unwrap()]);
    assert!(out.contains("cube_ops:     none (compute nodes register with CubeMaster: a bundle from before CubeOps)\n"), "{out}");
    // The plan carries the facts as they are: no CubeOps, no token.
    let out_dir = dir.path().join("out");
    ok(&[
        "build",
        "--lock",
        lock.to_str().unwrap(),
        "--profile",
        "debian-12",
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    let plan = plan_json(&out_dir, "debian-12");
    assert_eq!(plan["cube"]["bundle"]["version"], "v0.6.0");
    assert!(plan["cube"]["bundle"].get("cube_ops").is_none());
    assert!(plan["cube"].get("ops_token").is_none());
    assert!(!out_dir.join("ops-token").exists());
}

#[test]
fn inspect_prints_a_bundles_facts_as_text_and_json() {
    let dir = tempdir();
    let bundle = cubeops_bundle(dir.path(), OPS_NAME, MATCHING_PVM, "");
    let out = ok(&["inspect", bundle.to_str().unwrap()]);
    let src = "assets/package/sandbox-package.tar.gz:scripts/systemd/prepare-compute-role.sh";
    assert_eq!(
        out,
        format!(
            "bundle:       {OPS_NAME}
version:      v0.9.0
arch:         amd64
pvm_version:  {MATCHING_PVM}
cube_ops:     port 3010, compute registration at /internal/v1/nodes/{{ip}}
required_env:
  CUBE_OPS_OPSAGENT_TOKEN (compute) from {src}
  CUBE_SANDBOX_NODE_IP (compute) from {src}
listeners:
  CubeAPI :3000 (control, bind CUBE_API_BIND)
  CubeOps :3010 (control, bind CUBE_OPS_BIND)
  cube-lifecycle-manager :8083 (control, bind CUBE_LCM_LISTEN_ADDR)
  CubeMaster :8089 (control, bind CUBEMASTER_HTTP_BIND)
  ops-agent :8890 (all roles)
unknown: (none)
"
        )
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "--json", bundle.to_str().unwrap()])).unwrap();
    assert_eq!(json["inspect"], 1);
    assert_eq!(json["kind"], "bundle");
    assert_eq!(json["name"], OPS_NAME);
    assert_eq!(json["sha256"], sha256_hex(&bundle));
    assert_eq!(json["size"], std::fs::metadata(&bundle).unwrap().len());
    assert_eq!(json["bundle"]["cube_ops"]["port"], 3010);
    assert_eq!(
        json["bundle"]["required_env"][0]["key"],
        "CUBE_OPS_OPSAGENT_TOKEN"
    );
    // The same reader judges kernel packages, in the same envelope.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "--json", release().deb.to_str().unwrap()])).unwrap();
    assert_eq!(json["kind"], "kernel");
    assert_eq!(json["kernel"]["kver"], KVER);
    assert_eq!(json["kernel"]["pvm_host"], true);
    let help = ok(&["inspect", "--help"]);
    assert!(help.contains("bundle") && help.contains(".rpm"), "{help}");
}

#[test]
fn a_hostile_bundle_entry_is_refused_by_name() {
    let dir = tempdir();
    let path = dir.path().join("cube-sandbox-one-click-v1-amd64.tar.gz");
    // tar::Builder refuses `..` in names, so write the header by hand.
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..16].copy_from_slice(b"b/../../evil.sh\0");
    h.set_size(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    tar.append(&h, &[][..]).unwrap();
    std::fs::write(&path, tar.into_inner().unwrap().finish().unwrap()).unwrap();
    let err = fails(&["inspect", path.to_str().unwrap()]);
    assert!(
        err.contains("entry \"b/../../evil.sh\" contains path traversal"),
        "{err}"
    );
}

fn plan_json(out: &Path, profile: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join(profile).join("plan.json")).unwrap()).unwrap()
}

fn build_args<'a>(lock: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "build",
        "--lock",
        lock,
        "--profile",
        "debian-12",
        "--output",
        out,
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn an_arm64_bundle_is_refused_for_x86_64_profiles() {
    let dir = tempdir();
    let name = "cube-sandbox-one-click-v0.9.0-arm64.tar.gz";
    let bundle = cubeops_bundle(dir.path(), name, MATCHING_PVM, "");
    let lock = lock_with(dir.path(), &bundle);
    let lock = lock.to_str().unwrap();
    let err = fails(&["check", "--lock", lock]);
    assert!(
        err.contains(&format!("error[$.assets.bundle.bundle.arch]: bundle {name}: arch arm64, but profile almalinux-9, ")),
        "{err}"
    );
    assert!(
        err.contains("lock the -amd64 bundle of the same release"),
        "{err}"
    );
    let out = dir.path().join("out");
    let err = fails(&build_args(lock, out.to_str().unwrap(), &[]));
    assert!(
        err.contains("but profile debian-12 installs an x86_64 PVM host kernel"),
        "{err}"
    );
    assert!(!out.join("debian-12").exists());
}

#[test]
fn a_guest_kernel_other_than_the_host_kernel_warns_and_strict_refuses() {
    let dir = tempdir();
    let bundle = cubeops_bundle(dir.path(), OPS_NAME, "6.6.69-1.2.cubesandbox", "");
    let lock = lock_with(dir.path(), &bundle);
    let lock = lock.to_str().unwrap();
    let out = cubeboot(&["check", "--lock", lock]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let want = format!("warning[$.assets.bundle.bundle.pvm_version]: bundle {OPS_NAME}: its PVM guest kernel is pvm_version 6.6.69-1.2.cubesandbox, but profile almalinux-9 boots host kernel {KVER}");
    assert!(err.contains(&want), "{err}");
    assert!(
        err.contains(
            "lock the host kernel of the bundle's release, or the bundle made for this kernel"
        ),
        "{err}"
    );
    let err = fails(&["check", "--strict", "--lock", lock]);
    assert!(err.contains(&want), "{err}");
    // build: a warning, an error with --strict, before anything is written.
    let out_dir = dir.path().join("out");
    let out_dir = out_dir.to_str().unwrap();
    let token = dir.path().join("ops-token");
    let token = token.to_str().unwrap();
    let res = cubeboot(&build_args(lock, out_dir, &["--ops-token-file", token]));
    assert!(res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr)
        .contains("warning[$.assets.bundle.bundle.pvm_version]"));
    std::fs::remove_dir_all(out_dir).unwrap();
    let err = fails(&build_args(
        lock,
        out_dir,
        &["--ops-token-file", token, "--strict"],
    ));
    assert!(
        err.contains("error[$.assets.bundle.bundle.pvm_version]: bundle"),
        "{err}"
    );
    assert!(!Path::new(out_dir).join("debian-12").exists());
}

#[test]
fn unknown_facts_warn_and_strict_refuses() {
    let dir = tempdir();
    let bundle = cubeops_bundle(
        dir.path(),
        OPS_NAME,
        MATCHING_PVM,
        "\"schema_version\": 2, ",
    );
    let lock = lock_with(dir.path(), &bundle);
    let text = std::fs::read_to_string(&lock).unwrap();
    assert!(
        text.contains("      unknown:\n      - 'release-manifest.json: schema_version 2 (cubeboot knows manifests without one)'\n"),
        "{text}"
    );
    let lock = lock.to_str().unwrap();
    let want = format!("bundle {OPS_NAME}: release-manifest.json: schema_version 2 (cubeboot knows manifests without one): this cubeboot has no model for it (a newer bundle?)");
    let out = cubeboot(&["check", "--lock", lock]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("warning[$.assets.bundle.bundle.unknown]: {want}")),
        "{err}"
    );
    let err = fails(&["check", "--strict", "--lock", lock]);
    assert!(err.contains(&want), "{err}");
    let out_dir = dir.path().join("out");
    let token = dir.path().join("ops-token");
    let err = fails(&build_args(
        lock,
        out_dir.to_str().unwrap(),
        &["--ops-token-file", token.to_str().unwrap(), "--strict"],
    ));
    assert!(
        err.contains(&format!("error[$.assets.bundle.bundle.unknown]: {want}")),
        "{err}"
    );
}

#[test]
fn a_compute_payload_without_the_clusters_token_is_refused() {
    let dir = tempdir();
    let bundle = cubeops_bundle(dir.path(), OPS_NAME, MATCHING_PVM, "");
    let lock = lock_with(dir.path(), &bundle);
    let out_dir = dir.path().join("out");
    let token = dir.path().join("never-made");
    let err = fails(&build_args(
        lock.to_str().unwrap(),
        out_dir.to_str().unwrap(),
        &[
            "--role",
            "compute",
            "--control-plane-ip",
            "10.0.0.5",
            "--ops-token-file",
            token.to_str().unwrap(),
        ],
    ));
    assert!(
        err.contains(&format!("error[$.assets.bundle.bundle.required_env]: bundle {OPS_NAME}: assets/package/sandbox-package.tar.gz:scripts/systemd/prepare-compute-role.sh requires CUBE_OPS_OPSAGENT_TOKEN on a compute node, and this payload has none; give the cluster's token file with --ops-token-file (the control payload's); {} does not exist, and only a control build makes one", token.display())),
        "{err}"
    );
    assert!(!token.exists() && !out_dir.join("debian-12").exists());
}

#[test]
fn one_token_file_and_one_cidr_make_control_and_compute_agree() {
    let dir = tempdir();
    let bundle = cubeops_bundle(dir.path(), OPS_NAME, MATCHING_PVM, "");
    let lock = lock_with(dir.path(), &bundle);
    let lock = lock.to_str().unwrap();
    let token = dir.path().join("secrets/ops-token");
    let token_s = token.to_str().unwrap();
    let control = dir.path().join("control");
    let compute = dir.path().join("compute");
    let common = [
        "--ops-token-file",
        token_s,
        "--cluster-cidr",
        "10.100.0.0/18",
    ];
    let run = |out: &Path, extra: &[&str]| {
        let mut args = build_args(lock, out.to_str().unwrap(), &common);
        args.extend_from_slice(extra);
        let res = cubeboot(&args);
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        res
    };
    let res = run(&control, &[]);
    let mode = std::fs::metadata(&token).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let secret = std::fs::read_to_string(&token).unwrap().trim().to_string();
    assert_eq!(secret.len(), 64);
    run(
        &compute,
        &["--role", "compute", "--control-plane-ip", "10.0.0.5"],
    );
    let (a, b) = (
        plan_json(&control, "debian-12"),
        plan_json(&compute, "debian-12"),
    );
    assert_eq!(a["cube"]["ops_token"], secret.as_str());
    assert_eq!(b["cube"]["ops_token"], secret.as_str());
    assert_eq!(a["cube"]["cluster_cidr"], "10.100.0.0/18");
    assert_eq!(b["cube"]["cluster_cidr"], "10.100.0.0/18");
    assert_eq!(a["cube"]["bundle"]["cube_ops"]["port"], 3010);
    // Never printed; every file holding the plan is 0600.
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(!printed.contains(&secret), "{printed}");
    for name in ["plan.json", "user-data", "user-data.gz.b64"] {
        let mode = std::fs::metadata(compute.join("debian-12").join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    // Reproducible given the file: a rebuild is byte-identical.
    let first = std::fs::read(control.join("debian-12/user-data")).unwrap();
    run(&control, &[]);
    assert_eq!(
        first,
        std::fs::read(control.join("debian-12/user-data")).unwrap()
    );
    // The CIDR is checked like the installer checks it.
    for (bad, why) in [
        ("8.8.0.0/16", "is not a private network"),
        (
            "10.100.0.1/18",
            "has host bits set; the network is 10.100.0.0/18",
        ),
        ("10.0.0.0/8", "has a mask outside /16 to /24"),
    ] {
        let err = fails(&build_args(
            lock,
            control.to_str().unwrap(),
            &["--cluster-cidr", bad],
        ));
        assert!(
            err.contains(&format!("--cluster-cidr: {bad:?} {why}")),
            "{err}"
        );
    }
    let _ = std::io::stderr().flush();
}

#[test]
fn oversized_scripts_and_broken_manifests_are_refused_by_name() {
    let dir = tempdir();
    let big = "#".repeat(1024 * 1024 + 1);
    let bundle = make_bundle(
        dir.path(),
        "cube-sandbox-one-click-v1-amd64.tar.gz",
        &[],
        &[("scripts/systemd/cubeops-start.sh", &big)],
    );
    let err = fails(&["inspect", bundle.to_str().unwrap()]);
    assert!(
        err.contains("assets/package/sandbox-package.tar.gz:scripts/systemd/cubeops-start.sh: 1048577 bytes; cubeboot reads a bundle's scripts and manifests up to 1048576 bytes each"),
        "{err}"
    );
    let bundle = make_bundle(
        dir.path(),
        "cube-sandbox-one-click-v2-amd64.tar.gz",
        &[("release-manifest.json", "{\n  \"release_version\": v2\n}\n")],
        &[],
    );
    let err = fails(&[
        "lock",
        "--asset",
        bundle.to_str().unwrap(),
        "--tag",
        "v2",
        "--output",
        dir.path().join("x.lock").to_str().unwrap(),
    ]);
    assert!(
        err.contains("inspecting bundle cube-sandbox-one-click-v2-amd64.tar.gz: release-manifest.json:2:22: not JSON: expected value at line 2 column 22"),
        "{err}"
    );
    assert!(!dir.path().join("x.lock").exists());
}
