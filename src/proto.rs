//! Generated protobuf types (`proto/*.proto`); validated domain types live elsewhere.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Signed intention envelope (`proto/intention.proto`).
pub mod intention {
    include!(concat!(env!("OUT_DIR"), "/lattice.intention.rs"));
}

/// Filesystem ops (`proto/fs.proto`).
pub mod fs {
    include!(concat!(env!("OUT_DIR"), "/lattice.fs.rs"));
}

/// Control socket RPC (`proto/control.proto`).
pub mod control {
    include!(concat!(env!("OUT_DIR"), "/lattice.control.rs"));
}

/// Sync-layer messages (`proto/sync.proto`).
pub mod sync {
    include!(concat!(env!("OUT_DIR"), "/lattice.sync.rs"));
}

/// Peer-to-peer sync protocol and gossip messages (`proto/peer.proto`).
pub mod peer {
    include!(concat!(env!("OUT_DIR"), "/lattice.peer.rs"));
}
