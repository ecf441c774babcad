//! Filesystem ops: validated domain types and their protobuf form.

use bytes::Bytes;

use crate::cas::{Content, INLINE_MAX};
use crate::hlc::Hlc;
use crate::identity::PublicKey;
use crate::ids::{FileId, Hash, InviteId, OpId};
use crate::proto::fs as pb;

/// Longest file name in bytes (as Linux `NAME_MAX`).
pub(crate) const MAX_NAME_BYTES: usize = 255;
/// Longest symlink target in bytes (as Linux `PATH_MAX`).
pub(crate) const MAX_SYMLINK_BYTES: usize = 4096;
/// Most op ids one op may supersede or list as seen.
pub const MAX_SUPERSEDES: usize = 4096;
/// Most xattrs one `SetMeta` may set or remove.
pub(crate) const MAX_XATTRS_PER_OP: usize = 64;
/// Longest xattr name in bytes (as Linux `XATTR_NAME_MAX`).
pub(crate) const MAX_XATTR_NAME: usize = 255;
/// Largest xattr value in bytes (as Linux `XATTR_SIZE_MAX`).
pub(crate) const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Longest display name or store name in bytes.
pub const MAX_LABEL_BYTES: usize = 255;
/// Longest retention a store may set, in days: a century is "for ever" for a shared
/// drive, and the bound keeps `days * ms per day` far from overflowing.
pub const MAX_RETENTION_DAYS: u32 = 36_500;
/// Milliseconds in a day of retention or horizon.
pub const MS_PER_DAY: u64 = 24 * 60 * 60 * 1000;
/// Retention of a store that never set one, in days.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// Shortest horizon a store may set, in days: attestations travel at every sync, so a
/// member offline for less than a day is not silent, only asleep.
pub const MIN_HORIZON_DAYS: u32 = 1;
/// Longest horizon a store may set, in days: past ten years a silent member is gone,
/// and the bound keeps `days * ms per day` far from overflowing.
pub const MAX_HORIZON_DAYS: u32 = 3_650;
/// Horizon of a store that never set one, in days: a laptop left in a drawer over a
/// holiday still holds the stability frontier back.
pub const DEFAULT_HORIZON_DAYS: u32 = 90;

/// A store setting an admin sets, in days: an LWW register of the projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// How long superseded content versions stay retained ([`OpBody::SetRetention`]).
    Retention,
    /// How long a silent member holds the stability frontier back ([`OpBody::SetHorizon`]).
    Horizon,
}

impl Setting {
    /// Its name, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Setting::Retention => "retention",
            Setting::Horizon => "horizon",
        }
    }

    /// The value of a store that never set it.
    pub fn default_days(self) -> u32 {
        match self {
            Setting::Retention => DEFAULT_RETENTION_DAYS,
            Setting::Horizon => DEFAULT_HORIZON_DAYS,
        }
    }

    /// The values it may take.
    pub fn range(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Setting::Retention => 0..=MAX_RETENTION_DAYS,
            Setting::Horizon => MIN_HORIZON_DAYS..=MAX_HORIZON_DAYS,
        }
    }

    /// The op that sets it to `days`.
    pub fn op(self, days: u32) -> OpBody {
        match self {
            Setting::Retention => OpBody::SetRetention { days },
            Setting::Horizon => OpBody::SetHorizon { days },
        }
    }
}

/// An invalid op.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpError {
    /// The op has no body or an unknown kind.
    #[error("op has no body")]
    Empty,
    /// An id field does not have its fixed length.
    #[error("{0} has the wrong length")]
    BadId(&'static str),
    /// A file name is empty, `.`/`..`, too long, or contains `/` or NUL.
    #[error("invalid name {0:?}")]
    BadName(String),
    /// A list or payload exceeds its limit.
    #[error("{what} exceeds its limit of {limit}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its limit.
        limit: usize,
    },
    /// A store setting is outside the values it may take.
    #[error("{what} must be {min} to {max} days")]
    OutOfRange {
        /// Which setting.
        what: &'static str,
        /// Its least value.
        min: u32,
        /// Its greatest value.
        max: u32,
    },
    /// An enum field holds an unknown value.
    #[error("unknown {0}")]
    UnknownEnum(&'static str),
    /// A `Leave` names no chain seq (an intention's seq starts at 1).
    #[error("a leave must name its intention's chain seq (at least 1)")]
    BadLeave,
    /// A display name holds a control character (a newline, NUL, ...) or `/`.
    #[error("invalid display name {0:?}: no control characters or '/'")]
    BadLabel(String),
}

/// The kind of a filesystem node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket node.
    Socket,
    /// Character device node.
    CharDev,
    /// Block device node.
    BlockDev,
}

/// Creates a node named `name` in `parent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Create {
    /// Parent directory.
    pub parent: FileId,
    /// Name in the parent.
    pub name: String,
    /// Node kind.
    pub kind: Kind,
    /// Permission bits (07777).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for device nodes.
    pub rdev: u64,
    /// Modification time.
    pub mtime_ns: i64,
    /// Symlink target or initial file content.
    pub content: Content,
}

/// Sets metadata fields; each is a last-writer-wins register.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetMeta {
    /// Target file.
    pub file: FileId,
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New modification time.
    pub mtime_ns: Option<i64>,
    /// New access time.
    pub atime_ns: Option<i64>,
    /// Extended attributes to set.
    pub xattr_set: Vec<(Bytes, Bytes)>,
    /// Extended attributes to remove.
    pub xattr_remove: Vec<Bytes>,
}

/// A member's role in a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// May invite and revoke.
    Admin,
    /// May write.
    Writer,
    /// May only read.
    Reader,
}

impl Role {
    /// True if this role has every right of `other` (Admin > Writer > Reader).
    pub fn covers(self, other: Role) -> bool {
        self.rank() >= other.rank()
    }

    fn rank(self) -> u8 {
        match self {
            Role::Admin => 2,
            Role::Writer => 1,
            Role::Reader => 0,
        }
    }
}

/// What an op does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpBody {
    /// Create a node.
    Create(Create),
    /// Add a hard link to `file`.
    Link {
        /// The (non-directory) file.
        file: FileId,
        /// Directory of the new name.
        parent: FileId,
        /// The new name.
        name: String,
    },
    /// Move or rename an entry.
    Move {
        /// The entry (id of the op that created the name).
        entry: OpId,
        /// New parent directory.
        parent: FileId,
        /// New name.
        name: String,
    },
    /// Remove an entry.
    Remove {
        /// The entry.
        entry: OpId,
        /// Content heads the remover had seen.
        seen_content: Vec<OpId>,
    },
    /// Replace content.
    Write {
        /// The file.
        file: FileId,
        /// Content heads replaced.
        supersedes: Vec<OpId>,
        /// New content.
        content: Content,
        /// New modification time.
        mtime_ns: i64,
    },
    /// Append to a content version.
    Append {
        /// The file.
        file: FileId,
        /// The write this append extends.
        group: OpId,
        /// Heads of that group the appender had seen.
        supersedes: Vec<OpId>,
        /// Appended bytes.
        data: Content,
        /// New modification time.
        mtime_ns: i64,
    },
    /// Drop content heads (a deleted conflict copy).
    Dismiss {
        /// The file.
        file: FileId,
        /// Heads dropped.
        supersedes: Vec<OpId>,
    },
    /// Set metadata.
    SetMeta(SetMeta),
    /// Record a snapshot: the tree as of its intention's causal past (alone in it).
    Snapshot {
        /// Its name under `.snapshots`.
        label: String,
    },
    /// Remove a snapshot.
    DropSnapshot {
        /// Its name under `.snapshots`.
        label: String,
    },
    /// Name the store.
    SetStoreName(String),
    /// Add or update a member.
    SetMember {
        /// Member key.
        key: PublicKey,
        /// Role.
        role: Role,
        /// Display name used in conflict names.
        display_name: String,
        /// The invite this membership redeems, if any.
        invite: Option<InviteId>,
    },
    /// Revoke a member for good.
    RevokeMember {
        /// Member key.
        key: PublicKey,
        /// The member's author-chain length the revoker had applied; later intentions are void.
        upto: u64,
    },
    /// Record an invite by the hash of its secret.
    Invite {
        /// blake3 of the one-time secret.
        id: InviteId,
        /// Role granted on redemption.
        role: Role,
        /// Unix ms after which the invite is refused.
        expires_ms: u64,
    },
    /// Withdraw an invite.
    RevokeInvite {
        /// The invite.
        id: InviteId,
    },
    /// Set how many days superseded content versions stay retained (0: none).
    SetRetention {
        /// Days, at most [`MAX_RETENTION_DAYS`].
        days: u32,
    },
    /// Set how many days a silent member holds the stability frontier back.
    SetHorizon {
        /// Days, [`MIN_HORIZON_DAYS`] to [`MAX_HORIZON_DAYS`].
        days: u32,
    },
    /// The author leaves the store: a revocation of itself cut at `upto`.
    Leave {
        /// The author-chain seq of the intention holding it (its only op).
        upto: u64,
    },
    /// Delete the store for every member.
    DeleteStore,
}

impl OpBody {
    /// True for ops that only an Admin may author (membership, invites, store settings).
    pub fn is_system(&self) -> bool {
        matches!(
            self,
            OpBody::SetStoreName(_)
                | OpBody::SetMember { .. }
                | OpBody::RevokeMember { .. }
                | OpBody::Invite { .. }
                | OpBody::RevokeInvite { .. }
                | OpBody::SetRetention { .. }
                | OpBody::SetHorizon { .. }
                | OpBody::DeleteStore
        )
    }

    /// The store setting this op sets, and its value.
    pub fn setting(&self) -> Option<(Setting, u32)> {
        match self {
            OpBody::SetRetention { days } => Some((Setting::Retention, *days)),
            OpBody::SetHorizon { days } => Some((Setting::Horizon, *days)),
            _ => None,
        }
    }
}

/// One op: its clock and body. Its id is (clock, intention author).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// This op's clock.
    pub hlc: Hlc,
    /// What it does.
    pub body: OpBody,
}

impl Op {
    /// The id of this op when authored by `author`.
    pub fn id(&self, author: PublicKey) -> OpId {
        OpId {
            hlc: self.hlc,
            author,
        }
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> pb::Op {
        use pb::op::Body;
        let body = match &self.body {
            OpBody::Create(c) => Body::Create(pb::Create {
                parent: id_bytes(&c.parent),
                name: c.name.clone(),
                kind: kind_to_proto(c.kind) as i32,
                mode: c.mode,
                uid: c.uid,
                gid: c.gid,
                rdev: c.rdev,
                mtime_ns: c.mtime_ns,
                content: Some(content_to_proto(&c.content)),
            }),
            OpBody::Link { file, parent, name } => Body::Link(pb::Link {
                file: id_bytes(file),
                parent: id_bytes(parent),
                name: name.clone(),
            }),
            OpBody::Move {
                entry,
                parent,
                name,
            } => Body::Move(pb::Move {
                entry: id_bytes(entry),
                parent: id_bytes(parent),
                name: name.clone(),
            }),
            OpBody::Remove {
                entry,
                seen_content,
            } => Body::Remove(pb::Remove {
                entry: id_bytes(entry),
                seen_content: ids_bytes(seen_content),
            }),
            OpBody::Write {
                file,
                supersedes,
                content,
                mtime_ns,
            } => Body::Write(pb::Write {
                file: id_bytes(file),
                supersedes: ids_bytes(supersedes),
                content: Some(content_to_proto(content)),
                mtime_ns: *mtime_ns,
            }),
            OpBody::Append {
                file,
                group,
                supersedes,
                data,
                mtime_ns,
            } => Body::Append(pb::Append {
                file: id_bytes(file),
                group: id_bytes(group),
                supersedes: ids_bytes(supersedes),
                data: Some(content_to_proto(data)),
                mtime_ns: *mtime_ns,
            }),
            OpBody::Dismiss { file, supersedes } => Body::Dismiss(pb::Dismiss {
                file: id_bytes(file),
                supersedes: ids_bytes(supersedes),
            }),
            OpBody::SetMeta(m) => Body::SetMeta(pb::SetMeta {
                file: id_bytes(&m.file),
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
                mtime_ns: m.mtime_ns,
                atime_ns: m.atime_ns,
                xattr_set: m
                    .xattr_set
                    .iter()
                    .map(|(n, v)| pb::Xattr {
                        name: n.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                xattr_remove: m.xattr_remove.clone(),
            }),
            OpBody::SetStoreName(name) => {
                Body::SetStoreName(pb::SetStoreName { name: name.clone() })
            }
            OpBody::Snapshot { label } => Body::Snapshot(pb::Snapshot {
                label: label.clone(),
            }),
            OpBody::DropSnapshot { label } => Body::DropSnapshot(pb::DropSnapshot {
                label: label.clone(),
            }),
            OpBody::SetMember {
                key,
                role,
                display_name,
                invite,
            } => Body::SetMember(pb::SetMember {
                key: Bytes::copy_from_slice(&key.0),
                role: role_to_proto(*role) as i32,
                display_name: display_name.clone(),
                invite: invite.map_or_else(Bytes::new, |i| Bytes::copy_from_slice(&i)),
            }),
            OpBody::RevokeMember { key, upto } => Body::RevokeMember(pb::RevokeMember {
                key: Bytes::copy_from_slice(&key.0),
                upto: *upto,
            }),
            OpBody::Invite {
                id,
                role,
                expires_ms,
            } => Body::Invite(pb::Invite {
                id: Bytes::copy_from_slice(id),
                role: role_to_proto(*role) as i32,
                expires_ms: *expires_ms,
            }),
            OpBody::RevokeInvite { id } => Body::RevokeInvite(pb::RevokeInvite {
                id: Bytes::copy_from_slice(id),
            }),
            OpBody::SetRetention { days } => Body::SetRetention(pb::SetRetention { days: *days }),
            OpBody::SetHorizon { days } => Body::SetHorizon(pb::SetHorizon { days: *days }),
            OpBody::Leave { upto } => Body::Leave(pb::Leave { upto: *upto }),
            OpBody::DeleteStore => Body::DeleteStore(pb::DeleteStore {}),
        };
        pb::Op {
            hlc_wall_ms: self.hlc.wall_ms,
            hlc_counter: self.hlc.counter,
            body: Some(body),
        }
    }

    /// Checks every limit and rule of a valid op: the one check that received ops pass
    /// after parsing ([`Op::from_proto`]) and local ops pass before they are applied and
    /// signed, so a node never signs what it (or any replica) would refuse.
    pub fn validate(&self) -> Result<(), OpError> {
        match &self.body {
            OpBody::Create(c) => {
                validate_name(&c.name)?;
                validate_content(&c.content)?;
                if c.kind == Kind::Symlink && c.content.len() > MAX_SYMLINK_BYTES as u64 {
                    return Err(OpError::TooLarge {
                        what: "symlink target",
                        limit: MAX_SYMLINK_BYTES,
                    });
                }
                Ok(())
            }
            OpBody::Link { name, .. } | OpBody::Move { name, .. } => validate_name(name),
            OpBody::SetStoreName(name)
            | OpBody::Snapshot { label: name }
            | OpBody::DropSnapshot { label: name } => validate_name(name),
            OpBody::Remove { seen_content, .. } => validate_ids(seen_content, "seen_content"),
            OpBody::Write {
                supersedes,
                content,
                ..
            } => {
                validate_ids(supersedes, "supersedes")?;
                validate_content(content)
            }
            OpBody::Append {
                supersedes, data, ..
            } => {
                validate_ids(supersedes, "supersedes")?;
                validate_content(data)
            }
            OpBody::Dismiss { supersedes, .. } => validate_ids(supersedes, "supersedes"),
            OpBody::SetMeta(m) => validate_meta(m),
            OpBody::SetMember { display_name, .. } => validate_label(display_name),
            OpBody::SetRetention { .. } | OpBody::SetHorizon { .. } => validate_setting(&self.body),
            OpBody::Leave { upto: 0 } => Err(OpError::BadLeave),
            OpBody::RevokeMember { .. }
            | OpBody::Invite { .. }
            | OpBody::RevokeInvite { .. }
            | OpBody::Leave { .. }
            | OpBody::DeleteStore => Ok(()),
        }
    }

    /// Parses the protobuf form and [validates](Op::validate) it.
    pub fn from_proto(op: pb::Op) -> Result<Self, OpError> {
        let op = Self::parse(op)?;
        op.validate()?;
        Ok(op)
    }

    /// Converts the protobuf form: ids, enums and list lengths (before allocating them);
    /// every other rule is [`Op::validate`]'s.
    fn parse(op: pb::Op) -> Result<Self, OpError> {
        use pb::op::Body;
        let body = match op.body.ok_or(OpError::Empty)? {
            Body::Create(c) => OpBody::Create(Create {
                parent: id(&c.parent, "parent")?,
                name: c.name,
                kind: kind_from_proto(c.kind)?,
                mode: c.mode & 0o7777,
                uid: c.uid,
                gid: c.gid,
                rdev: c.rdev,
                mtime_ns: c.mtime_ns,
                content: content_from_proto(c.content)?,
            }),
            Body::Link(l) => OpBody::Link {
                file: id(&l.file, "file")?,
                parent: id(&l.parent, "parent")?,
                name: l.name,
            },
            Body::Move(m) => OpBody::Move {
                entry: id(&m.entry, "entry")?,
                parent: id(&m.parent, "parent")?,
                name: m.name,
            },
            Body::Remove(r) => OpBody::Remove {
                entry: id(&r.entry, "entry")?,
                seen_content: ids(&r.seen_content, "seen_content")?,
            },
            Body::Write(w) => OpBody::Write {
                file: id(&w.file, "file")?,
                supersedes: ids(&w.supersedes, "supersedes")?,
                content: content_from_proto(w.content)?,
                mtime_ns: w.mtime_ns,
            },
            Body::Append(a) => OpBody::Append {
                file: id(&a.file, "file")?,
                group: id(&a.group, "group")?,
                supersedes: ids(&a.supersedes, "supersedes")?,
                data: content_from_proto(a.data)?,
                mtime_ns: a.mtime_ns,
            },
            Body::Dismiss(d) => OpBody::Dismiss {
                file: id(&d.file, "file")?,
                supersedes: ids(&d.supersedes, "supersedes")?,
            },
            Body::SetMeta(m) => {
                if m.xattr_set.len() > MAX_XATTRS_PER_OP || m.xattr_remove.len() > MAX_XATTRS_PER_OP
                {
                    return Err(OpError::TooLarge {
                        what: "xattrs per op",
                        limit: MAX_XATTRS_PER_OP,
                    });
                }
                OpBody::SetMeta(SetMeta {
                    file: id(&m.file, "file")?,
                    mode: m.mode.map(|x| x & 0o7777),
                    uid: m.uid,
                    gid: m.gid,
                    mtime_ns: m.mtime_ns,
                    atime_ns: m.atime_ns,
                    xattr_set: m.xattr_set.into_iter().map(|x| (x.name, x.value)).collect(),
                    xattr_remove: m.xattr_remove,
                })
            }
            Body::SetStoreName(s) => OpBody::SetStoreName(s.name),
            Body::Snapshot(s) => OpBody::Snapshot { label: s.label },
            Body::DropSnapshot(s) => OpBody::DropSnapshot { label: s.label },
            Body::SetMember(m) => OpBody::SetMember {
                key: PublicKey(fixed32(&m.key, "key")?),
                role: role_from_proto(m.role)?,
                display_name: m.display_name,
                invite: if m.invite.is_empty() {
                    None
                } else {
                    Some(fixed32(&m.invite, "invite")?)
                },
            },
            Body::RevokeMember(r) => OpBody::RevokeMember {
                key: PublicKey(fixed32(&r.key, "key")?),
                upto: r.upto,
            },
            Body::Invite(i) => OpBody::Invite {
                id: fixed32(&i.id, "invite")?,
                role: role_from_proto(i.role)?,
                expires_ms: i.expires_ms,
            },
            Body::RevokeInvite(r) => OpBody::RevokeInvite {
                id: fixed32(&r.id, "invite")?,
            },
            Body::SetRetention(r) => OpBody::SetRetention { days: r.days },
            Body::SetHorizon(h) => OpBody::SetHorizon { days: h.days },
            Body::Leave(l) => OpBody::Leave { upto: l.upto },
            Body::DeleteStore(_) => OpBody::DeleteStore,
        };
        Ok(Op {
            hlc: Hlc {
                wall_ms: op.hlc_wall_ms,
                counter: op.hlc_counter,
            },
            body,
        })
    }
}

/// Checks a file name: 1..=255 bytes, no `/` or NUL, not `.` or `..`.
pub fn validate_name(n: &str) -> Result<(), OpError> {
    if n.is_empty()
        || n == "."
        || n == ".."
        || n.len() > MAX_NAME_BYTES
        || n.bytes().any(|b| b == b'/' || b == 0)
    {
        return Err(OpError::BadName(n.chars().take(64).collect()));
    }
    Ok(())
}

/// Checks a display name: at most [`MAX_LABEL_BYTES`], no control character (newline,
/// NUL, ...) and no `/`, since it ends up in conflict-copy file names. Empty is allowed
/// (the key is shown instead).
pub(crate) fn validate_label(n: &str) -> Result<(), OpError> {
    if n.len() > MAX_LABEL_BYTES {
        return Err(OpError::TooLarge {
            what: "display name",
            limit: MAX_LABEL_BYTES,
        });
    }
    if n.chars().any(|c| c.is_control() || c == '/') {
        return Err(OpError::BadLabel(n.chars().take(64).collect()));
    }
    Ok(())
}

/// A valid display name made from `n`: control characters and `/` become spaces,
/// surrounding whitespace is trimmed and the rest is cut to [`MAX_LABEL_BYTES`] at a
/// character boundary.
pub(crate) fn clean_label(n: &str) -> String {
    let replaced: String = n
        .chars()
        .map(|c| if c.is_control() || c == '/' { ' ' } else { c })
        .collect();
    let mut out = replaced.trim().to_string();
    let mut end = out.len().min(MAX_LABEL_BYTES);
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out.trim_end().to_string()
}

fn validate_content(c: &Content) -> Result<(), OpError> {
    match c {
        Content::Inline(b) if b.len() > INLINE_MAX => Err(OpError::TooLarge {
            what: "inline content",
            limit: INLINE_MAX,
        }),
        _ => Ok(()),
    }
}

fn validate_ids(ids: &[OpId], what: &'static str) -> Result<(), OpError> {
    if ids.len() > MAX_SUPERSEDES {
        return Err(OpError::TooLarge {
            what,
            limit: MAX_SUPERSEDES,
        });
    }
    Ok(())
}

/// Checks a store setting's value against the values it may take.
fn validate_setting(body: &OpBody) -> Result<(), OpError> {
    match body.setting() {
        Some((setting, days)) if !setting.range().contains(&days) => Err(OpError::OutOfRange {
            what: setting.name(),
            min: *setting.range().start(),
            max: *setting.range().end(),
        }),
        _ => Ok(()),
    }
}

fn validate_meta(m: &SetMeta) -> Result<(), OpError> {
    if m.xattr_set.len() > MAX_XATTRS_PER_OP || m.xattr_remove.len() > MAX_XATTRS_PER_OP {
        return Err(OpError::TooLarge {
            what: "xattrs per op",
            limit: MAX_XATTRS_PER_OP,
        });
    }
    for (n, v) in &m.xattr_set {
        xattr_name(n)?;
        if v.len() > MAX_XATTR_VALUE {
            return Err(OpError::TooLarge {
                what: "xattr value",
                limit: MAX_XATTR_VALUE,
            });
        }
    }
    for n in &m.xattr_remove {
        xattr_name(n)?;
    }
    Ok(())
}

fn fixed32(b: &[u8], what: &'static str) -> Result<[u8; 32], OpError> {
    b.try_into().map_err(|_| OpError::BadId(what))
}

fn xattr_name(n: &[u8]) -> Result<(), OpError> {
    if n.is_empty() || n.len() > MAX_XATTR_NAME || n.contains(&0) {
        return Err(OpError::BadName(String::from_utf8_lossy(n).into_owned()));
    }
    Ok(())
}

fn id_bytes(id: &OpId) -> Bytes {
    Bytes::copy_from_slice(&id.to_bytes())
}

fn ids_bytes(ids: &[OpId]) -> Vec<Bytes> {
    ids.iter().map(id_bytes).collect()
}

fn id(b: &[u8], what: &'static str) -> Result<OpId, OpError> {
    OpId::from_bytes(b).ok_or(OpError::BadId(what))
}

fn ids(list: &[Bytes], what: &'static str) -> Result<Vec<OpId>, OpError> {
    if list.len() > MAX_SUPERSEDES {
        return Err(OpError::TooLarge {
            what,
            limit: MAX_SUPERSEDES,
        });
    }
    list.iter().map(|b| id(b, what)).collect()
}

fn content_to_proto(c: &Content) -> pb::Content {
    pb::Content {
        value: Some(match c {
            Content::Inline(b) => pb::content::Value::Inline(b.clone()),
            Content::Manifest { hash, size } => pb::content::Value::Manifest(pb::ManifestRef {
                hash: Bytes::copy_from_slice(&hash.0),
                size: *size,
            }),
        }),
    }
}

fn content_from_proto(c: Option<pb::Content>) -> Result<Content, OpError> {
    match c.and_then(|c| c.value) {
        None => Ok(Content::empty()),
        // A copy: the decoded bytes are a slice of the whole message, which the
        // content would otherwise keep allocated for as long as it is held.
        Some(pb::content::Value::Inline(b)) => Ok(Content::Inline(Bytes::copy_from_slice(&b))),
        Some(pb::content::Value::Manifest(m)) => Ok(Content::Manifest {
            hash: Hash::from_slice(&m.hash).ok_or(OpError::BadId("manifest hash"))?,
            size: m.size,
        }),
    }
}

pub(crate) fn kind_to_proto(k: Kind) -> pb::Kind {
    match k {
        Kind::File => pb::Kind::File,
        Kind::Dir => pb::Kind::Dir,
        Kind::Symlink => pb::Kind::Symlink,
        Kind::Fifo => pb::Kind::Fifo,
        Kind::Socket => pb::Kind::Socket,
        Kind::CharDev => pb::Kind::CharDev,
        Kind::BlockDev => pb::Kind::BlockDev,
    }
}

pub(crate) fn kind_from_proto(k: i32) -> Result<Kind, OpError> {
    Ok(
        match pb::Kind::try_from(k).map_err(|_| OpError::UnknownEnum("kind"))? {
            pb::Kind::File => Kind::File,
            pb::Kind::Dir => Kind::Dir,
            pb::Kind::Symlink => Kind::Symlink,
            pb::Kind::Fifo => Kind::Fifo,
            pb::Kind::Socket => Kind::Socket,
            pb::Kind::CharDev => Kind::CharDev,
            pb::Kind::BlockDev => Kind::BlockDev,
            pb::Kind::Unspecified => return Err(OpError::UnknownEnum("kind")),
        },
    )
}

pub(crate) fn role_to_proto(r: Role) -> pb::Role {
    match r {
        Role::Admin => pb::Role::Admin,
        Role::Writer => pb::Role::Writer,
        Role::Reader => pb::Role::Reader,
    }
}

pub(crate) fn role_from_proto(r: i32) -> Result<Role, OpError> {
    Ok(
        match pb::Role::try_from(r).map_err(|_| OpError::UnknownEnum("role"))? {
            pb::Role::Admin => Role::Admin,
            pb::Role::Writer => Role::Writer,
            pb::Role::Reader => Role::Reader,
            pb::Role::Unspecified => return Err(OpError::UnknownEnum("role")),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_id_byte_order_is_hlc_then_author_order() {
        let a = OpId {
            hlc: Hlc {
                wall_ms: 1,
                counter: 9,
            },
            author: PublicKey([9; 32]),
        };
        let b = OpId {
            hlc: Hlc {
                wall_ms: 2,
                counter: 0,
            },
            author: PublicKey([0; 32]),
        };
        assert!(a < b);
        assert!(a.to_bytes() < b.to_bytes());
        assert_eq!(OpId::from_bytes(&a.to_bytes()), Some(a));
    }

    #[test]
    fn invalid_names_are_refused() {
        for n in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            assert!(validate_name(n).is_err(), "{n:?}");
        }
        assert!(validate_name(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn display_names_refuse_control_characters_slashes_and_more_than_255_bytes() {
        for bad in [
            "a\nb",
            "nul\0",
            "tab\t",
            "del\u{7f}",
            "a/b",
            &"x".repeat(256),
        ] {
            assert!(validate_label(bad).is_err(), "{bad:?}");
        }
        for good in ["", "laptop", "Zoë (work)", &"é".repeat(127)] {
            validate_label(good).unwrap();
        }
        assert_eq!(clean_label("  a\nb/c\0 "), "a b c");
        let cleaned = clean_label(&"é".repeat(200));
        assert_eq!(cleaned.len(), 254);
        validate_label(&cleaned).unwrap();
    }

    #[test]
    fn a_received_op_is_refused_exactly_when_validate_refuses_it() {
        let member = |display_name: &str| Op {
            hlc: Hlc::ZERO,
            body: OpBody::SetMember {
                key: PublicKey([1; 32]),
                role: Role::Writer,
                display_name: display_name.into(),
                invite: None,
            },
        };
        let xattrs = |n: usize| Op {
            hlc: Hlc::ZERO,
            body: OpBody::SetMeta(SetMeta {
                file: OpId::ROOT,
                xattr_set: vec![(Bytes::from_static(b"user.a"), Bytes::new()); n],
                ..Default::default()
            }),
        };
        let ops = [
            member("ok"),
            member("new\nline"),
            member("a/b"),
            member(&"x".repeat(300)),
            xattrs(MAX_XATTRS_PER_OP),
            xattrs(MAX_XATTRS_PER_OP + 1),
            Op {
                hlc: Hlc::ZERO,
                body: OpBody::SetStoreName("a/b".into()),
            },
            Op {
                hlc: Hlc::ZERO,
                body: OpBody::SetRetention {
                    days: MAX_RETENTION_DAYS,
                },
            },
            Op {
                hlc: Hlc::ZERO,
                body: OpBody::SetRetention {
                    days: MAX_RETENTION_DAYS + 1,
                },
            },
            Op {
                hlc: Hlc::ZERO,
                body: OpBody::SetHorizon { days: 0 },
            },
            Op {
                hlc: Hlc::ZERO,
                body: OpBody::SetHorizon {
                    days: MAX_HORIZON_DAYS,
                },
            },
            Op {
                hlc: Hlc::ZERO,
                body: OpBody::SetHorizon {
                    days: MAX_HORIZON_DAYS + 1,
                },
            },
            Op {
                hlc: Hlc::ZERO,
                body: OpBody::Remove {
                    entry: OpId::ROOT,
                    seen_content: vec![OpId::ROOT; MAX_SUPERSEDES + 1],
                },
            },
        ];
        for op in ops {
            assert_eq!(
                Op::from_proto(op.to_proto()).map(|_| ()),
                op.validate(),
                "{op:?}"
            );
        }
    }

    #[test]
    fn every_op_kind_round_trips_through_protobuf() {
        let f = OpId {
            hlc: Hlc {
                wall_ms: 3,
                counter: 1,
            },
            author: PublicKey([3; 32]),
        };
        let bodies = vec![
            OpBody::SetRetention { days: 0 },
            OpBody::SetHorizon { days: 7 },
            OpBody::Link {
                file: f,
                parent: OpId::ROOT,
                name: "l".into(),
            },
            OpBody::Move {
                entry: f,
                parent: OpId::ROOT,
                name: "m".into(),
            },
            OpBody::Remove {
                entry: f,
                seen_content: vec![f],
            },
            OpBody::Write {
                file: f,
                supersedes: vec![f],
                content: Content::Manifest {
                    hash: Hash([1; 32]),
                    size: 99,
                },
                mtime_ns: -5,
            },
            OpBody::Append {
                file: f,
                group: f,
                supersedes: vec![],
                data: Content::Inline(Bytes::from_static(b"x")),
                mtime_ns: 7,
            },
            OpBody::Dismiss {
                file: f,
                supersedes: vec![f],
            },
            OpBody::SetMeta(SetMeta {
                file: f,
                mode: Some(0o600),
                xattr_set: vec![(Bytes::from_static(b"user.a"), Bytes::from_static(b"v"))],
                xattr_remove: vec![Bytes::from_static(b"user.b")],
                ..Default::default()
            }),
            OpBody::SetStoreName("docs".into()),
            OpBody::SetMember {
                key: PublicKey([4; 32]),
                role: Role::Reader,
                display_name: "laptop".into(),
                invite: None,
            },
            OpBody::SetMember {
                key: PublicKey([4; 32]),
                role: Role::Writer,
                display_name: String::new(),
                invite: Some([7; 32]),
            },
            OpBody::RevokeMember {
                key: PublicKey([4; 32]),
                upto: 17,
            },
            OpBody::Invite {
                id: [5; 32],
                role: Role::Admin,
                expires_ms: 1_700_000_000_000,
            },
            OpBody::RevokeInvite { id: [5; 32] },
        ];
        for body in bodies {
            let op = Op {
                hlc: Hlc {
                    wall_ms: 10,
                    counter: 2,
                },
                body,
            };
            assert_eq!(Op::from_proto(op.to_proto()).unwrap(), op);
        }
    }

    #[test]
    fn oversized_inline_content_is_refused() {
        let mut p = Op {
            hlc: Hlc::ZERO,
            body: OpBody::Write {
                file: OpId::ROOT,
                supersedes: vec![],
                content: Content::Inline(Bytes::from(vec![0; INLINE_MAX + 1])),
                mtime_ns: 0,
            },
        }
        .to_proto();
        assert!(matches!(
            Op::from_proto(p.clone()),
            Err(OpError::TooLarge { .. })
        ));
        p.body = None;
        assert_eq!(Op::from_proto(p), Err(OpError::Empty));
    }

    #[test]
    fn membership_ops_with_short_ids_or_unknown_roles_are_refused() {
        use pb::op::Body;
        let op = |body| pb::Op {
            hlc_wall_ms: 1,
            hlc_counter: 0,
            body: Some(body),
        };
        let bad = [
            Body::Invite(pb::Invite {
                id: Bytes::from_static(&[1; 31]),
                role: pb::Role::Writer as i32,
                expires_ms: 5,
            }),
            Body::Invite(pb::Invite {
                id: Bytes::from_static(&[1; 32]),
                role: 0,
                expires_ms: 5,
            }),
            Body::RevokeInvite(pb::RevokeInvite {
                id: Bytes::from_static(&[1; 33]),
            }),
            Body::SetMember(pb::SetMember {
                key: Bytes::from_static(&[1; 32]),
                role: pb::Role::Reader as i32,
                display_name: String::new(),
                invite: Bytes::from_static(&[1; 5]),
            }),
            Body::RevokeMember(pb::RevokeMember {
                key: Bytes::from_static(&[1; 3]),
                upto: 1,
            }),
        ];
        for body in bad {
            assert!(Op::from_proto(op(body.clone())).is_err(), "{body:?}");
        }
    }
}
