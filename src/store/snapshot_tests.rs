//! A snapshot is its intention's causal past, the same on every replica, and its
//! label is a last-writer-wins register.

use bytes::Bytes;

use crate::cas::Content;
use crate::fs::FsError;
use crate::identity::Identity;
use crate::ids::{FileId, OpId, StoreId};
use crate::store::tests::{clock, create, founded_store};
use crate::store::Store;

/// Applies every intention `from` holds to `to`.
fn sync(from: &Store, to: &Store) {
    let mut next = 1;
    loop {
        let batch = from.witness(next, usize::MAX).unwrap();
        if batch.intentions.is_empty() {
            return;
        }
        for bytes in batch.intentions {
            to.apply_remote(bytes).unwrap();
        }
        next = batch.next;
    }
}

/// Writes `data` over `file`, or creates a file `name` holding its own name.
fn edit(store: &Store, name: &str, data: &str) -> FileId {
    store
        .write(|tx| match tx.state().lookup(OpId::ROOT, name) {
            Ok(node) => {
                let file = match node {
                    crate::fs::Node::Entry { file, .. } => file,
                    crate::fs::Node::Conflict { file, .. } => file,
                };
                let body = tx.state().plan_write(
                    file,
                    Content::Inline(Bytes::from(data.to_owned())),
                    1,
                )?;
                tx.push(body)?;
                Ok(file)
            }
            Err(_) => Ok(tx.push(create(name))?),
        })
        .unwrap()
}

#[test]
fn a_snapshot_is_its_intentions_causal_past_byte_for_byte_on_every_replica() {
    let tmp = tempfile::tempdir().unwrap();
    let (admin, writer, reader) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let a = founded_store(&tmp.path().join("a"), &admin, &writer, &reader);
    let b = Store::join(
        &tmp.path().join("b"),
        StoreId([3; 16]),
        admin.public(),
        writer.clone(),
        clock(),
    )
    .unwrap();
    sync(&a, &b);
    edit(&a, "one", "");
    edit(&b, "two", "");
    a.flush().unwrap();
    b.flush().unwrap();
    sync(&a, &b);
    sync(&b, &a);
    edit(&a, "one", "edited before");
    let before = a.read(|s| s.canonical_dump());

    a.snapshot("v1").unwrap();
    // After it here, and concurrent with it there: neither is in the snapshot.
    edit(&a, "one", "edited after");
    edit(&a, "three", "");
    edit(&b, "two", "concurrent");
    a.flush().unwrap();
    b.flush().unwrap();
    sync(&a, &b);
    sync(&b, &a);

    let at = a.read(|s| s.snapshot("v1")).expect("a holds the label");
    assert_eq!(b.read(|s| s.snapshot("v1")), Some(at));
    let (on_a, on_b) = (a.snapshot_state(at).unwrap(), b.snapshot_state(at).unwrap());
    assert_eq!(on_a.canonical_dump(), before);
    assert_eq!(on_a.encode_snapshot(), on_b.encode_snapshot());
    assert_ne!(a.read(|s| s.canonical_dump()), before);
    // Built once, then served from the cache.
    assert!(std::sync::Arc::ptr_eq(
        &on_a,
        &a.snapshot_state(at).unwrap()
    ));

    // A later snapshot of the same label replaces it, on both replicas.
    b.snapshot("v1").unwrap();
    sync(&b, &a);
    let again = a.read(|s| s.snapshot("v1")).unwrap();
    assert_ne!(again, at);
    assert_eq!(
        a.snapshot_state(again).unwrap().canonical_dump(),
        b.snapshot_state(again).unwrap().canonical_dump()
    );
    let two = a.snapshot_state(again).unwrap();
    let node = two.lookup(OpId::ROOT, "two").unwrap();
    assert_eq!(
        two.content(node).unwrap().pieces,
        [Content::Inline(Bytes::from_static(b"concurrent"))]
    );

    a.drop_snapshot("v1").unwrap();
    sync(&a, &b);
    assert_eq!(b.read(|s| s.snapshot("v1")), None);
    assert!(matches!(b.drop_snapshot("v1"), Err(FsError::NotFound)));
    assert!(matches!(a.snapshot("a/b"), Err(FsError::InvalidName)));
}
