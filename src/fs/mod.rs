//! The filesystem state machine: ops, registers with heads, and the projected tree.
//!
//! `FsState` is pure: no I/O, threads or clocks (times come from ops). Its projection is
//! a function of the set of applied ops, whatever causal order they arrived in: locations
//! follow the replicated move operation (`tree`), content is a register with heads and
//! version groups (`content`), metadata is last-writer-wins, and what is visible, under
//! which name, is decided at query time (`state`, `query`). Planners (`plan`) turn POSIX
//! calls into op bodies.

mod codec;
pub(crate) mod content;
mod error;
mod members;
pub(crate) mod names;
pub(crate) mod op;
mod paged;
mod pages;
mod plan;
mod query;
mod removed;
pub(crate) mod snapshot;
mod state;
mod tree;
mod vecmap;
pub(crate) mod versions;
mod view;

pub use error::FsError;
pub use members::{InviteInfo, InviteStatus, MemberInfo};
pub use paged::{Page, PageSource, PageWrite};
pub use pages::PageBatch;
pub(crate) use removed::Found;
#[cfg(test)]
pub(crate) use state::SWEEP_BATCH;
pub use state::{FsState, Purged};
pub use view::{Attr, ContentView, FsStats, Node, RenameFlags};

/// Name of the read-only directory at a store's root that shows its snapshots.
pub const SNAPSHOTS_DIR: &str = ".snapshots";

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod purge_tests;
#[cfg(test)]
mod tests;
