// SPDX-License-Identifier: GPL-2.0
/*
 * Test fixture for cubeboot's VM tier: a loadable module named kvm_pvm that
 * stands in for PVM's real one. It only registers the misc device "kvm" at
 * KVM_MINOR (232), so loading it makes /dev/kvm appear, and answers the one
 * system ioctl the first-boot helper asks before it commits the new kernel:
 * KVM_GET_API_VERSION gives KVM_API_VERSION (12), and every other ioctl
 * -EINVAL, as the real /dev/kvm does (linux: virt/kvm/kvm_main.c,
 * kvm_dev_ioctl). It provides no virtualization at all.
 */
#include <linux/compat.h>
#include <linux/fs.h>
#include <linux/kvm.h>
#include <linux/miscdevice.h>
#include <linux/module.h>

static long kvm_pvm_fixture_ioctl(struct file *filp, unsigned int ioctl,
				  unsigned long arg)
{
	/* kvm_dev_ioctl refuses a non-zero argument here too. */
	if (ioctl == KVM_GET_API_VERSION && !arg)
		return KVM_API_VERSION;
	return -EINVAL;
}

static const struct file_operations kvm_pvm_fixture_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = kvm_pvm_fixture_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice kvm_pvm_fixture_dev = {
	.minor = KVM_MINOR,
	.name = "kvm",
	.fops = &kvm_pvm_fixture_fops,
	.mode = 0660,
};

static int __init kvm_pvm_fixture_init(void)
{
	int ret = misc_register(&kvm_pvm_fixture_dev);

	if (ret)
		pr_err("kvm_pvm fixture: misc_register failed: %d\n", ret);
	else
		pr_info("kvm_pvm fixture: /dev/kvm registered (minor %d)\n", KVM_MINOR);
	return ret;
}

static void __exit kvm_pvm_fixture_exit(void)
{
	misc_deregister(&kvm_pvm_fixture_dev);
}

module_init(kvm_pvm_fixture_init);
module_exit(kvm_pvm_fixture_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("cubeboot test fixture standing in for PVM's kvm_pvm: registers /dev/kvm, answers KVM_GET_API_VERSION");
