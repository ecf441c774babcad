//! The daemon's side of `leave` and `delete`: the signed op, its push to the members
//! (a sync pass right after, whose reconciled members are the confirmations), then for
//! `leave` the copy and the removal of the store's local data.

use std::path::Path;

use lattice_mount::proto::control::{
    DeleteRequest, DeleteResponse, ExportReport, LeaveRequest, LeaveResponse,
};
use lattice_mount::{LeaveError, Net, Node, Store};

/// Leaves store `r.store` (see the module doc); one readable line on failure.
pub fn leave(
    node: &Node,
    net: &Net,
    rt: &tokio::runtime::Handle,
    r: &LeaveRequest,
) -> Result<LeaveResponse, String> {
    let store = find(node, &r.store)?;
    let was_deleted = store.is_deleted();
    if !was_deleted && !r.abandon && store.is_last_admin() {
        let others = store.members().len() - 1;
        return Err(format!(
            "this node is the last admin of {} and {others} other member(s) remain: invite \
             another admin first, delete the store for everyone (`lattice-mount delete {}`), \
             or leave it without an admin with --abandon",
            r.store, r.store
        ));
    }
    let export = match r.export_dir.as_str() {
        "" => None,
        dir => {
            let done = node
                .export(&store, Path::new(dir))
                .map_err(|e| e.to_string())?;
            Some(ExportReport {
                dir: dir.to_string(),
                files: done.files,
                dirs: done.dirs,
                symlinks: done.symlinks,
                bytes: done.bytes,
                missing: done.missing,
                skipped: done.skipped,
            })
        }
    };
    // A deleted store admits nothing more anywhere: a leave would only be refused.
    let (confirmed, unreachable) = if was_deleted {
        (0, Vec::new())
    } else {
        store.leave().map_err(|e| match e {
            LeaveError::NotMember => format!("this node is not a member of {}", r.store),
            e => e.to_string(),
        })?;
        push(net, rt, &r.store)
    };
    rt.block_on(net.forget(&store));
    node.remove_store(store.id()).map_err(|e| e.to_string())?;
    Ok(LeaveResponse {
        confirmed,
        unreachable,
        was_deleted,
        export,
    })
}

/// Deletes store `r.store` for every member (admins only).
pub fn delete(
    node: &Node,
    net: &Net,
    rt: &tokio::runtime::Handle,
    r: &DeleteRequest,
) -> Result<DeleteResponse, String> {
    let store = find(node, &r.store)?;
    if store.is_deleted() {
        return Err(format!("{} is already deleted", r.store));
    }
    store.delete().map_err(|e| match e {
        LeaveError::NotAdmin => {
            let me = node.identity().public();
            let role = store
                .members()
                .into_iter()
                .find(|m| m.key == me)
                .map_or("not a member".to_string(), |m| {
                    format!("a {:?}", m.role).to_lowercase()
                });
            format!(
                "only an admin of {} may delete it; this node is {role}",
                r.store
            )
        }
        e => e.to_string(),
    })?;
    let (confirmed, unreachable) = push(net, rt, &r.store);
    Ok(DeleteResponse {
        confirmed,
        unreachable,
    })
}

fn find(node: &Node, name: &str) -> Result<Store, String> {
    node.store_by_name(name)
        .ok_or_else(|| format!("no store named {name:?}"))
}

/// One sync pass of `store` with every member: how many confirmed (reconciled with
/// this node, so hold every intention it had sealed, or refused it as no longer a
/// member, so hold its leave already), and who could not be reached.
fn push(net: &Net, rt: &tokio::runtime::Handle, store: &str) -> (u32, Vec<String>) {
    match rt.block_on(net.sync(store)) {
        Ok(report) => (
            report.peers + report.disowned.len() as u32,
            report
                .failed
                .iter()
                .filter(|(k, _)| !report.disowned.contains(k))
                .map(|(k, why)| format!("{}: {why}", k.short()))
                .collect(),
        ),
        Err(e) => (0, vec![e.to_string()]),
    }
}
