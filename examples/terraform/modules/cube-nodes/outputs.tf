output "control_private_ip" {
  description = "Private IP of the control node (CubeMaster on 8089)"
  value       = tencentcloud_instance.control.private_ip
}

output "control_public_ip" {
  description = "Public IP of the control node, if any"
  value       = tencentcloud_instance.control.public_ip
}

output "compute_private_ips" {
  description = "Private IPs of the compute nodes"
  value       = tencentcloud_instance.compute[*].private_ip
}

output "compute_public_ips" {
  description = "Public IPs of the compute nodes, if any"
  value       = tencentcloud_instance.compute[*].public_ip
}
