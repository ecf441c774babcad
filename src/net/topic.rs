//! Each store's gossip topic derives from a 32-byte secret that only members hold, so a
//! peer that knows a store's id (a member of another store, anyone who saw a token) can
//! neither find its topic nor receive its broadcasts.
//!
//! The founder creates the secret with the store (on first use); an inviter hands it to
//! a joiner in the `Redeemed` answer, over the stream the invite authenticates; a member
//! that lacks it (a join interrupted before it was saved) asks another member for it
//! (`AskSecret`, answered to current members only). It is kept in
//! `stores/<id>/gossip-secret`, mode 0600.
//!
//! Revocation does not rotate it: a revoked key still knows the topic. What keeps it out
//! is admission, not secrecy: the gate refuses gossip connections from any key revoked
//! from any store on the node, and closes the ones it has when the revocation is applied
//! (`gate`, `client::cut_off`); a gossip message is acted on only if the neighbour that
//! delivered it is a current member of that store; and every intention and blob travels
//! over per-store authorized streams. The gap: a node that has not yet applied the
//! revocation still admits the revoked key, exactly as it still syncs with it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use iroh_gossip::proto::TopicId;

use crate::identity::{hex, unhex};

/// File holding a store's gossip secret, in the store's directory.
const SECRET_FILE: &str = "gossip-secret";

/// The gossip topic of the store whose secret is `secret`.
pub(crate) fn topic(secret: &[u8; 32]) -> TopicId {
    let mut h = blake3::Hasher::new();
    h.update(b"lattice-mount gossip topic v2\0");
    h.update(secret);
    TopicId::from_bytes(*h.finalize().as_bytes())
}

fn path(store_dir: &Path) -> PathBuf {
    store_dir.join(SECRET_FILE)
}

/// The gossip secret kept in `store_dir`, if any (a damaged file counts as none).
pub(crate) fn load(store_dir: &Path) -> Option<[u8; 32]> {
    let text = std::fs::read_to_string(path(store_dir)).ok()?;
    let secret = unhex(text.trim())?.try_into().ok();
    if secret.is_none() {
        tracing::warn!("{}: not a gossip secret", path(store_dir).display());
    }
    secret
}

/// Keeps `secret` in `store_dir` (written beside, synced, renamed into place, 0600).
pub(crate) fn save(store_dir: &Path, secret: &[u8; 32]) -> std::io::Result<()> {
    let dest = path(store_dir);
    let tmp = dest.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{}\n", hex(secret)).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &dest)
}

/// A fresh random secret.
pub(crate) fn generate() -> [u8; 32] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_secret_loads_back_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), None);
        let secret = generate();
        save(dir.path(), &secret).unwrap();
        assert_eq!(load(dir.path()), Some(secret));
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(topic(&secret), topic(&generate()));
    }
}
