//! What a replica needs of its store, as a trait the store implements (`store` sits
//! above `sync`, as it does for [`ReconcileStorage`]).

use bytes::Bytes;

use crate::cas::Content;
use crate::identity::PublicKey;
use crate::ids::{FileId, Hash, StoreId};
use crate::proto::peer as pb;
use crate::sync::frontier::{AttestError, Attestation};
use crate::sync::reconcile::ReconcileStorage;
use crate::sync::Refusal;

/// What became of one received intention the store did not fail on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// Applied (with any floating intentions it woke).
    Applied,
    /// Already applied, or refused earlier; nothing changed.
    Duplicate,
    /// Parked until a predecessor arrives.
    Floating,
    /// Stamped too far ahead of the local clock: parked until then.
    Early,
    /// Refused (bad signature, not a member, past a cut ...), with the reason.
    Refused(String),
}

/// The store a replica replicates: its disk, called inside `Replica::handle`.
pub(crate) trait ReplicaStore {
    /// A failure of the store itself (not a refused intention).
    type Error: std::fmt::Display;
    /// An index snapshot reconciliation runs over.
    type View: ReconcileStorage;

    /// The store id.
    fn id(&self) -> StoreId;
    /// The founder's key.
    fn founder(&self) -> PublicKey;
    /// The number of intentions in the witness log.
    fn applied(&self) -> u64;
    /// The store's name, once its genesis is applied.
    fn store_name(&self) -> Option<String>;
    /// The current members' keys, in key order.
    fn members(&self) -> Vec<PublicKey>;
    /// Whether `key` is a current member.
    fn is_member(&self, key: &PublicKey) -> bool;
    /// The revoked keys.
    fn revoked(&self) -> Vec<PublicKey>;
    /// Whether an admin deleted the store: it admits nothing more.
    fn is_deleted(&self) -> bool;
    /// The blob pieces (empty without blobs) of each of `files` in order, or, if `None`,
    /// of every file that has any.
    fn file_pieces(&self, files: Option<Vec<FileId>>) -> Vec<(FileId, Vec<Content>)>;
    /// Applies one received intention.
    fn apply(&self, bytes: Bytes) -> Result<Received, Self::Error>;
    /// Applies received intentions in order, one outcome each.
    fn apply_many(&self, list: Vec<Bytes>) -> Vec<Result<Received, Self::Error>>;
    /// The stored intentions of those of `hashes` the store has, in order, up to about
    /// `max_bytes` (the first found is always included).
    fn get(&self, hashes: Vec<Hash>, max_bytes: usize) -> Result<Vec<Bytes>, Self::Error>;
    /// Up to `limit` predecessors floating intentions wait for.
    fn missing(&self, limit: usize) -> Result<Vec<Hash>, Self::Error>;
    /// The witness log from seq `from` (1-based) on, up to about `max_bytes`, as served
    /// to a joiner (with the store's attestation about itself as of the batch).
    fn witness(&self, from: u64, max_bytes: usize) -> Result<pb::WitnessBatch, Self::Error>;
    /// A snapshot of the index for one reconciliation.
    fn reconcile_view(&self) -> Result<Self::View, Self::Error>;
    /// Redeems the invite of `secret` for `joiner` at `now_ms`.
    fn redeem_invite(
        &self,
        secret: &[u8; 32],
        joiner: PublicKey,
        display_name: &str,
        now_ms: u64,
    ) -> Result<(), Refusal>;
    /// Returns once everything done before the call is durably committed.
    fn flush(&self) -> Result<(), Self::Error>;
    /// This node's attestation, built from a durable commit.
    fn attestation(&self) -> Result<Attestation, Self::Error>;
    /// Keeps member `from`'s attestation; a non-member's is refused, changing nothing.
    fn attested(&self, from: PublicKey, attestation: Attestation) -> Result<(), AttestError>;
}
