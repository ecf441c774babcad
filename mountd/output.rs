//! Human and JSON renderings of control responses.

use std::fmt::Write;

use lattice_mount::proto::control::{
    ConflictsResponse, DeleteResponse, FrontierStatus, GcResponse, HistoryEntry, HistoryResponse,
    JoinProgress, LeaveResponse, PeerEntry, ResolveResponse, RestoreResponse, SignedIntentionEntry,
    SnapshotResponse, StatusResponse, StoreSetting, StoreStatus, SyncResponse, VerifyResponse,
    VersionEntry, WatchEvent, WatchStarted,
};
use lattice_mount::{civil_from_days, hex};

/// Human status: the node, then a table of stores.
pub fn status_human(s: &StatusResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node        {}", s.node_id);
    let _ = writeln!(out, "name        {}", printable(&s.display_name));
    let _ = writeln!(out, "data dir    {}", printable(&s.data_dir));
    let _ = writeln!(out, "mountpoint  {}", printable(&s.mountpoint));
    let _ = writeln!(out, "blobs       {} ({} bytes)", s.blobs, s.blob_bytes);
    if !s.passthrough.is_empty() {
        let _ = writeln!(out, "passthrough {}", s.passthrough);
    }
    for u in &s.unreadable {
        let _ = writeln!(
            out,
            "unreadable  {}: {}",
            printable(&u.dir),
            printable(&u.error)
        );
    }
    if s.stores.is_empty() {
        out.push_str("no stores (create one with `lattice-mount create NAME`)\n");
        return out;
    }
    let mut rows = vec![[
        "STORE",
        "ID",
        "PEERS",
        "PENDING",
        "INTENTIONS",
        "FILES",
        "DIRS",
        "BYTES",
        "CONFLICTS",
    ]
    .map(String::from)
    .to_vec()];
    for st in &s.stores {
        let peers = if st.paused {
            "paused".to_string()
        } else {
            format!("{}/{} online", st.peers_online, st.members)
        };
        rows.push(vec![
            printable(&st.name),
            st.id.clone(),
            peers,
            format!("{} unsent, {} waiting", st.unsent, st.floating),
            st.intentions.to_string(),
            st.files.to_string(),
            st.directories.to_string(),
            st.bytes.to_string(),
            st.conflicts.to_string(),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&rows));
    for st in &s.stores {
        if st.deleted {
            let _ = writeln!(
                out,
                "{}: deleted by an admin, read-only here: keep a copy with `lattice-mount leave {} --export DIR`, or remove it with `lattice-mount leave {}`",
                printable(&st.name),
                printable(&st.name),
                printable(&st.name)
            );
        }
        for key in &st.equivocators {
            let _ = writeln!(
                out,
                "store {}: {} equivocated (signed two intentions at one place); its later intentions are refused",
                printable(&st.name),
                key.get(..16).unwrap_or(key)
            );
        }
        let _ = match &st.space {
            Some(sp) => writeln!(
                out,
                "{}: content {} bytes live, {} bytes retained history ({} days), {} bytes reclaimable{}",
                printable(&st.name),
                sp.live_bytes,
                sp.retained_bytes,
                st.retention_days,
                sp.reclaimable_bytes,
                match (sp.current, st.space_error.as_str()) {
                    (true, _) => String::new(),
                    (false, "") => format!(" (measured {} ago; measuring again)", ago(sp.age_secs * 1000)),
                    (false, e) => format!(" (measured {} ago; measuring again failed: {e})", ago(sp.age_secs * 1000)),
                }
            ),
            None => writeln!(
                out,
                "{}: keeps old versions {} days; content space {}",
                printable(&st.name),
                st.retention_days,
                match st.space_error.as_str() {
                    "" => "being measured".to_string(),
                    e => format!("unavailable: {e}"),
                }
            ),
        };
        if st.quarantined > 0 {
            let _ = writeln!(
                out,
                "{}: {} stored intentions do not decode and are quarantined (see status --json)",
                printable(&st.name),
                st.quarantined
            );
        }
        let _ = writeln!(out, "{}: {}", printable(&st.name), to_fetch_line(st));
        if st.local_files > 0 {
            let _ = writeln!(
                out,
                "{}: {} local files ({} bytes) kept on this node by ignore rules",
                printable(&st.name),
                st.local_files,
                st.local_bytes
            );
        }
        for p in &st.ignore_problems {
            let _ = writeln!(
                out,
                "{}: .latticeignore line skipped: {}",
                printable(&st.name),
                printable(p)
            );
        }
        if let Some(f) = &st.frontier {
            let _ = writeln!(
                out,
                "{}: {}; a member silent {} days stops counting",
                printable(&st.name),
                frontier_line(f),
                st.horizon_days
            );
        }
    }
    out
}

/// One line on the content a store still has to fetch, its rate and time left.
fn to_fetch_line(st: &StoreStatus) -> String {
    if st.fetch_files == 0 {
        return "all content of current versions is local".to_string();
    }
    let files = if st.fetch_files == 1 { "file" } else { "files" };
    let mut line = format!(
        "to fetch: {} {files}, {}",
        st.fetch_files,
        bytes_human(st.fetch_bytes)
    );
    match st.fetch_eta_secs {
        Some(eta) => {
            let _ = write!(
                line,
                " at {}/s, about {} left",
                bytes_human(st.fetch_rate),
                span(eta * 1000)
            );
        }
        None if st.fetch_mode == "on-demand" => line.push_str(" (fetched when read)"),
        None => line.push_str(", nothing arriving now"),
    }
    line
}

/// A byte count in binary units, one decimal above KiB.
fn bytes_human(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// "42 s", "3 min", "5 h", "2 days": how long ago, in its largest whole unit.
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ if s < 2 * 86_400 => "1 day".to_string(),
        _ => format!("{} days", s / 86_400),
    }
}

/// One line on a store's stability frontier: how far behind the newest op, and who
/// holds it there.
fn frontier_line(f: &FrontierStatus) -> String {
    let who = f.held_by.get(..16).unwrap_or(&f.held_by);
    let why = match f.reason.as_str() {
        "lowest-floor" => format!("held by {who}, the member that has seen least"),
        "never-attested" => format!("{who} has not reported what it holds yet"),
        "ahead" => format!("{who} reported more of its own writes than arrived here"),
        _ => "not computed since start".to_string(),
    };
    if !f.known {
        return format!("history is kept whole, no frontier yet: {why}");
    }
    format!(
        "history kept from {} ({} intentions) before the newest op; {why}",
        span(f.behind_ms),
        f.behind_intentions
    )
}

/// A duration in ms as its two largest units ("3d 4h", "12m 5s", "0s").
fn span(ms: u64) -> String {
    let s = ms / 1000;
    let parts = [
        (s / 86_400, "d"),
        (s / 3600 % 24, "h"),
        (s / 60 % 60, "m"),
        (s % 60, "s"),
    ];
    let shown: Vec<String> = parts
        .iter()
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    if shown.is_empty() {
        "0s".into()
    } else {
        shown.join(" ")
    }
}

/// A store setting's value, as `retention` and `horizon` show it.
pub fn setting_line(setting: StoreSetting, store: &str, days: u32) -> String {
    match setting {
        StoreSetting::Retention => format!("{store} keeps old versions {days} days"),
        StoreSetting::Horizon => format!(
            "{store} waits {days} days for a silent member before purging history without it"
        ),
    }
}

/// What `snapshot` did (`label`, dropped if `rm`) and the store's snapshots after it.
pub fn snapshot_human(store: &str, label: Option<&str>, rm: bool, r: &SnapshotResponse) -> String {
    let mut out = String::new();
    match label {
        Some(label) if rm => {
            let _ = writeln!(out, "dropped snapshot {label} of {store}");
        }
        Some(label) => {
            let _ = writeln!(
                out,
                "recorded snapshot {label} of {store}: read-only under {store}/{}/{label} on every node",
                lattice_mount::SNAPSHOTS_DIR
            );
        }
        None if r.snapshots.is_empty() => {
            let _ = writeln!(out, "{store} has no snapshots");
        }
        None => {}
    }
    if label.is_none() {
        for s in &r.snapshots {
            let _ = writeln!(
                out,
                "{}\t{}\tby {}",
                printable(&s.label),
                utc_time(s.time_ms),
                printable(&s.author)
            );
        }
    }
    out
}

/// What `gc` freed: one line per store and a total.
pub fn gc_human(r: &GcResponse) -> String {
    let mut out = String::new();
    let (mut blobs, mut bytes) = (0, 0);
    for s in &r.stores {
        let _ = writeln!(
            out,
            "{}: freed {} blobs, {} bytes",
            printable(&s.store),
            s.blobs,
            s.bytes
        );
        blobs += s.blobs;
        bytes += s.bytes;
    }
    let _ = writeln!(out, "freed {blobs} blobs, {bytes} bytes in total");
    out
}

/// Rows as left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// Human peers: one row per member.
pub fn peers_human(peers: &[PeerEntry]) -> String {
    let mut rows = vec![["MEMBER", "KEY", "ROLE", "STATE", "ADDRESSES"]
        .map(String::from)
        .to_vec()];
    for p in peers {
        let state = if p.me {
            "this node".to_string()
        } else if p.online {
            "online".to_string()
        } else {
            match p.last_seen_ms {
                Some(ms) => format!("last seen {} ago", ago(ms)),
                None => "never seen".to_string(),
            }
        };
        let role = if p.equivocator {
            format!("{} (equivocated)", p.role)
        } else {
            p.role.clone()
        };
        rows.push(vec![
            printable(&p.name),
            p.key.get(..16).unwrap_or(&p.key).to_string(),
            role,
            state,
            p.addrs.join(" "),
        ]);
    }
    table(&rows)
}

/// Peers as one JSON object.
pub fn peers_json(peers: &[PeerEntry]) -> String {
    let list: Vec<String> = peers
        .iter()
        .map(|p| {
            let addrs: Vec<String> = p.addrs.iter().map(|a| json_string(a)).collect();
            format!(
                "{{\"key\":{},\"name\":{},\"role\":{},\"me\":{},\"online\":{},\
                 \"last_seen_ms\":{},\"last_seen\":{},\"addrs\":[{}],\"equivocator\":{}}}",
                json_string(&p.key),
                json_string(&p.name),
                json_string(&p.role),
                p.me,
                p.online,
                p.last_seen_ms
                    .map_or("null".to_string(), |ms| ms.to_string()),
                p.last_seen_unix_ms
                    .map_or("null".to_string(), |ms| json_string(&utc_time(ms))),
                addrs.join(","),
                p.equivocator
            )
        })
        .collect();
    format!("{{\"peers\":[{}]}}", list.join(","))
}

/// Human sync report.
pub fn sync_human(r: &SyncResponse) -> String {
    let mut out = format!(
        "reconciled with {} peers: {} rounds, {} bytes; pulled {}, pushed {} intentions\n",
        r.peers, r.rounds, r.reconcile_bytes, r.pulled, r.pushed
    );
    for f in &r.failed {
        let _ = writeln!(out, "unreachable: {}", printable(f));
    }
    out
}

/// What `leave` did: the copy, who confirmed the leave, the removal.
pub fn leave_human(store: &str, r: &LeaveResponse) -> String {
    let store = printable(store);
    let mut out = String::new();
    if let Some(e) = &r.export {
        let _ = writeln!(
            out,
            "copied {store} into {}: {} files ({} bytes), {} directories, {} symlinks",
            printable(&e.dir),
            e.files,
            e.bytes,
            e.dirs,
            e.symlinks
        );
        for path in &e.missing {
            let _ = writeln!(
                out,
                "content not available, written empty: {}",
                printable(path)
            );
        }
        for path in &e.skipped {
            let _ = writeln!(out, "special file not copied: {}", printable(path));
        }
    }
    let _ = match (r.was_deleted, r.confirmed) {
        (true, _) => writeln!(out, "{store} was deleted by an admin: no leave to send"),
        (false, 0) => writeln!(
            out,
            "no member confirmed the leave of {store}; members that never receive it stop waiting for this node after the store's horizon"
        ),
        (false, n) => writeln!(out, "left {store}: {n} member(s) confirmed the leave"),
    };
    for u in &r.unreachable {
        let _ = writeln!(out, "unreachable: {}", printable(u));
    }
    let _ = writeln!(out, "removed {store} and its local data from this node");
    out
}

/// What `delete` did: who confirmed the delete.
pub fn delete_human(store: &str, r: &DeleteResponse) -> String {
    let store = printable(store);
    let mut out = match r.confirmed {
        0 => format!("deleted {store}; no member confirmed yet: they learn it at their next sync with any member that has it\n"),
        n => format!("deleted {store} for every member: {n} member(s) confirmed\n"),
    };
    for u in &r.unreachable {
        let _ = writeln!(out, "unreachable: {}", printable(u));
    }
    let _ = writeln!(
        out,
        "{store} is read-only here; `lattice-mount leave {store}` removes it (--export DIR keeps a copy)"
    );
    out
}

/// A one-line progress display on stderr for a join.
pub struct Progress {
    tty: bool,
    /// When a line was last printed (not on a terminal).
    printed: std::cell::Cell<Option<std::time::Instant>>,
    /// The newest line not printed yet (not on a terminal).
    pending: std::cell::RefCell<Option<String>>,
}

/// Least time between two printed lines when stderr is not a terminal: a join reports
/// every batch, thousands for a big store, too many for a log or a pipe nobody reads.
const PROGRESS_LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Progress {
    /// A display that redraws in place on a terminal and prints a line a second
    /// otherwise.
    pub fn new() -> Progress {
        use std::io::IsTerminal;
        Progress {
            tty: std::io::stderr().is_terminal(),
            printed: std::cell::Cell::new(None),
            pending: std::cell::RefCell::new(None),
        }
    }

    /// Shows `p`.
    pub fn show(&self, p: &JoinProgress) {
        let eta = match p.eta_ms {
            0 => String::new(),
            ms => format!(", about {} s left", ms.div_ceil(1000)),
        };
        let line = format!(
            "cloning {}: {}/{} intentions, {} bytes{eta}",
            printable(&p.store),
            p.intentions,
            p.total,
            p.bytes
        );
        if self.tty {
            eprint!("\r\x1b[K{line}");
        } else if self
            .printed
            .get()
            .is_none_or(|t| t.elapsed() >= PROGRESS_LINE_EVERY)
        {
            eprintln!("{line}");
            self.printed.set(Some(std::time::Instant::now()));
            self.pending.take();
        } else {
            self.pending.replace(Some(line));
        }
    }

    /// Ends the display (printing the last progress if it was held back).
    pub fn finish(&self) {
        if self.tty {
            eprintln!();
        } else if let Some(line) = self.pending.take() {
            eprintln!("{line}");
        }
    }
}

/// Status as one JSON object.
pub fn status_json(s: &StatusResponse) -> String {
    let stores: Vec<String> = s
        .stores
        .iter()
        .map(|st| {
            format!(
                "{{\"name\":{},\"id\":{},\"intentions\":{},\"floating\":{},\"files\":{},\
                 \"dirs\":{},\"bytes\":{},\"conflicts\":{},\"paused\":{},\"fetch\":{},\
                 \"peers_online\":{},\"members\":{},\"unsent\":{},\"equivocators\":[{}],\
                 \"quarantined\":{},\"quarantined_hashes\":[{}],\"frontier\":{},\
                 \"retention_days\":{},\"horizon_days\":{},\"space\":{},\"space_error\":{},\"deleted\":{},\"to_fetch\":{},\
                 \"local\":{{\"files\":{},\"bytes\":{}}},\"ignore_problems\":[{}]}}",
                json_string(&st.name),
                json_string(&st.id),
                st.intentions,
                st.floating,
                st.files,
                st.directories,
                st.bytes,
                st.conflicts,
                st.paused,
                json_string(&st.fetch_mode),
                st.peers_online,
                st.members,
                st.unsent,
                st.equivocators
                    .iter()
                    .map(|k| json_string(k))
                    .collect::<Vec<_>>()
                    .join(","),
                st.quarantined,
                st.quarantined_hashes
                    .iter()
                    .map(|h| json_string(h))
                    .collect::<Vec<_>>()
                    .join(","),
                st.frontier.as_ref().map_or("null".into(), |f| format!(
                    "{{\"known\":{},\"behind_ms\":{},\"behind_intentions\":{},\"held_by\":{},\"reason\":{}}}",
                    f.known,
                    f.behind_ms,
                    f.behind_intentions,
                    json_string(&f.held_by),
                    json_string(&f.reason)
                )),
                st.retention_days,
                st.horizon_days,
                st.space.as_ref().map_or("null".to_string(), |sp| format!(
                    "{{\"live_bytes\":{},\"retained_bytes\":{},\"reclaimable_bytes\":{},\"age_secs\":{},\"current\":{}}}",
                    sp.live_bytes, sp.retained_bytes, sp.reclaimable_bytes, sp.age_secs, sp.current
                )),
                json_string(&st.space_error),
                st.deleted,
                format_args!(
                    "{{\"files\":{},\"bytes\":{},\"rate\":{},\"eta_secs\":{}}}",
                    st.fetch_files,
                    st.fetch_bytes,
                    st.fetch_rate,
                    st.fetch_eta_secs.map_or("null".to_string(), |s| s.to_string())
                ),
                st.local_files,
                st.local_bytes,
                st.ignore_problems
                    .iter()
                    .map(|p| json_string(p))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect();
    format!(
        "{{\"node_id\":{},\"display_name\":{},\"data_dir\":{},\"mountpoint\":{},\
         \"passthrough\":{},\"blobs\":{},\"blob_bytes\":{},\"stores\":[{}],\"unreadable\":[{}]}}",
        json_string(&s.node_id),
        json_string(&s.display_name),
        json_string(&s.data_dir),
        json_string(&s.mountpoint),
        json_string(&s.passthrough),
        s.blobs,
        s.blob_bytes,
        stores.join(","),
        s.unreadable
            .iter()
            .map(|u| format!(
                "{{\"dir\":{},\"error\":{}}}",
                json_string(&u.dir),
                json_string(&u.error)
            ))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// Human history: one line per entry (time, author, intention, op).
pub fn history_human(entries: &[HistoryEntry]) -> String {
    let authors: Vec<String> = entries.iter().map(author_label).collect();
    let width = authors.iter().map(|a| a.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (e, author) in entries.iter().zip(&authors) {
        let _ = writeln!(
            out,
            "{}  {author:<width$}  {}  {}",
            utc_time(e.hlc_wall_ms),
            e.intention.get(..16).unwrap_or(&e.intention),
            printable(&e.op)
        );
    }
    out
}

/// History as one JSON object: the path asked for, its entries and its versions.
pub fn history_json(path: &str, h: &HistoryResponse) -> String {
    let items: Vec<String> = h
        .entries
        .iter()
        .map(|e| {
            format!(
                "{{\"time\":{},\"hlc_wall_ms\":{},\"hlc_counter\":{},\"author\":{},\
                 \"author_name\":{},\"intention\":{},\"op\":{}}}",
                json_string(&utc_time(e.hlc_wall_ms)),
                e.hlc_wall_ms,
                e.hlc_counter,
                json_string(&e.author),
                json_string(&e.author_name),
                json_string(&e.intention),
                json_string(&e.op)
            )
        })
        .collect();
    format!(
        "{{\"path\":{},\"entries\":[{}],\"versions\":{},\"omitted\":{},\
         \"intentions\":[{}],\"intentions_omitted\":{}}}",
        json_string(path),
        items.join(","),
        versions_json(&h.versions),
        h.omitted,
        h.signed
            .iter()
            .map(signed_json)
            .collect::<Vec<_>>()
            .join(","),
        h.signed_omitted
    )
}

/// One intention's signed form as JSON, its bytes in hex (see `SignedIntentionEntry`).
fn signed_json(s: &SignedIntentionEntry) -> String {
    format!(
        "{{\"hash\":{},\"author\":{},\"prev\":{},\"deps\":{},\"signature\":{},\
         \"signing_message\":{},\"body\":{}}}",
        json_string(&s.hash),
        json_string(&s.author),
        json_opt(&s.prev),
        json_strings(&s.deps),
        json_string(&hex(&s.signature)),
        json_string(&hex(&s.signing_message)),
        json_string(&hex(&s.body))
    )
}

/// Human `verify`: a verdict line, each live version with the ops that made it and the
/// intentions carrying them, every intention checked with its authority, and where the
/// proof ends (the genesis, or the frontier below which history was purged).
pub fn verify_human(v: &VerifyResponse) -> String {
    let mut out = String::new();
    let verdict = match v.failures.len() {
        0 => "verified".to_string(),
        n => format!("NOT verified, {n} failure(s)"),
    };
    let _ = writeln!(
        out,
        "{}: {verdict}: {} live version(s), {} intention(s) checked",
        printable(&v.path),
        v.versions.len(),
        v.intentions.len()
    );
    let name_of = |key: &str| {
        v.intentions.iter().find(|i| i.author == key).map_or_else(
            || member_label("", key),
            |i| member_label(&i.author_name, key),
        )
    };
    for version in &v.versions {
        let _ = writeln!(
            out,
            "version {}  {}  {} bytes  {}",
            version.version.get(..16).unwrap_or(&version.version),
            if version.winner {
                "current"
            } else {
                "conflict copy"
            },
            version.size,
            printable(&version.shown)
        );
        for op in &version.ops {
            let carried = match op.intention.get(..16) {
                Some(h) => format!("in {h}"),
                None => "in no intention held here".to_string(),
            };
            let _ = writeln!(
                out,
                "  {:<6}  {}  {}  {carried}",
                op.op,
                utc_time(op.hlc_wall_ms),
                name_of(&op.author)
            );
        }
    }
    let _ = writeln!(
        out,
        "intentions (hash recomputed from the stored bytes, Ed25519 signature checked):"
    );
    let authors: Vec<String> = v
        .intentions
        .iter()
        .map(|i| member_label(&i.author_name, &i.author))
        .collect();
    let width = authors.iter().map(|a| a.chars().count()).max().unwrap_or(0);
    for (i, author) in v.intentions.iter().zip(&authors) {
        let authority = match (i.authority.as_str(), i.granted_by.get(..16)) {
            ("", _) => "NO AUTHORITY".to_string(),
            ("genesis", _) => "genesis, signed by the founder".to_string(),
            (role, Some(by)) => format!("{role}, granted in {by}"),
            (role, None) => role.to_string(),
        };
        let _ = writeln!(
            out,
            "  {}  {author:<width$}  #{:<4} {}  {authority}  links {}/{} held",
            i.hash.get(..16).unwrap_or(&i.hash),
            i.seq,
            utc_time(i.hlc_wall_ms),
            i.links_held,
            i.deps.len() + usize::from(!i.prev.is_empty())
        );
    }
    let end = match (v.purged_below_ms, v.genesis.get(..16)) {
        (Some(below), _) => format!(
            "verified back to {}; earlier history purged at the frontier",
            utc_time(below)
        ),
        (None, Some(genesis)) => format!(
            "verified back to the genesis {genesis} of founder {}",
            name_of(&v.founder)
        ),
        (None, None) => "the genesis was not reached".to_string(),
    };
    if v.ops_omitted > 0 || v.intentions_omitted > 0 {
        let _ = writeln!(
            out,
            "({} older op(s) and {} intention(s) checked but not listed)",
            v.ops_omitted, v.intentions_omitted
        );
    }
    let _ = writeln!(out, "{end}");
    out
}

/// `verify` as one JSON object.
pub fn verify_json(v: &VerifyResponse) -> String {
    let versions: Vec<String> = v
        .versions
        .iter()
        .map(|version| {
            let ops: Vec<String> = version
                .ops
                .iter()
                .map(|op| {
                    format!(
                        "{{\"op\":{},\"intention\":{},\"author\":{},\"time\":{},\
                         \"hlc_wall_ms\":{}}}",
                        json_string(&op.op),
                        json_opt(&op.intention),
                        json_string(&op.author),
                        json_string(&utc_time(op.hlc_wall_ms)),
                        op.hlc_wall_ms
                    )
                })
                .collect();
            format!(
                "{{\"version\":{},\"winner\":{},\"size\":{},\"shown\":{},\"ops\":[{}]}}",
                json_string(&version.version),
                version.winner,
                version.size,
                json_string(&version.shown),
                ops.join(",")
            )
        })
        .collect();
    let intentions: Vec<String> = v
        .intentions
        .iter()
        .map(|i| {
            format!(
                "{{\"hash\":{},\"author\":{},\"author_name\":{},\"seq\":{},\
                 \"hlc_wall_ms\":{},\"hlc_counter\":{},\"prev\":{},\"deps\":{},\
                 \"links_held\":{},\"authority\":{},\"granted_by\":{}}}",
                json_string(&i.hash),
                json_string(&i.author),
                json_string(&i.author_name),
                i.seq,
                i.hlc_wall_ms,
                i.hlc_counter,
                json_opt(&i.prev),
                json_strings(&i.deps),
                i.links_held,
                json_opt(&i.authority),
                json_opt(&i.granted_by)
            )
        })
        .collect();
    format!(
        "{{\"path\":{},\"verified\":{},\"founder\":{},\"founder_name\":{},\
         \"genesis\":{},\"purged_below_ms\":{},\"versions\":[{}],\"intentions\":[{}],\
         \"ops_omitted\":{},\"intentions_omitted\":{},\"failures\":{}}}",
        json_string(&v.path),
        v.failures.is_empty(),
        json_string(&v.founder),
        json_string(&v.founder_name),
        json_opt(&v.genesis),
        v.purged_below_ms
            .map_or_else(|| "null".to_string(), |ms| ms.to_string()),
        versions.join(","),
        intentions.join(","),
        v.ops_omitted,
        v.intentions_omitted,
        json_strings(&v.failures)
    )
}

/// A JSON string literal for `s`, or `null` when it is empty.
fn json_opt(s: &str) -> String {
    match s {
        "" => "null".to_string(),
        s => json_string(s),
    }
}

/// A JSON array of string literals.
fn json_strings(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| json_string(s)).collect();
    format!("[{}]", items.join(","))
}

/// Human versions: a heading, then one line per version (time, author, intention,
/// size, content, state), oldest first; nothing when there are none.
pub fn versions_human(h: &HistoryResponse) -> String {
    if h.versions.is_empty() {
        return String::new();
    }
    let mut out =
        String::from("versions (restore one with `lattice-mount restore PATH --version HASH`):\n");
    if h.omitted > 0 {
        let _ = writeln!(out, "  ({} older versions not shown)", h.omitted);
    }
    out.push_str(&version_lines(&h.versions, "  "));
    out
}

/// One line per version, each after `indent`.
fn version_lines(versions: &[VersionEntry], indent: &str) -> String {
    let authors: Vec<String> = versions
        .iter()
        .map(|v| label(&v.author_name, &v.author))
        .collect();
    let width = authors.iter().map(|a| a.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (v, author) in versions.iter().zip(&authors) {
        let mut notes = Vec::new();
        if v.state != "past" {
            notes.push(v.state.clone());
        }
        if !v.retained {
            notes.push("past retention".to_string());
        }
        if !v.local {
            notes.push("not on this node".to_string());
        }
        let _ = writeln!(
            out,
            "{indent}{}  {author:<width$}  {}  {} bytes  {}{}",
            utc_time(v.hlc_wall_ms),
            v.version.get(..16).unwrap_or(&v.version),
            v.size,
            printable(&v.content),
            if notes.is_empty() {
                String::new()
            } else {
                format!("  ({})", notes.join(", "))
            }
        );
    }
    out
}

/// Versions as a JSON array.
fn versions_json(versions: &[VersionEntry]) -> String {
    let items: Vec<String> = versions
        .iter()
        .map(|v| {
            format!(
                "{{\"time\":{},\"hlc_wall_ms\":{},\"hlc_counter\":{},\"author\":{},\
                 \"author_name\":{},\"version\":{},\"intention\":{},\"size\":{},\
                 \"content\":{},\"state\":{},\"local\":{},\"retained\":{}}}",
                json_string(&utc_time(v.hlc_wall_ms)),
                v.hlc_wall_ms,
                v.hlc_counter,
                json_string(&v.author),
                json_string(&v.author_name),
                json_string(&v.version),
                json_string(&v.intention),
                v.size,
                json_string(&v.content),
                json_string(&v.state),
                v.local,
                v.retained
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Human deleted files: per file its path, when and by whom it was deleted, and its
/// last version.
pub fn deleted_human(h: &HistoryResponse) -> String {
    if h.deleted.is_empty() {
        return "no deleted files\n".to_string();
    }
    let mut out = String::new();
    for d in &h.deleted {
        let _ = writeln!(
            out,
            "{}  deleted {} by {}",
            printable(&d.path),
            utc_time(d.deleted_wall_ms),
            label(&d.deleted_by_name, &d.deleted_by)
        );
        out.push_str(&version_lines(
            d.versions
                .last()
                .map(std::slice::from_ref)
                .unwrap_or_default(),
            "  last version ",
        ));
    }
    if h.omitted > 0 {
        let _ = writeln!(out, "({} more deleted files not shown)", h.omitted);
    }
    out
}

/// Deleted files as one JSON object: the directory asked about and its deleted files.
pub fn deleted_json(path: &str, h: &HistoryResponse) -> String {
    let items: Vec<String> = h
        .deleted
        .iter()
        .map(|d| {
            format!(
                "{{\"path\":{},\"deleted_time\":{},\"deleted_wall_ms\":{},\
                 \"deleted_by\":{},\"deleted_by_name\":{},\"versions\":{}}}",
                json_string(&d.path),
                json_string(&utc_time(d.deleted_wall_ms)),
                d.deleted_wall_ms,
                json_string(&d.deleted_by),
                json_string(&d.deleted_by_name),
                versions_json(&d.versions)
            )
        })
        .collect();
    format!(
        "{{\"path\":{},\"deleted\":[{}],\"omitted\":{}}}",
        json_string(path),
        items.join(","),
        h.omitted
    )
}

/// Human restore: where which version went.
pub fn restore_human(r: &RestoreResponse) -> String {
    format!(
        "restored version {} ({} bytes) {} {}\n",
        r.version.get(..16).unwrap_or(&r.version),
        r.size,
        if r.created { "as" } else { "to" },
        printable(&r.path)
    )
}

/// Restore as one JSON object.
pub fn restore_json(r: &RestoreResponse) -> String {
    format!(
        "{{\"path\":{},\"version\":{},\"size\":{},\"created\":{}}}",
        json_string(&r.path),
        json_string(&r.version),
        r.size,
        r.created
    )
}

/// Human conflicts: per file its path, then one line per live version (time, author
/// with key prefix, content id, size, where the mount shows it), the winner marked `*`.
pub fn conflicts_human(c: &ConflictsResponse) -> String {
    if c.conflicts.is_empty() {
        return "no conflicts\n".to_string();
    }
    let mut out = String::new();
    for f in &c.conflicts {
        let _ = writeln!(
            out,
            "{}  ({} versions)",
            printable(&f.path),
            f.versions.len()
        );
        let authors: Vec<String> = f
            .versions
            .iter()
            .map(|v| member_label(&v.author_name, &v.author))
            .collect();
        let width = authors.iter().map(|a| a.chars().count()).max().unwrap_or(0);
        for (v, author) in f.versions.iter().zip(&authors) {
            let _ = writeln!(
                out,
                "  {} {}  {author:<width$}  {}  {} bytes  {}",
                if v.winner { '*' } else { ' ' },
                utc_time(v.hlc_wall_ms),
                v.version.get(..16).unwrap_or(&v.version),
                v.size,
                printable(&v.shown)
            );
        }
    }
    if c.omitted > 0 {
        let _ = writeln!(out, "({} more conflicted files not shown)", c.omitted);
    }
    out
}

/// Conflicts as one JSON object.
pub fn conflicts_json(c: &ConflictsResponse) -> String {
    let files: Vec<String> = c
        .conflicts
        .iter()
        .map(|f| {
            let versions: Vec<String> = f
                .versions
                .iter()
                .map(|v| {
                    format!(
                        "{{\"time\":{},\"hlc_wall_ms\":{},\"author\":{},\"author_name\":{},\
                         \"version\":{},\"size\":{},\"winner\":{},\"shown\":{}}}",
                        json_string(&utc_time(v.hlc_wall_ms)),
                        v.hlc_wall_ms,
                        json_string(&v.author),
                        json_string(&v.author_name),
                        json_string(&v.version),
                        v.size,
                        v.winner,
                        json_string(&v.shown)
                    )
                })
                .collect();
            format!(
                "{{\"path\":{},\"versions\":[{}]}}",
                json_string(&f.path),
                versions.join(",")
            )
        })
        .collect();
    format!(
        "{{\"conflicts\":[{}],\"omitted\":{}}}",
        files.join(","),
        c.omitted
    )
}

/// Human resolve: which version the file keeps, and the files made of the others.
pub fn resolve_human(r: &ResolveResponse) -> String {
    let mut out = format!(
        "resolved {}: keeps version {}, {} other version{} superseded\n",
        printable(&r.path),
        r.kept.get(..16).unwrap_or(&r.kept),
        r.dismissed,
        if r.dismissed == 1 { "" } else { "s" }
    );
    for copy in &r.copies {
        let _ = writeln!(out, "kept as a file: {}", printable(copy));
    }
    out
}

/// Resolve as one JSON object.
pub fn resolve_json(r: &ResolveResponse) -> String {
    let copies: Vec<String> = r.copies.iter().map(|c| json_string(c)).collect();
    format!(
        "{{\"path\":{},\"kept\":{},\"copies\":[{}],\"dismissed\":{}}}",
        json_string(&r.path),
        json_string(&r.kept),
        copies.join(","),
        r.dismissed
    )
}

/// One change as a line: time, author, intention, op, path (a move: old -> new).
pub fn watch_human(e: &WatchEvent) -> String {
    let path = match e.old_path.as_str() {
        "" => printable(&e.path),
        old => format!("{} -> {}", printable(old), printable(&e.path)),
    };
    format!(
        "{}  {}  {}  {:<7}  {path}",
        utc_time(e.hlc_wall_ms),
        member_label(&e.author_name, &e.author),
        e.intention.get(..16).unwrap_or(&e.intention),
        e.op
    )
}

/// One change as one JSON object (`old_path` is null unless it is a move).
pub fn watch_json(e: &WatchEvent) -> String {
    format!(
        "{{\"time\":{},\"hlc_wall_ms\":{},\"op\":{},\"path\":{},\"old_path\":{},\
         \"author\":{},\"author_name\":{},\"intention\":{},\"local\":{}}}",
        json_string(&utc_time(e.hlc_wall_ms)),
        e.hlc_wall_ms,
        json_string(&e.op),
        json_string(&e.path),
        match e.old_path.as_str() {
            "" => "null".to_string(),
            old => json_string(old),
        },
        json_string(&e.author),
        json_string(&e.author_name),
        json_string(&e.intention),
        e.local
    )
}

/// The stores a watch follows, as one JSON object.
pub fn watch_started_json(w: &WatchStarted) -> String {
    let stores: Vec<String> = w.stores.iter().map(|s| json_string(s)).collect();
    format!("{{\"stores\":[{}]}}", stores.join(","))
}

/// A new invite token as one JSON object.
pub fn invite_json(token: &str) -> String {
    format!("{{\"token\":{}}}", json_string(token))
}

/// A refusal as one JSON object.
pub fn error_json(message: &str) -> String {
    format!("{{\"error\":{}}}", json_string(message))
}

/// A member as `name (8 hex of the key)`, or the 8 hex alone when it has no name.
fn member_label(name: &str, key: &str) -> String {
    let prefix = key.get(..8).unwrap_or(key);
    match name {
        "" => prefix.to_string(),
        name => format!("{} ({prefix})", printable(name)),
    }
}

/// A display name, else the first 8 hex characters of the key.
fn label(name: &str, key: &str) -> String {
    if name.is_empty() {
        key.get(..8).unwrap_or(key).to_string()
    } else {
        printable(name)
    }
}

/// The author's display name, else the first 8 hex characters of their key.
fn author_label(e: &HistoryEntry) -> String {
    label(&e.author_name, &e.author)
}

/// `s` with control characters replaced, so that one value stays on one line.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// A JSON string literal for `s`.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch.
fn utc_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use lattice_mount::proto::control::StoreStatus;

    use super::*;

    #[test]
    fn utc_times_match_known_dates() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc_time(1_763_756_367_123), "2025-11-21T20:19:27.123Z");
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}é"), r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn history_lines_show_the_name_or_8_hex_and_16_hex_of_the_intention() {
        let entry = |name: &str| HistoryEntry {
            intention: "0123456789abcdef".repeat(4),
            author: "fedcba98".repeat(8),
            author_name: name.into(),
            hlc_wall_ms: 0,
            hlc_counter: 0,
            op: "write 3 bytes".into(),
        };
        let out = history_human(&[entry("laptop"), entry("")]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "1970-01-01T00:00:00.000Z  laptop    0123456789abcdef  write 3 bytes",
                "1970-01-01T00:00:00.000Z  fedcba98  0123456789abcdef  write 3 bytes",
            ]
        );
    }

    #[test]
    fn an_equivocator_is_shown_in_status_and_peers() {
        let status = StatusResponse {
            stores: vec![StoreStatus {
                name: "docs".into(),
                equivocators: vec!["ab".repeat(32)],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(status_human(&status).contains("abababababababab equivocated"));
        assert!(
            status_json(&status).contains(&format!(r#""equivocators":["{}"]"#, "ab".repeat(32)))
        );
        let peer = PeerEntry {
            key: "cd".repeat(32),
            name: "mallory".into(),
            role: "writer".into(),
            equivocator: true,
            ..Default::default()
        };
        assert!(peers_human(std::slice::from_ref(&peer)).contains("writer (equivocated)"));
        assert!(peers_json(&[peer]).contains(r#""equivocator":true"#));
    }

    #[test]
    fn status_json_holds_every_store() {
        let status = StatusResponse {
            node_id: "ab".into(),
            display_name: "my \"box\"".into(),
            stores: vec![StoreStatus {
                name: "docs".into(),
                files: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = status_json(&status);
        assert!(json.starts_with(r#"{"node_id":"ab","display_name":"my \"box\"""#));
        assert!(json.contains(r#""stores":[{"name":"docs","id":"","intentions":0"#));
        assert!(json.contains(r#""files":2"#));
    }

    #[test]
    fn status_says_how_far_behind_the_frontier_is_and_who_holds_it() {
        let status = StatusResponse {
            stores: vec![StoreStatus {
                name: "docs".into(),
                horizon_days: 90,
                frontier: Some(FrontierStatus {
                    known: true,
                    behind_ms: (3 * 86_400 + 4 * 3600 + 5) * 1000,
                    behind_intentions: 42,
                    held_by: "cd".repeat(32),
                    reason: "lowest-floor".into(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let human = status_human(&status);
        assert!(
            human.contains("docs: history kept from 3d 4h (42 intentions) before the newest op; held by cdcdcdcdcdcdcdcd"),
            "{human}"
        );
        assert!(
            human
                .contains("the member that has seen least; a member silent 90 days stops counting"),
            "{human}"
        );
        assert!(status_json(&status).contains(&format!(
            r#""frontier":{{"known":true,"behind_ms":273605000,"behind_intentions":42,"held_by":"{}","reason":"lowest-floor"}}"#,
            "cd".repeat(32)
        )));
        assert!(status_json(&status).contains(r#""horizon_days":90,"space":null"#));
        assert_eq!(span(0), "0s");
        assert_eq!(span(61_000), "1m 1s");
    }

    #[test]
    fn versions_show_their_id_size_state_and_whether_they_can_be_restored() {
        let v = |size: u64, state: &str, local: bool, retained: bool| VersionEntry {
            version: "ab".repeat(32),
            author: "fedcba98".repeat(8),
            size,
            content: "manifest".into(),
            state: state.into(),
            local,
            retained,
            ..Default::default()
        };
        let h = HistoryResponse {
            versions: vec![v(5, "past", false, false), v(7, "current", true, true)],
            omitted: 3,
            ..Default::default()
        };
        let out = versions_human(&h);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[1].contains("3 older versions not shown"), "{out}");
        assert!(
            lines[2].ends_with(
                "fedcba98  abababababababab  5 bytes  manifest  (past retention, not on this node)"
            ),
            "{out}"
        );
        assert!(lines[3].ends_with("7 bytes  manifest  (current)"), "{out}");
        let json = history_json("/docs/a", &h);
        assert!(
            json.contains(r#""state":"past","local":false,"retained":false}"#),
            "{json}"
        );
        assert!(json.contains(r#""omitted":3,"#), "{json}");
        assert!(versions_human(&HistoryResponse::default()).is_empty());
    }

    #[test]
    fn conflict_lines_mark_the_winner_and_name_each_author_with_a_key_prefix() {
        use lattice_mount::proto::control::{ConflictEntry, LiveVersionEntry};
        let v = |name: &str, winner: bool, shown: &str| LiveVersionEntry {
            author: "0123456789abcdef".repeat(4),
            author_name: name.into(),
            hlc_wall_ms: 0,
            size: 3,
            version: "ab".repeat(32),
            winner,
            shown: shown.into(),
        };
        let c = ConflictsResponse {
            conflicts: vec![ConflictEntry {
                path: "team/a.txt".into(),
                versions: vec![
                    v("bob", true, "team/a.txt"),
                    v("", false, "team/a (conflict x).txt"),
                ],
            }],
            omitted: 0,
        };
        let out = conflicts_human(&c);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "team/a.txt  (2 versions)");
        assert_eq!(
            lines[1],
            "  * 1970-01-01T00:00:00.000Z  bob (01234567)  abababababababab  3 bytes  team/a.txt"
        );
        assert!(
            lines[2].starts_with("    1970-01-01T00:00:00.000Z  01234567        "),
            "{out}"
        );
        assert!(conflicts_json(&c).contains(r#""winner":false,"shown":"team/a (conflict x).txt"}"#));
        assert_eq!(
            conflicts_human(&ConflictsResponse::default()),
            "no conflicts\n"
        );
    }

    #[test]
    fn a_watched_move_shows_old_and_new_path_and_other_ops_a_null_old_path_in_json() {
        let e = WatchEvent {
            path: "team/b".into(),
            old_path: "team/a".into(),
            op: "move".into(),
            author: "cd".repeat(32),
            author_name: "bob".into(),
            intention: "ef".repeat(32),
            hlc_wall_ms: 0,
            local: false,
        };
        assert_eq!(
            watch_human(&e),
            "1970-01-01T00:00:00.000Z  bob (cdcdcdcd)  efefefefefefefef  move     team/a -> team/b"
        );
        assert!(watch_json(&e).contains(r#""path":"team/b","old_path":"team/a""#));
        let write = WatchEvent {
            old_path: String::new(),
            op: "write".into(),
            ..e
        };
        assert!(watch_json(&write).contains(r#""old_path":null"#));
        assert!(watch_human(&write).ends_with("write    team/b"));
    }

    #[test]
    fn a_failed_proof_says_so_marks_the_author_without_authority_and_where_it_ends() {
        use lattice_mount::proto::control::{VerifiedIntention, VerifiedOp, VerifiedVersion};
        let v = VerifyResponse {
            path: "docs/a".into(),
            founder: "ab".repeat(32),
            founder_name: "laptop".into(),
            versions: vec![VerifiedVersion {
                version: "cd".repeat(32),
                winner: true,
                size: 5,
                shown: "docs/a".into(),
                ops: vec![VerifiedOp {
                    op: "write".into(),
                    intention: "ef".repeat(32),
                    author: "12".repeat(32),
                    hlc_wall_ms: 1_000,
                }],
            }],
            intentions: vec![VerifiedIntention {
                hash: "ef".repeat(32),
                author: "12".repeat(32),
                seq: 1,
                deps: vec!["00".repeat(32)],
                links_held: 1,
                ..Default::default()
            }],
            failures: vec!["intention efef: author may not write to this store".into()],
            purged_below_ms: Some(86_400_000),
            ..Default::default()
        };
        let human = verify_human(&v);
        assert!(human.starts_with("docs/a: NOT verified, 1 failure(s): 1 live version(s)"));
        assert!(human.contains("  write   1970-01-01T00:00:01.000Z  12121212  in efefefefefefefef"));
        assert!(human.contains("NO AUTHORITY  links 1/1 held"), "{human}");
        assert!(human.ends_with(
            "verified back to 1970-01-02T00:00:00.000Z; earlier history purged at the frontier\n"
        ));
        let json = verify_json(&v);
        assert!(json.contains("\"verified\":false"), "{json}");
        assert!(json.contains("\"purged_below_ms\":86400000"), "{json}");
        assert!(
            json.contains("\"authority\":null,\"granted_by\":null"),
            "{json}"
        );
        assert!(json
            .ends_with("\"failures\":[\"intention efef: author may not write to this store\"]}"));
    }
}
