//! A refusal on the wire: a typed code plus one readable line. (Minimal stand-in until
//! the errors branch lands; its version replaces this file.)

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The opener is not a member of the store, or the store is paused here.
    NotMember,
    /// The request could not be read or broke the protocol.
    BadRequest,
    /// Anything else.
    Other,
}

/// A refused request: its code and a readable line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The typed cause.
    pub code: RefusalCode,
    /// One readable line.
    pub text: String,
}
