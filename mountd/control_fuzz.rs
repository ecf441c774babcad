//! Fuzz tests of the control socket's decoder ([`super::read_frame`]): requests as the
//! daemon reads them from any local process that can open the socket, and answers as
//! the CLI reads them. Valid frames of every request kind, edited frames and random
//! bytes; each read returns a message or a `FrameError`, never panics, and holds at
//! most the announced frame (capped at [`MAX_CONTROL_FRAME`]) plus a few times the
//! input. The harness is the library's (`src/fuzz/`); run longer with
//! `FUZZ_CASES=100000 cargo test --release fuzz`.

#[path = "../src/fuzz/alloc.rs"]
mod alloc;
#[path = "../src/fuzz/fields.rs"]
mod fields;
#[path = "../src/fuzz/harness.rs"]
mod harness;

use lattice_mount::proto::control::{
    request, response, ConflictsRequest, CreateRequest, DownRequest, FetchModeRequest,
    HistoryRequest, InviteRequest, JoinProgress, JoinRequest, PauseRequest, PeersRequest, Request,
    ResolveRequest, Response, RestoreRequest, RevokeRequest, StatusRequest, SyncRequest,
    VerifyRequest, WatchEvent, WatchRequest,
};
use proptest::prelude::*;
use prost::Message;

use self::harness::{config, framed, hostile_frames, ready, within, Budget, PROTOBUF_PER_BYTE};
use super::{read_frame, FrameError, MAX_CONTROL_FRAME};

/// A control message: a few times its bytes, plus the buffer of its announced size.
const CONTROL: Budget = Budget {
    per_byte: PROTOBUF_PER_BYTE,
    fixed: 4 * 1024,
};

fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

fn request() -> impl Strategy<Value = Request> {
    let kind = prop_oneof![
        Just(request::Kind::Status(StatusRequest {})),
        text().prop_map(|name| request::Kind::Create(CreateRequest { name })),
        (text(), any::<bool>())
            .prop_map(|(path, deleted)| request::Kind::History(HistoryRequest { path, deleted })),
        (text(), text(), any::<Option<u64>>(), text()).prop_map(|(path, version, at_ms, to)| {
            request::Kind::Restore(RestoreRequest {
                path,
                version,
                at_ms,
                to,
            })
        }),
        Just(request::Kind::Down(DownRequest {})),
        (text(), text(), any::<u64>()).prop_map(|(store, role, expires_secs)| {
            request::Kind::Invite(InviteRequest {
                store,
                role,
                expires_secs,
            })
        }),
        (text(), text()).prop_map(|(token, name)| request::Kind::Join(JoinRequest { token, name })),
        text().prop_map(|store| request::Kind::Peers(PeersRequest { store })),
        (text(), text())
            .prop_map(|(store, target)| { request::Kind::Revoke(RevokeRequest { store, target }) }),
        text().prop_map(|store| request::Kind::Sync(SyncRequest { store })),
        (text(), any::<bool>())
            .prop_map(|(store, pause)| { request::Kind::Pause(PauseRequest { store, pause }) }),
        (text(), text()).prop_map(|(store, mode)| {
            request::Kind::FetchMode(FetchModeRequest { store, mode })
        }),
        text().prop_map(|store| request::Kind::Conflicts(ConflictsRequest { store })),
        text().prop_map(|path| request::Kind::Verify(VerifyRequest { path })),
        (text(), text())
            .prop_map(|(path, keep)| request::Kind::Resolve(ResolveRequest { path, keep })),
        text().prop_map(|path| request::Kind::Watch(WatchRequest { path })),
    ];
    kind.prop_map(|kind| Request { kind: Some(kind) })
}

fn response() -> impl Strategy<Value = Response> {
    let kind = prop_oneof![
        text().prop_map(response::Kind::Error),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(store, intentions, bytes)| {
            response::Kind::JoinProgress(JoinProgress {
                store,
                intentions,
                total: intentions,
                bytes,
                eta_ms: 0,
            })
        }),
        (text(), text(), text(), any::<u64>()).prop_map(|(path, old_path, op, hlc_wall_ms)| {
            response::Kind::WatchEvent(WatchEvent {
                path,
                old_path,
                op,
                hlc_wall_ms,
                ..WatchEvent::default()
            })
        }),
    ];
    kind.prop_map(|kind| Response { kind: Some(kind) })
}

/// [`CONTROL`] plus the buffer `read_frame` sizes from the header, up to the limit.
fn budget(input: &[u8]) -> Budget {
    let announced = input.get(..4).map_or(0, |h| {
        u32::from_be_bytes(h.try_into().expect("four bytes")) as usize
    });
    Budget {
        fixed: CONTROL.fixed + announced.min(MAX_CONTROL_FRAME),
        ..CONTROL
    }
}

fn read<M: Message + Default>(input: &[u8]) -> Result<Option<M>, FrameError> {
    let mut reader = input;
    ready(read_frame(&mut reader))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_valid_request_reads_back(r in request()) {
        let bytes = framed(r.encode_to_vec());
        let got = within(budget(&bytes), &bytes, || read::<Request>(&bytes))?;
        prop_assert_eq!(got.ok(), Some(Some(r)));
    }

    #[test]
    fn edited_or_random_requests_are_read_or_refused_within_budget(
        bytes in hostile_frames(request().prop_map(|r| r.encode_to_vec()))
    ) {
        let got = within(budget(&bytes), &bytes, || read::<Request>(&bytes))?;
        if let Err(FrameError::TooLarge { size, limit }) = got {
            prop_assert!(size > limit && limit == MAX_CONTROL_FRAME);
        }
    }

    #[test]
    fn edited_or_random_answers_are_read_or_refused_within_budget(
        bytes in hostile_frames(response().prop_map(|r| r.encode_to_vec()))
    ) {
        let got = within(budget(&bytes), &bytes, || read::<Response>(&bytes))?;
        if let Ok(None) = got {
            prop_assert!(bytes.is_empty());
        }
    }
}
