//! BM25 corpus statistics over the *live* documents of a searcher.
//!
//! tantivy's own statistics count deleted documents until a merge removes them
//! (`max_doc`, term document frequencies), and a segment merged from segments with
//! deletes carries an *estimated* token total (the sum of the survivors' quantized
//! field norms). A search here must score exactly as a fresh index of the same rows
//! would, so the statistics are recomputed over live documents only:
//!
//! * documents: the sum of the segments' alive counts;
//! * tokens of a field: the sum, over alive documents, of the exact token count each
//!   document was indexed with (a fast field written beside the text, `len_<field>`);
//!   computed once per segment and delete generation and cached by the index;
//! * document frequency of a term: the segment's own count when it has no deletes, else
//!   its postings walked against the alive bitset (cached per snapshot and term).

use std::collections::HashMap;

use parking_lot::Mutex;
use tantivy::query::Bm25StatisticsProvider;
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocSet, Searcher, SegmentReader, TERMINATED, Term};

/// Per segment: alive documents and, per text field, their exact token total.
#[derive(Debug, Clone)]
pub(crate) struct SegmentStats {
    pub alive: u64,
    pub tokens: Vec<u64>,
}

impl SegmentStats {
    /// Reads the segment's alive documents and their token counts from the length
    /// fast fields (`len_fields`, in text-field order).
    pub fn compute(reader: &SegmentReader, len_fields: &[String]) -> tantivy::Result<SegmentStats> {
        let mut tokens = Vec::with_capacity(len_fields.len());
        for name in len_fields {
            let column = reader.fast_fields().u64(name)?;
            let total: u64 = match reader.alive_bitset() {
                None => (0..reader.max_doc())
                    .map(|d| column.first(d).unwrap_or(0))
                    .sum(),
                Some(alive) => alive
                    .iter_alive()
                    .map(|d| column.first(d).unwrap_or(0))
                    .sum(),
            };
            tokens.push(total);
        }
        Ok(SegmentStats {
            alive: u64::from(reader.num_docs()),
            tokens,
        })
    }
}

/// Terms whose live document frequency one snapshot remembers.
const DOC_FREQ_CACHE_TERMS_MAX: usize = 4_096;

/// The statistics of one snapshot; see the module docs.
#[derive(Debug)]
pub(crate) struct LiveStats {
    pub docs: u64,
    /// Exact live token totals, by tantivy field id of the text field.
    pub tokens: HashMap<Field, u64>,
    doc_freq: Mutex<HashMap<Term, u64>>,
    searcher: Searcher,
}

impl LiveStats {
    pub fn new(searcher: Searcher, text_fields: &[Field], segments: &[SegmentStats]) -> LiveStats {
        let docs = segments.iter().map(|s| s.alive).sum();
        let tokens = text_fields
            .iter()
            .enumerate()
            .map(|(i, f)| (*f, segments.iter().map(|s| s.tokens[i]).sum()))
            .collect();
        LiveStats {
            docs,
            tokens,
            doc_freq: Mutex::new(HashMap::new()),
            searcher,
        }
    }

    fn live_doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let mut total = 0u64;
        for reader in self.searcher.segment_readers() {
            let inverted = reader.inverted_index(term.field())?;
            let Some(alive) = reader.alive_bitset() else {
                total += u64::from(inverted.doc_freq(term)?);
                continue;
            };
            let Some(mut postings) = inverted.read_postings(term, IndexRecordOption::Basic)? else {
                continue;
            };
            let mut doc = postings.doc();
            while doc != TERMINATED {
                if alive.is_alive(doc) {
                    total += 1;
                }
                doc = postings.advance();
            }
        }
        Ok(total)
    }
}

impl Bm25StatisticsProvider for LiveStats {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        Ok(self.tokens.get(&field).copied().unwrap_or(0))
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.docs)
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        if let Some(n) = self.doc_freq.lock().get(term) {
            return Ok(*n);
        }
        let n = self.live_doc_freq(term)?;
        let mut cache = self.doc_freq.lock();
        if cache.len() >= DOC_FREQ_CACHE_TERMS_MAX {
            cache.clear();
        }
        cache.insert(term.clone(), n);
        Ok(n)
    }
}
