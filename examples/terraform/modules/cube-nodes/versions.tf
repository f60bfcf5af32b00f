# One control node and N compute nodes made Cube Sandbox hosts by cubeboot
# payloads. Terraform creates the machines; cubeboot only builds what they
# run at first boot.
terraform {
  # `precondition` blocks need 1.2; `strcontains` is not used, so 1.2 suffices.
  required_version = ">= 1.2.0"
  required_providers {
    tencentcloud = {
      source  = "tencentcloudstack/tencentcloud"
      version = ">= 1.81.0"
    }
  }
}
