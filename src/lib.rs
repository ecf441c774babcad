//! lattice-mount: a peer-to-peer replicated filesystem mounted with FUSE.
//!
//! See `docs/architecture.md` for the codemap. The public surface is what this file
//! re-exports: what the daemon (`mountd/`), the benchmark (`mountd/bench/`) and the
//! end-to-end tests (`tests/`) use. Every module is crate-private except the wire
//! formats (`proto`) and their framing (`wire`), which other processes share.

pub(crate) mod budget;
pub(crate) mod cas;
pub(crate) mod fs;
pub(crate) mod fuse;
pub(crate) mod hlc;
pub(crate) mod identity;
pub(crate) mod ids;
pub(crate) mod intention;
pub(crate) mod net;
pub(crate) mod node;
pub mod proto;
#[cfg(any(test, feature = "bench"))]
pub mod sim;
pub(crate) mod store;
pub(crate) mod sync;
pub mod wire;

#[cfg(test)]
mod fuzz;

pub use budget::{CacheBudget, DEFAULT_CACHE_MIB};
pub use cas::{
    Cas, CasError, Content, FetchRequest, Fetcher, GcReport, PutAhead, Space, INLINE_MAX,
    MAX_CHUNK_BYTES, PUT_GRACE, READ_WAIT,
};
pub use fs::op::{
    validate_name, Create, Kind, Op, OpBody, OpError, Role, SetMeta, Setting, DEFAULT_HORIZON_DAYS,
    DEFAULT_RETENTION_DAYS, MAX_HORIZON_DAYS, MAX_LABEL_BYTES, MAX_RETENTION_DAYS, MAX_SUPERSEDES,
    MIN_HORIZON_DAYS,
};
pub use fs::{
    Attr, ContentView, FsError, FsState, FsStats, InviteInfo, InviteStatus, MemberInfo,
    Node as FsNode, Purged, RenameFlags, SNAPSHOTS_DIR,
};
pub use fuse::{mount, FuseError, MountGuard, MountOptions, Passthrough, PassthroughMode};
pub use hlc::{civil_from_days, now_ms, Clock, Hlc};
pub use identity::{hex, unhex, Identity, IdentityError, PublicKey};
pub use ids::{FileId, Hash, OpId, StoreId};
pub use intention::{
    signed_parts, signing_message, Intention, IntentionError, MAX_INTENTION_OPS_BYTES,
};
pub use net::settings::FetchMode;
pub use net::{
    DialError, JoinProgress, Net, NetConfig, NetError, PeerInfo, Relay, Revoked, RoundReport,
    StoreNet, StreamError, SyncReport, Violation, FIRST_FRAME_TIMEOUT, MAX_FRAME, MAX_PEER_BYTES,
    MAX_RECONCILE_DIFF, MAX_STRANGER_FRAME, MAX_STRANGER_STREAMS, MAX_STREAMS_PER_CONN, MAX_WANT,
    SYNC_ALPN,
};
pub use node::{
    check_display_name, store_name, Change, Conflict, ConflictError, DeletedFile, Exported,
    FileProof, HistoryOp, JoinState, Keep, LiveVersion, Node, NodeError, Pick, ProvenVersion,
    Resolution, RestoreError, Restored, SpaceReading, Unreadable, Version, VersionOp, VersionState,
    MIN_VERSION_PREFIX,
};
pub use store::{
    is_retained, ApplyOutcome, Applying, Attesting, Authority, BareIndex, CheckedIntention,
    ContentPlan, Equivocator, HistoryItem, IndexView, InviteError, LeaveError, Proof, SettingError,
    Standing, Store, StoreError, StoreEvent, StoreStats, Tx, VerifyFailure, WitnessBatch, DB_FILE,
    MAX_CLOCK_SKEW_MS, MAX_FLOATING_PER_STRANGER, MS_PER_DAY, SCHEMA_VERSION,
};
pub use sync::frontier::{
    AttestError, Attestation, Blocker, Frontier, Holdback, MAX_ATTESTED_AUTHORS,
};
pub use sync::invite::TokenError;
pub use sync::reconcile::{
    ReconcileError, Stats as ReconcileStats, Step as ReconcileStep, MAX_ROUNDS,
};
pub use sync::{ReconcileStorage, Refusal, RefusalCode, Session, FRAME_LIMIT};
