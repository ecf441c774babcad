//! Blob data files known to hold their blob's bytes, so reading one again costs a read,
//! not a read and a hash.
//!
//! A blob's data file is trusted as it was when this process last wrote it (a put: the
//! store renames a new file into place on every import) or hashed it to its address (a
//! read). What identifies that version of the file is its [`FileStamp`]: the file's
//! device, inode, length, and modification and change times. Any write, truncation or
//! replacement of the file through the filesystem changes the stamp (since Linux 6.13,
//! a change time that was read is followed by a fine-grained one at the next change;
//! older kernels may repeat it within one clock tick), and a file whose stamp changed
//! is hashed again before its bytes are used. Stamps live in memory only: after a
//! restart every file is hashed on its first read.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;

use bytes::Bytes;
use iroh_blobs::store::fs::options::PathOptions;
use parking_lot::Mutex;

use super::cache::Generations;
use super::store::{check_len, to_iroh};
use crate::ids::Hash;

/// What identifies one version of a file: a change to the file gives another stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &Metadata) -> Self {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The data files of the blob store known intact, each by its last trusted stamp.
pub(crate) struct Intact {
    paths: PathOptions,
    files: Mutex<Generations<Hash, FileStamp>>,
    /// Files hashed by [`Intact::read`] so far.
    #[cfg(test)]
    hashed: std::sync::atomic::AtomicUsize,
}

impl Intact {
    /// Knows no file yet; remembers at most `files` of them.
    pub(crate) fn new(paths: PathOptions, files: usize) -> Self {
        Intact {
            paths,
            files: Mutex::new(Generations::new(files)),
            #[cfg(test)]
            hashed: Default::default(),
        }
    }

    /// Remembers the data file of blob `hash` as it is now: call right after the store
    /// wrote it. A blob small enough to live in the store's database has none.
    pub(crate) fn written(&self, hash: Hash) {
        if let Ok(meta) = std::fs::metadata(self.paths.data_path(&to_iroh(hash))) {
            self.files.lock().insert(hash, FileStamp::of(&meta));
        }
    }

    /// Forgets the data file of blob `hash` (deleted, or about to be).
    pub(crate) fn forget(&self, hash: Hash) {
        self.files.lock().remove(&hash);
    }

    /// Whether the data file of `hash` is remembered as intact (whatever it holds now).
    #[cfg(test)]
    pub(crate) fn knows(&self, hash: Hash) -> bool {
        self.files.lock().get(hash).is_some()
    }

    /// How many files [`Intact::read`] has hashed.
    #[cfg(test)]
    pub(crate) fn hashed(&self) -> usize {
        self.hashed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The whole blob `hash` read straight from its data file, if that file holds exactly
    /// the bytes `hash` addresses (`expected` bytes long when given, at most
    /// [`super::store::MAX_BLOB_READ`], both checked before reading); `None` otherwise
    /// (the blob is absent, partial, altered, too long, or small enough to live inside
    /// the store's database).
    ///
    /// A file unchanged since it was last trusted is read without hashing; any other is
    /// hashed against its address, which is the guarantee the store's own export gives
    /// by validating every 16 KiB block against the outboard, at a fraction of its cost.
    pub(crate) fn read(&self, hash: Hash, expected: Option<u64>) -> Option<Bytes> {
        let file = File::open(self.paths.data_path(&to_iroh(hash))).ok()?;
        let len = file.metadata().ok()?.len();
        check_len(hash, len, expected).ok()?;
        let mut data = Vec::with_capacity(usize::try_from(len).ok()?);
        io::Read::read_to_end(&mut io::Read::take(&file, len), &mut data).ok()?;
        // Stamped after the read: a change made before or while reading shows in it.
        let stamp = FileStamp::of(&file.metadata().ok()?);
        if stamp.len != data.len() as u64 {
            return None;
        }
        if self.files.lock().get(hash) == Some(stamp) {
            return Some(Bytes::from(data));
        }
        #[cfg(test)]
        self.hashed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if *blake3::hash(&data).as_bytes() == hash.0 {
            self.files.lock().insert(hash, stamp);
            Some(Bytes::from(data))
        } else {
            self.forget(hash);
            None
        }
    }
}
