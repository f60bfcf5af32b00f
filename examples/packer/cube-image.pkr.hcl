# A custom image that boots straight into the PVM host kernel and finishes the
# Cube install at first boot with no network downloads (offline overlay).
#
#   cubeboot build --lock LOCK --profile opencloudos-9 --format overlay --offline --output out/image
#   packer init examples/packer
#   packer build -var overlay=out/image/opencloudos-9/overlay.tar.xz examples/packer
#
# Inside the build VM the overlay is unpacked at /, the kernel stage is
# applied to the running system's root without rebooting, and the helper's
# state, cloud-init's instance data and the machine-id are reset so every
# instance made from the image starts fresh.

packer {
  required_version = ">= 1.9.0"
  required_plugins {
    tencentcloud = {
      source  = "github.com/hashicorp/tencentcloud"
      version = ">= 1.0.0"
    }
  }
}

variable "overlay" {
  description = "cubeboot's overlay.tar.xz (built with --format overlay --offline)"
  type        = string
  default     = "out/image/opencloudos-9/overlay.tar.xz"
}

variable "region" {
  description = "Region to build in"
  type        = string
  default     = "ap-guangzhou"
}

variable "zone" {
  description = "Zone to build in"
  type        = string
  default     = "ap-guangzhou-6"
}

variable "source_image_id" {
  description = "Base image matching the overlay's profile (an OpenCloudOS 9 public image for opencloudos-9)"
  type        = string
  default     = ""
}

variable "instance_type" {
  description = "Build instance type"
  type        = string
  default     = "SA5.MEDIUM4"
}

variable "image_name" {
  description = "Name of the resulting image"
  type        = string
  default     = "cube-sandbox-pvm"
}

source "tencentcloud-cvm" "cube" {
  # Credentials come from TENCENTCLOUD_SECRET_ID / TENCENTCLOUD_SECRET_KEY.
  region                      = var.region
  zone                        = var.zone
  instance_type               = var.instance_type
  source_image_id             = var.source_image_id
  image_name                  = var.image_name
  disk_type                   = "CLOUD_PREMIUM"
  disk_size                   = 50
  associate_public_ip_address = true
  ssh_username                = "root"
}

build {
  sources = ["source.tencentcloud-cvm.cube"]

  # Let the base image's own first boot finish before touching packages:
  # cloud-init, unattended-upgrades and apt-daily holding the dpkg/rpm lock
  # are the most reported first-boot package failure (docs/payloads.md, "Images").
  provisioner "shell" {
    inline = ["cloud-init status --wait || true"]
  }

  provisioner "file" {
    source      = var.overlay
    destination = "/tmp/cubeboot-overlay.tar.xz"
  }

  provisioner "shell" {
    inline = [
      # --no-overwrite-dir keeps the image's own modes on /etc, /usr, /var.
      "tar --no-overwrite-dir -xJf /tmp/cubeboot-overlay.tar.xz -C /",
      "rm -f /tmp/cubeboot-overlay.tar.xz",
      # Install the PVM kernel from the overlay's verified cache and make it
      # the image's default entry; nothing is rebooted.
      "/usr/local/sbin/cube-firstboot apply --root / --stage kernel",
      # Empty journal and status, keep the verified offline cache, re-arm the
      # unit, clean cloud-init's instance data and the machine-id.
      "/usr/local/sbin/cube-firstboot reset --for-image --keep-cache",
    ]
  }
}
