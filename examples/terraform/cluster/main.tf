# One control node and N compute nodes on Tencent Cloud.
#
#   cubeboot build --lock LOCK --profile opencloudos-9 --cloud tencent --role control --output out/control \
#     --webhook http://OPERATOR:8740/ --webhook-secret-file out/webhook-secret \
#     --ops-token-file out/ops-token --cluster-cidr 10.100.0.0/18
#   cubeboot build --lock LOCK --profile opencloudos-9 --cloud tencent --role compute \
#     --control-plane-ip 10.0.1.10 --output out/compute \
#     --webhook http://OPERATOR:8740/ --webhook-secret-file out/webhook-secret \
#     --ops-token-file out/ops-token --cluster-cidr 10.100.0.0/18
#   terraform -chdir=examples/terraform/cluster init
#   terraform -chdir=examples/terraform/cluster apply -var compute_count=3 \
#     -var webhook_url=http://OPERATOR:8740/ -var ...     (or webhook_url=none)
#   $(terraform -chdir=examples/terraform/cluster output -raw watch_command)
#
# Every payload must carry the same webhook URL and secret (the module checks
# their plans), so one `cubeboot watch` verifies the whole fleet; and the same
# ops-agent token and sandbox CIDR (one --ops-token-file, one --cluster-cidr;
# the control build makes the token file, so build it first), which the
# module checks too.
#
# The control node's private IP is chosen here (control_private_ip), given to
# the control instance, and baked into the compute payload at build time; the
# module refuses compute payloads built for another IP.

terraform {
  required_version = ">= 1.2.0"
  required_providers {
    tencentcloud = {
      source  = "tencentcloudstack/tencentcloud"
      version = ">= 1.81.0"
    }
  }
}

provider "tencentcloud" {
  # Credentials come from TENCENTCLOUD_SECRET_ID / TENCENTCLOUD_SECRET_KEY.
  region = var.region
}

variable "region" {
  description = "Region, e.g. ap-guangzhou"
  type        = string
  default     = "ap-guangzhou"
}

variable "out_dir" {
  description = "Parent of the control and compute build outputs"
  type        = string
  default     = "../../../out"
}

variable "profile" {
  description = "cubeboot profile the payloads were built for"
  type        = string
  default     = "opencloudos-9"
}

variable "compute_count" {
  description = "Number of compute nodes"
  type        = number
  default     = 2
}

variable "control_private_ip" {
  description = "Private IP of the control node; the same as --control-plane-ip of the compute build"
  type        = string
  default     = "10.0.1.10"
}

variable "webhook_url" {
  description = "The --webhook URL both payloads were built with, or \"none\" when they were built without one (then nothing reports progress and there is nothing to watch)"
  type        = string
  # No default: going without progress reports is a choice made on the command line.
  validation {
    condition     = var.webhook_url == "none" || can(regex("^https?://", var.webhook_url))
    error_message = "Set webhook_url to the http(s) URL given to cubeboot build --webhook, or to \"none\" for payloads built without --webhook."
  }
}

variable "webhook_secret_file" {
  description = "The --webhook-secret-file both payloads were built with"
  type        = string
  default     = "../../../out/webhook-secret"
}

variable "availability_zone" {
  description = "Zone of the nodes"
  type        = string
}

variable "image_id" {
  description = "Image matching the profile"
  type        = string
}

variable "vpc_id" {
  description = "VPC of the nodes"
  type        = string
}

variable "subnet_id" {
  description = "Subnet of the nodes"
  type        = string
}

variable "security_group_ids" {
  description = "Security groups of the nodes"
  type        = list(string)
}

module "cube" {
  source = "../modules/cube-nodes"

  name_prefix         = "cube"
  control_payload_dir = "${var.out_dir}/control/${var.profile}"
  compute_payload_dir = "${var.out_dir}/compute/${var.profile}"
  compute_count       = var.compute_count
  control_private_ip  = var.control_private_ip
  payload_encoding    = "gzip"
  availability_zone   = var.availability_zone
  image_id            = var.image_id
  vpc_id              = var.vpc_id
  subnet_id           = var.subnet_id
  security_group_ids  = var.security_group_ids
  webhook_url         = local.webhook_url
  webhook_secret      = local.webhook_url == null ? null : trimspace(file(var.webhook_secret_file))
}

locals {
  webhook_url = var.webhook_url == "none" ? null : var.webhook_url
  # The port cubeboot watch listens on: the webhook URL's, else http's 80 or https's 443.
  watch_port = local.webhook_url == null ? null : try(
    regex("^https?://[^/]*:([0-9]+)", local.webhook_url)[0],
    startswith(local.webhook_url, "https:") ? "443" : "80"
  )
}

output "control_private_ip" {
  description = "Private IP of the control node"
  value       = module.cube.control_private_ip
}

output "control_public_ip" {
  description = "Public IP of the control node"
  value       = module.cube.control_public_ip
}

output "compute_private_ips" {
  description = "Private IPs of the compute nodes"
  value       = module.cube.compute_private_ips
}

output "compute_public_ips" {
  description = "Public IPs of the compute nodes"
  value       = module.cube.compute_public_ips
}

output "watch_command" {
  description = "The command that watches this fleet come up (1 control + compute_count nodes)"
  value = (local.webhook_url == null
    ? "none: webhook_url is \"none\", so the nodes report to no one; rebuild both payloads with --webhook URL to watch them"
  : "cubeboot watch --listen 0.0.0.0:${local.watch_port} --secret-file ${abspath(var.webhook_secret_file)} --expect ${var.compute_count + 1}")
}
