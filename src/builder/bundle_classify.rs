//! From the text files `bundle_inspect` kept to `BundleFacts`: each fact is
//! recognised by something upstream writes in a named file
//! (docs/cube-installer.md, "What lock reads out of a bundle"); whatever
//! looks like a fact but matches no model goes into `unknown`, so `check`
//! can say what this cubeboot does not know about a newer bundle.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::arch::Arch;
use crate::bundle_facts::{BundleFacts, BundleRole, CubeOpsFacts, Listener, RequiredEnv};

/// A text file read out of the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextFile {
    /// Where it is, for messages: its path in the bundle, or
    /// `assets/package/sandbox-package.tar.gz:<path>` for the nested package.
    pub source: String,
    pub text: String,
}

/// What `bundle_inspect` kept of a bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleFiles {
    /// The text files, by their path under the bundle's (or the nested
    /// package's) top directory: `scripts/systemd/cubeops-start.sh`. A file
    /// in both places is taken from the bundle itself.
    pub text: BTreeMap<String, TextFile>,
    /// The ELF programs under a `bin/` directory (`Cubelet/bin/cubelet`),
    /// by where they are (as `TextFile::source`): the machine they run on,
    /// or what else their header says.
    pub programs: BTreeMap<String, Result<Arch, String>>,
}

const MANIFEST: &str = "release-manifest.json";
const QUICKCHECK: &str = "scripts/one-click/quickcheck.sh";

/// Top-level keys of `release-manifest.json` as
/// CubeSandbox: deploy/one-click/build-release-bundle.sh writes them.
const MANIFEST_KEYS: &[&str] = &[
    "release_version",
    "built_at",
    "built_by",
    "git_commit",
    "components",
    "guest_image",
    "kernel",
];
const MANIFEST_KERNEL_KEYS: &[&str] = &[
    "version",
    "vmlinux_digest_sha256",
    "pvm_version",
    "vmlinux_pvm_digest_sha256",
];
/// Components that script lists; a new one may bring listeners or keys.
const MANIFEST_COMPONENTS: &[&str] = &[
    "cubemaster",
    "cubemastercli",
    "cubelet",
    "cubecli",
    "cube-api",
    "cubeops",
    "cube-agent",
    "containerd-shim-cube-rs",
    "cube-runtime",
    "cube-egress",
    "cube-lifecycle-manager",
    "network-agent",
];

/// Listeners cubeboot has a model for, by the variable that sets their bind
/// address, with the port when the variable holds only an address.
struct ListenerModel {
    bind_env: &'static str,
    service: &'static str,
    role: BundleRole,
    port: Option<u16>,
}

const LISTENER_MODELS: &[ListenerModel] = &[
    // CubeSandbox: scripts/systemd/cubeops-start.sh (0.0.0.0:3010).
    ListenerModel {
        bind_env: "CUBE_OPS_BIND",
        service: "CubeOps",
        role: BundleRole::Control,
        port: None,
    },
    // CubeSandbox: env.example, scripts/systemd/cube-api-start.sh.
    ListenerModel {
        bind_env: "CUBE_API_BIND",
        service: "CubeAPI",
        role: BundleRole::Control,
        port: None,
    },
    // CubeSandbox: env.example (an address only; CubeMaster serves 8089).
    ListenerModel {
        bind_env: "CUBEMASTER_HTTP_BIND",
        service: "CubeMaster",
        role: BundleRole::Control,
        port: Some(8089),
    },
    // CubeSandbox: scripts/one-click/up-cube-lifecycle-manager.sh
    // (0.0.0.0:8083 on the host network).
    ListenerModel {
        bind_env: "CUBE_LCM_LISTEN_ADDR",
        service: "cube-lifecycle-manager",
        role: BundleRole::Control,
        port: None,
    },
];

/// Keys the bundle may require that cubeboot knows how to supply: the node
/// address and control plane (`--node-ip`, `--control-plane-ip`), the role,
/// and the cluster's ops-agent token (`build --ops-token-file`).
const SUPPLIED_KEYS: &[&str] = &[
    "CUBE_SANDBOX_NODE_IP",
    "CUBE_OPS_OPSAGENT_TOKEN",
    "ONE_CLICK_DEPLOY_ROLE",
    "ONE_CLICK_CONTROL_PLANE_IP",
    "ONE_CLICK_CONTROL_PLANE_CUBEMASTER_ADDR",
    "ONE_CLICK_CONTROL_PLANE_CUBEOPS_ADDR",
];

/// Upstream's CubeOps port when no script names one.
const DEFAULT_CUBE_OPS_PORT: u16 = 3010;

/// The facts of the bundle released as `name`, from its text files.
pub fn classify(name: &str, files: &BundleFiles) -> Result<BundleFacts> {
    let mut unknown = Vec::new();
    let manifest = match files.text.get(MANIFEST) {
        Some(f) => Some(read_manifest(f, &mut unknown)?),
        None => None,
    };
    let (name_version, name_arch) = from_name(name);
    let arch = arch(name, name_arch, &files.programs, &mut unknown)?;
    let version = manifest
        .as_ref()
        .and_then(|m| m.get("release_version"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| files.text.get("VERSION.txt").and_then(version_txt))
        .unwrap_or(name_version);
    let pvm_version = manifest
        .as_ref()
        .and_then(|m| m.pointer("/kernel/pvm_version"))
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty() && *v != "unknown")
        .map(str::to_string);
    let mut listeners = Vec::new();
    for file in files.text.values() {
        scan_listeners(file, &mut listeners, &mut unknown);
    }
    listeners.sort_by(|a: &Listener, b| (a.port, &a.service).cmp(&(b.port, &b.service)));
    listeners.dedup_by(|a, b| a.port == b.port && a.service == b.service);
    let mut required_env = Vec::new();
    for file in files.text.values() {
        scan_required(file, &mut required_env, &mut unknown);
    }
    let cube_ops = cube_ops(files, &listeners, &mut unknown);
    unknown.sort();
    unknown.dedup();
    Ok(BundleFacts {
        version,
        arch,
        pvm_version,
        cube_ops,
        required_env,
        listeners,
        unknown,
    })
}

/// Parse the manifest and note every key it has that no model covers.
fn read_manifest(f: &TextFile, unknown: &mut Vec<String>) -> Result<Value> {
    let doc: Value = match serde_json::from_str(&f.text) {
        Ok(v) => v,
        Err(e) => bail!("{}:{}:{}: not JSON: {e}", f.source, e.line(), e.column()),
    };
    let Some(top) = doc.as_object() else {
        bail!("{}: expected a JSON object", f.source);
    };
    for key in top.keys() {
        if key == "schema_version" {
            unknown.push(format!(
                "{}: schema_version {} (cubeboot knows manifests without one)",
                f.source, top[key]
            ));
        } else if !MANIFEST_KEYS.contains(&key.as_str()) {
            unknown.push(format!("{}: key {key:?}", f.source));
        }
    }
    if let Some(kernel) = top.get("kernel").and_then(Value::as_object) {
        for key in kernel.keys() {
            if !MANIFEST_KERNEL_KEYS.contains(&key.as_str()) {
                unknown.push(format!("{}: key \"kernel.{key}\"", f.source));
            }
        }
    }
    if let Some(components) = top.get("components").and_then(Value::as_object) {
        for key in components.keys() {
            if !MANIFEST_COMPONENTS.contains(&key.as_str()) {
                unknown.push(format!("{}: component {key:?}", f.source));
            }
        }
    }
    Ok(doc)
}

/// The bundle's architecture, from the machine its programs are built for
/// (upstream names its amd64 bundle without a suffix:
/// `cube-sandbox-one-click-v0.5.0.tar.gz` beside `...-v0.5.0-arm64.tar.gz`,
/// docs/arm64.md), else from the name's suffix. Programs of two machines,
/// or a suffix the programs contradict, are refused: such a bundle cannot
/// run on any one node.
fn arch(
    name: &str,
    name_arch: Option<String>,
    programs: &BTreeMap<String, Result<Arch, String>>,
    unknown: &mut Vec<String>,
) -> Result<String> {
    let mut built_for: BTreeMap<Arch, &str> = BTreeMap::new();
    for (source, machine) in programs {
        match machine {
            Ok(a) => {
                built_for.entry(*a).or_insert(source);
            }
            Err(what) => unknown.push(format!("{source}: {what}")),
        }
    }
    let mut archs = built_for.iter();
    match (archs.next(), archs.next()) {
        (Some((a, first)), Some((b, second))) => bail!(
            "{first} is built for {} but {second} for {}; a bundle's programs run on one machine",
            a.uname(),
            b.uname()
        ),
        (Some((a, source)), None) => {
            if let Some(n) = name_arch.as_deref().filter(|n| *n != a.bundle()) {
                bail!(
                    "{name} is named for {n}, but {source} is built for {} ({}); lock the bundle its programs are built for",
                    a.uname(),
                    a.bundle()
                );
            }
            Ok(a.bundle().to_string())
        }
        (None, _) => Ok(name_arch.unwrap_or_else(|| {
            unknown.push(format!(
                "arch: {name} has no ELF program under a bin/ directory and its name does not end in -amd64.tar.gz or -arm64.tar.gz"
            ));
            "unknown".to_string()
        })),
    }
}

/// `cube-sandbox-one-click-<version>-<arch>.tar.gz` (docs/pvm-kernel.md).
fn from_name(name: &str) -> (String, Option<String>) {
    let stem = name
        .strip_prefix("cube-sandbox-one-click-")
        .unwrap_or(name)
        .trim_end_matches(".tar.gz")
        .trim_end_matches(".tgz");
    for arch in ["amd64", "arm64"] {
        if let Some(v) = stem.strip_suffix(&format!("-{arch}")) {
            return (v.to_string(), Some(arch.to_string()));
        }
    }
    (stem.to_string(), None)
}

/// `release_version=` of `VERSION.txt`, or its first line when it is a
/// bare version (older bundles).
fn version_txt(f: &TextFile) -> Option<String> {
    let lines = || {
        f.text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
    };
    lines()
        .find_map(|l| l.strip_prefix("release_version="))
        .or_else(|| lines().next().filter(|l| !l.contains('=')))
        .map(|v| v.trim_matches('"').to_string())
}

fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

fn is_bind_var(name: &str) -> bool {
    name.ends_with("_BIND") || name.ends_with("_LISTEN_ADDR") || name.ends_with("_LISTEN")
}

/// Each `${NAME:-default}` on a shell line.
fn defaults(line: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let Some((name, after)) = rest.split_once(":-") else {
            break;
        };
        if !is_key(name) {
            continue;
        }
        let end = after.find('}').unwrap_or(after.len());
        out.push((name, &after[..end]));
        rest = &after[end..];
    }
    out
}

/// `host:port` with a port; `None` when there is no port.
fn split_bind(value: &str) -> (&str, Option<u16>) {
    let value = value.trim_matches(['"', '\'']);
    match value.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, port.parse().ok())
        }
        _ => (value, None),
    }
}

fn is_loopback(host: &str) -> bool {
    host.starts_with("127.") || host == "localhost" || host == "[::1]" || host == "::1"
}

/// Listeners from bind defaults in scripts (`${CUBE_OPS_BIND:-0.0.0.0:3010}`),
/// bind settings in `env.example` and ops-agent's `listen_addr:`.
fn scan_listeners(f: &TextFile, out: &mut Vec<Listener>, unknown: &mut Vec<String>) {
    let env_example = f.source == "env.example";
    for line in f.text.lines() {
        let t = line.trim();
        if t.starts_with('#') {
            continue;
        }
        let mut binds = defaults(t);
        if env_example {
            if let Some((k, v)) = t.split_once('=') {
                if is_key(k) {
                    binds.push((k, v));
                }
            }
        }
        for (name, value) in binds {
            if !is_bind_var(name) {
                continue;
            }
            let (host, port) = split_bind(value);
            if is_loopback(host) {
                continue;
            }
            let model = LISTENER_MODELS.iter().find(|m| m.bind_env == name);
            match (model, port.or(model.and_then(|m| m.port))) {
                (Some(m), Some(port)) => out.push(Listener {
                    service: m.service.to_string(),
                    port,
                    role: m.role,
                    bind_env: Some(name.to_string()),
                }),
                _ => unknown.push(format!(
                    "{}: {name} binds {value:?}, a listener cubeboot has no model for",
                    f.source
                )),
            }
        }
        // ops-agent's config, written by CubeSandbox:
        // scripts/systemd/prepare-compute-role.sh on every Cubelet node.
        if let Some(v) = t.strip_prefix("listen_addr:") {
            let (host, port) = split_bind(v.trim());
            if is_loopback(host) {
                continue;
            }
            match port {
                Some(port) if f.text.contains("ops-agent/conf") => out.push(Listener {
                    service: "ops-agent".to_string(),
                    port,
                    role: BundleRole::All,
                    bind_env: None,
                }),
                _ => unknown.push(format!(
                    "{}: listen_addr {:?}, a listener cubeboot has no model for",
                    f.source,
                    v.trim()
                )),
            }
        }
    }
}

/// `die "KEY is required for the compute role"`: the scripts that refuse to
/// run without a key (CubeSandbox: scripts/systemd/prepare-compute-role.sh).
fn scan_required(f: &TextFile, out: &mut Vec<RequiredEnv>, unknown: &mut Vec<String>) {
    for line in f.text.lines() {
        let t = line.trim();
        let Some(msg) = t.split_once("die \"").map(|(_, m)| m) else {
            continue;
        };
        let Some((key, rest)) = msg.split_once(" is required for ") else {
            continue;
        };
        if !is_key(key) {
            continue;
        }
        let rest = rest.strip_prefix("the ").unwrap_or(rest);
        let role = if rest.starts_with("compute role") {
            BundleRole::Compute
        } else if rest.starts_with("control role") {
            BundleRole::Control
        } else {
            continue;
        };
        if out.iter().any(|r| r.key == key && r.role == role) {
            continue;
        }
        if !SUPPLIED_KEYS.contains(&key) {
            unknown.push(format!(
                "{}: requires {key} for the {} role, a key cubeboot does not supply",
                f.source,
                if role == BundleRole::Compute {
                    "compute"
                } else {
                    "control"
                }
            ));
        }
        out.push(RequiredEnv {
            key: key.to_string(),
            role,
            source: f.source.clone(),
        });
    }
}

/// Upstream quickcheck's CubeOps registration probe.
const CUBE_OPS_REGISTRATION: &str = "/internal/v1/nodes/{ip}";

/// Whether compute nodes register with CubeOps, and where that is checked.
/// The bundle's quickcheck decides when it probes registration (CubeOps, or
/// CubeMaster before CubeOps); without such a probe, a script that points
/// Cubelet's `meta_server_endpoint` at the CubeOps address
/// (CubeSandbox: scripts/systemd/prepare-compute-role.sh) means CubeOps, at
/// upstream's path.
fn cube_ops(
    files: &BundleFiles,
    listeners: &[Listener],
    unknown: &mut Vec<String>,
) -> Option<CubeOpsFacts> {
    let (registration_path, source) = match files
        .text
        .get(QUICKCHECK)
        .map(|q| (registration(q, unknown), q))
    {
        Some((Probe::CubeOps(path), q)) => (path, q.source.clone()),
        Some((Probe::CubeMaster, _)) => return None,
        _ => {
            let routed = files.text.values().find(|f| {
                f.text.contains("meta_server_endpoint")
                    && f.text.contains("resolve_control_plane_cubeops_addr")
            })?;
            (CUBE_OPS_REGISTRATION.to_string(), routed.source.clone())
        }
    };
    let port = listeners
        .iter()
        .find(|l| l.service == "CubeOps")
        .map(|l| l.port)
        .unwrap_or_else(|| {
            unknown.push(format!(
                "{source}: registration with CubeOps, but no script names CubeOps' port (assumed {DEFAULT_CUBE_OPS_PORT})"
            ));
            DEFAULT_CUBE_OPS_PORT
        });
    Some(CubeOpsFacts {
        port,
        registration_path,
    })
}

enum Probe {
    CubeOps(String),
    CubeMaster,
    None,
}

/// Where the bundle's quickcheck looks for a compute node's registration
/// (CubeSandbox: scripts/one-click/quickcheck.sh, `check_node_registration`):
/// CubeOps' `/internal/v1/nodes/<ip>`, or CubeMaster's
/// `/internal/meta/nodes/<ip>` before CubeOps.
fn registration(q: &TextFile, unknown: &mut Vec<String>) -> Probe {
    let mut found = Probe::None;
    for line in q.text.lines() {
        let t = line.trim();
        if t.starts_with('#') {
            continue;
        }
        let Some((_, url)) = t.split_once("\"http://${") else {
            continue;
        };
        let url = url.split('"').next().unwrap_or(url);
        let Some((_, path)) = url.split_once('}') else {
            continue;
        };
        if !path.contains("/nodes/") {
            continue;
        }
        // Every `${var}` in the path is the node's address.
        let mut shape = String::new();
        let mut rest = path;
        while let Some(i) = rest.find("${") {
            shape.push_str(&rest[..i]);
            shape.push_str("{ip}");
            rest = rest[i..].split_once('}').map_or("", |(_, r)| r);
        }
        shape.push_str(rest);
        match shape.as_str() {
            CUBE_OPS_REGISTRATION => found = Probe::CubeOps(shape),
            "/internal/meta/nodes/{ip}" => found = Probe::CubeMaster,
            _ => unknown.push(format!(
                "{}: a registration probe at {shape:?}, which cubeboot has no model for",
                q.source
            )),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BundleFiles {
        BundleFiles {
            text: list
                .iter()
                .map(|(p, t)| {
                    (
                        p.to_string(),
                        TextFile {
                            source: p.to_string(),
                            text: t.to_string(),
                        },
                    )
                })
                .collect(),
            programs: BTreeMap::new(),
        }
    }

    #[test]
    fn defaults_and_binds_parse_like_the_shell() {
        assert_eq!(
            defaults(r#"API_LISTEN="${CUBE_API_BIND:-0.0.0.0:3000}" x=${Y:-${Z:-1}}"#),
            [("CUBE_API_BIND", "0.0.0.0:3000"), ("Y", "${Z:-1")]
        );
        assert_eq!(split_bind("0.0.0.0:3010"), ("0.0.0.0", Some(3010)));
        assert_eq!(split_bind(":8083"), ("", Some(8083)));
        assert_eq!(split_bind("0.0.0.0"), ("0.0.0.0", None));
    }

    #[test]
    fn quickcheck_decides_where_registration_is_verified() {
        // CubeSandbox: scripts/systemd/prepare-compute-role.sh after PR #1384.
        let prepare = "OPS_ADDR=\"$(resolve_control_plane_cubeops_addr)\"\nsed -e \"s#meta_server_endpoint: .*#${OPS_ADDR}#\"\n";
        let ops = (
            "scripts/systemd/cubeops-start.sh",
            "B=\"${CUBE_OPS_BIND:-0.0.0.0:3011}\"\n",
        );
        let name = "cube-sandbox-one-click-v1-amd64.tar.gz";
        // No registration probe in quickcheck: the routed endpoint decides.
        let f = classify(
            name,
            &files(&[("scripts/systemd/prepare-compute-role.sh", prepare), ops]),
        )
        .unwrap();
        let want = CubeOpsFacts {
            port: 3011,
            registration_path: "/internal/v1/nodes/{ip}".into(),
        };
        assert_eq!(f.cube_ops, Some(want));
        // A quickcheck still probing CubeMaster keeps verification there.
        let master =
            "x=\"$(curl -fsS \"http://${master_addr}/internal/meta/nodes/${node_id}\")\"\n";
        let f = classify(
            name,
            &files(&[
                ("scripts/systemd/prepare-compute-role.sh", prepare),
                (QUICKCHECK, master),
                ops,
            ]),
        )
        .unwrap();
        assert_eq!(f.cube_ops, None);
        assert!(f.unknown.is_empty(), "{:?}", f.unknown);
    }

    #[test]
    fn an_unmodelled_bind_and_an_unknown_required_key_are_unknown() {
        let f = classify(
            "cube-sandbox-one-click-v9-amd64.tar.gz",
            &files(&[
                (
                    "scripts/systemd/new-start.sh",
                    "export NEW_BIND=\"${NEW_BIND:-0.0.0.0:7777}\"\nLOCAL=${TC_BIND:-127.0.0.1:8090}\n",
                ),
                (
                    "scripts/systemd/prep.sh",
                    "  die \"CUBE_NEW_SECRET is required for the compute role\"\n",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(f.unknown.len(), 2, "{:?}", f.unknown);
        assert!(
            f.unknown[0].contains("NEW_BIND binds \"0.0.0.0:7777\""),
            "{:?}",
            f.unknown
        );
        assert!(
            f.unknown[1].contains("requires CUBE_NEW_SECRET"),
            "{:?}",
            f.unknown
        );
        assert!(f.requires("CUBE_NEW_SECRET", BundleRole::Compute));
        assert!(f.listeners.is_empty());
    }

    fn with_programs(list: &[(&str, Result<Arch, String>)]) -> BundleFiles {
        BundleFiles {
            programs: list
                .iter()
                .map(|(p, m)| (p.to_string(), m.clone()))
                .collect(),
            ..files(&[])
        }
    }

    const CUBELET: &str = "assets/package/sandbox-package.tar.gz:Cubelet/bin/cubelet";
    const CUBEMASTER: &str = "assets/package/sandbox-package.tar.gz:CubeMaster/bin/cubemaster";

    #[test]
    fn arch_comes_from_the_programs_and_upstreams_unsuffixed_amd64_name() {
        // Upstream's v0.5.0 amd64 bundle has no -amd64 in its name.
        let amd64 = with_programs(&[(CUBELET, Ok(Arch::X86_64)), (CUBEMASTER, Ok(Arch::X86_64))]);
        let f = classify("cube-sandbox-one-click-v0.5.0.tar.gz", &amd64).unwrap();
        assert_eq!((f.arch.as_str(), f.version.as_str()), ("amd64", "v0.5.0"));
        assert!(f.unknown.is_empty(), "{:?}", f.unknown);
        let arm64 = with_programs(&[(CUBELET, Ok(Arch::Aarch64))]);
        let f = classify("cube-sandbox-one-click-v0.5.0-arm64.tar.gz", &arm64).unwrap();
        assert_eq!(f.arch, "arm64");
        // No program: the name's suffix, as before; neither: unknown.
        let f = classify("cube-sandbox-one-click-v0.5.0-arm64.tar.gz", &files(&[])).unwrap();
        assert_eq!(f.arch, "arm64");
        let f = classify("cube-sandbox-one-click-v0.5.0.tar.gz", &files(&[])).unwrap();
        assert_eq!(f.arch, "unknown");
        assert!(
            f.unknown.iter().any(|u| u.starts_with("arch: ")),
            "{:?}",
            f.unknown
        );
    }

    #[test]
    fn a_name_its_programs_contradict_or_mixed_programs_are_refused() {
        let amd64 = with_programs(&[(CUBELET, Ok(Arch::X86_64))]);
        let e = classify("cube-sandbox-one-click-v0.5.0-arm64.tar.gz", &amd64)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("named for arm64") && e.contains("Cubelet/bin/cubelet is built for x86_64"),
            "{e}"
        );
        let mixed = with_programs(&[(CUBELET, Ok(Arch::Aarch64)), (CUBEMASTER, Ok(Arch::X86_64))]);
        let e = classify("cube-sandbox-one-click-v0.5.0.tar.gz", &mixed)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("built for x86_64") && e.contains("for aarch64"),
            "{e}"
        );
        // A program for a third machine is a fact without a model.
        let other = with_programs(&[
            (CUBELET, Ok(Arch::X86_64)),
            (CUBEMASTER, Err("an ELF executable for machine 243".into())),
        ]);
        let f = classify("cube-sandbox-one-click-v0.5.0.tar.gz", &other).unwrap();
        assert_eq!(f.arch, "amd64");
        assert!(
            f.unknown.iter().any(|u| u.contains("machine 243")),
            "{:?}",
            f.unknown
        );
    }
}
