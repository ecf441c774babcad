//! Display names: collision suffixes, conflict-copy names, and parsing them back.

use crate::fs::op::MAX_NAME_BYTES;
use crate::hlc::civil_from_days;

/// Most ` (` groups considered when parsing a decorated name back to raw names.
const MAX_PARSED_GROUPS: usize = 8;
/// Longest tag in a decorated name, so that a stem always keeps some room.
const MAX_TAG_BYTES: usize = 128;
/// Longest author name in a conflict tag: a display name may be 255 bytes.
const MAX_WHO_BYTES: usize = 64;
/// A decorated name that had to be cut is at least this long: each of its two cut
/// parts loses less than one 4-byte character.
pub(crate) const MIN_CUT_NAME_BYTES: usize = MAX_NAME_BYTES - 6;

/// Splits `name` into stem and extension (with its dot). A leading dot starts no extension.
fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 && i + 1 < name.len() => name.split_at(i),
        _ => (name, ""),
    }
}

/// `STEM (TAG).EXT` for `name` = `STEM.EXT`, always a valid file name of at most
/// [`MAX_NAME_BYTES`]: when it would be longer, the extension is cut to what the stem
/// leaves of the room beside the tag (at least half of it) and the stem to the rest, each at a character boundary.
/// Such a name no longer parses back to its raw name ([`raw_candidates`]); lookups
/// of names at least [`MIN_CUT_NAME_BYTES`] long also scan the long raw names.
pub(crate) fn decorate(name: &str, tag: &str) -> String {
    let (stem, ext) = split_ext(name);
    let tag = prefix(tag, MAX_TAG_BYTES);
    if stem.len() + ext.len() + tag.len() + 3 <= MAX_NAME_BYTES {
        return format!("{stem} ({tag}){ext}");
    }
    let room = MAX_NAME_BYTES - 3 - tag.len();
    let ext = prefix(ext, room.saturating_sub(stem.len()).max(room / 2));
    let stem = prefix(stem, room - ext.len());
    format!("{stem} ({tag}){ext}")
}

/// What every name [`decorate`]d from `raw` starts with (unless cut to fit).
pub(crate) fn decorated_prefix(raw: &str) -> String {
    format!("{} (", split_ext(raw).0)
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// True if decorating `raw` may have cut it (see [`decorate`]).
pub(crate) fn may_be_cut(raw: &str) -> bool {
    raw.len() + MAX_TAG_BYTES + 3 > MAX_NAME_BYTES
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
/// `who` is shown without parentheses, `/` or control characters (they would make the
/// name unparsable or invalid) and cut to [`MAX_WHO_BYTES`].
pub(crate) fn conflict_tag(who: &str, wall_ms: u64) -> String {
    let who: String = prefix(who, MAX_WHO_BYTES)
        .chars()
        .map(|c| match c {
            '(' | ')' | '/' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
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
        for raw in ["a.txt", "Makefile", ".bashrc", "x.tar.gz", "dot."] {
            assert!(decorate(raw, "bob").starts_with(&decorated_prefix(raw)));
        }
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
    fn decorated_names_are_valid_file_names_even_for_the_longest_raw_names() {
        let tag = conflict_tag(&"w".repeat(255), u64::MAX);
        let raws = [
            "x".repeat(255),
            format!("{}.txt", "x".repeat(251)),
            format!("a.{}", "e".repeat(253)),
            "é".repeat(127),
            format!("{}.{}", "ü".repeat(60), "ß".repeat(60)),
            ".".repeat(255),
        ];
        for raw in &raws {
            for t in [tag.as_str(), "0a0b0c0d", &"t".repeat(300)] {
                let d = decorate(raw, t);
                assert!(d.len() <= MAX_NAME_BYTES, "{} bytes", d.len());
                assert!(d.len() >= MIN_CUT_NAME_BYTES || !may_be_cut(raw), "{d}");
                crate::fs::op::validate_name(&d).unwrap();
                assert_eq!(d, decorate(raw, t), "deterministic");
            }
        }
        assert_eq!(decorate("a.txt", &tag).len(), "a.txt".len() + tag.len() + 3);
    }

    #[test]
    fn a_conflict_tag_never_holds_parentheses_slashes_or_control_characters() {
        let t = conflict_tag("a) (b/c\nd\0", 0);
        assert_eq!(t, "conflict a_ _b_c_d_ 1970-01-01 000000");
        assert!(conflict_tag(&"é".repeat(200), 0).len() <= 9 + MAX_WHO_BYTES + 18);
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
