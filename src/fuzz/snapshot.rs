//! Fuzz tests of the projection snapshot decoder (`FsState::decode_snapshot`), a
//! bad-disk input: snapshots of random histories, edited, and random bytes. Decoding
//! replays the ops, so this also drives `FsState::apply` with ops naming unknown,
//! foreign or cyclic ids, and the queries over whatever state results.

use proptest::prelude::*;

use super::ops::{op, AUTHORS};
use super::{config, hostile, within, Budget};
use crate::fs::op::Op;
use crate::fs::FsState;
use crate::identity::PublicKey;
use crate::ids::OpId;

/// `decode_snapshot`: the rebuilt state (op log, tree, file records, indexes). Measured:
/// a snapshot of 20 000 files created in one directory (about 100 bytes each) rebuilds
/// a state that held 62 bytes per snapshot byte at its peak (some 6 KiB per file);
/// twice that is the budget.
const SNAPSHOT: Budget = Budget {
    per_byte: 128,
    fixed: 64 * 1024,
};

/// A history of 0..24 ops by the history authors, applied in order.
fn history() -> impl Strategy<Value = Vec<(PublicKey, Op)>> {
    prop::collection::vec(((0..AUTHORS).prop_map(|k| PublicKey([k; 32])), op()), 0..24)
}

fn state_of(history: &[(PublicKey, Op)]) -> FsState {
    let mut state = FsState::new();
    for (author, op) in history {
        state.apply(*author, op);
    }
    state
}

/// Walks the decoded state as the mount would, so a broken projection shows up here.
fn walk(state: &FsState) -> String {
    let root = state
        .readdir(OpId::ROOT)
        .expect("the root is always a listable directory");
    format!(
        "{} names at the root\n{}",
        root.len(),
        state.canonical_dump()
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_snapshot_of_a_random_history_decodes_to_the_same_state(h in history()) {
        let state = state_of(&h);
        let bytes = state.encode_snapshot();
        let back = within(SNAPSHOT, &bytes, || FsState::decode_snapshot(&bytes))?;
        let back = back.expect("an encoded snapshot decodes");
        prop_assert_eq!(walk(&back), walk(&state));
    }

    #[test]
    fn edited_or_random_snapshots_are_refused_or_decode_to_a_stable_state(
        bytes in hostile(history().prop_map(|h| state_of(&h).encode_snapshot()))
    ) {
        let decoded = within(SNAPSHOT, &bytes, || FsState::decode_snapshot(&bytes))?;
        if let Ok(state) = decoded {
            let again = FsState::decode_snapshot(&state.encode_snapshot());
            let again = again.expect("a decoded state's snapshot decodes");
            prop_assert_eq!(walk(&again), walk(&state));
        }
    }
}
