//! Queries the host answers from the kernel rather than from files: a KVM
//! device's API version and a filesystem's free space.

use std::fs;
use std::io;
use std::path::Path;

/// `KVM_GET_API_VERSION` (`_IO(KVMIO, 0x00)`, KVMIO 0xAE; linux/kvm.h) on
/// the device at `path`, opened read-write as QEMU opens it.
pub(super) fn kvm_api_version_at(path: &Path) -> io::Result<i32> {
    use rustix::ioctl::{ioctl, opcode, Ioctl, IoctlOutput, Opcode};

    struct GetApiVersion;
    // SAFETY: the ioctl takes no argument (a null pointer is passed and never
    // read) and writes no user memory; its result is the return value.
    unsafe impl Ioctl for GetApiVersion {
        type Output = IoctlOutput;
        const IS_MUTATING: bool = false;
        fn opcode(&self) -> Opcode {
            opcode::none(0xAE, 0x00)
        }
        fn as_ptr(&mut self) -> *mut core::ffi::c_void {
            core::ptr::null_mut()
        }
        unsafe fn output_from_ptr(
            out: IoctlOutput,
            _: *mut core::ffi::c_void,
        ) -> rustix::io::Result<IoctlOutput> {
            Ok(out)
        }
    }

    let dev = fs::OpenOptions::new().read(true).write(true).open(path)?;
    // SAFETY: `dev` is an open file and GetApiVersion matches the kernel's
    // definition of the request (no argument, result in the return value).
    Ok(unsafe { ioctl(&dev, GetApiVersion) }?)
}

/// Free bytes on the filesystem that holds `path`, or will hold it: a
/// directory not made yet (a dry run) lives on its nearest existing parent.
pub(super) fn statvfs_free(path: &Path) -> io::Result<u64> {
    let mut p = path;
    loop {
        match rustix::fs::statvfs(p) {
            Ok(st) => return Ok(st.f_bavail * st.f_frsize),
            Err(rustix::io::Errno::NOENT) => match p.parent() {
                Some(parent) => p = parent,
                None => return Err(io::ErrorKind::NotFound.into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
}
