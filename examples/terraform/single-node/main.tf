# A single all-in-one Cube Sandbox node on Tencent Cloud.
#
#   cubeboot build --lock LOCK --profile opencloudos-9 --cloud tencent --output out/control
#   terraform -chdir=examples/terraform/single-node init
#   terraform -chdir=examples/terraform/single-node apply -var ...
#
# Relative paths are relative to this directory (terraform -chdir).

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
  description = "cubeboot's output directory (the --output of the control build)"
  type        = string
  default     = "../../../out/control"
}

variable "profile" {
  description = "cubeboot profile the payload was built for"
  type        = string
  default     = "opencloudos-9"
}

variable "availability_zone" {
  description = "Zone of the node"
  type        = string
}

variable "image_id" {
  description = "Image matching the profile"
  type        = string
}

variable "vpc_id" {
  description = "VPC of the node"
  type        = string
}

variable "subnet_id" {
  description = "Subnet of the node"
  type        = string
}

variable "security_group_ids" {
  description = "Security groups of the node"
  type        = list(string)
}

variable "private_ip" {
  description = "Private IP of the node, inside subnet_id"
  type        = string
  default     = "10.0.1.10"
}

module "cube" {
  source = "../modules/cube-nodes"

  name_prefix         = "cube-single"
  control_payload_dir = "${var.out_dir}/${var.profile}"
  compute_count       = 0
  control_private_ip  = var.private_ip
  availability_zone   = var.availability_zone
  image_id            = var.image_id
  vpc_id              = var.vpc_id
  subnet_id           = var.subnet_id
  security_group_ids  = var.security_group_ids
}

output "node_private_ip" {
  description = "Private IP of the node"
  value       = module.cube.control_private_ip
}

output "node_public_ip" {
  description = "Public IP of the node"
  value       = module.cube.control_public_ip
}
