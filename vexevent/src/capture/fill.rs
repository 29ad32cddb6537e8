//! How full each ring is: the kernel's producer and consumer positions, read from the ring's
//! first two pages mapped read-only (aya 0.14's `RingBuf` keeps its own mappings private), and
//! the ring's size from the map's `/proc/self/fdinfo` entry.

use std::{
    io,
    os::fd::RawFd,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

/// One page of a ring mapped read-only; its first 8 bytes are a position the kernel (producer)
/// or the consumer advances.
struct Page(NonNull<libc::c_void>);

// SAFETY: the mapping is read-only and only read through atomic loads; it lives until dropped.
unsafe impl Send for Page {}

impl Page {
    fn map(fd: RawFd, offset: libc::off_t) -> io::Result<Self> {
        // SAFETY: a new read-only shared mapping of one page of a ring buffer map's fd; the kernel
        // allows read-only mappings of its consumer and producer pages.
        let address = unsafe {
            libc::mmap(std::ptr::null_mut(), page_size(), libc::PROT_READ, libc::MAP_SHARED, fd, offset)
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(address).map(Self).ok_or_else(|| io::Error::other("mmap returned null"))
    }

    fn position(&self) -> u64 {
        // SAFETY: the page is mapped for as long as `self` lives, page-aligned (so aligned for
        // u64), and the kernel updates the position with atomic stores.
        unsafe { self.0.cast::<AtomicU64>().as_ref() }.load(Ordering::Acquire)
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: unmaps the page `map` mapped, once.
        unsafe { libc::munmap(self.0.as_ptr(), page_size()) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// The positions of one ring, readable at any time.
pub struct RingFill {
    consumer: Page,
    producer: Page,
    size: u64,
}

impl RingFill {
    /// Maps the positions of the ring buffer map open as `fd`.
    ///
    /// # Errors
    /// When the pages cannot be mapped or the map's size cannot be read.
    pub fn new(fd: RawFd) -> io::Result<Self> {
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        let size = fdinfo
            .lines()
            .find_map(|line| line.strip_prefix("max_entries:")?.trim().parse().ok())
            .ok_or_else(|| io::Error::other("no max_entries in the map's fdinfo"))?;
        let page = libc::off_t::try_from(page_size()).map_err(io::Error::other)?;
        Ok(Self { consumer: Page::map(fd, 0)?, producer: Page::map(fd, page)?, size })
    }

    /// The ring's data size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes written by the probes and not yet consumed (records and their headers).
    #[must_use]
    pub fn used(&self) -> u64 {
        let consumer = self.consumer.position();
        self.producer.position().saturating_sub(consumer)
    }
}
