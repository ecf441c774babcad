//! Why a peer refused a request: a code to match on and one readable line, and their
//! wire form (`Refusal` in `proto/peer.proto`). A code this node does not know (a newer
//! peer's) reads as [`RefusalCode::Unknown`]; a text is cut to one bounded line.

use crate::proto::peer::{self as pb, response};
use crate::sync::reconcile::ReconcileError;
use crate::wire::FrameError;

/// Most characters of a refusal's text kept from the wire: one line, readable in a log.
pub const MAX_REFUSAL_TEXT: usize = 512;

/// A refused request: why, as a code, and one readable line about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {text}")]
pub struct Refusal {
    /// Why, for code to act on.
    pub code: RefusalCode,
    /// The refuser's explanation, for people.
    pub text: String,
}

/// The reasons a peer refuses a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    /// A code this node does not know (sent by a newer peer); the text says more.
    Unknown,
    /// The request does not decode, or is not valid (a bad field, a frame out of turn).
    Malformed,
    /// A frame, a list or a session in the request is over one of its limits.
    TooLarge,
    /// The request did not arrive within the first-frame timeout.
    TimedOut,
    /// The refuser has no store with this id.
    UnknownStore,
    /// The opener is not a current member of the store.
    NotMember,
    /// The store is paused on the refuser.
    Paused,
    /// The refuser has no gossip secret for the store yet.
    NoSecret,
    /// A chunk asked for is not owned by the store, or not held by the refuser.
    NotHeld,
    /// The chunks differ too much for a patch.
    PatchImpossible,
    /// No invite with this secret is known.
    InviteUnknown,
    /// The invite has expired.
    InviteExpired,
    /// The invite was already redeemed.
    InviteUsed,
    /// An admin withdrew the invite.
    InviteRevoked,
    /// The refuser cannot admit this key (it is not an admin, the key was revoked, or it
    /// is already a member).
    JoinRefused,
    /// The refuser failed locally (its store, content store or a task).
    Internal,
}

impl RefusalCode {
    /// Every code, in wire order.
    pub const ALL: [RefusalCode; 16] = [
        RefusalCode::Unknown,
        RefusalCode::Malformed,
        RefusalCode::TooLarge,
        RefusalCode::TimedOut,
        RefusalCode::UnknownStore,
        RefusalCode::NotMember,
        RefusalCode::Paused,
        RefusalCode::NoSecret,
        RefusalCode::NotHeld,
        RefusalCode::PatchImpossible,
        RefusalCode::InviteUnknown,
        RefusalCode::InviteExpired,
        RefusalCode::InviteUsed,
        RefusalCode::InviteRevoked,
        RefusalCode::JoinRefused,
        RefusalCode::Internal,
    ];

    /// The code of a wire value; a value this node does not know is `Unknown`.
    pub fn from_wire(code: i32) -> RefusalCode {
        pb::RefusalCode::try_from(code).map_or(RefusalCode::Unknown, RefusalCode::from)
    }

    /// The wire value of this code.
    pub fn to_wire(self) -> i32 {
        pb::RefusalCode::from(self).into()
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RefusalCode::Unknown => "refused",
            RefusalCode::Malformed => "malformed request",
            RefusalCode::TooLarge => "over a limit",
            RefusalCode::TimedOut => "timed out",
            RefusalCode::UnknownStore => "unknown store",
            RefusalCode::NotMember => "not a member",
            RefusalCode::Paused => "store paused",
            RefusalCode::NoSecret => "no gossip secret",
            RefusalCode::NotHeld => "chunk not held",
            RefusalCode::PatchImpossible => "no patch",
            RefusalCode::InviteUnknown => "unknown invite",
            RefusalCode::InviteExpired => "invite expired",
            RefusalCode::InviteUsed => "invite used",
            RefusalCode::InviteRevoked => "invite revoked",
            RefusalCode::JoinRefused => "join refused",
            RefusalCode::Internal => "internal failure",
        })
    }
}

impl From<RefusalCode> for pb::RefusalCode {
    fn from(code: RefusalCode) -> Self {
        match code {
            RefusalCode::Unknown => pb::RefusalCode::Unknown,
            RefusalCode::Malformed => pb::RefusalCode::Malformed,
            RefusalCode::TooLarge => pb::RefusalCode::TooLarge,
            RefusalCode::TimedOut => pb::RefusalCode::TimedOut,
            RefusalCode::UnknownStore => pb::RefusalCode::UnknownStore,
            RefusalCode::NotMember => pb::RefusalCode::NotMember,
            RefusalCode::Paused => pb::RefusalCode::Paused,
            RefusalCode::NoSecret => pb::RefusalCode::NoSecret,
            RefusalCode::NotHeld => pb::RefusalCode::NotHeld,
            RefusalCode::PatchImpossible => pb::RefusalCode::PatchImpossible,
            RefusalCode::InviteUnknown => pb::RefusalCode::InviteUnknown,
            RefusalCode::InviteExpired => pb::RefusalCode::InviteExpired,
            RefusalCode::InviteUsed => pb::RefusalCode::InviteUsed,
            RefusalCode::InviteRevoked => pb::RefusalCode::InviteRevoked,
            RefusalCode::JoinRefused => pb::RefusalCode::JoinRefused,
            RefusalCode::Internal => pb::RefusalCode::Internal,
        }
    }
}

impl From<pb::RefusalCode> for RefusalCode {
    fn from(code: pb::RefusalCode) -> Self {
        match code {
            pb::RefusalCode::Unknown => RefusalCode::Unknown,
            pb::RefusalCode::Malformed => RefusalCode::Malformed,
            pb::RefusalCode::TooLarge => RefusalCode::TooLarge,
            pb::RefusalCode::TimedOut => RefusalCode::TimedOut,
            pb::RefusalCode::UnknownStore => RefusalCode::UnknownStore,
            pb::RefusalCode::NotMember => RefusalCode::NotMember,
            pb::RefusalCode::Paused => RefusalCode::Paused,
            pb::RefusalCode::NoSecret => RefusalCode::NoSecret,
            pb::RefusalCode::NotHeld => RefusalCode::NotHeld,
            pb::RefusalCode::PatchImpossible => RefusalCode::PatchImpossible,
            pb::RefusalCode::InviteUnknown => RefusalCode::InviteUnknown,
            pb::RefusalCode::InviteExpired => RefusalCode::InviteExpired,
            pb::RefusalCode::InviteUsed => RefusalCode::InviteUsed,
            pb::RefusalCode::InviteRevoked => RefusalCode::InviteRevoked,
            pb::RefusalCode::JoinRefused => RefusalCode::JoinRefused,
            pb::RefusalCode::Internal => RefusalCode::Internal,
        }
    }
}

impl Refusal {
    /// A refusal with `code` and the line `text`.
    pub fn new(code: RefusalCode, text: impl Into<String>) -> Refusal {
        Refusal {
            code,
            text: text.into(),
        }
    }
}

impl From<Refusal> for pb::Refusal {
    fn from(r: Refusal) -> Self {
        pb::Refusal {
            code: r.code.to_wire(),
            text: r.text,
        }
    }
}

impl From<pb::Refusal> for Refusal {
    /// Reads a received refusal: an unknown code is `Unknown`, the text is kept to one
    /// line of at most [`MAX_REFUSAL_TEXT`] characters.
    fn from(r: pb::Refusal) -> Self {
        let text = r
            .text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_REFUSAL_TEXT)
            .collect();
        Refusal {
            code: RefusalCode::from_wire(r.code),
            text,
        }
    }
}

impl From<Refusal> for pb::Response {
    fn from(r: Refusal) -> Self {
        pb::Response {
            kind: Some(response::Kind::Refusal(r.into())),
        }
    }
}

impl From<&FrameError> for Refusal {
    fn from(e: &FrameError) -> Self {
        let code = match e {
            FrameError::TooLarge { .. } => RefusalCode::TooLarge,
            FrameError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                RefusalCode::TimedOut
            }
            FrameError::Io(_) | FrameError::Malformed(_) => RefusalCode::Malformed,
        };
        Refusal::new(code, e.to_string())
    }
}

impl From<ReconcileError> for Refusal {
    fn from(e: ReconcileError) -> Self {
        let code = match &e {
            ReconcileError::FrameTooLarge { .. } | ReconcileError::TooManyRounds { .. } => {
                RefusalCode::TooLarge
            }
            ReconcileError::Malformed(_) | ReconcileError::Misuse(_) => RefusalCode::Malformed,
            ReconcileError::LimitTooSmall(_) | ReconcileError::Storage(_) => RefusalCode::Internal,
        };
        Refusal::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn every_code_survives_the_wire() {
        for code in RefusalCode::ALL {
            let sent: pb::Response = Refusal::new(code, "why").into();
            let got = pb::Response::decode(&sent.encode_to_vec()[..]).expect("it was encoded");
            let Some(response::Kind::Refusal(r)) = got.kind else {
                panic!("{code:?} did not decode as a refusal: {got:?}");
            };
            assert_eq!(Refusal::from(r), Refusal::new(code, "why"));
        }
    }

    #[test]
    fn all_lists_every_code_in_wire_order() {
        for (i, code) in RefusalCode::ALL.into_iter().enumerate() {
            assert_eq!(code.to_wire(), i32::try_from(i).expect("16 codes"));
        }
        // A wire value without a place in ALL would decode to a code missing from it.
        for wire in -2..64 {
            let code = RefusalCode::from_wire(wire);
            assert!(RefusalCode::ALL.contains(&code), "{wire} -> {code:?}");
        }
    }

    #[test]
    fn a_code_from_a_newer_peer_reads_as_unknown() {
        let wire = pb::Refusal {
            code: 4242,
            text: "a reason from the future".into(),
        };
        let got = Refusal::from(wire);
        assert_eq!(got.code, RefusalCode::Unknown);
        assert_eq!(got.text, "a reason from the future");
        assert_eq!(RefusalCode::from_wire(-1), RefusalCode::Unknown);
    }

    #[test]
    fn a_received_text_is_cut_to_one_bounded_line() {
        let wire = pb::Refusal {
            code: RefusalCode::Internal.to_wire(),
            text: format!("two\nlines{}", "x".repeat(10 * MAX_REFUSAL_TEXT)),
        };
        let got = Refusal::from(wire);
        assert!(!got.text.contains('\n'), "{}", got.text);
        assert_eq!(got.text.chars().count(), MAX_REFUSAL_TEXT);
    }

    #[test]
    fn an_old_string_error_is_not_read_as_a_refusal() {
        // Field 1 was `string error`; a peer that still sends it is not misread.
        let old = [0x0a, 0x02, b'n', b'o'];
        let got = pb::Response::decode(&old[..]).expect("unknown fields are skipped");
        assert_eq!(got.kind, None);
    }

    #[test]
    fn a_refusal_displays_its_code_then_its_text() {
        let r = Refusal::new(RefusalCode::NotMember, "of store team");
        assert_eq!(r.to_string(), "not a member: of store team");
    }
}
