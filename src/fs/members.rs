//! Members, roles, revocations and invites: the membership part of the projection.
//!
//! Every membership op is kept, and what it means is decided at query time, so the
//! answer is a function of the set of applied ops whatever order they arrived in:
//! - A `SetMember` *counts* unless it redeems an invite that is unknown or that an
//!   earlier `SetMember` (smaller op id) already redeemed: of two joiners racing for one
//!   invite through different admins, the first by (HLC, author) wins everywhere.
//!   Expiry and withdrawal of an invite are checked by the admin when it redeems; a
//!   redemption concurrent with a `RevokeInvite` still counts (the admin's authority).
//! - A member's role and display name are those of its latest counting `SetMember`.
//! - A revocation is final: a revoked key is never a member again, whatever
//!   `SetMember` comes later. Its intentions are cut at the smallest `upto` of its
//!   revocations (enforced by the store), and a key cannot restart its author chain, so
//!   a re-grant could not revive it consistently on every replica; readmit the device
//!   under a new key instead.
//! - A `Leave` is a revocation of its author by itself, cut at the leave's own chain
//!   seq (the store checks the seq), remembered apart so that `peers` says "left".
//! - What a member's own intentions may do is decided by the store (`store::apply`):
//!   each `SetMember` has a position in the member's author chain (how much of it the
//!   granting admin had seen), and an intention at chain seq s is checked against the
//!   latest counting `SetMember` (by op id) positioned before s. So a demotion takes
//!   rights from the member's intentions past what the admin saw, on every replica
//!   alike, whatever order they arrive in; what came before keeps its rights.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::fs::codec::{Reader, Writer};
use crate::fs::error::FsError;
use crate::fs::op::Role;
use crate::identity::PublicKey;
use crate::ids::{InviteId, OpId};

/// A current member of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its key (also its iroh endpoint id).
    pub key: PublicKey,
    /// Its current role.
    pub role: Role,
    /// Its display name.
    pub display_name: String,
}

/// What became of an invite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteStatus {
    /// Not used, withdrawn or expired.
    Open,
    /// Redeemed by this key.
    Used(PublicKey),
    /// Withdrawn by an admin.
    Revoked,
    /// Past its expiry and unused.
    Expired,
}

/// An invite recorded in a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteInfo {
    /// blake3 of the invite's secret.
    pub id: InviteId,
    /// Role granted on redemption.
    pub role: Role,
    /// Unix ms after which it is refused.
    pub expires_ms: u64,
    /// Its status now.
    pub status: InviteStatus,
}

#[derive(Clone, Debug)]
struct Grant {
    role: Role,
    display_name: String,
    invite: Option<InviteId>,
}

#[derive(Clone, Debug)]
struct InviteRec {
    role: Role,
    expires_ms: u64,
}

/// Every membership op applied, by key and by invite.
#[derive(Clone, Debug, Default)]
pub(crate) struct Members {
    grants: HashMap<PublicKey, BTreeMap<OpId, Grant>>,
    /// Key -> smallest `upto` of its revocations (its leave included).
    cuts: HashMap<PublicKey, u64>,
    /// Keys that left by their own `Leave`.
    left: HashSet<PublicKey>,
    /// Invite -> its records by op id; the first by op id holds.
    invites: HashMap<InviteId, BTreeMap<OpId, InviteRec>>,
    withdrawn: HashSet<InviteId>,
    /// Invite -> the `SetMember` ops that redeem it, by op id.
    redemptions: HashMap<InviteId, BTreeMap<OpId, PublicKey>>,
}

impl Members {
    /// Records a `SetMember` op.
    pub(crate) fn set(
        &mut self,
        id: OpId,
        key: PublicKey,
        role: Role,
        display_name: &str,
        invite: Option<InviteId>,
    ) {
        if let Some(inv) = invite {
            self.redemptions.entry(inv).or_default().insert(id, key);
        }
        let grant = Grant {
            role,
            display_name: display_name.to_owned(),
            invite,
        };
        self.grants.entry(key).or_default().insert(id, grant);
    }

    /// Records a `RevokeMember` op.
    pub(crate) fn revoke(&mut self, key: PublicKey, upto: u64) {
        let cut = self.cuts.entry(key).or_insert(upto);
        *cut = (*cut).min(upto);
    }

    /// Records `key`'s own `Leave` at its chain seq `upto`: a revocation by itself.
    pub(crate) fn leave(&mut self, key: PublicKey, upto: u64) {
        self.revoke(key, upto);
        self.left.insert(key);
    }

    /// True if `key` left by its own `Leave`.
    pub(crate) fn has_left(&self, key: &PublicKey) -> bool {
        self.left.contains(key)
    }

    /// Every key that left with the role and display name it had, in key order.
    pub(crate) fn left_list(&self) -> Vec<MemberInfo> {
        self.left_keys()
            .into_iter()
            .filter_map(|key| {
                let (_, g) = self
                    .grants
                    .get(&key)?
                    .iter()
                    .rev()
                    .find(|(id, g)| self.counts(id, g))?;
                Some(MemberInfo {
                    key,
                    role: g.role,
                    display_name: g.display_name.clone(),
                })
            })
            .collect()
    }

    /// Every key that left, in key order.
    pub(crate) fn left_keys(&self) -> Vec<PublicKey> {
        let mut out: Vec<PublicKey> = self.left.iter().copied().collect();
        out.sort();
        out
    }

    /// Writes the keys that left (snapshot format 5 and header format 3 on).
    pub(crate) fn encode_left(&self, w: &mut Writer) {
        let left = self.left_keys();
        w.len(left.len());
        for key in &left {
            w.key(key);
        }
    }

    /// Reads what [`Members::encode_left`] wrote.
    pub(crate) fn decode_left(&mut self, r: &mut Reader) -> Result<(), FsError> {
        for _ in 0..r.len()? {
            self.left.insert(r.key()?);
        }
        Ok(())
    }

    /// Records an `Invite` op `op`.
    pub(crate) fn invite(&mut self, op: OpId, id: InviteId, role: Role, expires_ms: u64) {
        let rec = InviteRec { role, expires_ms };
        self.invites.entry(id).or_default().insert(op, rec);
    }

    /// Records a `RevokeInvite` op; it also withdraws an invite recorded later.
    pub(crate) fn revoke_invite(&mut self, id: InviteId) {
        self.withdrawn.insert(id);
    }

    fn counts(&self, id: &OpId, g: &Grant) -> bool {
        match &g.invite {
            None => true,
            Some(inv) => {
                self.invites.contains_key(inv)
                    && self
                        .redemptions
                        .get(inv)
                        .and_then(|r| r.keys().next())
                        .is_some_and(|first| first == id)
            }
        }
    }

    /// The key's current role and display name; `None` if revoked or never granted.
    pub(crate) fn member(&self, key: &PublicKey) -> Option<(Role, &str)> {
        if self.cuts.contains_key(key) {
            return None;
        }
        self.grants
            .get(key)?
            .iter()
            .rev()
            .find(|(id, g)| self.counts(id, g))
            .map(|(_, g)| (g.role, g.display_name.as_str()))
    }

    /// The key's counting grants with their roles, in op id order, revocations aside.
    pub(crate) fn grants(&self, key: &PublicKey) -> Vec<(OpId, Role)> {
        self.grants.get(key).map_or_else(Vec::new, |g| {
            g.iter()
                .filter(|(id, g)| self.counts(id, g))
                .map(|(id, g)| (*id, g.role))
                .collect()
        })
    }

    /// The key's author-chain length past which its intentions are void, if revoked.
    pub(crate) fn cut(&self, key: &PublicKey) -> Option<u64> {
        self.cuts.get(key).copied()
    }

    /// Every revoked key with its cut.
    pub(crate) fn cuts(&self) -> impl Iterator<Item = (PublicKey, u64)> + '_ {
        self.cuts.iter().map(|(k, c)| (*k, *c))
    }

    /// Every key ever granted a role.
    pub(crate) fn granted(&self) -> impl Iterator<Item = PublicKey> + '_ {
        self.grants.keys().copied()
    }

    /// Current members in key order.
    pub(crate) fn list(&self) -> Vec<MemberInfo> {
        let mut out: Vec<MemberInfo> = self
            .grants
            .keys()
            .filter_map(|key| {
                self.member(key).map(|(role, name)| MemberInfo {
                    key: *key,
                    role,
                    display_name: name.to_owned(),
                })
            })
            .collect();
        out.sort_by_key(|m| m.key);
        out
    }

    /// The invite `id` with its status at `now_ms`.
    pub(crate) fn invite_info(&self, id: &InviteId, now_ms: u64) -> Option<InviteInfo> {
        let rec = self.invites.get(id)?.values().next()?;
        let used = self
            .redemptions
            .get(id)
            .and_then(|r| r.values().next().copied());
        let status = match used {
            Some(key) => InviteStatus::Used(key),
            None if self.withdrawn.contains(id) => InviteStatus::Revoked,
            None if now_ms > rec.expires_ms => InviteStatus::Expired,
            None => InviteStatus::Open,
        };
        Some(InviteInfo {
            id: *id,
            role: rec.role,
            expires_ms: rec.expires_ms,
            status,
        })
    }

    /// Every invite with its status at `now_ms`, in id order.
    pub(crate) fn invite_list(&self, now_ms: u64) -> Vec<InviteInfo> {
        let mut ids: Vec<&InviteId> = self.invites.keys().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| self.invite_info(id, now_ms))
            .collect()
    }
}

/// `map`'s entries in key order.
fn sorted<K: Ord, V>(map: &HashMap<K, V>) -> Vec<(&K, &V)> {
    let mut v: Vec<(&K, &V)> = map.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

impl Members {
    /// Writes every membership record, maps in key order.
    pub(crate) fn encode(&self, w: &mut Writer) {
        let grants = sorted(&self.grants);
        w.len(grants.len());
        for (key, list) in grants {
            w.key(key);
            w.len(list.len());
            for (id, g) in list {
                w.id(id);
                w.role(g.role);
                w.bytes(g.display_name.as_bytes());
                match &g.invite {
                    None => w.u8(0),
                    Some(inv) => {
                        w.u8(1);
                        w.body.extend_from_slice(inv);
                    }
                }
            }
        }
        let cuts = sorted(&self.cuts);
        w.len(cuts.len());
        for (key, upto) in cuts {
            w.key(key);
            w.uint(*upto);
        }
        let invites = sorted(&self.invites);
        w.len(invites.len());
        for (inv, recs) in invites {
            w.body.extend_from_slice(inv);
            w.len(recs.len());
            for (id, rec) in recs {
                w.id(id);
                w.role(rec.role);
                w.uint(rec.expires_ms);
            }
        }
        let mut withdrawn: Vec<&InviteId> = self.withdrawn.iter().collect();
        withdrawn.sort();
        w.len(withdrawn.len());
        for inv in withdrawn {
            w.body.extend_from_slice(inv);
        }
        let redemptions = sorted(&self.redemptions);
        w.len(redemptions.len());
        for (inv, by) in redemptions {
            w.body.extend_from_slice(inv);
            w.len(by.len());
            for (id, key) in by {
                w.id(id);
                w.key(key);
            }
        }
    }

    /// Reads what [`Members::encode`] wrote.
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, FsError> {
        let mut m = Members::default();
        for _ in 0..r.len()? {
            let key = r.key()?;
            let list = m.grants.entry(key).or_default();
            for _ in 0..r.len()? {
                let id = r.id()?;
                let role = r.role()?;
                let display_name = r.string()?;
                let invite = match r.bool()? {
                    false => None,
                    true => Some(r.array()?),
                };
                list.insert(
                    id,
                    Grant {
                        role,
                        display_name,
                        invite,
                    },
                );
            }
        }
        for _ in 0..r.len()? {
            m.cuts.insert(r.key()?, r.uint()?);
        }
        for _ in 0..r.len()? {
            let recs = m.invites.entry(r.array()?).or_default();
            for _ in 0..r.len()? {
                let id = r.id()?;
                let rec = InviteRec {
                    role: r.role()?,
                    expires_ms: r.uint()?,
                };
                recs.insert(id, rec);
            }
        }
        for _ in 0..r.len()? {
            m.withdrawn.insert(r.array()?);
        }
        for _ in 0..r.len()? {
            let by = m.redemptions.entry(r.array()?).or_default();
            for _ in 0..r.len()? {
                by.insert(r.id()?, r.key()?);
            }
        }
        Ok(m)
    }
}
