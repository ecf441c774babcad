//! Display names: collision suffixes, conflict-copy names, and parsing them back.

use crate::hlc::civil_from_days;

/// Most ` (` groups considered when parsing a decorated name back to raw names.
const MAX_PARSED_GROUPS: usize = 8;

/// Splits `name` into stem and extension (with its dot). A leading dot starts no extension.
fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 && i + 1 < name.len() => name.split_at(i),
        _ => (name, ""),
    }
}

/// `STEM (TAG).EXT` for `name` = `STEM.EXT`.
pub(crate) fn decorate(name: &str, tag: &str) -> String {
    let (stem, ext) = split_ext(name);
    format!("{stem} ({tag}){ext}")
}

/// The tags tried, in order, for a colliding entry with id bytes `id` by `author8`.
pub(crate) fn collision_tags(author8: &str, wall_ms: u64, counter: u32) -> [String; 3] {
    [
        author8.to_string(),
        format!("{author8}{:04x}", wall_ms & 0xffff),
        format!("{author8}-{wall_ms:x}.{counter:x}"),
    ]
}

/// The conflict tag `conflict WHO YYYY-MM-DD HHMMSS` for a head written at `wall_ms` (UTC).
pub(crate) fn conflict_tag(who: &str, wall_ms: u64) -> String {
    let secs = wall_ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    format!(
        "conflict {who} {y:04}-{m:02}-{d:02} {:02}{:02}{:02}",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Raw names that `name` may have been decorated from: itself, then with one or two
/// ` (...)` groups taken out.
pub(crate) fn raw_candidates(name: &str) -> Vec<String> {
    let mut groups = Vec::new();
    let mut from = 0;
    while let Some(i) = name[from..].find(" (").map(|i| i + from) {
        let Some(j) = name[i + 2..].find(')').map(|j| j + i + 2) else {
            break;
        };
        groups.push((i, j + 1));
        if groups.len() == MAX_PARSED_GROUPS {
            break;
        }
        from = i + 2;
    }
    let mut out = vec![name.to_string()];
    for (a, &(i, j)) in groups.iter().enumerate() {
        out.push(format!("{}{}", &name[..i], &name[j..]));
        for &(k, l) in &groups[a + 1..] {
            if k >= j {
                out.push(format!("{}{}{}", &name[..i], &name[j..k], &name[l..]));
            }
        }
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_is_kept_after_the_tag_but_leading_dots_are_not_extensions() {
        assert_eq!(decorate("a.txt", "bob"), "a (bob).txt");
        assert_eq!(decorate("Makefile", "bob"), "Makefile (bob)");
        assert_eq!(decorate(".bashrc", "bob"), ".bashrc (bob)");
        assert_eq!(decorate("x.tar.gz", "bob"), "x.tar (bob).gz");
        assert_eq!(decorate("dot.", "bob"), "dot. (bob)");
    }

    #[test]
    fn conflict_tag_formats_utc_civil_time() {
        assert_eq!(
            conflict_tag("bob", 1_795_256_102_000),
            "conflict bob 2026-11-21 101502"
        );
        assert_eq!(conflict_tag("x", 0), "conflict x 1970-01-01 000000");
        assert_eq!(
            conflict_tag("x", 951_782_400_000 + 3_599_000),
            "conflict x 2000-02-29 005959"
        );
    }

    #[test]
    fn decorated_names_parse_back_to_their_raw_name() {
        let once = decorate("a.txt", "conflict bob 2026-11-21 101502");
        assert!(raw_candidates(&once).contains(&"a.txt".to_string()));
        let twice = decorate(&decorate("a.txt", "0a0b0c0d"), "conflict bob 2026-11-21 1");
        assert!(raw_candidates(&twice).contains(&"a.txt".to_string()));
        assert_eq!(raw_candidates("plain"), vec!["plain".to_string()]);
    }
}
