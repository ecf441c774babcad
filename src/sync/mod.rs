//! Sans-IO protocol cores: bytes in, bytes and decisions out; `net/` drives them.

pub(crate) mod disk;
pub(crate) mod frontier;
pub(crate) mod invite;
pub(crate) mod join;
pub(crate) mod reconcile;
pub(crate) mod refusal;
pub(crate) mod replica;

pub use reconcile::{ReconcileStorage, Session, FRAME_LIMIT};
pub use refusal::{Refusal, RefusalCode};
