//! A consistent, searchable state of a text index.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use tantivy::query::{EnableScoring, Query, QueryParser, Weight};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::snippet::SnippetGenerator;
use tantivy::{DocId, DocSet, Score, Searcher, SegmentReader, TERMINATED, Term};

use crate::IndexError;
use crate::stats::LiveStats;

/// One matching row: its id and BM25 relevance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: u64,
    pub score: f32,
}

/// The order of results: relevance descending, then smaller id.
fn better(a: &Hit, b: &Hit) -> Ordering {
    b.score.total_cmp(&a.score).then(a.id.cmp(&b.id))
}

/// Heap entry ordered so the *worst* kept hit is on top.
struct Worst(Hit);
impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        better(&self.0, &other.0) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        better(&self.0, &other.0)
    }
}

/// A parsed query, ready to run on the snapshot it was parsed for.
pub struct ParsedQuery {
    query: Box<dyn Query>,
    text: String,
}

impl std::fmt::Debug for ParsedQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParsedQuery({:?}: {:?})", self.text, self.query)
    }
}

/// A searcher over the committed state at one point of the log, with live-document
/// BM25 statistics (see `stats.rs`). Cheap to share; holds its segments open.
pub struct TextSnapshot {
    pub(crate) searcher: Searcher,
    pub(crate) stats: LiveStats,
    pub(crate) parser: QueryParser,
    pub(crate) id_field: Field,
    pub(crate) text_fields: Vec<(String, Field)>,
    /// Every text change of the log up to this LSN is visible here.
    pub(crate) lsn: u64,
}

impl std::fmt::Debug for TextSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextSnapshot")
            .field("lsn", &self.lsn)
            .field("docs", &self.stats.docs)
            .field("segments", &self.searcher.segment_readers().len())
            .finish_non_exhaustive()
    }
}

impl TextSnapshot {
    /// Live documents (rows) in this snapshot.
    pub fn num_docs(&self) -> u64 {
        self.stats.docs
    }

    /// The LSN through which every text change is visible.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Segments searched.
    pub fn segments(&self) -> usize {
        self.searcher.segment_readers().len()
    }

    /// Parses a query in tantivy's query syntax over the text fields: bare words are
    /// OR'ed, `"phrase"`, `+required`, `-excluded`, `field:word`, `word^2`.
    pub fn parse(&self, query: &str) -> Result<ParsedQuery, IndexError> {
        if query.trim().is_empty() {
            return Err(IndexError::EmptyQuery);
        }
        let parsed = self
            .parser
            .parse_query(query)
            .map_err(|e| IndexError::BadQuery {
                query: query.to_string(),
                reason: e.to_string(),
            })?;
        Ok(ParsedQuery {
            query: parsed,
            text: query.to_string(),
        })
    }

    fn weight(&self, q: &ParsedQuery) -> Result<Box<dyn Weight>, IndexError> {
        let scoring = EnableScoring::enabled_from_statistics_provider(&self.stats, &self.searcher);
        Ok(q.query.weight(scoring)?)
    }

    fn ids(reader: &SegmentReader) -> Result<tantivy::columnar::Column<u64>, IndexError> {
        Ok(reader.fast_fields().u64(crate::text::ID_FIELD)?)
    }

    /// The `k` best matches, relevance descending, ties by smaller id.
    pub fn top_k(&self, q: &ParsedQuery, k: usize) -> Result<Vec<Hit>, IndexError> {
        self.top_k_where(q, k, &|_| true)
    }

    /// The best `k` matches whose id passes `keep`, best first (ties by smaller id).
    /// Rejected matches never enter the heap, so pruning works on the kept ones: a
    /// selective `keep` costs the matches it has to look at, not a materialized list.
    pub fn top_k_where(
        &self,
        q: &ParsedQuery,
        k: usize,
        keep: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<Hit>, IndexError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let weight = self.weight(q)?;
        let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(k + 1);
        for reader in self.searcher.segment_readers() {
            let ids = Self::ids(reader)?;
            let alive = reader.alive_bitset();
            // Hits scoring exactly the k-th score may still win on a smaller id, so the
            // pruning threshold sits just below it.
            let threshold = |heap: &BinaryHeap<Worst>| match heap.peek() {
                Some(w) if heap.len() >= k => w.0.score.next_down(),
                _ => Score::MIN,
            };
            let start = threshold(&heap);
            weight.for_each_pruning(start, reader, &mut |doc, score| {
                if alive.is_none_or(|a| a.is_alive(doc)) {
                    let hit = Hit {
                        id: ids.first(doc).unwrap_or(0),
                        score,
                    };
                    if !keep(hit.id) {
                        // Rejected: the threshold stays where it was.
                    } else if heap.len() < k {
                        heap.push(Worst(hit));
                    } else if let Some(w) = heap.peek()
                        && better(&hit, &w.0) == Ordering::Less
                    {
                        heap.pop();
                        heap.push(Worst(hit));
                    }
                }
                threshold(&heap)
            })?;
        }
        let mut hits: Vec<Hit> = heap.into_iter().map(|w| w.0).collect();
        hits.sort_by(better);
        Ok(hits)
    }

    /// Every match, in no particular order.
    pub fn all(&self, q: &ParsedQuery) -> Result<Vec<Hit>, IndexError> {
        let weight = self.weight(q)?;
        let mut hits = Vec::new();
        for reader in self.searcher.segment_readers() {
            let ids = Self::ids(reader)?;
            let alive = reader.alive_bitset();
            weight.for_each(reader, &mut |doc, score| {
                if alive.is_none_or(|a| a.is_alive(doc)) {
                    hits.push(Hit {
                        id: ids.first(doc).unwrap_or(0),
                        score,
                    });
                }
            })?;
        }
        Ok(hits)
    }

    /// The matches among `ids` only (scored by seeking to each, so the cost follows
    /// the number of ids, not the number of matches), in no particular order.
    pub fn among(&self, q: &ParsedQuery, ids: &[u64]) -> Result<Vec<Hit>, IndexError> {
        let weight = self.weight(q)?;
        let mut hits = Vec::new();
        for reader in self.searcher.segment_readers() {
            let docs = self.docs_of(reader, ids)?;
            if docs.is_empty() {
                continue;
            }
            let mut scorer = weight.scorer(reader, 1.0)?;
            for (doc, id) in docs {
                if scorer.doc() > doc {
                    continue;
                }
                if scorer.doc() == doc || scorer.seek(doc) == doc {
                    hits.push(Hit {
                        id,
                        score: scorer.score(),
                    });
                } else if scorer.doc() == TERMINATED {
                    break;
                }
            }
        }
        Ok(hits)
    }

    /// The alive documents of `ids` in one segment, sorted by doc id.
    fn docs_of(
        &self,
        reader: &SegmentReader,
        ids: &[u64],
    ) -> Result<Vec<(DocId, u64)>, IndexError> {
        let inverted = reader.inverted_index(self.id_field)?;
        let alive = reader.alive_bitset();
        let mut docs = Vec::new();
        for &id in ids {
            let term = Term::from_field_u64(self.id_field, id);
            if let Some(mut p) = inverted
                .read_postings(&term, IndexRecordOption::Basic)
                .map_err(tantivy::TantivyError::from)?
            {
                let mut d = p.doc();
                while d != TERMINATED {
                    if alive.is_none_or(|a| a.is_alive(d)) {
                        docs.push((d, id));
                    }
                    d = p.advance();
                }
            }
        }
        docs.sort_unstable();
        Ok(docs)
    }

    /// The part of `text` that best matches the query in `field`, with the matched terms
    /// between `start` and `stop` (as PostgreSQL's `ts_headline` marks them), at most
    /// `max_chars` long; empty when nothing matches.
    pub fn snippet(
        &self,
        q: &ParsedQuery,
        field: &str,
        text: &str,
        (start, stop): (&str, &str),
        max_chars: usize,
    ) -> Result<String, IndexError> {
        let f = self
            .text_fields
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(field))
            .map(|(_, f)| *f)
            .ok_or_else(|| IndexError::UnknownField {
                field: field.to_string(),
                fields: self
                    .text_fields
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let mut generator = SnippetGenerator::create(&self.searcher, q.query.as_ref(), f)?;
        generator.set_max_num_chars(max_chars);
        let snippet = generator.snippet(text);
        let fragment = snippet.fragment();
        let mut out = String::with_capacity(fragment.len() + 16);
        let mut at = 0;
        for r in snippet.highlighted() {
            out.push_str(&fragment[at..r.start]);
            out.push_str(start);
            out.push_str(&fragment[r.clone()]);
            out.push_str(stop);
            at = r.end;
        }
        out.push_str(&fragment[at..]);
        Ok(out)
    }
}
