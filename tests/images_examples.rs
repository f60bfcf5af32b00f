//! The Terraform and Packer examples: every file parses as HCL2 (python-hcl2,
//! the parser .ci/run installs) and the files they read are exactly what
//! `cubeboot build` writes.

#[path = "images/common.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::*;

fn hcl_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            hcl_files(&p, out);
        } else if p.to_string_lossy().ends_with(".tf") || p.to_string_lossy().ends_with(".pkr.hcl")
        {
            out.push(p);
        }
    }
}

#[test]
fn every_terraform_and_packer_file_parses() {
    let Some(python) = hcl_python() else { return };
    let mut files = Vec::new();
    hcl_files(&repo().join("examples/terraform"), &mut files);
    hcl_files(&repo().join("examples/packer"), &mut files);
    files.sort();
    assert!(files.len() >= 7, "examples went missing: {files:?}");
    let args: Vec<String> = std::iter::once("parse".to_string())
        .chain(files.iter().map(|f| f.to_string_lossy().into_owned()))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = hcl_refs(&python, &args, &repo());
    assert_eq!(report["parsed"].as_array().unwrap().len(), files.len());
}

#[test]
fn a_syntax_error_in_hcl_is_caught() {
    // The parser must be able to fail, or the test above proves nothing.
    let Some(python) = hcl_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.tf");
    std::fs::write(&bad, "resource \"x\" \"y\" {\n  a = \n").unwrap();
    let out = std::process::Command::new(python)
        .arg(repo().join("tests/images/hcl_refs.py"))
        .args(["parse", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Files an example root reads, resolved as terraform would from the root.
fn terraform_refs(python: &Path, root: &Path, vars: &[&str]) -> Vec<PathBuf> {
    let mut args = vec!["terraform", root.to_str().unwrap()];
    for v in vars {
        args.push("-var");
        args.push(v);
    }
    let report = hcl_refs(python, &args, root);
    assert_eq!(
        report["unresolved"].as_array().unwrap().len(),
        0,
        "unresolved file paths in {}: {:#}",
        root.display(),
        report["unresolved"]
    );
    report["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| PathBuf::from(r["path"].as_str().unwrap()))
        .collect()
}

#[test]
fn terraform_examples_read_only_what_cubeboot_build_writes() {
    let Some(python) = hcl_python() else { return };
    let scratch = scratch_repo();
    let dir = scratch.path();
    let lock = "examples/release/cubeboot.lock";
    // The commands the examples' headers (and README.md) give.
    for args in [
        vec!["--role", "control", "--output", "out/control"],
        vec![
            "--role",
            "compute",
            "--control-plane-ip",
            "10.0.1.10",
            "--output",
            "out/compute",
        ],
    ] {
        run(std::process::Command::new(cubeboot())
            .current_dir(dir)
            .args([
                "build",
                "--lock",
                lock,
                "--profile",
                "opencloudos-9",
                "--cloud",
                "tencent",
            ])
            .args(&args)
            // One webhook and secret, one ops-agent token and one sandbox
            // CIDR for the fleet, as the cluster header says.
            .args([
                "--webhook",
                "http://203.0.113.7:8740/",
                "--webhook-secret-file",
                "out/webhook-secret",
                "--ops-token-file",
                "out/ops-token",
                "--cluster-cidr",
                "10.100.0.0/18",
            ]));
    }

    let single = terraform_refs(&python, &dir.join("examples/terraform/single-node"), &[]);
    let cluster = terraform_refs(&python, &dir.join("examples/terraform/cluster"), &[]);
    assert!(
        single.len() >= 3 && cluster.len() >= 6,
        "{single:?} {cluster:?}"
    );
    for p in single.iter().chain(&cluster) {
        assert!(
            p.starts_with(dir.join("out")),
            "{} is outside out/",
            p.display()
        );
        assert!(
            p.is_file(),
            "{} is read by the example but not built",
            p.display()
        );
    }

    // The cluster module's precondition, evaluated here: the compute payload
    // names the control node's private IP, the control payload is a control.
    let plan = |role: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(dir.join(format!("out/{role}/opencloudos-9/plan.json")))
            .unwrap();
        serde_json::from_str(&text).unwrap()
    };
    assert_eq!(plan("compute")["cube"]["control_plane_ip"], "10.0.1.10");
    assert_eq!(plan("compute")["cube"]["role"], "compute");
    assert_eq!(plan("control")["cube"]["role"], "control");
    // The module's webhook precondition: both plans carry the URL and the
    // secret of the file the cluster example reads (its default path).
    let secret = std::fs::read_to_string(dir.join("out/webhook-secret")).unwrap();
    for role in ["control", "compute"] {
        assert_eq!(plan(role)["report"]["webhook"], "http://203.0.113.7:8740/");
        assert_eq!(plan(role)["report"]["webhook_secret"], secret.trim());
    }
    assert!(cluster_tf_default_secret(dir).ends_with("out/webhook-secret"));
    let cluster_tf =
        std::fs::read_to_string(dir.join("examples/terraform/cluster/main.tf")).unwrap();
    assert!(cluster_tf.contains("default     = \"10.0.1.10\""));

    // Tencent Cloud's 16 KB user_data limit holds for both encodings.
    for role in ["control", "compute"] {
        let base = dir.join(format!("out/{role}/opencloudos-9"));
        let raw = std::fs::read(base.join("user-data")).unwrap();
        let gz = std::fs::read_to_string(base.join("user-data.gz.b64")).unwrap();
        assert!(
            raw.len().div_ceil(3) * 4 <= 16384,
            "{role}: {} bytes",
            raw.len()
        );
        assert!(gz.trim().len() <= 16384);
    }

    // Pointing the example at a directory the build did not write is caught.
    let missing = terraform_refs(
        &python,
        &dir.join("examples/terraform/single-node"),
        &["profile=debian-12"],
    );
    assert!(missing.iter().any(|p| !p.exists()));
}

#[test]
fn packer_template_uploads_the_built_overlay_then_applies_and_resets() {
    let Some(python) = hcl_python() else { return };
    let scratch = scratch_repo();
    let dir = scratch.path();
    run(std::process::Command::new(cubeboot())
        .current_dir(dir)
        .args([
            "build",
            "--lock",
            "examples/release/cubeboot.lock",
            "--profile",
            "opencloudos-9",
            "--format",
            "overlay",
            "--offline",
            "--output",
            "out/image",
        ]));
    let report = hcl_refs(&python, &["packer", "examples/packer", "."], dir);
    assert_eq!(report["unresolved"].as_array().unwrap().len(), 0);
    let refs: Vec<PathBuf> = report["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| PathBuf::from(r["path"].as_str().unwrap()))
        .collect();
    assert_eq!(
        refs,
        vec![dir.join("out/image/opencloudos-9/overlay.tar.xz")]
    );
    assert!(refs[0].is_file());
    let inline: Vec<&str> = report["inline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(inline.contains(&"/usr/local/sbin/cube-firstboot apply --root / --stage kernel"));
    assert!(inline.contains(&"/usr/local/sbin/cube-firstboot reset --for-image --keep-cache"));
    let apply = inline.iter().position(|c| c.contains(" apply ")).unwrap();
    let reset = inline.iter().position(|c| c.contains(" reset ")).unwrap();
    let untar = inline.iter().position(|c| c.starts_with("tar ")).unwrap();
    assert!(untar < apply && apply < reset, "{inline:?}");
}

/// The cluster example's default webhook_secret_file, resolved from its dir.
fn cluster_tf_default_secret(dir: &std::path::Path) -> String {
    let tf = std::fs::read_to_string(dir.join("examples/terraform/cluster/main.tf")).unwrap();
    let block = tf.split("variable \"webhook_secret_file\"").nth(1).unwrap();
    let default = block
        .lines()
        .find(|l| l.trim_start().starts_with("default"))
        .unwrap();
    let rel = default.split('"').nth(1).unwrap();
    let path = dir.join("examples/terraform/cluster").join(rel);
    let normal: std::path::PathBuf =
        path.components()
            .fold(std::path::PathBuf::new(), |mut p, c| {
                match c {
                    std::path::Component::ParentDir => {
                        p.pop();
                    }
                    other => p.push(other),
                }
                p
            });
    normal.display().to_string()
}

/// A Terraform file as python-hcl2 reads it (block names keep their quotes).
fn hcl_json(python: &Path, file: &Path) -> serde_json::Value {
    let out = run(std::process::Command::new(python).args([
        "-c",
        "import hcl2, json, sys; print(json.dumps(hcl2.load(open(sys.argv[1]))))",
        file.to_str().unwrap(),
    ]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The block `"name"` among a file's `kind` blocks.
fn hcl_block<'a>(doc: &'a serde_json::Value, kind: &str, name: &str) -> &'a serde_json::Value {
    let quoted = format!("\"{name}\"");
    doc[kind]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|b| b.get(&quoted))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn cluster_example_prints_its_watch_command_and_no_webhook_is_a_choice() {
    let Some(python) = hcl_python() else { return };
    let tf = repo().join("examples/terraform/cluster/main.tf");
    let doc = hcl_json(&python, &tf);
    // No default: a user says "none" to go without progress reports.
    let var = hcl_block(&doc, "variable", "webhook_url");
    assert!(var.get("default").is_none(), "{var}");
    let validation = var["validation"].to_string();
    assert!(
        validation.contains("var.webhook_url == \\\"none\\\""),
        "{validation}"
    );
    // The watch command the output prints, with the values terraform would
    // put in for compute_count=3 and http://203.0.113.7:8740/.
    let value = hcl_block(&doc, "output", "watch_command")["value"]
        .as_str()
        .unwrap()
        .to_string();
    let template = value
        .split("\"cubeboot watch ")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap_or_else(|| panic!("watch_command prints no cubeboot watch: {value}"));
    let secret = repo().join("out/webhook-secret");
    let command = format!("cubeboot watch {template}")
        .replace("${local.watch_port}", "8740")
        .replace(
            "${abspath(var.webhook_secret_file)}",
            secret.to_str().unwrap(),
        )
        .replace("${var.compute_count + 1}", "4");
    assert!(!command.contains("${"), "{command}");
    assert_eq!(
        command,
        format!(
            "cubeboot watch --listen 0.0.0.0:8740 --secret-file {} --expect 4",
            secret.display()
        )
    );
    // cubeboot's own parser takes it (--help stops before listening).
    let mut args: Vec<&str> = command.split_whitespace().skip(1).collect();
    args.push("--help");
    run(std::process::Command::new(cubeboot()).args(&args));
    // The port comes from the URL the payloads were built with.
    let locals = doc["locals"].to_string();
    assert!(
        locals.contains("regex(\\\"^https?://[^/]*:([0-9]+)\\\", local.webhook_url)"),
        "{locals}"
    );
}

#[test]
fn terraform_working_files_are_ignored() {
    for path in [
        "examples/terraform/cluster/.terraform/providers/x".to_string(),
        format!("examples/terraform/single-node/{}", "terraform.tfstate"),
        format!(
            "examples/terraform/single-node/{}",
            "terraform.tfstate.backup"
        ),
    ] {
        let st = std::process::Command::new("git")
            .args(["check-ignore", "-q", "--no-index", &path])
            .current_dir(repo())
            .status()
            .unwrap();
        assert!(st.success(), "{path} is not ignored by .gitignore");
    }
}
