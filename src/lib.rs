//! lattice-mount: a peer-to-peer replicated filesystem mounted with FUSE.
//!
//! See `docs/architecture.md` for the codemap.

pub mod cas;
pub mod fs;
pub mod fuse;
pub mod hlc;
pub mod identity;
pub mod intention;
pub mod net;
pub mod node;
pub mod proto;
#[cfg(any(test, feature = "bench"))]
pub mod sim;
pub mod store;
pub mod sync;
pub mod wire;

#[cfg(test)]
mod fuzz;
