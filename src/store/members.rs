//! The membership API of a store: members, invites, redemption and revocation, each a
//! signed system op pushed under the projection's write lock by an admin.
//!
//! [`Store::equivocators`] reports the authors proven to have signed two intentions at
//! one place of their chain, with the evidence (see `apply` rule 5).
//!
//! The store records only an invite's id, the blake3 hash of its one-time secret.
//! [`Store::redeem_invite`] checks the invite and pushes the joiner's `SetMember` under
//! one write lock, so of two joiners presenting one secret exactly one wins. Expiry and
//! withdrawal are checked here, by the redeeming admin, against its clock; replicas
//! count a redemption unless another one of the same invite came first by op id
//! (see `fs::members`).

use crate::fs::op::{validate_label, OpBody, Role};
use crate::fs::{InviteInfo, InviteStatus, MemberInfo};
use crate::identity::PublicKey;
use crate::ids::{Hash, InviteId};
use crate::store::actor::Request;
use crate::store::error::{InviteError, StoreError};
use crate::store::tables::read_forks;
use crate::store::Store;

/// An author proven to have equivocated: two of its intentions at one chain seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equivocator {
    /// Its key.
    pub key: PublicKey,
    /// The chain seq of its lowest proven fork; its intentions from there on are void.
    pub seq: u64,
    /// The two smallest-hash intentions at that seq, kept as evidence.
    pub evidence: [Hash; 2],
}

/// The id under which an invite with this secret is recorded: blake3 of the secret.
pub(crate) fn invite_id(secret: &[u8; 32]) -> InviteId {
    *blake3::hash(secret).as_bytes()
}

impl Store {
    /// Authors proven to have equivocated, in key order, as of the last commit.
    pub fn equivocators(&self) -> Result<Vec<Equivocator>, StoreError> {
        use redb::ReadableDatabase;
        let db = self.handle.shared.index.db()?;
        let txn = db.begin_read()?;
        Ok(read_forks(&txn)?
            .into_iter()
            .map(|(key, seq, evidence)| Equivocator { key, seq, evidence })
            .collect())
    }

    /// Current members in key order.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.read(|s| s.members())
    }

    /// Every invite recorded in the store with its status now, in id order.
    pub fn invites(&self) -> Vec<InviteInfo> {
        let now = self.handle.shared.now_ms();
        self.read(|s| s.invites(now))
    }

    /// Records a new invite granting `role` until `expires_ms` (Unix ms); returns its
    /// one-time secret, which the store never holds. Admins only.
    pub fn create_invite(&self, role: Role, expires_ms: u64) -> Result<[u8; 32], InviteError> {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        self.record_invite(secret, role, expires_ms)
    }

    /// [`Store::create_invite`] with a secret the caller chose (the simulator's, from its seed).
    pub(crate) fn record_invite(
        &self,
        secret: [u8; 32],
        role: Role,
        expires_ms: u64,
    ) -> Result<[u8; 32], InviteError> {
        self.admin_write(|tx| {
            tx.push(OpBody::Invite {
                id: invite_id(&secret),
                role,
                expires_ms,
            })?;
            Ok(secret)
        })
    }

    /// Withdraws an unused invite. Admins only.
    pub fn revoke_invite(&self, id: InviteId) -> Result<(), InviteError> {
        let now = self.handle.shared.now_ms();
        self.admin_write(|tx| {
            let info = tx.state().invite(&id, now).ok_or(InviteError::Unknown)?;
            match info.status {
                InviteStatus::Used(key) => Err(InviteError::Used(key)),
                InviteStatus::Revoked => Ok(()),
                InviteStatus::Open | InviteStatus::Expired => {
                    tx.push(OpBody::RevokeInvite { id })?;
                    Ok(())
                }
            }
        })
    }

    /// Redeems the invite whose secret is `secret` for `joiner` at `now_ms`: adds it as a
    /// member with the invite's role and returns that role. A display name that is not
    /// a valid label is refused before anything is checked or written. Redeeming again for the same
    /// joiner returns the role without a new op (a retried join). Admins only.
    pub fn redeem_invite(
        &self,
        secret: &[u8; 32],
        joiner: PublicKey,
        display_name: &str,
        now_ms: u64,
    ) -> Result<Role, InviteError> {
        let id = invite_id(secret);
        validate_label(display_name).map_err(InviteError::DisplayName)?;
        self.admin_write(|tx| {
            let st = tx.state();
            let info = st.invite(&id, now_ms).ok_or(InviteError::Unknown)?;
            match info.status {
                InviteStatus::Used(key) if key == joiner => return Ok(info.role),
                InviteStatus::Used(key) => return Err(InviteError::Used(key)),
                InviteStatus::Revoked => return Err(InviteError::Revoked),
                InviteStatus::Expired => return Err(InviteError::Expired(info.expires_ms)),
                InviteStatus::Open => {}
            }
            if st.revocation_cut(&joiner).is_some() {
                return Err(InviteError::JoinerRevoked(joiner));
            }
            if let Some((role, _)) = st.member(&joiner) {
                return Err(InviteError::AlreadyMember(joiner, role));
            }
            tx.push(OpBody::SetMember {
                key: joiner,
                role: info.role,
                display_name: display_name.to_owned(),
                invite: Some(id),
            })?;
            Ok(info.role)
        })
    }

    /// Revokes `key` for good; its intentions past the ones this node has applied are
    /// void on every replica. Returns that cut (the key's author-chain length here).
    /// Admins only.
    pub fn revoke_member(&self, key: PublicKey) -> Result<u64, InviteError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.shared.send(Request::ChainLen(key, tx))?;
        let upto = rx.recv().map_err(|_| StoreError::Closed)??;
        self.admin_write(|tx| {
            if tx.state().member(&key).is_none() {
                return Err(InviteError::NotMember(key));
            }
            tx.push(OpBody::RevokeMember { key, upto })?;
            Ok(upto)
        })
    }

    fn admin_write<R>(
        &self,
        f: impl FnOnce(&mut crate::store::Tx<'_>) -> Result<R, InviteError>,
    ) -> Result<R, InviteError> {
        self.write_as(
            |role| match role {
                Some(Role::Admin) => Ok(()),
                _ => Err(InviteError::NotAdmin),
            },
            InviteError::Store,
            true,
            f,
        )
    }
}
