//! The daemon-wide cache budget (`lattice-mount up --cache-mib N`) and how it is split.
//!
//! One number bounds every cache the daemon sizes: three eighths go to the content
//! store's chunk cache (recently read chunk bytes), a sixteenth to its parsed-manifest
//! cache, a sixteenth to the blob files it knows intact, an eighth to the inodes the
//! kernel is let keep (the mount's inode table), and the remaining three eighths to the
//! redb page caches of the store databases, shared equally by the stores the node holds
//! when each one opens.

/// Cache budget of a daemon when none is given, in MiB.
pub const DEFAULT_CACHE_MIB: u64 = 64;
/// Smallest redb page cache of one store database: below a few pages per table every
/// read goes to the file.
const MIN_STORE_CACHE_BYTES: u64 = 1024 * 1024;
/// Heap bytes of one chunk entry of a parsed manifest (a hash and an offset).
const MANIFEST_ENTRY_BYTES: u64 = 40;
/// Heap bytes of one blob file the content store remembers as intact: its hash and
/// stamp (88 bytes) in a hash table that may be half empty.
const INTACT_FILE_BYTES: u64 = 192;
/// Heap bytes of one inode the kernel knows: its slot in the mount's inode table, its
/// entry name, and its kernel-cache record (measured: about 500 at 100,000 files).
const KERNEL_INODE_BYTES: u64 = 512;

/// A byte budget for the daemon's caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheBudget {
    bytes: u64,
}

impl Default for CacheBudget {
    fn default() -> Self {
        CacheBudget::from_mib(DEFAULT_CACHE_MIB)
    }
}

impl CacheBudget {
    /// A budget of `mib` MiB.
    pub fn from_mib(mib: u64) -> Self {
        CacheBudget {
            bytes: mib.saturating_mul(1024 * 1024),
        }
    }

    /// The whole budget in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes of chunks the content store keeps in memory: three eighths.
    pub fn chunk_bytes(&self) -> u64 {
        self.bytes / 8 * 3
    }

    /// Chunk entries over all parsed manifests the content store keeps: a sixteenth.
    pub fn manifest_chunks(&self) -> u64 {
        self.bytes / 16 / MANIFEST_ENTRY_BYTES
    }

    /// Blob data files the content store remembers as intact: a sixteenth.
    pub fn intact_files(&self) -> usize {
        usize::try_from(self.bytes / 16 / INTACT_FILE_BYTES).unwrap_or(usize::MAX)
    }

    /// Inodes the mount lets the kernel keep before it makes it drop the oldest: an eighth.
    pub fn kernel_inodes(&self) -> usize {
        usize::try_from(self.bytes / 8 / KERNEL_INODE_BYTES).unwrap_or(usize::MAX)
    }

    /// redb page cache of each of `stores` store databases: three eighths, shared
    /// (at least [`MIN_STORE_CACHE_BYTES`] each).
    pub fn store_cache_bytes(&self, stores: usize) -> usize {
        let share = self.bytes / 8 * 3 / stores.max(1) as u64;
        usize::try_from(share.max(MIN_STORE_CACHE_BYTES)).unwrap_or(usize::MAX)
    }
}

/// Hands heap pages freed in bulk back to the system: glibc's allocator keeps them in
/// its per-thread arenas otherwise, where they count as the daemon's memory.
pub(crate) fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_split_stays_within_64_mib_for_one_store() {
        let b = CacheBudget::default();
        let manifests = b.manifest_chunks() * MANIFEST_ENTRY_BYTES;
        let intact = b.intact_files() as u64 * INTACT_FILE_BYTES;
        let inodes = b.kernel_inodes() as u64 * KERNEL_INODE_BYTES;
        let total = b.chunk_bytes() + manifests + intact + inodes + b.store_cache_bytes(1) as u64;
        assert!(total <= 64 * 1024 * 1024, "{total}");
        assert_eq!(b.store_cache_bytes(3), 8 * 1024 * 1024);
    }

    #[test]
    fn each_store_keeps_a_minimal_cache_however_many_there_are() {
        let b = CacheBudget::from_mib(8);
        assert_eq!(b.store_cache_bytes(1000), MIN_STORE_CACHE_BYTES as usize);
    }
}
