//! Sans-IO protocol cores: bytes in, bytes and decisions out; `net/` drives them.

pub mod invite;
pub mod reconcile;
pub mod refusal;
pub mod replica;

pub use reconcile::{ReconcileError, ReconcileStorage, Session, Stats, Step, FRAME_LIMIT};
pub use refusal::{Refusal, RefusalCode};
