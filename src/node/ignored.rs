//! Replicated ignore rules: which new names stay local to this node.
//!
//! A `.latticeignore` file (gitignore syntax, parsed by the `ignore` crate's gitignore
//! module, the matcher ripgrep uses) in any directory of a store holds rules for the
//! names below that directory. It is an ordinary replicated file, so every member
//! applies the same rules once it has the file. Built-in defaults ([`DEFAULT_RULES`]:
//! editor swap and lock files) rank below every file, so a `.latticeignore` can lift
//! one with `!NAME`. As in git, a deeper file's rules take precedence over a
//! shallower one's, the last matching line of a file wins, and a name under an ignored
//! directory is ignored.
//!
//! Rules decide only where a *new* name goes (create, mkdir, symlink, the target of a
//! rename): a name a replicated entry holds stays replicated, as a tracked file stays
//! tracked in git. A line that is not a valid pattern is skipped, logged once and listed
//! by [`IgnoreRules::problems`] (shown by `status`); the other lines still apply.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use parking_lot::Mutex;

use crate::cas::{Cas, Content};
use crate::fs::{FsState, Node as FsNode};
use crate::ids::{FileId, OpId, StoreId};
use crate::store::Store;

use super::paths::MAX_PATH_DEPTH;

/// Name of the file holding a directory's ignore rules.
pub(crate) const IGNORE_FILE: &str = ".latticeignore";

/// Rules that apply without any `.latticeignore`: vim's swap files (`.x.swp`, then
/// `.swo` ... `.swa`, and the `.swx` it probes with), its `4913` write probe and its
/// backup while writing (`x~`, also Emacs's backups), Emacs lock files,
/// and Microsoft Office and LibreOffice lock files.
pub(crate) const DEFAULT_RULES: &[&str] =
    &["*.swp", ".*.sw?", "4913", "*~", ".#*", "~$*", ".~lock.*#"];

/// Largest `.latticeignore` read; a larger one is reported and its rules skipped (a
/// real one is a few hundred bytes, and this keeps it inline in its intention).
pub(crate) const MAX_IGNORE_FILE_BYTES: u64 = 16 * 1024;

/// The parsed rules of one directory's `.latticeignore`.
struct Level {
    /// The content they were parsed from: parsed again when it changes.
    pieces: Vec<Content>,
    rules: Arc<Gitignore>,
    /// Lines skipped, with why.
    problems: Vec<String>,
}

/// The node's ignore rules: the defaults and a cache of parsed `.latticeignore` files.
pub(crate) struct IgnoreRules {
    defaults: Gitignore,
    /// Per store and directory holding a `.latticeignore`, its parsed rules.
    levels: Mutex<HashMap<(StoreId, FileId), Level>>,
}

impl IgnoreRules {
    /// Rules holding only the defaults.
    pub(crate) fn new() -> Self {
        let mut b = GitignoreBuilder::new(".");
        for line in DEFAULT_RULES {
            b.add_line(None, line).expect("the default rules are valid");
        }
        Self {
            defaults: b.build().expect("the default rules are valid"),
            levels: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a new entry `name` (a directory if `is_dir`) in directory `dir` of
    /// `store` is to stay local. `.latticeignore` itself is never ignored.
    pub(crate) fn is_ignored(
        &self,
        cas: &Cas,
        store: &Store,
        dir: FileId,
        name: &str,
        is_dir: bool,
    ) -> bool {
        if name == IGNORE_FILE {
            return false;
        }
        // From `dir` up to the store root: each directory, its `.latticeignore` content,
        // and the path of `name` below it.
        let chain = store.read(|s| chain(s, dir, name));
        for (dir, pieces, path) in chain {
            let Some(pieces) = pieces else {
                // A removed file's rules and problems go with it.
                self.levels.lock().remove(&(store.id(), dir));
                continue;
            };
            let rules = self.rules(cas, store.id(), dir, pieces);
            let m = rules.matched_path_or_any_parents(&path, is_dir);
            if !m.is_none() {
                return m.is_ignore();
            }
        }
        self.defaults
            .matched_path_or_any_parents(name, is_dir)
            .is_ignore()
    }

    /// The parsed rules of `dir`'s `.latticeignore` with content `pieces`, parsing it
    /// again if it changed (one that cannot be read holds no rules).
    fn rules(
        &self,
        cas: &Cas,
        store: StoreId,
        dir: FileId,
        pieces: Vec<Content>,
    ) -> Arc<Gitignore> {
        if let Some(l) = self.levels.lock().get(&(store, dir)) {
            if l.pieces == pieces {
                return l.rules.clone();
            }
        }
        // Content not here yet would block the caller while it is fetched: until it
        // arrives the file holds no rules (and nothing is cached).
        if !cas.missing(&pieces).is_ok_and(|m| m.is_empty()) {
            return Arc::new(Gitignore::empty());
        }
        let (rules, problems) = match read_small(cas, store, &pieces) {
            Ok(text) => parse(&text),
            Err(why) => (Gitignore::empty(), vec![why]),
        };
        for p in &problems {
            tracing::warn!("{IGNORE_FILE} in store {} skipped: {p}", store.to_hex());
        }
        let rules = Arc::new(rules);
        self.levels.lock().insert(
            (store, dir),
            Level {
                pieces,
                rules: rules.clone(),
                problems,
            },
        );
        rules
    }

    /// The problems found in `store`'s `.latticeignore` files read so far.
    pub(crate) fn problems(&self, store: StoreId) -> Vec<String> {
        let mut out: Vec<String> = self
            .levels
            .lock()
            .iter()
            .filter(|((s, _), _)| *s == store)
            .flat_map(|(_, l)| l.problems.iter().cloned())
            .collect();
        out.sort();
        out
    }
}

/// Each directory from `dir` up to the store root, with its `.latticeignore` content (if
/// it has one) and the path of `name` relative to it.
fn chain(s: &FsState, dir: FileId, name: &str) -> Vec<(FileId, Option<Vec<Content>>, PathBuf)> {
    let mut out = Vec::new();
    let mut path = PathBuf::from(name);
    let mut cur = dir;
    for _ in 0..MAX_PATH_DEPTH {
        let pieces = match s.lookup(cur, IGNORE_FILE) {
            Ok(node @ FsNode::Entry { .. }) => s.content(node).ok().map(|v| v.pieces),
            _ => None,
        };
        out.push((cur, pieces, path.clone()));
        if cur == OpId::ROOT {
            break;
        }
        let Some((parent, dir_name)) = s.place(cur) else {
            break;
        };
        path = PathBuf::from(dir_name).join(path);
        cur = parent;
    }
    out
}

/// The text of a `.latticeignore`, or why it cannot be used.
fn read_small(cas: &Cas, store: StoreId, pieces: &[Content]) -> Result<String, String> {
    let size: u64 = pieces.iter().map(Content::len).sum();
    if size > MAX_IGNORE_FILE_BYTES {
        return Err(format!(
            "{size} bytes, over the {MAX_IGNORE_FILE_BYTES}-byte limit"
        ));
    }
    let mut buf = vec![0; size as usize];
    let mut done = 0;
    while done < buf.len() {
        let n = cas
            .read(store, pieces, done as u64, &mut buf[done..])
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("content shorter than its size".into());
        }
        done += n;
    }
    String::from_utf8(buf).map_err(|_| "not UTF-8".into())
}

/// The rules of one `.latticeignore` text, with a problem per line that is not a valid
/// pattern (skipped).
fn parse(text: &str) -> (Gitignore, Vec<String>) {
    let mut b = GitignoreBuilder::new(".");
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Err(e) = b.add_line(None, line) {
            problems.push(format!("line {}: {e}", i + 1));
        }
    }
    match b.build() {
        Ok(rules) => (rules, problems),
        Err(e) => {
            problems.push(e.to_string());
            (Gitignore::empty(), problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignored(rules: &Gitignore, path: &str, is_dir: bool) -> bool {
        rules.matched_path_or_any_parents(path, is_dir).is_ignore()
    }

    #[test]
    fn the_defaults_cover_vim_emacs_and_office_temporary_files() {
        let d = IgnoreRules::new().defaults;
        for name in [
            ".x.txt.swp",
            ".x.txt.swo",
            ".x.txt.swx",
            "4913",
            "x.txt~",
            ".#x.txt",
            "~$report.docx",
            ".~lock.a.odt#",
        ] {
            assert!(ignored(&d, name, false), "{name}");
        }
        for name in ["x.txt", "~x.txt", "swp", "49130", ".latticeignore"] {
            assert!(!ignored(&d, name, false), "{name}");
        }
    }

    #[test]
    fn a_malformed_line_is_reported_and_the_others_apply() {
        let (rules, problems) = parse("*.log\n[z-a\n# comment\nbuild/\n");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("line 2:"), "{problems:?}");
        assert!(ignored(&rules, "a.log", false));
        assert!(ignored(&rules, "build", true));
        assert!(ignored(&rules, "build/x.c", false), "under an ignored dir");
        assert!(
            !ignored(&rules, "build", false),
            "a file named build is not a dir"
        );
        assert!(!ignored(&rules, "a.txt", false));
    }

    #[test]
    fn the_deepest_latticeignore_with_a_matching_line_decides_and_edits_are_read_again() {
        use crate::fs::op::Kind;
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let node = crate::node::Node::open(tmp.path(), Some("n"), rt.handle().clone()).unwrap();
        let store = node.create_store("docs").unwrap();
        let text = |t: &str| Content::Inline(bytes::Bytes::copy_from_slice(t.as_bytes()));
        let make = |parent: FileId, name: &str, kind: Kind, content: Content| -> FileId {
            store
                .write(|tx| {
                    let body = tx
                        .state()
                        .plan_create(parent, name, kind, 0o644, 0, 0, 0, content, 0)?;
                    Ok(tx.push(body)?)
                })
                .unwrap()
        };
        let root_rules = make(
            OpId::ROOT,
            IGNORE_FILE,
            Kind::File,
            text("*.log\nbuild/\n[z-a\n"),
        );
        let sub = make(OpId::ROOT, "sub", Kind::Dir, Content::empty());
        make(sub, IGNORE_FILE, Kind::File, text("!keep.log\n"));
        let ignored = |dir, name, is_dir| node.is_ignored(&store, dir, name, is_dir);
        assert!(ignored(OpId::ROOT, "a.log", false));
        assert!(
            ignored(sub, "a.log", false),
            "a rule reaches below its directory"
        );
        assert!(
            !ignored(sub, "keep.log", false),
            "a deeper file's line wins"
        );
        assert!(ignored(OpId::ROOT, "keep.log", false));
        assert!(ignored(OpId::ROOT, "build", true));
        assert!(
            !ignored(OpId::ROOT, "build", false),
            "build/ names directories only"
        );
        assert!(
            ignored(sub, "x.swp", false),
            "the defaults apply everywhere"
        );
        assert!(!ignored(sub, IGNORE_FILE, false));
        let problems = node.ignore_problems(store.id());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("line 3:"), "{problems:?}");

        store
            .write(|tx| {
                let body = tx.state().plan_write(root_rules, text("*.tmp\n"), 1)?;
                tx.push(body)?;
                Ok(())
            })
            .unwrap();
        assert!(
            !ignored(OpId::ROOT, "a.log", false),
            "the edited rules apply"
        );
        assert!(ignored(OpId::ROOT, "a.tmp", false));
        assert!(node.ignore_problems(store.id()).is_empty());

        store
            .write(|tx| {
                let body = tx.state().plan_unlink(OpId::ROOT, IGNORE_FILE)?;
                tx.push(body)?;
                Ok(())
            })
            .unwrap();
        assert!(
            !ignored(OpId::ROOT, "a.tmp", false),
            "a removed file holds no rules"
        );
    }

    #[test]
    fn a_negated_line_lifts_an_earlier_one() {
        let (rules, problems) = parse("*.log\n!keep.log\n");
        assert!(problems.is_empty());
        assert!(ignored(&rules, "a.log", false));
        assert!(rules.matched("keep.log", false).is_whitelist());
    }
}
