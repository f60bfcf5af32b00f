variable "name_prefix" {
  description = "Prefix of every instance name"
  type        = string
  default     = "cube"
}

variable "control_payload_dir" {
  description = "cubeboot output for the control node: DIR/<profile> from `cubeboot build --role control --output DIR`"
  type        = string
}

variable "compute_payload_dir" {
  description = "cubeboot output for the compute nodes (`cubeboot build --role compute --control-plane-ip IP`); unused when compute_count is 0"
  type        = string
  default     = ""
}

variable "compute_count" {
  description = "Number of compute nodes joining the control node"
  type        = number
  default     = 0
}

variable "control_private_ip" {
  description = "Private IP given to the control node; the compute payload must be built with --control-plane-ip set to it"
  type        = string
}

variable "payload_encoding" {
  description = "`plain` sends user-data base64-encoded as is; `gzip` sends user-data.gz.b64 (smaller; the image's cloud-init must accept gzip)"
  type        = string
  default     = "plain"
  validation {
    condition     = contains(["plain", "gzip"], var.payload_encoding)
    error_message = "payload_encoding must be plain or gzip."
  }
}

variable "availability_zone" {
  description = "Zone of every node, e.g. ap-guangzhou-6"
  type        = string
}

variable "image_id" {
  description = "Image of the profile the payloads were built for (e.g. an OpenCloudOS 9 public image for opencloudos-9)"
  type        = string
}

variable "instance_type" {
  description = "Instance type; Cube needs at least 4 cores and 8 GB"
  type        = string
  default     = "SA5.2XLARGE16"
}

variable "vpc_id" {
  description = "VPC of the nodes"
  type        = string
}

variable "subnet_id" {
  description = "Subnet of the nodes; control_private_ip must lie in it"
  type        = string
}

variable "security_group_ids" {
  description = "Security groups; they must admit compute → control 8089/tcp and control → compute 9999/tcp"
  type        = list(string)
}

variable "key_ids" {
  description = "SSH key ids for root"
  type        = list(string)
  default     = []
}

variable "data_disk_size" {
  description = "GB of the empty data disk that the helper formats XFS for /data/cubelet"
  type        = number
  default     = 200
}

variable "public_ip" {
  description = "Give each node a public IP"
  type        = bool
  default     = true
}

variable "webhook_url" {
  description = "The URL both payloads were built with (`cubeboot build --webhook URL`); null when they were built without one, which the module checks too"
  type        = string
  default     = null
}

variable "webhook_secret" {
  description = "Contents of the fleet's webhook secret file (`--webhook-secret-file`): every payload must carry it, so one `cubeboot watch` verifies the whole fleet"
  type        = string
  default     = null
  sensitive   = true
}
