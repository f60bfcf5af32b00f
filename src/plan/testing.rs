//! A complete, valid plan for tests: the crate's unit tests and the
//! integration tests under tests/ (through the `testing` feature) start
//! from it and change what they need.

use std::collections::BTreeMap;

use super::*;
use crate::digest::Sha256Digest;

/// A debian-12 control-node plan with placeholder assets.
pub fn sample_plan() -> Plan {
    Plan {
        version: PLAN_VERSION,
        generator: "cubeboot 0.0.0-test".into(),
        target: Target {
            profile: "debian-12".into(),
            os_ids: vec!["debian".into()],
            version_id: "12".into(),
            family: PackageFamily::Deb,
            bootloader: Bootloader {
                kind: BootloaderKind::GrubMkconfig,
                mkconfig: vec!["update-grub".into()],
                reboot_once: "grub-reboot".into(),
                set_default: "grub-set-default".into(),
                editenv: "grub-editenv".into(),
                grub_cfg: "/boot/grub/grub.cfg".into(),
                grubenv: "/boot/grub/grubenv".into(),
                dropin_dir: Some("/etc/default/grub.d".into()),
            },
            packages: HostPackages {
                manager: PackageManager::Apt,
                install: vec!["curl".into(), "xfsprogs".into()],
                docker: DockerSource::Distro,
                hold: KernelHold::AptMarkHold,
            },
            quirks: Quirks {
                multipathd_cgroup_fix: true,
                needs_resolver: true,
            },
            arch: crate::arch::Arch::X86_64,
        },
        assets: Assets {
            kernel: Asset {
                name: "linux-image-test.deb".into(),
                urls: vec!["file:///srv/linux-image-test.deb".into()],
                sha256: Sha256Digest::of(b"kernel"),
                size: 6,
            },
            bundle: Asset {
                name: "cube-sandbox-one-click-test.tar.gz".into(),
                urls: vec!["file:///srv/cube-sandbox-one-click-test.tar.gz".into()],
                sha256: Sha256Digest::of(b"bundle"),
                size: 6,
            },
        },
        kernel: KernelPlan {
            kver: "6.6.69-opencloudos9.cubesandbox.pvm.host-gtest".into(),
            package: "linux-image-6.6.69-opencloudos9.cubesandbox.pvm.host-gtest".into(),
            package_version: "6.6.69-1".into(),
            kvm: KvmMode::Pvm,
            boot_params: boot_params::MINIMAL.iter().map(|s| s.to_string()).collect(),
            panic_seconds: 30,
            repo: None,
        },
        cube: CubePlan {
            role: Role::Control,
            control_plane_ip: None,
            node_ip: NodeIp::Auto,
            mirror: None,
            install_timeout_secs: DEFAULT_INSTALL_TIMEOUT_SECS,
            data_disk: DataDisk::Auto,
            loopback_size_gib: 50,
            hardening: true,
            allow_from: vec![],
            extra_env: BTreeMap::new(),
            verify_budget_secs: DEFAULT_VERIFY_BUDGET_SECS,
            control_plane_wait_secs: DEFAULT_CONTROL_PLANE_WAIT_SECS,
            s3: None,
            bundle: None,
            ops_token: None,
            cluster_cidr: None,
        },
        report: ReportPlan::default(),
        max_reboots: 1,
        download: DownloadPlan::default(),
        reboot: None,
    }
}
