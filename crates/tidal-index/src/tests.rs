use std::collections::BTreeMap;

use proptest::prelude::*;
use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::{Index, IndexWriter, TantivyDocument};
use tidal_core::TextAnalyzer;

use crate::{Hit, TextIndex, TextOp, TextSpec};

fn spec() -> TextSpec {
    TextSpec {
        fields: vec![("title".into(), 2.0), ("body".into(), 1.0)],
        analyzer: TextAnalyzer::Default,
    }
}

type Row = [Option<String>; 2];

/// What a fresh tantivy index of exactly these rows returns: every hit, with tantivy's
/// own statistics.
fn reference(spec: &TextSpec, rows: &BTreeMap<u64, Row>, query: &str) -> Vec<Hit> {
    let index = Index::create_in_ram(spec.schema());
    let schema = index.schema();
    let id = schema.get_field("#id").unwrap();
    let title = schema.get_field("title").unwrap();
    let body = schema.get_field("body").unwrap();
    let mut w: IndexWriter<TantivyDocument> = index.writer_with_num_threads(1, 15_000_000).unwrap();
    for (k, row) in rows {
        let mut d = TantivyDocument::new();
        d.add_u64(id, *k);
        if let Some(t) = &row[0] {
            d.add_text(title, t);
        }
        if let Some(t) = &row[1] {
            d.add_text(body, t);
        }
        w.add_document(d).unwrap();
    }
    w.commit().unwrap();
    let searcher = index.reader().unwrap().searcher();
    let mut parser = QueryParser::for_index(&index, vec![title, body]);
    parser.set_field_boost(title, 2.0);
    let q = parser.parse_query(query).unwrap();
    let top = searcher
        .search(&q, &TopDocs::with_limit(10_000).order_by_score())
        .unwrap();
    let mut hits: Vec<Hit> = top
        .into_iter()
        .map(|(score, addr)| {
            let col = searcher
                .segment_reader(addr.segment_ord)
                .fast_fields()
                .u64("#id")
                .unwrap();
            Hit {
                id: col.first(addr.doc_id).unwrap(),
                score,
            }
        })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    hits
}

fn sorted(mut hits: Vec<Hit>) -> Vec<Hit> {
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    hits
}

fn assert_same(got: &[Hit], want: &[Hit], what: &str) {
    let ids = |h: &[Hit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
    let mut g: Vec<u64> = ids(got);
    let mut w: Vec<u64> = ids(want);
    g.sort_unstable();
    w.sort_unstable();
    assert_eq!(g, w, "{what}: matching ids");
    let want: BTreeMap<u64, f32> = want.iter().map(|h| (h.id, h.score)).collect();
    for h in got {
        let r = want[&h.id];
        let rel = ((h.score - r) / r.abs().max(1e-12)).abs();
        assert!(
            rel <= 1e-5,
            "{what}: id {} scores {} vs tantivy {}",
            h.id,
            h.score,
            r
        );
    }
}

/// `got` is a best-`k` of `want` (relevance descending, ties by id), allowing for
/// scores that differ in the last bits between tantivy's pruning and exhaustive paths.
fn assert_top(got: &[Hit], want: &[Hit], k: usize, what: &str) {
    assert_eq!(got.len(), want.len().min(k), "{what}: top {k} length");
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1e-12);
    let score: BTreeMap<u64, f32> = want.iter().map(|h| (h.id, h.score)).collect();
    for (i, h) in got.iter().enumerate() {
        let r = score[&h.id];
        assert!(
            close(h.score, r),
            "{what}: id {} scores {} vs {}",
            h.id,
            h.score,
            r
        );
        assert!(
            close(h.score, want[i].score),
            "{what}: rank {i} is {:?}, tantivy has {:?}",
            h,
            want[i]
        );
    }
    for w in got.windows(2) {
        assert!(
            w[0].score > w[1].score || (w[0].score == w[1].score && w[0].id < w[1].id),
            "{what}: order {got:?}"
        );
    }
}

const WORDS: [&str; 8] = [
    "piano", "guitar", "lesson", "jazz", "live", "piano", "the", "tutorial",
];

fn text() -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(
        0.85,
        prop::collection::vec(0..WORDS.len(), 1..12).prop_map(|w| {
            w.into_iter()
                .map(|i| WORDS[i])
                .collect::<Vec<_>>()
                .join(" ")
        }),
    )
}

#[derive(Debug, Clone)]
enum Step {
    Upsert(u64, Row),
    Delete(u64),
    /// Make the queued changes visible (a commit: a new segment).
    Search,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0u64..24, text(), text()).prop_map(|(id, a, b)| Step::Upsert(id, [a, b])),
        2 => (0u64..24).prop_map(Step::Delete),
        2 => Just(Step::Search),
    ]
}

const QUERIES: [&str; 7] = [
    "piano",
    "piano guitar",
    "\"piano lesson\"",
    "+jazz live",
    "tutorial -piano",
    "title:guitar body:live",
    "the^3 lesson",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    /// After any mix of inserts, replacements and deletes (which leave deleted documents
    /// in tantivy's segments, and merges with estimated statistics), every query gives
    /// the ids and relevance a fresh tantivy index of the current rows gives.
    #[test]
    fn relevance_equals_a_fresh_tantivy_index(steps in prop::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let index = TextIndex::create(dir.path(), spec(), 0).unwrap();
        let mut model: BTreeMap<u64, Row> = BTreeMap::new();
        let mut lsn = 0;
        let check = |index: &TextIndex, model: &BTreeMap<u64, Row>| {
            let snap = index.snapshot_blocking().unwrap();
            prop_assert_eq!(snap.num_docs(), model.len() as u64);
            for q in QUERIES {
                let parsed = snap.parse(q).unwrap();
                let want = reference(&spec(), model, q);
                assert_same(&sorted(snap.all(&parsed).unwrap()), &want, q);
                let top = snap.top_k(&parsed, 3).unwrap();
                assert_top(&top, &want, 3, q);
                let some: Vec<u64> = (0..24).step_by(3).collect();
                let among = snap.among(&parsed, &some).unwrap();
                let want_some: Vec<Hit> = want.iter().copied().filter(|h| some.contains(&h.id)).collect();
                assert_same(&sorted(among), &want_some, q);
                let even = snap.top_k_where(&parsed, 3, &|id| id % 2 == 0).unwrap();
                let want_even: Vec<Hit> = want.iter().copied().filter(|h| h.id % 2 == 0).collect();
                assert_top(&even, &want_even, 3, q);
            }
            Ok(())
        };
        for s in steps {
            lsn += 1;
            match s {
                Step::Upsert(id, row) => {
                    let op = if model.contains_key(&id) {
                        TextOp::Upsert { id, texts: row.to_vec() }
                    } else {
                        TextOp::Insert { id, texts: row.to_vec() }
                    };
                    model.insert(id, row);
                    index.apply(lsn, vec![op]).unwrap();
                }
                Step::Delete(id) => {
                    model.remove(&id);
                    index.apply(lsn, vec![TextOp::Delete { id }]).unwrap();
                }
                Step::Search => check(&index, &model)?,
            }
        }
        check(&index, &model)?;
    }
}

#[test]
fn reopen_resumes_after_the_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let index = TextIndex::create(dir.path(), spec(), 5).unwrap();
    index
        .apply(
            6,
            vec![TextOp::Insert {
                id: 1,
                texts: vec![Some("piano".into()), None],
            }],
        )
        .unwrap();
    index.note(9);
    assert_eq!(index.flush().unwrap(), 9);
    index.close().unwrap();
    drop(index);
    let (index, lsn) = TextIndex::open(dir.path(), spec()).unwrap();
    assert_eq!(lsn, 9);
    let snap = index.snapshot_blocking().unwrap();
    assert_eq!(snap.num_docs(), 1);
    // Another definition of the fields cannot reuse the directory.
    drop(snap);
    index.close().unwrap();
    drop(index);
    let mut other = spec();
    other.analyzer = TextAnalyzer::EnStem;
    assert!(matches!(
        TextIndex::open(dir.path(), other),
        Err(crate::IndexError::Unusable { .. })
    ));
}

#[test]
fn damaged_or_missing_directories_are_unusable() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        TextIndex::open(&dir.path().join("nothing"), spec()),
        Err(crate::IndexError::Unusable { .. })
    ));
    let index = TextIndex::create(dir.path(), spec(), 1).unwrap();
    index.close().unwrap();
    drop(index);
    std::fs::write(dir.path().join("meta.json"), b"{ not json").unwrap();
    assert!(matches!(
        TextIndex::open(dir.path(), spec()),
        Err(crate::IndexError::Unusable { .. })
    ));
}

#[test]
fn bad_and_empty_queries_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let index = TextIndex::create(dir.path(), spec(), 0).unwrap();
    let snap = index.snapshot_blocking().unwrap();
    assert!(matches!(
        snap.parse("  "),
        Err(crate::IndexError::EmptyQuery)
    ));
    let e = snap.parse("title:(piano").unwrap_err();
    assert!(e.is_user_error(), "{e}");
    let e = snap.parse("nosuchfield:piano").unwrap_err();
    assert!(e.to_string().contains("nosuchfield"), "{e}");
}

#[test]
fn snippets_mark_the_matched_terms() {
    let dir = tempfile::tempdir().unwrap();
    let index = TextIndex::create(dir.path(), spec(), 0).unwrap();
    let body = "How to practice piano scales every day, with a metronome";
    index
        .apply(
            1,
            vec![TextOp::Insert {
                id: 1,
                texts: vec![Some("Scales".into()), Some(body.into())],
            }],
        )
        .unwrap();
    let snap = index.snapshot_blocking().unwrap();
    let q = snap.parse("piano scales").unwrap();
    let s = snap
        .snippet(&q, "body", body, ("<b>", "</b>"), 200)
        .unwrap();
    assert_eq!(
        s,
        "How to practice <b>piano</b> <b>scales</b> every day, with a metronome"
    );
    assert!(
        snap.snippet(&q, "nope", body, ("<b>", "</b>"), 200)
            .is_err()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// The indexer's token count equals what both analyzers produce, for any text
    /// (punctuation, multi-byte letters and digits, tokens around the 40-byte limit).
    #[test]
    fn token_counts_equal_the_analyzers(
        parts in prop::collection::vec(
            prop_oneof![
                "[a-zA-Z0-9]{1,45}",
                "[ \\t\\n.,;:!?'()-]{1,3}",
                "[éßİΩж漢字ا٣]{1,25}",
                "\\PC{1,12}",
            ],
            0..30,
        )
    ) {
        use tantivy::tokenizer::TokenStream;
        let text: String = parts.concat();
        let index = tantivy::Index::create_in_ram(tantivy::schema::Schema::builder().build());
        for name in ["default", "en_stem"] {
            let mut analyzer = index.tokenizers().get(name).unwrap();
            let mut stream = analyzer.token_stream(&text);
            let mut n = 0u64;
            while stream.advance() {
                n += 1;
            }
            prop_assert_eq!(crate::text::count_tokens(&text), n, "{} over {:?}", name, text);
        }
    }
}
