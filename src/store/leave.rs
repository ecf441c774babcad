//! Leaving and deleting a store: this node's `Leave` (any member, a reader too) and an
//! admin's `DeleteStore`, both signed ops replicated like any other.
//!
//! A `Leave` is sealed alone, at the chain seq it names, after everything this node
//! pushed before it (`apply::seal_local`); other replicas check both (`apply` rule 7)
//! and then treat the author as revoked at that seq, so their stability frontier counts
//! it until they hold its chain up to the leave, then never. A `DeleteStore` makes
//! every member's copy read-only (`Store::write` answers `ReadOnly`) and stops it
//! admitting intentions (`apply` rule 8); the node stops syncing it.

use crate::fs::op::{Op, OpBody, Role};
use crate::store::apply::Queued;
use crate::store::error::LeaveError;
use crate::store::Store;

impl Store {
    /// Leaves the store: queues this node's `Leave`, sealed alone after every op pushed
    /// before it, and returns once it is durable. Nothing can be written here after it.
    pub fn leave(&self) -> Result<(), LeaveError> {
        let shared = &self.handle.shared;
        let me = shared.identity.public();
        {
            let state = shared.state.write();
            if let Some(e) = shared.mailbox.lock().refusal() {
                return Err(LeaveError::Store(e));
            }
            if state.has_left(&me) {
                return Ok(());
            }
            if state.member(&me).is_none() {
                return Err(LeaveError::NotMember);
            }
            // The seq is filled in when sealed: only then is it known.
            let hlc = shared.clock.lock().tick(shared.now_ms());
            let op = Op {
                hlc,
                body: OpBody::Leave { upto: 0 },
            };
            let mut mb = shared.mailbox.lock();
            if mb.ops.is_empty() {
                shared.wake.notify_one();
            }
            mb.ops.push(Queued { op, touched: None });
        }
        self.flush().map_err(LeaveError::Store)
    }

    /// Deletes the store for every member (a replicated `DeleteStore`). Admins only;
    /// deleting a deleted store writes nothing.
    pub fn delete(&self) -> Result<(), LeaveError> {
        self.write_as(
            |role| match role {
                Some(Role::Admin) => Ok(()),
                _ => Err(LeaveError::NotAdmin),
            },
            LeaveError::Store,
            true,
            |tx| {
                tx.push(OpBody::DeleteStore)?;
                Ok(())
            },
        )?;
        self.flush().map_err(LeaveError::Store)
    }

    /// True once an admin deleted the store (this node applied a `DeleteStore`).
    pub fn is_deleted(&self) -> bool {
        self.read(|s| s.deleted().is_some())
    }

    /// True if this node is the last admin while other members remain: its leaving
    /// would leave the store without anyone able to invite, revoke or delete.
    pub fn is_last_admin(&self) -> bool {
        let me = self.handle.shared.identity.public();
        self.read(|s| {
            let members = s.members();
            let admins = members.iter().filter(|m| m.role == Role::Admin).count();
            let mine = s.member(&me).is_some_and(|(r, _)| r == Role::Admin);
            mine && admins == 1 && members.len() > 1
        })
    }
}
