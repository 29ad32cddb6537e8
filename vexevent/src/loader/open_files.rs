//! Where the running kernel keeps an fd's open file and what the probes read of it
//! (`current->files->fdt->fd[fd]`, then `f_inode`, `f_mode` and the reference count), from its
//! BTF: the probes key the fd scope by the open file, so writes through a `dup`, an
//! `fcntl(F_DUPFD)` duplicate, an fd inherited across fork or one passed over a Unix socket are
//! all followed.

use vexevent_common::FileLayout;

use super::kernel_btf::{BtfError, Field, KernelBtf};

/// Why the open-file layout cannot be used here.
#[derive(Debug, thiserror::Error)]
pub enum OpenFilesError {
    #[error("cannot read the open-file layout from the kernel BTF: {0}")]
    Layout(#[source] BtfError),
    #[error("{field} is {size} bytes, the probes read {expected}")]
    FieldSize { field: &'static str, size: u32, expected: u32 },
}

/// Offset of a field the probes read with exactly `expected` bytes.
fn sized(btf: &KernelBtf, ty: &str, member: &'static str, expected: u32) -> Result<u32, OpenFilesError> {
    let Field { offset, size } = btf.field(ty, &[member]).map_err(OpenFilesError::Layout)?;
    if size == expected {
        Ok(offset)
    } else {
        Err(OpenFilesError::FieldSize { field: member, size, expected })
    }
}

/// The layout for the kernel `btf` describes.
///
/// # Errors
/// When a struct or field is missing or has a size the probes do not read.
pub fn layout(btf: &KernelBtf) -> Result<FileLayout, OpenFilesError> {
    // Linux 6.13 replaced `f_count` (the number of references) by `f_ref` (that number minus one).
    let (file_count, file_count_one) = match sized(btf, "file", "f_ref", 8) {
        Ok(offset) => (offset, 0),
        Err(_) => (sized(btf, "file", "f_count", 8)?, 1),
    };
    Ok(FileLayout {
        valid: 1,
        seeded_fds: 0,
        task_files: sized(btf, "task_struct", "files", 8)?,
        files_fdt: sized(btf, "files_struct", "fdt", 8)?,
        fdt_max_fds: sized(btf, "fdtable", "max_fds", 4)?,
        fdt_fd: sized(btf, "fdtable", "fd", 8)?,
        file_inode: sized(btf, "file", "f_inode", 8)?,
        file_mode: sized(btf, "file", "f_mode", 4)?,
        file_count,
        file_count_one,
        inode_ino: sized(btf, "inode", "i_ino", 8)?,
        inode_mode: sized(btf, "inode", "i_mode", 2)?,
    })
}

/// The running kernel's layout.
///
/// # Errors
/// When the kernel has no BTF or it lacks what the probes read.
pub fn running_kernel_layout() -> Result<FileLayout, OpenFilesError> {
    layout(&KernelBtf::vmlinux().map_err(OpenFilesError::Layout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_has_the_layout_or_says_what_is_missing() {
        match running_kernel_layout() {
            Ok(layout) => {
                assert_eq!(layout.valid, 1);
                assert!(layout.file_count_one <= 1);
                assert_ne!(layout.fdt_fd, layout.fdt_max_fds);
            }
            Err(error) => {
                println!("skipped: {error}");
                assert!(!error.to_string().is_empty());
            }
        }
    }
}
