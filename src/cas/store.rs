//! Blob-level operations on the iroh-blobs store, and what makes them durable.
//!
//! Everything here is async and runs under the runtime handle given to `Cas::open`,
//! except `sync_files`, which is blocking file I/O for the caller's own thread.

use std::fs::File;
use std::io;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use iroh_blobs::api::blobs::{AddProgressItem, BlobStatus};
use iroh_blobs::api::{Store, TempTag};
use iroh_blobs::hashseq::HashSeq;
use iroh_blobs::store::fs::options::PathOptions;
use iroh_blobs::{BlobFormat, HashAndFormat};
use n0_future::Stream;

use crate::ids::{Hash, StoreId};

use super::chunker::MAX_CHUNK_BYTES;
use super::manifest::MAX_MANIFEST_BYTES;
use super::CasError;

/// Prefix of the persistent tag that roots each manifest's hash sequence.
pub(crate) const MANIFEST_TAG_PREFIX: &str = "lattice/manifest/";
/// Prefix of the per-store ownership tags: `lm/<store hex>/live/<blob hex>` says the blob
/// was imported or fetched for that store (and keeps it from garbage collection).
pub(crate) const OWNER_TAG_PREFIX: &str = "lm/";
/// Ownership tags set at once while content is claimed for a store.
const CLAIM_IN_FLIGHT: usize = 16;

/// The ownership tag of blob `hash` in store `owner`.
pub(crate) fn owner_tag(owner: StoreId, hash: Hash) -> String {
    format!(
        "{OWNER_TAG_PREFIX}{}/live/{}",
        owner.to_hex(),
        hash.to_hex()
    )
}

/// Records that every blob of `hashes` belongs to store `owner`: sets its ownership tag.
pub(crate) async fn claim(store: &Store, owner: StoreId, hashes: &[Hash]) -> Result<(), CasError> {
    let tags = store.tags();
    for batch in hashes.chunks(CLAIM_IN_FLIGHT) {
        let mut sets = Vec::with_capacity(batch.len());
        for h in batch {
            sets.push(tags.set(owner_tag(owner, *h), HashAndFormat::raw(to_iroh(*h))));
        }
        for done in n0_future::join_all(sets).await {
            done.map_err(iroh_blobs::api::Error::from)?;
        }
    }
    Ok(())
}

/// Whether blob `hash` belongs to store `owner` (was imported or fetched for it).
pub(crate) async fn owns(store: &Store, owner: StoreId, hash: Hash) -> Result<bool, CasError> {
    let tag = store
        .tags()
        .get(owner_tag(owner, hash))
        .await
        .map_err(iroh_blobs::api::Error::from)?;
    Ok(tag.is_some_and(|t| t.hash == to_iroh(hash)))
}

/// Our hash as an iroh-blobs hash (both are blake3).
pub(crate) fn to_iroh(hash: Hash) -> iroh_blobs::Hash {
    iroh_blobs::Hash::from(hash.0)
}

/// An iroh-blobs hash as ours.
pub(crate) fn from_iroh(hash: iroh_blobs::Hash) -> Hash {
    Hash(*hash.as_bytes())
}

/// Adds one raw blob; the returned temp tag protects it until it is rooted by a tag.
pub(crate) async fn add(store: &Store, data: Bytes) -> Result<TempTag, CasError> {
    Ok(store
        .add_bytes(data)
        .temp_tag()
        .await
        .map_err(iroh_blobs::api::Error::from)?)
}

/// How often [`add_unhurried`] looks at its import's progress.
const UNHURRIED_POLL: Duration = Duration::from_millis(1);

/// [`add`] for a caller that can wait a little longer for the result: the import's
/// progress, one item per 16 KiB block, is looked at every [`UNHURRIED_POLL`] instead
/// of each item waking the caller's thread.
pub(crate) async fn add_unhurried(store: &Store, data: Bytes) -> Result<TempTag, CasError> {
    let progress = store.add_bytes(data).stream().await;
    let mut progress = std::pin::pin!(progress);
    loop {
        // Nothing is woken by the progress items: the timer wakes the caller.
        let polled = progress
            .as_mut()
            .poll_next(&mut Context::from_waker(Waker::noop()));
        match polled {
            Poll::Ready(Some(AddProgressItem::Done(tt))) => return Ok(tt),
            Poll::Ready(Some(AddProgressItem::Error(e))) => {
                return Err(iroh_blobs::api::Error::from(e).into())
            }
            Poll::Ready(Some(_)) => {}
            Poll::Ready(None) => {
                return Err(CasError::Io {
                    what: "import a blob",
                    source: io::Error::other("the import ended without a result"),
                })
            }
            Poll::Pending => tokio::time::sleep(UNHURRIED_POLL).await,
        }
    }
}

/// Adds the hash sequence `[manifest, chunks...]` and sets the persistent tag
/// `MANIFEST_TAG_PREFIX + hex(manifest)` to it, so garbage collection (if ever enabled)
/// keeps the manifest and every chunk it names. Returns the sequence's temp tag.
pub(crate) async fn root_manifest(
    store: &Store,
    manifest: Hash,
    chunks: impl Iterator<Item = Hash>,
) -> Result<TempTag, CasError> {
    let seq: HashSeq = std::iter::once(manifest)
        .chain(chunks)
        .map(to_iroh)
        .collect();
    let tt = store
        .add_bytes_with_opts((Bytes::from(seq), BlobFormat::HashSeq))
        .temp_tag()
        .await
        .map_err(iroh_blobs::api::Error::from)?;
    let name = format!("{MANIFEST_TAG_PREFIX}{}", manifest.to_hex());
    store
        .tags()
        .set(name, HashAndFormat::hash_seq(tt.hash()))
        .await
        .map_err(iroh_blobs::api::Error::from)?;
    Ok(tt)
}

/// Longest blob read whole into memory: a manifest or a chunk. Blobs come from peers,
/// who choose their length; a longer one is refused before it is read.
pub(crate) const MAX_BLOB_READ: u64 = if MAX_MANIFEST_BYTES > MAX_CHUNK_BYTES {
    MAX_MANIFEST_BYTES
} else {
    MAX_CHUNK_BYTES
};

/// Refuses a blob of `len` bytes that is not `expected` bytes long (when given) or is
/// longer than [`MAX_BLOB_READ`].
pub(crate) fn check_len(hash: Hash, len: u64, expected: Option<u64>) -> Result<(), CasError> {
    match expected {
        Some(expected) if len != expected => Err(CasError::Corrupt {
            hash,
            reason: format!("holds {len} bytes, expected {expected}"),
        }),
        _ if len > MAX_BLOB_READ => Err(CasError::BlobTooLarge { hash, size: len }),
        _ => Ok(()),
    }
}

/// The whole blob `hash`, `expected` bytes long when given and at most
/// [`MAX_BLOB_READ`] bytes (checked before it is read); `Absent` unless the store holds
/// it completely. The store verifies the data against the blob's bao outboard while
/// exporting it.
///
/// A blob still arriving is not exported: the store would read and validate every byte
/// that has come so far only to fail at the first missing one, and a reader catching up
/// with a download (or reading ahead of it) reaches such blobs all the time.
pub(crate) async fn fetch(
    store: &Store,
    hash: Hash,
    expected: Option<u64>,
) -> Result<Bytes, CasError> {
    let status = store
        .status(to_iroh(hash))
        .await
        .map_err(iroh_blobs::api::Error::from)?;
    let BlobStatus::Complete { size } = status else {
        return Err(CasError::Absent {
            hash,
            waited: std::time::Duration::ZERO,
        });
    };
    check_len(hash, size, expected)?;
    let bytes = match store.get_bytes(to_iroh(hash)).await {
        Ok(bytes) => bytes,
        Err(_) => after_failed_read(store, hash).await?,
    };
    check_len(hash, bytes.len() as u64, expected)?;
    Ok(bytes)
}

/// What a failed read of `hash` means: `Absent` if the store does not hold the blob
/// completely, else the blob, read again.
///
/// The read and the status are two requests, and the blob may complete between them (a
/// fetch or import of it running at the same time): the first read found no entry, the
/// status finds a complete one. iroh-blobs marks an entry complete in memory before it
/// records it in its database (`finish_import_impl` and `write_batch` in
/// `store/fs.rs`), so once the status says complete a new read sees the data; an error
/// of that second read is a real one.
pub(crate) async fn after_failed_read(store: &Store, hash: Hash) -> Result<Bytes, CasError> {
    let status = store
        .status(to_iroh(hash))
        .await
        .map_err(iroh_blobs::api::Error::from)?;
    if !matches!(status, BlobStatus::Complete { .. }) {
        return Err(CasError::Absent {
            hash,
            waited: std::time::Duration::ZERO,
        });
    }
    Ok(store
        .get_bytes(to_iroh(hash))
        .await
        .map_err(iroh_blobs::api::Error::from)?)
}

/// Number and total size of complete blobs.
pub(crate) async fn stats(store: &Store) -> Result<(u64, u64), CasError> {
    let hashes = store
        .list()
        .hashes()
        .await
        .map_err(iroh_blobs::api::Error::from)?;
    let (mut blobs, mut bytes) = (0, 0);
    for h in hashes {
        let status = store
            .status(h)
            .await
            .map_err(iroh_blobs::api::Error::from)?;
        if let BlobStatus::Complete { size } = status {
            blobs += 1;
            bytes += size;
        }
    }
    Ok((blobs, bytes))
}

/// Makes the files of blobs `hashes` durable: fsyncs each data and outboard file the
/// store keeps outside its database (small blobs live inside it), then the data
/// directory, which holds the renames that put those files in place. iroh-blobs
/// renames a written temp file into place without syncing it, so this is ours to do.
pub(crate) fn sync_files(paths: &PathOptions, hashes: &[Hash]) -> Result<(), CasError> {
    for &hash in hashes {
        let h = to_iroh(hash);
        for path in [paths.data_path(&h), paths.outboard_path(&h)] {
            match File::open(&path) {
                Ok(f) => f.sync_data().map_err(CasError::io("sync blob file"))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CasError::io("open blob file")(e)),
            }
        }
    }
    File::open(&paths.data_path)
        .and_then(|d| d.sync_all())
        .map_err(CasError::io("sync blob directory"))
}
