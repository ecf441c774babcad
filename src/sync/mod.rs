//! Sans-IO protocol cores: bytes in, bytes and decisions out; `net/` drives them.

pub(crate) mod invite;
pub(crate) mod reconcile;

pub use reconcile::{ReconcileStorage, Session, FRAME_LIMIT};
