//! Kernel command-line merging (shared: the builder previews it, the helper
//! applies it). Being written with the kernel stage.
