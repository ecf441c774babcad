//! Invite tokens: the one line of text an admin hands to a joiner.
//!
//! A token holds what the joiner needs to reach the inviter and prove it was invited:
//! the store id, the inviter's key (its iroh endpoint id) and addresses, the one-time
//! secret, and, for display, the role, expiry and store name. Text form: [`PREFIX`]
//! (which carries the format version), then lowercase RFC 4648 base32 without padding
//! of the `proto::sync::InviteToken` bytes followed by a 4-byte checksum (the first
//! bytes of their blake3 hash), so a mistyped token is refused rather than misread.
//! Decoding trims surrounding whitespace and checks every bound before parsing.

use std::net::{IpAddr, SocketAddr};

use prost::Message;

use crate::fs::op::{role_from_proto, role_to_proto, Role, MAX_LABEL_BYTES};
use crate::identity::PublicKey;
use crate::ids::StoreId;
use crate::proto::sync as pb;

/// First characters of a token of the current format.
pub(crate) const PREFIX: &str = "lm1";
/// Longest token text accepted, in characters.
pub(crate) const MAX_TOKEN_CHARS: usize = 2048;
/// Most inviter addresses a token may list.
pub(crate) const MAX_TOKEN_ADDRS: usize = 16;
/// Longest address text in a token.
const MAX_ADDR_CHARS: usize = 64;
/// Checksum bytes after the payload.
const CHECKSUM_BYTES: usize = 4;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// The text does not start with a known version prefix.
    #[error("not an invite token (expected it to start with {PREFIX:?})")]
    UnknownVersion,
    /// The text is longer than [`MAX_TOKEN_CHARS`].
    #[error("invite token is longer than {MAX_TOKEN_CHARS} characters")]
    TooLong,
    /// A character outside the base32 alphabet, or a truncated last group.
    #[error("invite token has an invalid character or is truncated")]
    BadEncoding,
    /// The checksum does not match: the token was mistyped or cut short.
    #[error("invite token checksum does not match (mistyped or incomplete)")]
    BadChecksum,
    /// The payload does not decode.
    #[error("invite token payload is malformed: {0}")]
    Malformed(String),
    /// A field is missing, has the wrong length or exceeds its bound.
    #[error("invite token field {0} is invalid")]
    BadField(&'static str),
}

/// What a joiner needs to join a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InviteToken {
    /// The store to join.
    pub store: StoreId,
    /// The inviter's key, also its iroh endpoint id.
    pub inviter: PublicKey,
    /// Where the inviter listens (may be empty: discovery then finds it).
    pub addrs: Vec<SocketAddr>,
    /// The one-time secret; the store records only its blake3 hash.
    pub secret: [u8; 32],
    /// The role granted.
    pub role: Role,
    /// Unix ms after which the inviter refuses it.
    pub expires_ms: u64,
    /// The store's name, for display.
    pub store_name: String,
}

impl InviteToken {
    /// The token as one line of text, which [`InviteToken::decode`] accepts: of more
    /// than [`MAX_TOKEN_ADDRS`] addresses (a multi-homed host) it lists the most useful
    /// ones ([`token_addrs`]), and a store name longer than [`MAX_LABEL_BYTES`] (for
    /// display only) is cut at a character boundary.
    pub(crate) fn encode(&self) -> String {
        let mut name_end = self.store_name.len().min(MAX_LABEL_BYTES);
        while !self.store_name.is_char_boundary(name_end) {
            name_end -= 1;
        }
        let mut bytes = pb::InviteToken {
            store_id: self.store.0.to_vec().into(),
            inviter: self.inviter.0.to_vec().into(),
            addrs: token_addrs(&self.addrs)
                .iter()
                .map(|a| a.to_string())
                .collect(),
            secret: self.secret.to_vec().into(),
            role: role_to_proto(self.role) as i32,
            expires_ms: self.expires_ms,
            store_name: self.store_name[..name_end].to_string(),
        }
        .encode_to_vec();
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        let text = format!("{PREFIX}{}", base32(&bytes));
        debug_assert!(text.len() <= MAX_TOKEN_CHARS);
        text
    }

    /// Parses a token, ignoring surrounding whitespace.
    pub(crate) fn decode(text: &str) -> Result<InviteToken, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::TooLong);
        }
        let body = text
            .strip_prefix(PREFIX)
            .ok_or(TokenError::UnknownVersion)?;
        let bytes = unbase32(body).ok_or(TokenError::BadEncoding)?;
        if bytes.len() < CHECKSUM_BYTES {
            return Err(TokenError::BadChecksum);
        }
        let (payload, sum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        if checksum(payload) != sum {
            return Err(TokenError::BadChecksum);
        }
        let m =
            pb::InviteToken::decode(payload).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if m.addrs.len() > MAX_TOKEN_ADDRS {
            return Err(TokenError::BadField("addrs"));
        }
        let addrs = m
            .addrs
            .iter()
            .map(|a| {
                if a.len() > MAX_ADDR_CHARS {
                    return Err(TokenError::BadField("addrs"));
                }
                a.parse().map_err(|_| TokenError::BadField("addrs"))
            })
            .collect::<Result<_, _>>()?;
        if m.store_name.len() > MAX_LABEL_BYTES {
            return Err(TokenError::BadField("store_name"));
        }
        Ok(InviteToken {
            store: StoreId(fixed(&m.store_id, "store_id")?),
            inviter: PublicKey(fixed(&m.inviter, "inviter")?),
            addrs,
            secret: fixed(&m.secret, "secret")?,
            role: role_from_proto(m.role).map_err(|_| TokenError::BadField("role"))?,
            expires_ms: m.expires_ms,
            store_name: m.store_name,
        })
    }
}

/// The addresses a token lists: all of them, in order, if they fit; else the first
/// [`MAX_TOKEN_ADDRS`] by usefulness to a joiner elsewhere, keeping their order within
/// a class: IPv4, then other IPv6, then link-local, then loopback.
pub(crate) fn token_addrs(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    if addrs.len() <= MAX_TOKEN_ADDRS {
        return addrs.to_vec();
    }
    let class = |a: &SocketAddr| match a.ip() {
        ip if ip.is_loopback() => 3,
        IpAddr::V4(v4) if v4.is_link_local() => 2,
        IpAddr::V6(v6) if v6.is_unicast_link_local() => 2,
        IpAddr::V4(_) => 0,
        IpAddr::V6(_) => 1,
    };
    let mut out = addrs.to_vec();
    out.sort_by_key(class);
    out.truncate(MAX_TOKEN_ADDRS);
    out
}

fn fixed<const N: usize>(b: &[u8], what: &'static str) -> Result<[u8; N], TokenError> {
    b.try_into().map_err(|_| TokenError::BadField(what))
}

fn checksum(payload: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let h = blake3::hash(payload);
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&h.as_bytes()[..CHECKSUM_BYTES]);
    out
}

/// Lowercase base32 without padding: 5 bits per character, most significant first.
fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u16, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u16::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[usize::from((acc >> bits) & 31)] as char);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[usize::from((acc << (5 - bits)) & 31)] as char);
    }
    out
}

/// Inverse of [`base32`]; `None` for a foreign character, an impossible length or
/// non-zero padding bits (so each byte string has exactly one text form).
fn unbase32(text: &str) -> Option<Vec<u8>> {
    if matches!(text.len() % 8, 1 | 3 | 6) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut acc, mut bits) = (0u16, 0u32);
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u16;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    (acc == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn token(addrs: usize, name: &str) -> InviteToken {
        InviteToken {
            store: StoreId([7; 16]),
            inviter: PublicKey([9; 32]),
            addrs: (0..addrs)
                .map(|i| {
                    if i % 2 == 0 {
                        format!("192.168.1.{i}:{}", 4000 + i)
                    } else {
                        format!("[fe80::{i}]:{}", 5000 + i)
                    }
                    .parse()
                    .unwrap()
                })
                .collect(),
            secret: [3; 32],
            role: Role::Writer,
            expires_ms: 1_800_000_000_000,
            store_name: name.into(),
        }
    }

    #[test]
    fn base32_round_trips_every_length_and_refuses_foreign_characters() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(unbase32(&base32(&bytes)), Some(bytes));
        }
        assert_eq!(unbase32("a1"), None);
        assert_eq!(unbase32("A"), None);
    }

    #[test]
    fn a_token_is_one_line_and_survives_surrounding_whitespace() {
        let t = token(MAX_TOKEN_ADDRS, &"n".repeat(MAX_LABEL_BYTES));
        let text = t.encode();
        assert!(text.starts_with(PREFIX));
        assert!(text.len() <= MAX_TOKEN_CHARS, "{}", text.len());
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(InviteToken::decode(&format!("  {text}\n")), Ok(t));
    }

    #[test]
    fn a_multi_homed_inviter_gets_a_token_with_its_most_useful_addresses_loopback_last() {
        let mut t = token(0, "docs");
        t.addrs = (0..40u16)
            .map(|i| match i % 4 {
                0 => SocketAddr::from(([127, 0, 0, 1], 1000 + i)),
                1 => SocketAddr::from(([10, 0, 0, 1], 1000 + i)),
                2 => format!("[fe80::{i}]:1").parse().unwrap(),
                _ => format!("[2001:db8::{i}]:1").parse().unwrap(),
            })
            .collect();
        let decoded = InviteToken::decode(&t.encode()).unwrap();
        assert_eq!(decoded.addrs.len(), MAX_TOKEN_ADDRS);
        assert_eq!(decoded.addrs, token_addrs(&t.addrs));
        assert!(decoded.addrs[..10].iter().all(|a| a.is_ipv4()));
        assert!(decoded.addrs.iter().all(|a| !a.ip().is_loopback()));
        assert_eq!(token(3, "docs").encode(), token(3, "docs").encode());
    }

    #[test]
    fn a_token_listing_more_addresses_than_the_limit_is_refused() {
        let mut m = pb::InviteToken {
            store_id: vec![1; 16].into(),
            inviter: vec![2; 32].into(),
            secret: vec![3; 32].into(),
            role: pb_role(Role::Reader),
            addrs: vec!["10.0.0.1:1".into(); MAX_TOKEN_ADDRS + 1],
            ..Default::default()
        }
        .encode_to_vec();
        let sum = checksum(&m);
        m.extend_from_slice(&sum);
        assert_eq!(
            InviteToken::decode(&format!("{PREFIX}{}", base32(&m))),
            Err(TokenError::BadField("addrs"))
        );
    }

    #[test]
    fn foreign_versions_oversized_and_malformed_tokens_are_refused() {
        let text = token(1, "docs").encode();
        assert_eq!(
            InviteToken::decode(&text.replacen("lm1", "lm2", 1)),
            Err(TokenError::UnknownVersion)
        );
        assert_eq!(InviteToken::decode(""), Err(TokenError::UnknownVersion));
        assert_eq!(
            InviteToken::decode(&format!("{PREFIX}{}", "a".repeat(MAX_TOKEN_CHARS))),
            Err(TokenError::TooLong)
        );
        assert_eq!(
            InviteToken::decode(&text.to_uppercase().replacen("LM1", "lm1", 1)),
            Err(TokenError::BadEncoding)
        );
        let mut short_secret = pb::InviteToken {
            store_id: vec![1; 16].into(),
            inviter: vec![2; 32].into(),
            secret: vec![3; 31].into(),
            role: pb_role(Role::Reader),
            ..Default::default()
        }
        .encode_to_vec();
        let sum = checksum(&short_secret);
        short_secret.extend_from_slice(&sum);
        assert_eq!(
            InviteToken::decode(&format!("{PREFIX}{}", base32(&short_secret))),
            Err(TokenError::BadField("secret"))
        );
    }

    fn pb_role(r: Role) -> i32 {
        role_to_proto(r) as i32
    }

    proptest! {
        #[test]
        fn tokens_round_trip(
            store in any::<[u8; 16]>(),
            inviter in any::<[u8; 32]>(),
            secret in any::<[u8; 32]>(),
            ports in proptest::collection::vec(any::<u16>(), 0..=MAX_TOKEN_ADDRS),
            role in 0..3u8,
            expires_ms in any::<u64>(),
            name in "[a-zA-Z0-9 ._-]{0,40}",
        ) {
            let t = InviteToken {
                store: StoreId(store),
                inviter: PublicKey(inviter),
                addrs: ports.iter().map(|p| SocketAddr::from(([10, 0, 0, 1], *p))).collect(),
                secret,
                role: [Role::Admin, Role::Writer, Role::Reader][usize::from(role)],
                expires_ms,
                store_name: name,
            };
            prop_assert_eq!(InviteToken::decode(&t.encode()), Ok(t));
        }

        #[test]
        fn truncated_or_altered_tokens_are_refused_or_decode_to_another_valid_token(
            addrs in 0..4usize,
            pos in any::<prop::sample::Index>(),
            flip in 1..=255u8,
        ) {
            let t = token(addrs, "docs");
            let text = t.encode();
            for cut in 0..text.len() {
                prop_assert!(InviteToken::decode(&text[..cut]).is_err(), "cut at {}", cut);
            }
            let mut bytes = text.clone().into_bytes();
            let i = pos.index(bytes.len());
            bytes[i] ^= flip;
            if let Ok(altered) = std::str::from_utf8(&bytes) {
                if let Ok(other) = InviteToken::decode(altered) {
                    prop_assert_ne!(other, t);
                }
            }
        }
    }
}
