//! Embedded quick start: open a database, define signals, record events, read state.
//!
//! Run with `cargo run --example quickstart [DATA_DIR]` (default: a temporary directory).

use tidal::{
    ColumnDef, ColumnType, Database, DecaySpec, EntityKind, Event, SignalDef, TableDef, Value,
    Window,
};

fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let db = Database::open(&dir)?;

    if db.schema().signal("view").is_err() {
        let w = |s: &str| Window::parse(s);
        db.create_signal(SignalDef::new(
            "view",
            EntityKind::Item,
            DecaySpec::exponential("7 days")?,
            [w("1h")?, w("24h")?, w("7d")?],
        )?)?;
        db.create_signal(SignalDef::new(
            "like",
            EntityKind::Item,
            DecaySpec::exponential("14 days")?,
            [w("24h")?, w("7d")?, Window::All],
        )?)?;
        db.create_table(TableDef::new(
            EntityKind::Item,
            vec![
                ColumnDef::new("id", ColumnType::BigInt),
                ColumnDef::new("creator_id", ColumnType::BigInt),
                ColumnDef::new("title", ColumnType::Text),
            ],
            vec!["title".into()],
        )?)?;
    }

    db.upsert(
        EntityKind::Item,
        vec![
            Value::Int(42),
            Value::Int(1),
            Value::Text("Piano tutorial".into()),
        ],
    )?;
    let now = db.now();
    let events: Vec<Event<'_>> = (0..10)
        .map(|u| Event {
            signal: "view",
            entity: 42,
            user: Some(u),
            weight: 1.0,
            ts: Some(now),
        })
        .chain((0..3).map(|u| Event {
            signal: "like",
            entity: 42,
            user: Some(u),
            weight: 1.0,
            ts: Some(now),
        }))
        .collect();
    let outcome = db.signals(&events)?;
    println!(
        "wrote {} events durably at LSN {}",
        outcome.events_accepted, outcome.lsn
    );

    println!("item 42: {:?}", db.get(EntityKind::Item, 42)?);
    println!(
        "decay('view', 42)            = {:.4}",
        db.decay("view", 42, None)?
    );
    println!(
        "window_count('view', 42, 1h) = {}",
        db.window_count("view", 42, "1h", None)?
    );
    println!(
        "velocity('like', 42, 24h)    = {:.4} per hour",
        db.velocity("like", 42, "24h", None)?
    );
    println!(
        "signal_total('like', 42)     = {}",
        db.signal_total("like", 42)?
    );
    println!(
        "last_signal_at('like', 42)   = {:?}",
        db.last_signal_at("like", 42)?.map(|t| t.to_string())
    );

    // The same state through SQL (DataFusion); every call in a statement reads at one instant.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let batches = rt.block_on(db.sql(
        "SELECT id, title, decay('view', id) AS views, window_count('like', id, '24h') AS likes \
         FROM items ORDER BY views DESC LIMIT 10",
    ))?;
    println!(
        "{}",
        tidal::datafusion::arrow::util::pretty::pretty_format_batches(&batches)?
    );
    db.shutdown()?;
    Ok(())
}
