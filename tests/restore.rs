//! End-to-end tests of `history` versions, `history --deleted` and `restore`: the real
//! binary, a real FUSE mount, files written and read with std::fs.

mod common;

use std::fs;
use std::process::Output;

use common::{fuse_available, random_bytes, Daemon};

fn daemon_with_store(name: &str) -> Option<Daemon> {
    if !fuse_available() {
        return None;
    }
    let d = Daemon::start();
    fs::create_dir(d.path(name)).unwrap();
    Some(d)
}

/// Runs the CLI and returns its stdout, failing the test if it failed.
fn ok(d: &Daemon, args: &[&str]) -> String {
    d.assert_mounted();
    let out = d.run(args);
    assert!(out.status.success(), "{args:?} failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the CLI expecting a failure with one line on stderr; returns that line.
fn fails(d: &Daemon, args: &[&str]) -> String {
    d.assert_mounted();
    let out: Output = d.run(args);
    assert!(!out.status.success(), "{args:?} succeeded: {out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    err
}

/// The values of `"key":"..."` in a JSON text, in order.
fn json_strings(text: &str, key: &str) -> Vec<String> {
    let pat = format!("\"{key}\":\"");
    text.match_indices(&pat)
        .map(|(i, _)| {
            let rest = &text[i + pat.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

/// The values of `"key":123` in a JSON text, in order.
fn json_numbers(text: &str, key: &str) -> Vec<u64> {
    let pat = format!("\"{key}\":");
    text.match_indices(&pat)
        .map(|(i, _)| {
            let rest = &text[i + pat.len()..];
            let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap();
            rest[..end].parse().unwrap()
        })
        .collect()
}

#[test]
fn an_overwritten_file_is_restored_byte_for_byte_through_the_mount() {
    let Some(d) = daemon_with_store("docs") else {
        return;
    };
    let path = d.path("docs/report.bin");
    let p = path.to_str().unwrap();
    let first = random_bytes(3 << 20, 1);
    let second = random_bytes(2 << 20, 2);
    fs::write(&path, &first).unwrap();
    fs::write(&path, &second).unwrap();
    fs::write(&path, b"third, small").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"third, small");

    let json = ok(&d, &["history", p, "--json"]);
    assert!(
        json.starts_with("{\"path\":\"/docs/report.bin\",\"entries\":["),
        "{json}"
    );
    let versions = &json[json.find("\"versions\":").unwrap()..];
    // The kernel may hand over a large write in more than one commit: versions in
    // between may show, so each is found by its size.
    let hashes = json_strings(versions, "version");
    let sizes = json_numbers(versions, "size");
    let states = json_strings(versions, "state");
    assert_eq!(sizes.last(), Some(&12), "{json}");
    assert_eq!(states.last().map(String::as_str), Some("current"), "{json}");
    assert!(
        states[..states.len() - 1].iter().all(|s| s == "past"),
        "{json}"
    );
    // The last version of each size: a large write may show a prefix of it first.
    let at = |len: usize| sizes.iter().rposition(|&s| s == len as u64).unwrap();
    let (first_id, second_id) = (&hashes[at(first.len())], &hashes[at(second.len())]);
    assert_eq!(at(second.len()), sizes.len() - 2, "{json}");
    assert!(versions.contains("\"local\":true") && !versions.contains("\"local\":false"));
    let human = ok(&d, &["history", p]);
    assert!(human.contains("versions"), "{human}");
    assert!(human.contains(&first_id[..16]), "{human}");
    // Each intention's signed form checks out with plain blake3 and ed25519-dalek.
    let signed = &json[json.find("\"intentions\":").unwrap()..];
    let field = |key: &str| -> Vec<Vec<u8>> {
        json_strings(signed, key)
            .iter()
            .map(|h| lattice_mount::unhex(h).unwrap())
            .collect()
    };
    let (hashes, bodies, messages) = (field("hash"), field("body"), field("signing_message"));
    let (signatures, authors) = (field("signature"), field("author"));
    assert!(hashes.len() >= 3, "{signed}");
    for k in 0..hashes.len() {
        assert_eq!(blake3::hash(&bodies[k]).as_bytes()[..], hashes[k][..]);
        assert!(messages[k].ends_with(&hashes[k]));
        let key = ed25519_dalek::VerifyingKey::from_bytes(&authors[k][..].try_into().unwrap());
        let signature = ed25519_dalek::Signature::from_slice(&signatures[k]).unwrap();
        ed25519_dalek::Verifier::verify(&key.unwrap(), &messages[k], &signature).unwrap();
    }

    // Default: the version before the current one.
    let out = ok(&d, &["restore", p]);
    assert!(out.contains(&second_id[..16]), "{out}");
    assert!(
        fs::read(&path).unwrap() == second,
        "restored content differs"
    );
    // By id prefix, as `history` prints it.
    ok(&d, &["restore", p, "--version", &first_id[..16]]);
    d.assert_mounted();
    assert!(
        fs::read(&path).unwrap() == first,
        "restored content differs"
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), first.len() as u64);
    let after = ok(&d, &["history", p, "--json"]);
    let after_states = json_strings(&after[after.find("\"versions\":").unwrap()..], "state");
    assert_eq!(
        after_states.len(),
        states.len() + 2,
        "each restore is a version: {after}"
    );
    assert_eq!(after_states.last().map(String::as_str), Some("current"));

    // By time: the version current at the 3 MiB version's time (unix seconds round
    // down, so RFC 3339 with milliseconds names it exactly).
    let times = json_strings(versions, "time");
    ok(&d, &["restore", p, "--at", &times[at(first.len())]]);
    assert!(
        fs::read(&path).unwrap() == first,
        "restored content differs"
    );
    let err = fails(&d, &["restore", p, "--version", "0000000000000000"]);
    assert!(err.contains("no version"), "{err}");
    let err = fails(&d, &["restore", p, "--at", "1970-01-02T00:00:00Z"]);
    assert!(err.contains("no version at or before"), "{err}");
    let err = fails(&d, &["restore", d.path("docs/nope").to_str().unwrap()]);
    assert!(err.contains("no such file"), "{err}");
    // Who wrote the current version, proven from the local store.
    let proof = ok(&d, &["verify", p]);
    assert!(
        proof.starts_with("docs/report.bin: verified: 1 live version(s)"),
        "{proof}"
    );
    assert!(proof.contains("verified back to the genesis"), "{proof}");
    let proof = ok(&d, &["verify", p, "--json"]);
    assert!(proof.contains("\"verified\":true") && proof.contains("\"failures\":[]"));
    assert!(proof.contains("\"authority\":\"genesis\""), "{proof}");
    let err = fails(&d, &["verify", d.path("docs").to_str().unwrap()]);
    assert!(err.contains("not a regular file"), "{err}");
    assert!(
        fs::read(&path).unwrap() == first,
        "failed restores changed nothing"
    );
}

#[test]
fn deleted_files_are_listed_and_restored_in_place_or_elsewhere_through_the_mount() {
    let Some(d) = daemon_with_store("docs") else {
        return;
    };
    let big = random_bytes(1 << 20, 3);
    fs::create_dir_all(d.path("docs/project/src")).unwrap();
    fs::write(d.path("docs/project/src/main.rs"), b"fn main() {}\n").unwrap();
    fs::write(d.path("docs/project/src/main.rs"), b"fn main() { run() }\n").unwrap();
    fs::write(d.path("docs/project/data.bin"), &big).unwrap();
    fs::write(d.path("docs/kept.txt"), b"kept").unwrap();
    d.sh("rm -r docs/project");
    assert!(!d.path("docs/project").exists());

    let listed = ok(
        &d,
        &["history", "--deleted", d.path("docs").to_str().unwrap()],
    );
    let lines: Vec<&str> = listed.lines().filter(|l| l.starts_with("docs/")).collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[0].starts_with("docs/project/data.bin  deleted "),
        "{listed}"
    );
    assert!(
        lines[1].starts_with("docs/project/src/main.rs  deleted "),
        "{listed}"
    );
    assert!(listed.contains("by e2e"), "{listed}");
    let json = ok(
        &d,
        &[
            "history",
            "--deleted",
            d.path("docs/project").to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        json.starts_with("{\"path\":\"/docs/project\",\"deleted\":["),
        "{json}"
    );
    assert_eq!(
        json_strings(&json, "path"),
        [
            "/docs/project",
            "docs/project/data.bin",
            "docs/project/src/main.rs"
        ]
    );

    // In place: the deleted directories come back with it.
    let main = d.path("docs/project/src/main.rs");
    let out = ok(&d, &["restore", main.to_str().unwrap()]);
    assert!(out.contains("as docs/project/src/main.rs"), "{out}");
    assert_eq!(fs::read(&main).unwrap(), b"fn main() { run() }\n");
    // Elsewhere: a new file with the old content.
    let data = d.path("docs/project/data.bin");
    let copy = d.path("docs/data-restored.bin");
    let err = fails(
        &d,
        &[
            "restore",
            data.to_str().unwrap(),
            "--to",
            d.path("docs/kept.txt").to_str().unwrap(),
        ],
    );
    assert!(err.contains("already exists"), "{err}");
    let out = ok(
        &d,
        &[
            "restore",
            data.to_str().unwrap(),
            "--to",
            copy.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        out.starts_with("{\"path\":\"docs/data-restored.bin\",\"version\":\""),
        "{out}"
    );
    assert!(
        out.trim_end()
            .ends_with(",\"size\":1048576,\"created\":true}"),
        "{out}"
    );
    assert!(fs::read(&copy).unwrap() == big, "restored copy differs");
    assert!(!data.exists(), "--to leaves the old place deleted");
    assert_eq!(fs::read(d.path("docs/kept.txt")).unwrap(), b"kept");
    let listed = ok(
        &d,
        &["history", "--deleted", d.path("docs").to_str().unwrap()],
    );
    assert!(listed.contains("docs/project/data.bin"), "{listed}");
    assert!(!listed.contains("main.rs"), "{listed}");
}

#[test]
fn a_version_collected_under_retention_zero_is_marked_and_refused_through_the_cli() {
    let Some(d) = daemon_with_store("docs") else {
        return;
    };
    let path = d.path("docs/big.bin");
    let p = path.to_str().unwrap();
    let old = random_bytes(1 << 20, 4);
    fs::write(&path, &old).unwrap();
    fs::write(&path, b"new").unwrap();
    ok(&d, &["retention", "docs", "0"]);
    // Content put less than PUT_GRACE ago may belong to a write on its way: kept.
    std::thread::sleep(lattice_mount::PUT_GRACE + std::time::Duration::from_secs(1));
    ok(&d, &["gc", "docs"]);
    let json = ok(&d, &["history", p, "--json"]);
    let versions = &json[json.find("\"versions\":").unwrap()..];
    let ids = json_strings(versions, "version");
    let sizes = json_numbers(versions, "size");
    let big = sizes.iter().position(|&s| s == old.len() as u64).unwrap();
    let one = |key: &str| format!("\"version\":\"{}\"", ids[big]) + key;
    let entry = &versions[versions.find(&one("")).unwrap()..];
    let entry = &entry[..entry.find('}').unwrap()];
    assert!(entry.contains("\"local\":false"), "{entry}");
    assert!(entry.contains("\"retained\":false"), "{entry}");
    let human = ok(&d, &["history", p]);
    assert!(
        human.contains("past retention, not on this node"),
        "{human}"
    );
    let err = fails(&d, &["restore", p, "--version", &ids[big][..16]]);
    assert!(err.contains("was collected"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b"new");
}
