//! The committed data-directory fixture `tests/fixtures/datadir-v1/`: a whole small data
//! directory (WAL segments, a checkpoint with its `schema` and `ledger` sections, and the
//! fjall entity store) written by the first version of these formats and left as a crash
//! leaves it, read back by today's code against literal expected values, so that a format
//! change or a change in read semantics cannot go unnoticed.
//!
//! The fixture was written by `write_datadir_v1_fixture` (ignored). Regenerate it only on
//! purpose, when a format version changes — and then keep this one as it is, add a
//! `datadir-v2` next to it, and keep reading both:
//!
//! ```text
//! cargo test -p tidal-engine -- --ignored write_datadir_v1_fixture
//! ```

use std::fs;
use std::path::Path;
use std::sync::Arc;

use tidal_core::{
    ColumnDef, ColumnType, DecaySpec, EntityId, EntityKind, ManualClock, Mark, Row, SchemaChange,
    SignalDef, SignalId, TableDef, Timestamp, Value, Window,
};

use crate::{Engine, EngineConfig};

/// The crate's directory, read when the test runs (cargo sets `CARGO_MANIFEST_DIR` for
/// it): a test binary reused from another checkout through a shared target directory
/// must still find this checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn fixture_dir() -> std::path::PathBuf {
    manifest_dir().join("tests/fixtures/datadir-v1")
}
/// Small segments, so that the checkpoint retires some and the rest spans several files.
const FIXTURE_SEGMENT_BYTES_MAX: u64 = 4 << 10;

const SECOND_US: i64 = 1_000_000;
const MINUTE_US: i64 = 60 * SECOND_US;
const HOUR_US: i64 = 60 * MINUTE_US;
const DAY_US: i64 = 24 * HOUR_US;
/// `2026-11-25 10:00:00` UTC: the fixture's clock starts here and event times count from it.
const T0_US: i64 = 1_795_600_800_000_000;

fn t(offset_us: i64) -> Timestamp {
    Timestamp(T0_US + offset_us)
}

fn window(text: &str) -> Window {
    Window::parse(text).unwrap()
}

fn open(dir: &Path, clock: &ManualClock) -> Engine {
    let mut c = EngineConfig::new(dir).with_clock(Arc::new(clock.clone()));
    c.checkpoint_wal_bytes = None;
    c.wal_segment_bytes = FIXTURE_SEGMENT_BYTES_MAX;
    Engine::open(c).unwrap()
}

/// An `items` row; every column type, `None` for NULL.
#[allow(clippy::too_many_arguments)]
fn item(
    id: i64,
    creator_id: Option<i64>,
    created_at: Option<i64>,
    title: Option<&str>,
    rank: Option<i64>,
    score: Option<f64>,
    ratio: Option<f32>,
    published: Option<bool>,
    tags: Option<&[&str]>,
    embedding: Option<[f32; 3]>,
) -> Row {
    let or_null = |v: Option<Value>| v.unwrap_or(Value::Null);
    vec![
        Value::Int(id),
        or_null(creator_id.map(Value::Int)),
        or_null(created_at.map(|us| Value::Timestamp(Timestamp(us)))),
        or_null(title.map(|s| Value::Text(s.into()))),
        or_null(rank.map(Value::Int)),
        or_null(score.map(Value::Double)),
        or_null(ratio.map(Value::Real)),
        or_null(published.map(Value::Bool)),
        or_null(tags.map(|a| Value::TextArray(a.iter().map(|s| s.to_string()).collect()))),
        or_null(embedding.map(|v| Value::Vector(v.to_vec()))),
    ]
}

/// A `users` row.
fn user(id: i64, name: Option<&str>, age: Option<i64>, premium: Option<bool>) -> Row {
    vec![
        Value::Int(id),
        name.map_or(Value::Null, |s| Value::Text(s.into())),
        age.map_or(Value::Null, Value::Int),
        premium.map_or(Value::Null, Value::Bool),
    ]
}

/// A small deterministic generator (SplitMix64), so the fixture needs no `rand`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One generated event: (signal, entity, user, weight, ts).
type Event = (&'static str, u64, Option<u64>, f64, Timestamp);

/// `n` events of `view`, `purchase` and `follow` with weights of both signs, aged
/// `min_age_us` to `max_age_us` (microsecond-precise, in no particular order). Ages up
/// to 21 days reach past what the `view` and `follow` buckets retain.
fn events(rng: &mut Rng, n: usize, min_age_us: i64, max_age_us: i64) -> Vec<Event> {
    const WEIGHTS: [f64; 8] = [1.0, 1.0, 1.0, 0.5, 2.0, 0.25, 3.0, -1.0];
    (0..n)
        .map(|_| {
            let (signal, entity) = match rng.below(20) {
                0..=11 => ("view", 1 + rng.below(8)),
                12..=16 => ("purchase", 1 + rng.below(8)),
                _ => ("follow", 1 + rng.below(6)),
            };
            let user = match rng.below(7) {
                0 => None,
                u => Some(u),
            };
            let weight = WEIGHTS[rng.below(8) as usize];
            let span = (max_age_us - min_age_us) as u64;
            let age = min_age_us + rng.below(span) as i64;
            (signal, entity, user, weight, t(-age))
        })
        .collect()
}

fn schema_v1(engine: &Engine) {
    let mut txn = engine.begin();
    let view = SignalDef::new(
        "view",
        EntityKind::Item,
        DecaySpec::exponential("1 day").unwrap(),
        ["1h", "24h", "7d", "all"].map(window),
    )
    .unwrap()
    .with_marks(Mark::Seen);
    let purchase = SignalDef::new(
        "Purchase",
        EntityKind::Item,
        DecaySpec::None,
        ["all", "30d", "1d", "15m"].map(window),
    )
    .unwrap();
    let temp = SignalDef::new("temp", EntityKind::Item, DecaySpec::None, [Window::All]).unwrap();
    let follow = SignalDef::new(
        "follow",
        EntityKind::User,
        DecaySpec::exponential("7 days").unwrap(),
        ["1h", "all"].map(window),
    )
    .unwrap();
    for def in [view, purchase, temp, follow] {
        txn.schema_change(SchemaChange::CreateSignal(def)).unwrap();
    }
    // `id` is declared second: the definition moves it to column 0.
    let items = TableDef::new(
        EntityKind::Item,
        vec![
            ColumnDef::new("creator_id", ColumnType::BigInt),
            ColumnDef::new("id", ColumnType::BigInt),
            ColumnDef::new("created_at", ColumnType::Timestamp),
            ColumnDef::new("title", ColumnType::Text),
            ColumnDef::new("rank", ColumnType::Int),
            ColumnDef::new("score", ColumnType::Double),
            ColumnDef::new("ratio", ColumnType::Real),
            ColumnDef::new("published", ColumnType::Boolean),
            ColumnDef::new("tags", ColumnType::TextArray),
            ColumnDef::new("embedding", ColumnType::Vector(3)),
        ],
        vec!["title".into()],
    )
    .unwrap();
    let users = TableDef::new(
        EntityKind::User,
        vec![
            ColumnDef::new("id", ColumnType::BigInt),
            ColumnDef::new("name", ColumnType::Text),
            ColumnDef::new("age", ColumnType::Int),
            ColumnDef::new("premium", ColumnType::Boolean),
        ],
        vec![],
    )
    .unwrap();
    txn.schema_change(SchemaChange::CreateTable(items)).unwrap();
    txn.schema_change(SchemaChange::CreateTable(users)).unwrap();
    txn.commit().unwrap();
}

/// Writes the fixture. Deterministic — a manual clock, explicit event times, a seeded
/// generator, no background checkpoints — so the WAL segments, the checkpoint and
/// fjall's journal come out byte for byte the same on every run; only fjall's own
/// metadata (`store/keyspaces/0/`: its tables and version files) differs, because
/// lsm-tree stamps every table with the wall-clock time it was written. Run with
/// `cargo test -p tidal-engine -- --ignored write_datadir_v1_fixture`.
#[test]
#[ignore = "rewrites the committed data-directory fixture; only when a format version changes"]
fn write_datadir_v1_fixture() {
    let work = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t(0));
    let engine = open(work.path(), &clock);
    let tick = || clock.advance_micros(SECOND_US);
    let commit_events = |txn: &mut crate::WriteTxn<'_>, evs: &[Event]| {
        for &(signal, entity, user, weight, ts) in evs {
            txn.signal(
                signal,
                EntityId(entity),
                user.map(EntityId),
                weight,
                Some(ts),
            )
            .unwrap();
        }
    };

    schema_v1(&engine);

    tick();
    let mut txn = engine.begin();
    for id in 1..=12 {
        txn.insert(
            EntityKind::Item,
            item(
                id,
                Some(100 + id % 3),
                Some(T0_US - id * DAY_US),
                Some(&format!("item {id}")),
                Some(id * 10 - 60),
                Some(id as f64 / 8.0),
                Some(id as f32 * 0.75),
                Some(id % 2 == 0),
                Some(&["news", "héllo"][..(id % 3) as usize]),
                Some([id as f32, -0.5, 1e-3]),
            ),
        )
        .unwrap();
    }
    for (id, name) in [
        (1, "ana"),
        (2, "bo"),
        (3, "cy"),
        (4, "dee"),
        (5, "ed"),
        (6, "flo"),
    ] {
        txn.insert(
            EntityKind::User,
            user(id, Some(name), Some(20 + id), Some(id == 3)),
        )
        .unwrap();
    }
    txn.commit().unwrap();

    // A signal that is dropped again: its id (3) is never reused, and item 11 (which only
    // it had events for) loses its ledger ordinal.
    tick();
    let mut txn = engine.begin();
    commit_events(
        &mut txn,
        &[
            ("view", 1, Some(1), 1.0, t(-5 * DAY_US)),
            ("temp", 11, None, 5.0, t(-HOUR_US)),
            ("temp", 1, None, 5.0, t(-HOUR_US)),
        ],
    );
    txn.commit().unwrap();
    tick();
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::DropSignal {
        name: "temp".into(),
        id: SignalId(0),
    })
    .unwrap();
    txn.commit().unwrap();

    // Item 100's events, before the checkpoint (see `check_hand_computed_reads`).
    tick();
    let mut txn = engine.begin();
    commit_events(
        &mut txn,
        &[
            ("view", 100, None, 2.0, t(-2 * DAY_US)),
            ("view", 100, Some(2), 1.0, t(-DAY_US)),
            ("purchase", 100, Some(2), 1.0, t(-10 * MINUTE_US)),
            ("purchase", 100, Some(3), 2.0, t(-3 * HOUR_US)),
        ],
    );
    txn.commit().unwrap();

    let mut rng = Rng(1);
    for k in 0..12 {
        tick();
        let mut txn = engine.begin();
        let evs = events(&mut rng, 25, 0, 21 * DAY_US);
        commit_events(&mut txn, &evs);
        match k {
            2 => txn
                .upsert(
                    EntityKind::Item,
                    item(
                        3,
                        Some(101),
                        Some(T0_US - 3 * DAY_US),
                        Some("third, edited"),
                        Some(-2_147_483_648),
                        Some(-0.0),
                        Some(f32::MAX),
                        None,
                        Some(&[]),
                        Some([0.0, -0.0, 3.5]),
                    ),
                )
                .unwrap(),
            4 => txn.delete(EntityKind::Item, EntityId(7)).unwrap(),
            6 => {
                txn.delete(EntityKind::User, EntityId(6)).unwrap();
                txn.insert(
                    EntityKind::Item,
                    item(13, None, None, Some(""), None, None, None, None, None, None),
                )
                .unwrap();
            }
            // An exact duplicate within one statement is counted once.
            8 => commit_events(&mut txn, &evs[..1]),
            9 => txn
                .upsert(EntityKind::User, user(2, Some("bo"), Some(23), Some(true)))
                .unwrap(),
            _ => {}
        }
        txn.commit().unwrap();
    }

    // Past the dedup window, so the checkpoint retires the segments it covers.
    clock.advance_micros(2 * MINUTE_US);
    engine.begin().commit().unwrap();
    let stats = engine.checkpoint().unwrap();
    assert!(stats.wal_segments_deleted > 0, "{stats:?}");

    // After the checkpoint: a schema change, backdated and newer events, row changes —
    // all of it only in the WAL.
    tick();
    let mut txn = engine.begin();
    let share = SignalDef::new(
        "share",
        EntityKind::Item,
        DecaySpec::exponential("6 hours").unwrap(),
        ["1h", "all"].map(window),
    )
    .unwrap();
    txn.schema_change(SchemaChange::CreateSignal(share))
        .unwrap();
    txn.commit().unwrap();

    tick();
    let mut txn = engine.begin();
    commit_events(
        &mut txn,
        &[
            ("view", 100, Some(4), 4.0, t(-3 * DAY_US)),
            ("purchase", 100, None, 0.5, t(-40 * DAY_US)),
            ("share", 1, Some(1), 1.0, t(-6 * HOUR_US)),
            ("share", 1, Some(2), 1.0, t(0)),
        ],
    );
    txn.upsert(
        EntityKind::Item,
        item(
            1,
            Some(102),
            Some(T0_US + 1),
            Some("first, replaced"),
            Some(2_147_483_647),
            Some(1e300),
            Some(-1.5e-7),
            Some(true),
            Some(&["a", "b", "c"]),
            Some([1.0, 2.0, 3.0]),
        ),
    )
    .unwrap();
    txn.delete(EntityKind::Item, EntityId(2)).unwrap();
    txn.commit().unwrap();

    let mut rng = Rng(2);
    for k in 0..3 {
        tick();
        let mut txn = engine.begin();
        commit_events(&mut txn, &events(&mut rng, 20, -MINUTE_US, 3 * DAY_US));
        if k == 1 {
            txn.insert(
                EntityKind::Item,
                item(14, None, None, None, None, None, None, None, None, None),
            )
            .unwrap();
            txn.upsert(EntityKind::User, user(7, None, None, Some(false)))
                .unwrap();
        }
        txn.commit().unwrap();
    }

    // The last statement; `datadir_v1_fixture_still_reads` resubmits its event within the
    // dedup window.
    assert!(engine.now() < t(9 * MINUTE_US));
    clock.set(t(9 * MINUTE_US));
    let mut txn = engine.begin();
    commit_events(&mut txn, &[("view", 5, Some(1), 1.0, t(30 * SECOND_US))]);
    txn.commit().unwrap();

    // Copy the directory while the engine is still open: every commit is fsynced, so the
    // copy is what a crash at this point leaves behind. (fjall's journal, not fsynced per
    // write, holds only what it flushed at the checkpoint: the rows written since then
    // come back from the WAL.)
    let dir = fixture_dir();
    let dir = dir.as_path();
    let _ = fs::remove_dir_all(dir);
    copy_dir(work.path(), dir);
    drop(engine);
    tidy_fixture(dir);
}

/// Recursive copy of a directory tree.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Makes a copied data directory fit to commit:
/// * removes the engine's and the WAL's `LOCK` files (recreated at open). fjall's
///   `store/lock` stays: fjall opens it without creating it, and it is empty.
/// * cuts the zeros off the end of fjall's journals: fjall preallocates each journal to
///   64 MiB, and its recovery reads up to the first invalid entry and truncates there,
///   so the zeros carry nothing (every journal batch ends with the non-zero bytes
///   `FJL\x03`, so only padding is cut).
/// * removes empty directories, which git would not keep, so that the test reads
///   exactly what a checkout has.
fn tidy_fixture(dir: &Path) {
    fs::remove_file(dir.join("LOCK")).unwrap();
    fs::remove_file(dir.join("wal/LOCK")).unwrap();
    trim_journals(dir);
    prune_empty_dirs(dir);
}

fn trim_journals(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            trim_journals(&path);
        } else if path.extension().is_some_and(|x| x == "jnl") {
            let bytes = fs::read(&path).unwrap();
            let len = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            fs::write(&path, &bytes[..len]).unwrap();
        }
    }
}

/// Removes empty directories below `dir`; returns whether `dir` itself is now empty.
fn prune_empty_dirs(dir: &Path) -> bool {
    let mut empty = true;
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && prune_empty_dirs(&path) {
            fs::remove_dir(&path).unwrap();
        } else {
            empty = false;
        }
    }
    empty
}

fn copy_fixture() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir(), work.path());
    work
}

/// The names of the files in a subdirectory of the fixture, sorted.
fn fixture_files(sub: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(fixture_dir().join(sub))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn datadir_v1_fixture_still_reads() {
    // The fixture is a crash image that needs both recovery paths: the checkpoint covers
    // LSN 35, the WAL holds LSNs 31 to 47 (older segments were retired), and the entity
    // store's journal was last flushed at the checkpoint.
    assert_eq!(
        fixture_files("wal"),
        ["00000000000000000031.wal", "00000000000000000044.wal"]
    );
    assert_eq!(fixture_files("checkpoints"), ["00000000000000000035.ckpt"]);

    let work = copy_fixture();
    let clock = ManualClock::new(t(9 * MINUTE_US + 30 * SECOND_US));
    let engine = open(work.path(), &clock);
    check_schema(&engine);
    check_rows(&engine);
    check_signal_reads(&engine);
    check_hand_computed_reads(&engine);

    // The log goes on after the fixture's last LSN, and dedup remembers its last statement
    // (arrived at T0 + 9 min, 30 s before the clock).
    assert_eq!(engine.begin().commit().unwrap().lsn, 48);
    let mut txn = engine.begin();
    txn.signal(
        "view",
        EntityId(5),
        Some(EntityId(1)),
        1.0,
        Some(t(30 * SECOND_US)),
    )
    .unwrap();
    let out = txn.commit().unwrap();
    assert_eq!(
        (out.lsn, out.events_accepted, out.events_duplicate),
        (49, 0, 1)
    );
    // Signal ids are never reused: after 1 to 5 (3 dropped) the next is 6.
    let mut txn = engine.begin();
    let probe = SignalDef::new("probe", EntityKind::Item, DecaySpec::None, [Window::All]);
    txn.schema_change(SchemaChange::CreateSignal(probe.unwrap()))
        .unwrap();
    assert_eq!(txn.schema().signal("probe").unwrap().id, SignalId(6));
    drop(txn);

    // Today's code checkpoints what it recovered; a clean restart reads the same.
    engine.shutdown().unwrap();
    drop(engine);
    let engine = open(work.path(), &clock);
    check_schema(&engine);
    check_rows(&engine);
    check_signal_reads(&engine);
}

fn check_schema(engine: &Engine) {
    let schema = engine.schema();
    // 6 changes in the first statement, DROP SIGNAL temp, CREATE SIGNAL share.
    assert_eq!(schema.version, 8);
    let exponential = |half_life_us| DecaySpec::exponential_micros(half_life_us).unwrap();
    let def = |id, name: &str, kind, decay, windows: &[Window], marks| SignalDef {
        id: SignalId(id),
        name: name.into(),
        kind,
        decay,
        windows: windows.to_vec(),
        marks,
        preference: None,
        affinity: None,
        cohorts: Vec::new(),
    };
    let (item, user, all) = (EntityKind::Item, EntityKind::User, Window::All);
    let want = [
        def(
            4,
            "follow",
            user,
            exponential(604_800_000_000),
            &[Window::Minutes(60), all],
            None,
        ),
        def(
            2,
            "purchase",
            item,
            DecaySpec::None,
            &[
                Window::Minutes(15),
                Window::Minutes(1_440),
                Window::Minutes(43_200),
                all,
            ],
            None,
        ),
        def(
            5,
            "share",
            item,
            exponential(21_600_000_000),
            &[Window::Minutes(60), all],
            None,
        ),
        def(
            1,
            "view",
            item,
            exponential(86_400_000_000),
            &[
                Window::Minutes(60),
                Window::Minutes(1_440),
                Window::Minutes(10_080),
                all,
            ],
            Some(Mark::Seen),
        ),
    ];
    assert_eq!(schema.signals().cloned().collect::<Vec<_>>(), want);
    assert!(schema.signal("temp").is_err());

    let col = ColumnDef::new;
    let want = [
        TableDef {
            kind: item,
            columns: vec![
                col("id", ColumnType::BigInt),
                col("creator_id", ColumnType::BigInt),
                col("created_at", ColumnType::Timestamp),
                col("title", ColumnType::Text),
                col("rank", ColumnType::Int),
                col("score", ColumnType::Double),
                col("ratio", ColumnType::Real),
                col("published", ColumnType::Boolean),
                col("tags", ColumnType::TextArray),
                col("embedding", ColumnType::Vector(3)),
            ],
            text_fields: vec!["title".into()],
            text_boosts: vec![1.0],
            text_analyzer: tidal_core::TextAnalyzer::Default,
            generation: 0,
        },
        TableDef {
            kind: user,
            columns: vec![
                col("id", ColumnType::BigInt),
                col("name", ColumnType::Text),
                col("age", ColumnType::Int),
                col("premium", ColumnType::Boolean),
            ],
            text_fields: vec![],
            text_boosts: vec![],
            text_analyzer: tidal_core::TextAnalyzer::Default,
            generation: 0,
        },
    ];
    assert_eq!(schema.tables().cloned().collect::<Vec<_>>(), want);
    assert!(schema.table(EntityKind::Creator).is_err());
}

/// Compares rows by their debug text too, which tells `-0.0` from `0.0`.
fn assert_rows(kind: EntityKind, got: Vec<(EntityId, Row)>, want: Vec<Row>) {
    let got_ids: Vec<u64> = got.iter().map(|(id, _)| id.0).collect();
    let want_ids: Vec<u64> = want
        .iter()
        .map(|r| match r[0] {
            Value::Int(id) => id as u64,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(got_ids, want_ids, "{kind} ids");
    for ((id, got), want) in got.iter().zip(&want) {
        assert_eq!(got, want, "{kind} {id}");
        assert_eq!(format!("{got:?}"), format!("{want:?}"), "{kind} {id}");
    }
}

fn check_rows(engine: &Engine) {
    let view = engine.read();
    let scan = |kind| {
        view.store()
            .scan(kind)
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let news: &[&str] = &["news"];
    let both: &[&str] = &["news", "héllo"];
    let none: &[&str] = &[];
    #[rustfmt::skip]
    let items = vec![
        // Replaced after the checkpoint.
        item(1, Some(102), Some(1_795_600_800_000_001), Some("first, replaced"), Some(2_147_483_647),
             Some(1e300), Some(-1.5e-7), Some(true), Some(&["a", "b", "c"]), Some([1.0, 2.0, 3.0])),
        // Item 2 was deleted after the checkpoint; item 3 replaced before it.
        item(3, Some(101), Some(1_795_341_600_000_000), Some("third, edited"), Some(-2_147_483_648),
             Some(-0.0), Some(f32::MAX), None, Some(none), Some([0.0, -0.0, 3.5])),
        item(4, Some(101), Some(1_795_255_200_000_000), Some("item 4"), Some(-20),
             Some(0.5), Some(3.0), Some(true), Some(news), Some([4.0, -0.5, 0.001])),
        item(5, Some(102), Some(1_795_168_800_000_000), Some("item 5"), Some(-10),
             Some(0.625), Some(3.75), Some(false), Some(both), Some([5.0, -0.5, 0.001])),
        item(6, Some(100), Some(1_795_082_400_000_000), Some("item 6"), Some(0),
             Some(0.75), Some(4.5), Some(true), Some(none), Some([6.0, -0.5, 0.001])),
        // Item 7 was deleted before the checkpoint.
        item(8, Some(102), Some(1_794_909_600_000_000), Some("item 8"), Some(20),
             Some(1.0), Some(6.0), Some(true), Some(both), Some([8.0, -0.5, 0.001])),
        item(9, Some(100), Some(1_794_823_200_000_000), Some("item 9"), Some(30),
             Some(1.125), Some(6.75), Some(false), Some(none), Some([9.0, -0.5, 0.001])),
        item(10, Some(101), Some(1_794_736_800_000_000), Some("item 10"), Some(40),
             Some(1.25), Some(7.5), Some(true), Some(news), Some([10.0, -0.5, 0.001])),
        item(11, Some(102), Some(1_794_650_400_000_000), Some("item 11"), Some(50),
             Some(1.375), Some(8.25), Some(false), Some(both), Some([11.0, -0.5, 0.001])),
        item(12, Some(100), Some(1_794_564_000_000_000), Some("item 12"), Some(60),
             Some(1.5), Some(9.0), Some(true), Some(none), Some([12.0, -0.5, 0.001])),
        item(13, None, None, Some(""), None, None, None, None, None, None),
        // Inserted after the checkpoint.
        item(14, None, None, None, None, None, None, None, None, None),
    ];
    assert_rows(EntityKind::Item, scan(EntityKind::Item), items);
    let users = vec![
        user(1, Some("ana"), Some(21), Some(false)),
        user(2, Some("bo"), Some(23), Some(true)),
        user(3, Some("cy"), Some(23), Some(true)),
        user(4, Some("dee"), Some(24), Some(false)),
        user(5, Some("ed"), Some(25), Some(false)),
        // User 6 was deleted; user 7 inserted after the checkpoint.
        user(7, None, None, Some(false)),
    ];
    assert_rows(EntityKind::User, scan(EntityKind::User), users);
    assert_eq!(view.get(EntityKind::Item, EntityId(2)).unwrap(), None);
    assert_eq!(view.get(EntityKind::User, EntityId(6)).unwrap(), None);
    assert_eq!(
        view.get(EntityKind::User, EntityId(3)).unwrap(),
        Some(user(3, Some("cy"), Some(23), Some(true)))
    );
}

/// `decay` reads use `exp` from the platform's libm, which may differ in the last bit;
/// everything else a read returns is exact (sums of weights that are multiples of 1/4,
/// divided by a window's hours).
fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-10 * want.abs()
}

/// (signal, entity, total, newest event time in µs from T0).
#[rustfmt::skip]
const TOTALS: &[(&str, u64, f64, Option<i64>)] = &[
    ("view", 4, 23.75, Some(-2_150_424_754)),
    ("view", 5, 30.5, Some(30_000_000)),
    ("view", 6, 40.0, Some(-4_796_851_684)),
    ("view", 9, 0.0, None),
    ("view", 11, 0.0, None),
    ("view", 100, 7.0, Some(-86_400_000_000)),
    ("purchase", 1, 4.75, Some(-1_089_442_611)),
    ("purchase", 8, -1.0, Some(-459_073_291_031)),
    ("purchase", 100, 3.5, Some(-600_000_000)),
    ("follow", 4, 17.25, Some(-43_256_438_940)),
    ("follow", 6, 2.0, Some(-595_209_055_751)),
    ("share", 1, 2.0, Some(0)),
];

/// (signal, entity, `at` in µs from T0, decay, per finite window in declared order
/// `[window_count, velocity, acceleration]`, window_count over `'all'`).
///
/// Reads before an entity's newest event (`at` = T0 − 2 d for most) are approximations
/// whose bounds the ledger documents: `share` on item 1 reads 127.75 there, within the
/// bound of 128, because its event at T0 − 6 h is older than any bucket its `'1h'`
/// window keeps and so cannot be taken out. A precision improvement may change such
/// values; change them here on purpose.
type Read = (&'static str, u64, i64, f64, &'static [[f64; 3]], f64);

#[rustfmt::skip]
const READS: &[Read] = &[
    ("view", 4, 2 * MINUTE_US, 1.7627846203638482, &[[-1.0, -1.0, -1.0], [-0.75, -0.03125, -0.23958333333333334], [8.5, 0.050595238095238096, 0.011904761904761904]], 23.75),
    ("view", 4, HOUR_US, 1.7142510870229766, &[[0.0, 0.0, 1.0], [-0.75, -0.03125, -0.23958333333333334], [8.5, 0.050595238095238096, 0.011904761904761904]], 23.75),
    ("view", 4, -2 * DAY_US, 2.5550914612965836, &[[0.0, 0.0, 0.0], [2.75, 0.11458333333333333, 0.11458333333333333], [4.25, 0.025297619047619048, -0.013392857142857142]], 19.5),
    ("view", 4, 30 * DAY_US, 1.6433023643133106e-9, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 23.75),
    ("view", 5, 2 * MINUTE_US, 1.5364862013322775, &[[1.0, 1.0, 1.0], [2.5, 0.10416666666666667, 0.1875], [9.25, 0.05505952380952381, -0.06547619047619048]], 30.5),
    ("view", 5, HOUR_US, 1.4941831863078117, &[[0.0, 0.0, -1.0], [2.5, 0.10416666666666667, 0.1875], [9.25, 0.05505952380952381, -0.06547619047619048]], 30.5),
    ("view", 5, -2 * DAY_US, 2.116988859365415, &[[0.0, 0.0, 0.0], [1.25, 0.052083333333333336, 0.010416666666666666], [15.75, 0.09375, 0.01488095238095238]], 30.0),
    ("view", 5, 30 * DAY_US, 1.4323425438457417e-9, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 30.5),
    ("view", 6, 2 * MINUTE_US, 7.932246742052906, &[[0.0, 0.0, -3.0], [6.0, 0.25, 0.15625], [19.25, 0.11458333333333333, 0.08482142857142858]], 40.0),
    ("view", 6, HOUR_US, 7.713853662560314, &[[0.0, 0.0, 0.0], [6.0, 0.25, 0.15625], [19.25, 0.11458333333333333, 0.08482142857142858]], 40.0),
    ("view", 6, -2 * DAY_US, 8.120233586502174, &[[0.0, 0.0, 0.0], [11.0, 0.4583333333333333, 0.4583333333333333], [13.0, 0.07738095238095238, 0.05357142857142857]], 31.75),
    ("view", 6, 30 * DAY_US, 7.394595842821433e-9, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 40.0),
    ("view", 9, 2 * MINUTE_US, 0.0, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 0.0),
    ("view", 9, HOUR_US, 0.0, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 0.0),
    ("view", 9, -2 * DAY_US, 0.0, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 0.0),
    ("view", 9, 30 * DAY_US, 0.0, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 0.0),
    ("view", 11, 2 * MINUTE_US, 0.0, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 0.0),
    ("view", 11, HOUR_US, 0.0, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 0.0),
    ("view", 11, -2 * DAY_US, 0.0, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 0.0),
    ("view", 11, 30 * DAY_US, 0.0, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 0.0),
    ("view", 100, 2 * MINUTE_US, 1.4985566382506752, &[[0.0, 0.0, 0.0], [0.0, 0.0, -0.041666666666666664], [7.0, 0.041666666666666664, 0.041666666666666664]], 7.0),
    ("view", 100, HOUR_US, 1.4572979117304088, &[[0.0, 0.0, 0.0], [0.0, 0.0, -0.041666666666666664], [7.0, 0.041666666666666664, 0.041666666666666664]], 7.0),
    ("view", 100, -2 * DAY_US, 3.999518589861643, &[[0.0, 0.0, 0.0], [2.0, 0.08333333333333333, -0.08333333333333333], [6.0, 0.03571428571428571, 0.03571428571428571]], 6.0),
    ("view", 100, 30 * DAY_US, 1.3969838619232163e-9, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 7.0),
    ("purchase", 1, 2 * MINUTE_US, 4.75, &[[0.0, 0.0, -2.0], [1.5, 0.0625, 0.0625], [4.75, 0.006597222222222222, 0.006597222222222222]], 4.75),
    ("purchase", 1, HOUR_US, 4.75, &[[0.0, 0.0, 0.0], [1.5, 0.0625, 0.0625], [4.75, 0.006597222222222222, 0.006597222222222222]], 4.75),
    ("purchase", 1, -2 * DAY_US, 3.25, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [3.25, 0.0045138888888888885, 0.0045138888888888885]], 3.25),
    ("purchase", 1, 30 * DAY_US, 4.75, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -0.006597222222222222]], 4.75),
    ("purchase", 8, 2 * MINUTE_US, -1.0, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, -0.001388888888888889, -0.001388888888888889]], -1.0),
    ("purchase", 8, HOUR_US, -1.0, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, -0.001388888888888889, -0.001388888888888889]], -1.0),
    ("purchase", 8, -2 * DAY_US, -1.0, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, -0.001388888888888889, -0.001388888888888889]], -1.0),
    ("purchase", 8, 30 * DAY_US, -1.0, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.001388888888888889]], -1.0),
    ("purchase", 100, 2 * MINUTE_US, 3.5, &[[1.0, 4.0, 4.0], [3.0, 0.125, 0.125], [3.0, 0.004166666666666667, 0.003472222222222222]], 3.5),
    ("purchase", 100, HOUR_US, 3.5, &[[0.0, 0.0, 0.0], [3.0, 0.125, 0.125], [3.0, 0.004166666666666667, 0.003472222222222222]], 3.5),
    ("purchase", 100, -2 * DAY_US, 0.5, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -0.0006944444444444445]], 0.5),
    ("purchase", 100, 30 * DAY_US, 3.5, &[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -0.004166666666666667]], 3.5),
    ("follow", 4, 2 * MINUTE_US, 7.194013142752756, &[[0.0, 0.0, 0.0]], 17.25),
    ("follow", 4, HOUR_US, 7.165378064206731, &[[0.0, 0.0, 0.0]], 17.25),
    ("follow", 4, -2 * DAY_US, 4.152396288135439, &[[0.0, 0.0, 0.0]], 13.25),
    ("follow", 4, 30 * DAY_US, 0.36889468859027813, &[[0.0, 0.0, 0.0]], 17.25),
    ("follow", 6, 2 * MINUTE_US, 0.8365358825246088, &[[0.0, 0.0, 0.0]], 2.0),
    ("follow", 6, HOUR_US, 0.8332061317683439, &[[0.0, 0.0, 0.0]], 2.0),
    ("follow", 6, -2 * DAY_US, 1.0198889178942065, &[[0.0, 0.0, 0.0]], 2.0),
    ("follow", 6, 30 * DAY_US, 0.04289589659554431, &[[0.0, 0.0, 0.0]], 2.0),
    ("share", 1, 2 * MINUTE_US, 1.4942348808308628, &[[1.0, 1.0, 1.0]], 2.0),
    ("share", 1, HOUR_US, 1.336348077210509, &[[0.0, 0.0, -1.0]], 2.0),
    ("share", 1, -2 * DAY_US, 127.7534290006827, &[[0.0, 0.0, 0.0]], 1.0),
    ("share", 1, 30 * DAY_US, 1.1284745767893841e-36, &[[0.0, 0.0, 0.0]], 2.0),
];

fn check_signal_reads(engine: &Engine) {
    let view = engine.read();
    for &(signal, entity, total, last) in TOTALS {
        let e = EntityId(entity);
        assert_eq!(
            view.total(signal, e).unwrap(),
            total,
            "total({signal}, {entity})"
        );
        assert_eq!(
            view.last(signal, e).unwrap(),
            last.map(t),
            "last({signal}, {entity})"
        );
    }
    for &(signal, entity, at, decay, windows, all) in READS {
        let (e, at_ts) = (EntityId(entity), t(at));
        let what = format!("{signal}, {entity}, T0{at:+}µs");
        let got = view.decay(signal, e, at_ts).unwrap();
        assert!(close(got, decay), "decay({what}) = {got:?}, want {decay:?}");
        let finite: Vec<Window> = view.signal(signal).unwrap().windows.clone();
        let finite: Vec<Window> = finite.into_iter().filter(|&w| w != Window::All).collect();
        assert_eq!(finite.len(), windows.len(), "{signal} windows");
        for (&w, &[count, velocity, acceleration]) in finite.iter().zip(windows) {
            let got = view.window_count(signal, e, w, at_ts).unwrap();
            assert_eq!(got, count, "window_count({what}, {w})");
            let got = view.velocity(signal, e, w, at_ts).unwrap();
            assert_eq!(got, velocity, "velocity({what}, {w})");
            let got = view.acceleration(signal, e, w, at_ts).unwrap();
            assert_eq!(got, acceleration, "acceleration({what}, {w})");
        }
        let got = view.window_count(signal, e, Window::All, at_ts).unwrap();
        assert_eq!(got, all, "window_count({what}, all)");
    }
}

/// A few of the values above, worked out by hand from the events the fixture wrote.
fn check_hand_computed_reads(engine: &Engine) {
    let view = engine.read();
    let item = EntityId(100);
    // `purchase` (DECAY NONE) on item 100: 1.0 at T0 − 10 min and 2.0 at T0 − 3 h before
    // the checkpoint, 0.5 at T0 − 40 d after it.
    assert_eq!(view.total("purchase", item).unwrap(), 3.5);
    assert_eq!(view.decay("purchase", item, t(HOUR_US)).unwrap(), 3.5);
    // At T0 + 2 min, '15m' holds only the event at T0 − 10 min: 1 per quarter hour is 4
    // per hour, and the quarter hour before is empty.
    let (w15, at) = (window("15m"), t(2 * MINUTE_US));
    assert_eq!(view.window_count("purchase", item, w15, at).unwrap(), 1.0);
    assert_eq!(view.velocity("purchase", item, w15, at).unwrap(), 4.0);
    assert_eq!(view.acceleration("purchase", item, w15, at).unwrap(), 4.0);
    // '30d' holds 3.0; the event at T0 − 40 d lies in the 30 days before.
    let (w30, at) = (window("30d"), t(HOUR_US));
    assert_eq!(view.window_count("purchase", item, w30, at).unwrap(), 3.0);
    assert_eq!(
        view.acceleration("purchase", item, w30, at).unwrap(),
        (3.0 - 0.5) / 720.0
    );
    // `view` (half-life 1 day) on item 100: 2.0 at T0 − 2 d and 1.0 at T0 − 1 d before
    // the checkpoint, 4.0 at T0 − 3 d after it (backdated), so
    // decay(T0) = 2·2⁻² + 1·2⁻¹ + 4·2⁻³ = 1.5, and an hour later 1.5·2^(−1/24).
    let got = view.decay("view", item, t(0)).unwrap();
    assert!(close(got, 1.5), "{got}");
    let got = view.decay("view", item, t(HOUR_US)).unwrap();
    assert!(close(got, 1.5 * 2f64.powf(-1.0 / 24.0)), "{got}");
    assert_eq!(view.total("view", item).unwrap(), 7.0);
    assert_eq!(view.last("view", item).unwrap(), Some(t(-DAY_US)));
    // `share` (half-life 6 h, created after the checkpoint) on item 1: 1.0 at T0 − 6 h
    // and 1.0 at T0: 1.5 at T0 and 1.5·2^(−1/6) an hour later.
    let got = view.decay("share", EntityId(1), t(HOUR_US)).unwrap();
    assert!(close(got, 1.5 * 2f64.powf(-1.0 / 6.0)), "{got}");
    // 'all' is a window for window_count only.
    assert!(view.velocity("view", item, Window::All, t(0)).is_err());
}

#[test]
fn t0_is_the_documented_instant() {
    assert_eq!(t(0), Timestamp::parse("2026-11-25 10:00:00").unwrap());
}
