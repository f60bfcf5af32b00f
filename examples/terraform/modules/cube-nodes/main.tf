locals {
  # Tencent Cloud's `user_data` takes base64 text of at most 16 KB
  # (docs/payloads.md, "User-data budgets per cloud"): either the plain payload encoded here, or the builder's
  # own gzip+base64 file as it is.
  control_user_data = (var.payload_encoding == "gzip"
    ? trimspace(file("${var.control_payload_dir}/user-data.gz.b64"))
  : filebase64("${var.control_payload_dir}/user-data"))

  compute_user_data = var.compute_count == 0 ? "" : (var.payload_encoding == "gzip"
    ? trimspace(file("${var.compute_payload_dir}/user-data.gz.b64"))
  : filebase64("${var.compute_payload_dir}/user-data"))

  # The plan the compute payload carries, to check it names this control node.
  compute_plan = var.compute_count == 0 ? null : jsondecode(file("${var.compute_payload_dir}/plan.json"))
  control_plan = jsondecode(file("${var.control_payload_dir}/plan.json"))

  user_data_limit = 16384
}

resource "tencentcloud_instance" "control" {
  instance_name              = "${var.name_prefix}-control"
  availability_zone          = var.availability_zone
  image_id                   = var.image_id
  instance_type              = var.instance_type
  vpc_id                     = var.vpc_id
  subnet_id                  = var.subnet_id
  private_ip                 = var.control_private_ip
  orderly_security_groups    = var.security_group_ids
  key_ids                    = var.key_ids
  allocate_public_ip         = var.public_ip
  internet_max_bandwidth_out = var.public_ip ? 10 : 0
  system_disk_type           = "CLOUD_PREMIUM"
  system_disk_size           = 100
  user_data                  = local.control_user_data

  data_disks {
    data_disk_type       = "CLOUD_PREMIUM"
    data_disk_size       = var.data_disk_size
    delete_with_instance = true
  }

  lifecycle {
    precondition {
      condition     = local.control_plan.cube.role == "control"
      error_message = "control_payload_dir holds a ${local.control_plan.cube.role} payload; build it with --role control."
    }
    precondition {
      condition = (var.webhook_url == null
        ? try(local.control_plan.report.webhook, null) == null
        : (try(local.control_plan.report.webhook, null) == var.webhook_url
      && try(local.control_plan.report.webhook_secret, null) == var.webhook_secret))
      error_message = (var.webhook_url == null
        ? "The control payload reports to a webhook, but webhook_url is null: pass the URL it was built with."
      : "The control payload must be built with --webhook ${var.webhook_url} and the fleet's --webhook-secret-file.")
    }
    precondition {
      condition     = length(local.control_user_data) <= local.user_data_limit
      error_message = "The control payload is ${length(local.control_user_data)} base64 bytes; Tencent Cloud accepts ${local.user_data_limit}."
    }
  }
}

resource "tencentcloud_instance" "compute" {
  count                      = var.compute_count
  instance_name              = "${var.name_prefix}-compute-${count.index + 1}"
  availability_zone          = var.availability_zone
  image_id                   = var.image_id
  instance_type              = var.instance_type
  vpc_id                     = var.vpc_id
  subnet_id                  = var.subnet_id
  orderly_security_groups    = var.security_group_ids
  key_ids                    = var.key_ids
  allocate_public_ip         = var.public_ip
  internet_max_bandwidth_out = var.public_ip ? 10 : 0
  system_disk_type           = "CLOUD_PREMIUM"
  system_disk_size           = 100
  user_data                  = local.compute_user_data

  data_disks {
    data_disk_type       = "CLOUD_PREMIUM"
    data_disk_size       = var.data_disk_size
    delete_with_instance = true
  }

  lifecycle {
    # The control node's private IP reaches the compute payload at build
    # time (--control-plane-ip); refuse a payload built for another one.
    precondition {
      condition = (local.compute_plan.cube.role == "compute"
      && local.compute_plan.cube.control_plane_ip == tencentcloud_instance.control.private_ip)
      error_message = "The compute payload must be built with --role compute --control-plane-ip ${tencentcloud_instance.control.private_ip}."
    }
    precondition {
      condition = (var.webhook_url == null
        ? try(local.compute_plan.report.webhook, null) == null
        : (try(local.compute_plan.report.webhook, null) == var.webhook_url
      && try(local.compute_plan.report.webhook_secret, null) == var.webhook_secret))
      error_message = (var.webhook_url == null
        ? "The compute payload reports to a webhook, but webhook_url is null: pass the URL it was built with."
      : "The compute payload must be built with --webhook ${var.webhook_url} and the fleet's --webhook-secret-file.")
    }
    # One cluster, one ops-agent token and one sandbox network: a compute
    # node with another token cannot take CubeOps' pushes, and upstream's
    # multi-node guide wants every node on the control plane's CIDR.
    precondition {
      condition = (try(local.compute_plan.cube.ops_token, null) == try(local.control_plan.cube.ops_token, null)
      && try(local.compute_plan.cube.cluster_cidr, null) == try(local.control_plan.cube.cluster_cidr, null))
      error_message = "The control and compute payloads must be built with the same --ops-token-file and --cluster-cidr."
    }
    precondition {
      condition     = length(local.compute_user_data) <= local.user_data_limit
      error_message = "The compute payload is ${length(local.compute_user_data)} base64 bytes; Tencent Cloud accepts ${local.user_data_limit}."
    }
  }
}
