//! State after checkpoint + WAL replay equals the state before a SIGKILL, for every
//! read function, bit for bit.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use rand::{Rng, SeedableRng};
use tidal::{
    ColumnDef, ColumnType, Config, Database, DecaySpec, EntityId, EntityKind, SignalDef, TableDef,
    Timestamp, Value, Window,
};

use crate::child;

const ENTITIES: u64 = 120;
const HOUR_US: i64 = 3_600_000_000;

fn base() -> Timestamp {
    // Events are backdated relative to this instant; reads happen around it.
    Timestamp::parse("2026-11-20 00:00:00").expect("valid")
}

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.checkpoint_wal_bytes = None;
    c.wal_segment_bytes = 32 << 10;
    c
}

fn signals() -> Vec<SignalDef> {
    let w = |v: &[&str]| {
        v.iter()
            .map(|s| Window::parse(s).unwrap())
            .collect::<Vec<_>>()
    };
    vec![
        SignalDef::new(
            "view",
            EntityKind::Item,
            DecaySpec::exponential("6 hours").unwrap(),
            w(&["15m", "1h", "24h", "7d"]),
        )
        .unwrap(),
        SignalDef::new(
            "like",
            EntityKind::Item,
            DecaySpec::exponential("14 days").unwrap(),
            w(&["24h", "30d", "all"]),
        )
        .unwrap(),
        SignalDef::new("share", EntityKind::Item, DecaySpec::None, w(&["all"])).unwrap(),
    ]
}

/// The same state read through SQL: rows, and signal functions at a fixed instant.
fn dump_sql(db: &Database) -> String {
    let q = format!(
        "SELECT id, title, score, decay('view', id, TIMESTAMP '{at}') AS v, \
         window_count('view', id, '24h', TIMESTAMP '{at}') AS w, signal_total('share', id) AS s, \
         last_signal_at('like', id) AS l FROM items ORDER BY id",
        at = base()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let batches = rt.block_on(db.sql(&q)).unwrap();
    tidal::datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

/// Every read function for every entity, signal and window at several instants, as
/// lines of text with exact f64 bits.
fn dump(db: &Database) -> Vec<String> {
    let mut out = Vec::new();
    let ats = [
        base(),
        Timestamp(base().0 - HOUR_US),
        Timestamp(base().0 - 50 * HOUR_US),
        Timestamp(base().0 + 30 * 60_000_000),
    ];
    for def in signals() {
        for e in 0..ENTITIES {
            out.push(format!(
                "{} {e} total {:x}",
                def.name,
                db.signal_total(&def.name, e).unwrap().to_bits()
            ));
            out.push(format!(
                "{} {e} last {:?}",
                def.name,
                db.last_signal_at(&def.name, e).unwrap()
            ));
            for at in ats {
                out.push(format!(
                    "{} {e} {at} decay {:x}",
                    def.name,
                    db.decay(&def.name, e, Some(at)).unwrap().to_bits()
                ));
                for w in &def.windows {
                    let w = w.to_string();
                    out.push(format!(
                        "{} {e} {at} {w} count {:x}",
                        def.name,
                        db.window_count(&def.name, e, &w, Some(at))
                            .unwrap()
                            .to_bits()
                    ));
                    if w != "all" {
                        out.push(format!(
                            "{} {e} {at} {w} velocity {:x}",
                            def.name,
                            db.velocity(&def.name, e, &w, Some(at)).unwrap().to_bits()
                        ));
                        out.push(format!(
                            "{} {e} {at} {w} accel {:x}",
                            def.name,
                            db.acceleration(&def.name, e, &w, Some(at))
                                .unwrap()
                                .to_bits()
                        ));
                    }
                }
            }
        }
    }
    for e in 0..ENTITIES {
        out.push(format!(
            "row {e} {:?}",
            db.get(EntityKind::Item, e).unwrap()
        ));
    }
    out
}

#[test]
#[ignore = "child process entry point for restart_equivalence::reads_identical_after_sigkill"]
fn equivalence_child() {
    if child::role().as_deref() != Some("equiv") {
        return;
    }
    let dir = std::env::var(child::DIR_VAR).unwrap();
    let db = Database::open_with(config(Path::new(&dir))).unwrap();
    for s in signals() {
        db.create_signal(s).unwrap();
    }
    let cols = vec![
        ColumnDef::new("id", ColumnType::BigInt),
        ColumnDef::new("title", ColumnType::Text),
        ColumnDef::new("score", ColumnType::Double),
    ];
    db.create_table(TableDef::new(EntityKind::Item, cols, vec!["title".into()]).unwrap())
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let names = ["view", "like", "share"];
    for batch in 0..60 {
        let mut txn = db.engine().begin();
        for _ in 0..rng.random_range(1..150) {
            let name = names[rng.random_range(0..3)];
            let e = EntityId(rng.random_range(0..ENTITIES));
            // Out of order and backdated up to 10 days.
            let ts = Timestamp(base().0 - rng.random_range(0..240 * HOUR_US));
            let user = rng
                .random_bool(0.7)
                .then(|| EntityId(rng.random_range(0..1000)));
            txn.signal(name, e, user, rng.random_range(0.25..3.0), Some(ts))
                .unwrap();
        }
        let id = rng.random_range(0..ENTITIES);
        if rng.random_bool(0.2) {
            txn.delete(EntityKind::Item, EntityId(id)).unwrap();
        } else {
            txn.upsert(
                EntityKind::Item,
                vec![
                    Value::Int(id as i64),
                    Value::Text(format!("item {batch}")),
                    Value::Double(rng.random()),
                ],
            )
            .unwrap();
        }
        txn.commit().unwrap();
        if batch == 25 {
            db.checkpoint().unwrap();
        }
    }
    let path = Path::new(&dir).join("expected.txt");
    let mut f = std::fs::File::create(&path).unwrap();
    for line in dump(&db) {
        writeln!(f, "{line}").unwrap();
    }
    f.sync_all().unwrap();
    let sql_path = Path::new(&dir).join("expected_sql.txt");
    std::fs::write(&sql_path, dump_sql(&db)).unwrap();
    std::fs::File::open(&sql_path).unwrap().sync_all().unwrap();
    println!("TIDAL-CHILD-DONE");
    std::io::stdout().flush().unwrap();
    // Wait to be killed: no clean shutdown may happen.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[test]
fn reads_identical_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut proc = child::spawn(
        "restart_equivalence::equivalence_child",
        "equiv",
        dir.path(),
        &[],
    );
    let stdout = proc.stdout.take().unwrap();
    let mut done = false;
    for line in BufReader::new(stdout).lines() {
        // libtest may print "test <name> ... " without a newline before our output.
        if line.unwrap().trim_end().ends_with("TIDAL-CHILD-DONE") {
            done = true;
            break;
        }
    }
    child::kill9(&mut proc);
    assert!(done, "child exited before finishing its workload");
    let expected: Vec<String> = std::fs::read_to_string(dir.path().join("expected.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let db = Database::open_with(config(dir.path())).unwrap();
    let got = dump(&db);
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e);
    }
    let expected_sql = std::fs::read_to_string(dir.path().join("expected_sql.txt")).unwrap();
    assert!(expected_sql.lines().count() > 20, "{expected_sql}");
    assert_eq!(dump_sql(&db), expected_sql);
    // And once more after a clean shutdown (state restored purely from a checkpoint).
    db.shutdown().unwrap();
    drop(db);
    let db = Database::open_with(config(dir.path())).unwrap();
    assert_eq!(dump(&db), expected);
}
