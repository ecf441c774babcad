//! The paged projection's header and its write-settle cycle.
//!
//! A store keeps its projection in page tables (see `fs::paged`) plus one header: the
//! parts that are small or must be read whole (`HEADER_MAGIC`, a u32 format version, the
//! key table, led by the authors the page records name by number, then the purge point
//! and late count, the store name, retention and horizon registers, the members with the
//! keys that left, the delete record and the snapshot labels (from format 5; a format 4
//! header is read as one without labels), and the record count of each page table in
//! [`Page::ALL`] order), in the codec of format 6 snapshots. Format 6 had no sweep
//! tables (it counted the tables up to [`Page::Log`]): they are filled from the entries
//! and file records at open. Formats 4 and 5 also held the move log in the header (and
//! counted the tables before [`Page::Log`]): it is read into the paged log, whose
//! records the next write of pages stores. Formats 1
//! and 2 (builds before directory times, leave and delete; format 1 also had no horizon
//! register) and 3 (records naming authors by whole keys) are refused like snapshot
//! formats 3 and 4: the store rebuilds the projection from its intentions.

use std::sync::Arc;

use crate::fs::codec::{corrupt, Reader, Writer};
use crate::fs::error::FsError;
use crate::fs::paged::Authors;
use crate::fs::paged::{Page, PageSource, PageWrite, Paged};
use crate::fs::snapshot::{decode_registers, rebuilt, seal, unseal};
use crate::fs::state::FsState;
use crate::fs::tree::Tree;

/// First bytes of a header, before its format version.
pub(crate) const HEADER_MAGIC: &[u8; 8] = b"LMFSHEAD";
/// Format version of the headers this build writes.
const HEADER_VERSION: u32 = 7;
/// The header format before the sweep tables.
const HEADER_NO_SWEEP: u32 = 6;
/// The header format that held the move log.
const HEADER_LOG_INSIDE: u32 = 5;
/// The header format before snapshot labels: read as a format 5 header without any.
const HEADER_NO_LABELS: u32 = 4;
/// The tables format 6 counted: those before the sweep tables.
const TABLES_NO_SWEEP: usize = 8;
/// The tables formats 4 and 5 counted: those before [`Page::Log`].
const TABLES_LOG_INSIDE: usize = 7;
/// The header formats of earlier builds: recognised, and rebuilt from the intentions
/// (in 1 and 2 the page records lack each directory's listing op; in 3 each record
/// carries its own table of author keys, and keys hold whole author keys).
pub(crate) const HEADER_REBUILT: [u32; 3] = [1, 2, 3];

/// What a store writes to persist the projection, in one transaction with the
/// intentions it reflects.
pub struct PageBatch {
    /// Empty the page tables first: the state was built in memory and holds every record.
    pub clear: bool,
    /// Records to put or delete.
    pub writes: Vec<PageWrite>,
    /// The header to store.
    pub header: Vec<u8>,
    /// Per table, the generation the writes were cut at.
    cuts: [u64; Page::ALL.len()],
}

impl PageBatch {
    /// What [`FsState::settle_pages`] needs once the batch is committed.
    pub fn cut(&self) -> PageCut {
        PageCut(self.cuts)
    }
}

/// The generations a committed [`PageBatch`] was cut at.
#[derive(Clone, Copy, Debug)]
pub struct PageCut([u64; Page::ALL.len()]);

impl FsState {
    /// Every record changed since the last committed batch, with the header.
    pub fn take_pages(&mut self) -> PageBatch {
        let clear = !self.paged;
        let mut writes = Vec::new();
        let cuts = [
            self.tree.entries.dirty(&mut writes),
            self.tree.children.dirty(&mut writes),
            self.tree.subdirs.dirty(&mut writes),
            self.tree.by_file.dirty(&mut writes),
            self.files.dirty(&mut writes),
            self.applied.dirty(&mut writes),
            self.pending.dirty(&mut writes),
            self.tree.log.dirty(&mut writes),
            self.removals.dirty(&mut writes),
            self.replacements.dirty(&mut writes),
        ];
        PageBatch {
            clear,
            writes,
            header: self.encode_header(),
            cuts,
        }
    }

    /// After a batch cut at `cut` was committed: reads its records from `src`, which
    /// holds that commit, and keeps only what changed since in memory.
    pub fn settle_pages(&mut self, cut: PageCut, src: Arc<dyn PageSource>) {
        let [entries, children, subdirs, by_file, files, applied, pending, log, removals, replacements] =
            cut.0;
        self.tree.log.settle(log, src.clone());
        self.tree.entries.settle(entries, src.clone());
        self.tree.children.settle(children, src.clone());
        self.tree.subdirs.settle(subdirs, src.clone());
        self.tree.by_file.settle(by_file, src.clone());
        self.files.settle(files, src.clone());
        self.applied.settle(applied, src.clone());
        self.pending.settle(pending, src.clone());
        self.removals.settle(removals, src.clone());
        self.replacements.settle(replacements, src);
        self.paged = true;
    }

    /// True if `bytes` start like a page header (not a snapshot).
    pub fn is_pages_header(bytes: &[u8]) -> bool {
        bytes.starts_with(HEADER_MAGIC)
    }

    /// The state whose header is `header` and whose records are in `src`.
    pub fn open_pages(header: &[u8], src: Arc<dyn PageSource>) -> Result<Self, FsError> {
        let mut r = Reader::new(header, Vec::new());
        if r.take(HEADER_MAGIC.len())? != HEADER_MAGIC {
            return Err(corrupt("bad header magic"));
        }
        let version = u32::from_le_bytes(r.array()?);
        let labels = match version {
            HEADER_VERSION | HEADER_NO_SWEEP | HEADER_LOG_INSIDE => true,
            HEADER_NO_LABELS => false,
            v if HEADER_REBUILT.contains(&v) => return Err(rebuilt("header format", v)),
            v => {
                return Err(corrupt(&format!(
                    "header format {v}, this build reads {HEADER_NO_LABELS} to {HEADER_VERSION}"
                )))
            }
        };
        let mut r = unseal(r)?;
        let mut state = FsState::new();
        // The header's key table starts with the authors the page records name.
        let authors = Authors::new(r.keys());
        state.purged_below = r.hlc()?;
        state.late = r.uint()?;
        decode_registers(&mut state, &mut r, labels)?;
        let mut inside = Tree::new(&authors);
        let mut lens = [0usize; Page::ALL.len()];
        let counted = match version {
            HEADER_VERSION => Page::ALL.len(),
            HEADER_NO_SWEEP => TABLES_NO_SWEEP,
            _ => {
                inside.decode_log(&mut r)?;
                TABLES_LOG_INSIDE
            }
        };
        for len in &mut lens[..counted] {
            *len = usize::try_from(r.uint()?).map_err(|_| corrupt("count"))?;
        }
        if !r.is_empty() {
            return Err(corrupt("trailing bytes in the header"));
        }
        let [entries, children, subdirs, by_file, files, applied, pending, log, removals, replacements] =
            lens;
        state.tree = Tree {
            entries: Paged::backed(Page::Entries, &authors, src.clone(), entries),
            children: Paged::backed(Page::Children, &authors, src.clone(), children),
            subdirs: Paged::backed(Page::Subdirs, &authors, src.clone(), subdirs),
            by_file: Paged::backed(Page::ByFile, &authors, src.clone(), by_file),
            log: Paged::backed(Page::Log, &authors, src.clone(), log),
        };
        for (k, rec) in inside.log.all() {
            state.tree.log.insert(k, rec);
        }
        state.files = Paged::backed(Page::Files, &authors, src.clone(), files);
        state.applied = Paged::backed(Page::Applied, &authors, src.clone(), applied);
        state.pending = Paged::backed(Page::Superseded, &authors, src.clone(), pending);
        state.removals = Paged::backed(Page::Removals, &authors, src.clone(), removals);
        state.replacements = Paged::backed(Page::Replacements, &authors, src, replacements);
        state.authors = authors;
        state.paged = true;
        if version != HEADER_VERSION {
            state.fill_sweep_tables();
        }
        Ok(state)
    }

    /// Records held in memory because they changed since the last committed batch (all
    /// of them if the state was never written).
    pub fn unwritten(&self) -> usize {
        self.tree.entries.overlay_len()
            + self.tree.children.overlay_len()
            + self.tree.subdirs.overlay_len()
            + self.tree.by_file.overlay_len()
            + self.files.overlay_len()
            + self.applied.overlay_len()
            + self.pending.overlay_len()
            + self.tree.log.overlay_len()
            + self.removals.overlay_len()
            + self.replacements.overlay_len()
    }

    /// The header, its key table led by the authors the page records name (called
    /// after the records are cut, which numbers their new authors).
    fn encode_header(&self) -> Vec<u8> {
        let mut w = Writer::naming(&self.authors.keys());
        w.hlc(self.purged_below);
        w.uint(self.late);
        self.encode_registers(&mut w);
        for len in self.page_lens() {
            w.uint(len as u64);
        }
        seal(HEADER_MAGIC, HEADER_VERSION, w)
    }

    /// The header as format `version` (5 or 6) wrote it: format 5 with the move log
    /// inside and the tables before [`Page::Log`] counted, format 6 without the sweep
    /// tables. What the tests of reading one start from.
    #[cfg(test)]
    pub(crate) fn encode_old_header(&self, version: u32) -> Vec<u8> {
        let mut w = Writer::naming(&self.authors.keys());
        w.hlc(self.purged_below);
        w.uint(self.late);
        self.encode_registers(&mut w);
        let tables = if version == HEADER_NO_SWEEP {
            TABLES_NO_SWEEP
        } else {
            self.tree.encode_log(&mut w);
            TABLES_LOG_INSIDE
        };
        for len in &self.page_lens()[..tables] {
            w.uint(*len as u64);
        }
        seal(HEADER_MAGIC, version, w)
    }

    /// The record count of each page table, in [`Page::ALL`] order.
    fn page_lens(&self) -> [usize; Page::ALL.len()] {
        [
            self.tree.entries.len(),
            self.tree.children.len(),
            self.tree.subdirs.len(),
            self.tree.by_file.len(),
            self.files.len(),
            self.applied.len(),
            self.pending.len(),
            self.tree.log.len(),
            self.removals.len(),
            self.replacements.len(),
        ]
    }
}
