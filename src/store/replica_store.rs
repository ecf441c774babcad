//! `Store` as a replica's disk: it implements `sync`'s [`ReplicaStore`], so the
//! replica needs nothing from this layer.

use bytes::Bytes;

use crate::cas::Content;
use crate::identity::PublicKey;
use crate::ids::{FileId, Hash, StoreId};
use crate::proto::peer as pb;
use crate::store::{is_refusal, ApplyOutcome, IndexView, InviteError, Store, StoreError};
use crate::sync::disk::{Received, ReplicaStore};
use crate::sync::frontier::{AttestError, Attestation};
use crate::sync::{Refusal, RefusalCode};

impl ReplicaStore for Store {
    type Error = StoreError;
    type View = IndexView;

    fn id(&self) -> StoreId {
        Store::id(self)
    }

    fn founder(&self) -> PublicKey {
        Store::founder(self)
    }

    fn applied(&self) -> u64 {
        Store::applied(self)
    }

    fn store_name(&self) -> Option<String> {
        self.read(|s| s.store_name().map(str::to_owned))
    }

    fn members(&self) -> Vec<PublicKey> {
        self.read(|s| s.members().into_iter().map(|m| m.key).collect())
    }

    fn is_member(&self, key: &PublicKey) -> bool {
        self.read(|s| s.member(key).is_some())
    }

    fn is_deleted(&self) -> bool {
        Store::is_deleted(self)
    }

    fn revoked(&self) -> Vec<PublicKey> {
        self.read(|s| s.revocation_cuts().into_iter().map(|(k, _)| k).collect())
    }

    fn file_pieces(&self, files: Option<Vec<FileId>>) -> Vec<(FileId, Vec<Content>)> {
        self.pieces_of(files)
    }

    fn apply(&self, bytes: Bytes) -> Result<Received, StoreError> {
        received(self.apply_remote(bytes))
    }

    fn apply_many(&self, list: Vec<Bytes>) -> Vec<Result<Received, StoreError>> {
        self.apply_remote_many(list)
            .into_iter()
            .map(received)
            .collect()
    }

    fn get(&self, hashes: Vec<Hash>, max_bytes: usize) -> Result<Vec<Bytes>, StoreError> {
        Store::get(self, hashes, max_bytes)
    }

    fn missing(&self, limit: usize) -> Result<Vec<Hash>, StoreError> {
        Store::missing(self, limit)
    }

    fn witness(&self, from: u64, max_bytes: usize) -> Result<pb::WitnessBatch, StoreError> {
        let batch = Store::bootstrap_batch(self, from, max_bytes)?;
        Ok(pb::WitnessBatch {
            intentions: batch.intentions,
            next: batch.next,
            len: batch.len,
            attested: batch.attested.map(|a| a.to_pb()),
        })
    }

    fn reconcile_view(&self) -> Result<IndexView, StoreError> {
        Store::reconcile_view(self)
    }

    fn redeem_invite(
        &self,
        secret: &[u8; 32],
        joiner: PublicKey,
        display_name: &str,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        Store::redeem_invite(self, secret, joiner, display_name, now_ms)
            .map(|_| ())
            .map_err(Refusal::from)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Store::flush(self)
    }

    fn attestation(&self) -> Result<Attestation, StoreError> {
        Store::attestation(self)
    }

    fn attested(&self, from: PublicKey, attestation: Attestation) -> Result<(), AttestError> {
        Store::attested(self, from, attestation)
    }
}

/// A store's outcome for one received intention, refusals told apart from failures.
pub(crate) fn received(outcome: Result<ApplyOutcome, StoreError>) -> Result<Received, StoreError> {
    match outcome {
        Ok(ApplyOutcome::Applied { .. }) => Ok(Received::Applied),
        Ok(ApplyOutcome::Duplicate) => Ok(Received::Duplicate),
        Ok(ApplyOutcome::Floating { .. }) => Ok(Received::Floating),
        Ok(ApplyOutcome::Early { .. }) => Ok(Received::Early),
        Err(e) if is_refusal(&e) => Ok(Received::Refused(e.to_string())),
        Err(e) => Err(e),
    }
}

impl From<InviteError> for Refusal {
    fn from(e: InviteError) -> Self {
        let code = match &e {
            InviteError::Unknown => RefusalCode::InviteUnknown,
            InviteError::Used(_) => RefusalCode::InviteUsed,
            InviteError::Expired(_) => RefusalCode::InviteExpired,
            InviteError::Revoked => RefusalCode::InviteRevoked,
            InviteError::DisplayName(_) | InviteError::Op(_) => RefusalCode::Malformed,
            InviteError::NotAdmin
            | InviteError::JoinerRevoked(_)
            | InviteError::NotMember(_)
            | InviteError::AlreadyMember(..) => RefusalCode::JoinRefused,
            InviteError::Store(_) => RefusalCode::Internal,
        };
        Refusal::new(code, e.to_string())
    }
}
