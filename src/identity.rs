//! Node identity: an Ed25519 key kept in a 0600 key file, also usable as the iroh secret key.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Errors loading or creating a node identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// Path of the key file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The key file does not hold a 32-byte secret key.
    #[error("key file {0} is malformed (expected 32 bytes)")]
    Malformed(String),
    /// The key file is readable by other users.
    #[error("key file {0} is readable by other users (mode must be 0600)")]
    Permissions(String),
}

/// A 32-byte Ed25519 public key identifying a node and authoring intentions.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Verifies `signature` over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify(message, &Signature::from_bytes(signature))
            .is_ok()
    }

    /// Full lowercase hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// First 8 hex characters, as used in conflict and collision names.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A node's secret signing key.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        Self::from_seed(seed)
    }

    /// The identity with this 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Loads the key file at `path`, creating it (mode 0600) if absent.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(IdentityError::Permissions(path.display().to_string()));
                }
                let seed: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| IdentityError::Malformed(path.display().to_string()))?;
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Self::generate();
                let tmp = path.with_extension("tmp");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                f.write_all(&id.seed()).map_err(io)?;
                f.sync_all().map_err(io)?;
                std::fs::rename(&tmp, path).map_err(io)?;
                Ok(id)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The 32-byte secret seed (also the iroh secret key bytes).
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Parses lowercase or uppercase hex into bytes.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_0600_and_reloads_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let a = Identity::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        Identity::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load_or_create(&path),
            Err(IdentityError::Permissions(_))
        ));
    }

    #[test]
    fn truncated_key_file_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::write(&path, [1u8; 31]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            Identity::load_or_create(&path),
            Err(IdentityError::Malformed(_))
        ));
    }

    #[test]
    fn signature_verifies_only_for_its_message_and_key() {
        let id = Identity::generate();
        let sig = id.sign(b"hello");
        assert!(id.public().verify(b"hello", &sig));
        assert!(!id.public().verify(b"hellO", &sig));
        assert!(!Identity::generate().public().verify(b"hello", &sig));
    }

    #[test]
    fn seed_is_a_valid_iroh_secret_key_with_the_same_public_key() {
        let id = Identity::generate();
        let iroh_key = iroh::SecretKey::from_bytes(&id.seed());
        assert_eq!(*iroh_key.public().as_bytes(), id.public().0);
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 1, 0x5a, 254, 255]), "00015afeff");
        assert_eq!(
            unhex(&hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert!(unhex("zz").is_none());
        assert!(unhex("abc").is_none());
    }
}
