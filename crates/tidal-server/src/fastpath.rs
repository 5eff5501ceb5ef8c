//! The hottest prepared statements without SQL: INSERTs of events
//! (`INSERT INTO signals (…) VALUES ($1, …)[, (…)…]`), point reads by id
//! (`SELECT <columns> FROM <entity table> WHERE id = $1`) and pgvector's nearest-neighbour
//! query through an HNSW index (`SELECT … ORDER BY embedding <=> $1 LIMIT k`, [`FastAnn`]).
//!
//! The generic extended-protocol path renders every parameter as a SQL literal,
//! re-parses the statement and builds an Arrow batch (for a write) or plans a query (for
//! a read), which costs more CPU than the work itself. A statement of exactly one of
//! these shapes is planned once at Parse into a [`FastInsert`] or [`FastSelect`]; each
//! Execute then decodes the parameters straight into events, or reads the one row from a
//! snapshot (DataFusion still plans the read once at Parse, for the described columns).
//!
//! The fast paths only *accept* what the generic path accepts with the same result: a
//! parameter whose type or encoding is not the column's natural one (a text
//! `entity_id`, a binary numeric weight, a text timestamp, which the generic path reads
//! through DataFusion's cast), an unused parameter, or a value that does not decode
//! makes `bind` return `None`, and the caller runs the generic path, which also reports
//! the errors. The wire tests compare the two paths' rows, counts and SQLSTATEs.

use bytes::Bytes;
use pgwire::api::Type;
use pgwire::api::results::FieldFormat;
use tidal::datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Ident, SelectItem, SetExpr, Statement, TableFactor, TableObject,
    Value as SqlValue,
};
use tidal::datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use tidal::datafusion::sql::sqlparser::parser::Parser;
use tidal_core::{EntityId, EntityKind, Schema, TableDef, Timestamp};
use tidal_sql::SIGNAL_COLUMNS;

use crate::sqltext::{PG_EPOCH_MICROS, float_param, int_param, timestamp_param};

/// Where one column of the event comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// Not named in the INSERT: the column default (`user_id` NULL, `weight` 1, `ts` now).
    Default,
    /// `$n` (0-based here).
    Param(usize),
    /// A literal in the statement text.
    Text(String),
    Number(String),
    Null,
}

/// A statement with a fast path, planned at Parse.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fast {
    Insert(FastInsert),
    Select(FastSelect),
    Ann(FastAnn),
}

/// A planned `INSERT INTO signals … VALUES (…), …`; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FastInsert {
    /// Per row, indexed like [`SIGNAL_COLUMNS`]: signal, entity_id, user_id, weight, ts.
    rows: Vec<[Source; 5]>,
    /// Parameters the statement uses: exactly `$1..$params`.
    params: usize,
}

/// How many parameters `$1..$n` the sources use, or `None` if some `$k` in between is
/// unused (the generic path decodes every bound parameter, even unused ones, so only
/// statements that use them all are taken).
fn dense_params<'a>(sources: impl Iterator<Item = &'a Source>) -> Option<usize> {
    let used: std::collections::BTreeSet<usize> = sources
        .filter_map(|s| match s {
            Source::Param(i) => Some(*i),
            _ => None,
        })
        .collect();
    match used.last() {
        Some(&last) if last + 1 != used.len() => None,
        _ => Some(used.len()),
    }
}

impl Source {
    /// What the generic path's literal typing sees: a column mixing kinds (a text
    /// literal in one row, a number or parameter in another) is typed by DataFusion's
    /// coercion there, so the fast path leaves such statements alone.
    fn kind(&self) -> Option<u8> {
        match self {
            Source::Default | Source::Null => None,
            Source::Param(_) => Some(0),
            Source::Text(_) => Some(1),
            Source::Number(_) => Some(2),
        }
    }
}

/// One event decoded from a Bind.
#[derive(Debug, PartialEq)]
pub(crate) struct Bound<'a> {
    pub signal: &'a str,
    pub entity: EntityId,
    pub user: Option<EntityId>,
    pub weight: f64,
    /// `None`: the transaction's clock.
    pub ts: Option<Timestamp>,
}

impl FastInsert {
    /// Plans `sql` (already known to be an INSERT into `signals`), or `None` if it is
    /// not of the VALUES-of-placeholders-and-literals shape.
    pub fn plan(sql: &str) -> Option<FastInsert> {
        let parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
        let [Statement::Insert(insert)] = parsed.as_slice() else {
            return None;
        };
        let TableObject::TableName(name) = &insert.table else {
            return None;
        };
        if !name.to_string().eq_ignore_ascii_case("signals")
            || insert.on.is_some()
            || insert.returning.is_some()
            || insert.partitioned.is_some()
            || !insert.assignments.is_empty()
        {
            return None;
        }
        let source = insert.source.as_ref()?;
        if source.with.is_some()
            || source.order_by.is_some()
            || source.limit_clause.is_some()
            || source.fetch.is_some()
        {
            return None;
        }
        let SetExpr::Values(values) = source.body.as_ref() else {
            return None;
        };
        let width = values.rows.first()?.content.len();
        let names: Vec<String> = if insert.columns.is_empty() {
            SIGNAL_COLUMNS
                .iter()
                .take(width)
                .map(|c| c.to_string())
                .collect()
        } else {
            // Named exactly as the generic path names them (tidal_sql's statement parser).
            insert
                .columns
                .iter()
                .map(|c| c.to_string().to_ascii_lowercase())
                .collect()
        };
        if names.len() != width {
            return None;
        }
        let mut slots = Vec::with_capacity(width);
        let mut named = [false; 5];
        for name in &names {
            let slot = SIGNAL_COLUMNS.iter().position(|c| c == name)?;
            if std::mem::replace(&mut named[slot], true) {
                return None;
            }
            slots.push(slot);
        }
        if !named[0] || !named[1] {
            return None;
        }
        let mut rows = Vec::with_capacity(values.rows.len());
        let mut kinds: [Option<u8>; 5] = [None; 5];
        for row in &values.rows {
            if row.content.len() != width {
                return None;
            }
            let mut cols = [
                Source::Default,
                Source::Default,
                Source::Default,
                Source::Default,
                Source::Default,
            ];
            for (&slot, expr) in slots.iter().zip(&row.content) {
                let Expr::Value(v) = expr else { return None };
                let src = match &v.value {
                    SqlValue::Placeholder(p) => {
                        Source::Param(p.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)?)
                    }
                    SqlValue::SingleQuotedString(s) => Source::Text(s.clone()),
                    SqlValue::Number(n, _) => Source::Number(n.to_string()),
                    SqlValue::Null => Source::Null,
                    _ => return None,
                };
                if let Some(k) = src.kind()
                    && *kinds[slot].get_or_insert(k) != k
                {
                    return None;
                }
                cols[slot] = src;
            }
            rows.push(cols);
        }
        let params = dense_params(rows.iter().flatten())?;
        Some(FastInsert { rows, params })
    }

    /// Decodes the events from a Bind's parameters, or `None` if anything in any row
    /// is not the plain case (the caller then runs the generic path, which gives the
    /// verdict for the whole statement).
    pub fn bind<'a>(
        &'a self,
        types: &[Type],
        values: &'a [Option<Bytes>],
        formats: impl Fn(usize) -> FieldFormat,
    ) -> Option<Vec<Bound<'a>>> {
        if values.len() != self.params {
            return None;
        }
        self.rows
            .iter()
            .map(|cols| Self::bind_row(cols, types, values, &formats))
            .collect()
    }

    fn bind_row<'a>(
        cols: &'a [Source; 5],
        types: &[Type],
        values: &'a [Option<Bytes>],
        formats: &impl Fn(usize) -> FieldFormat,
    ) -> Option<Bound<'a>> {
        let param = |i: usize| -> Option<Param<'a>> {
            let value = values.get(i)?;
            Some(Param {
                ty: types.get(i)?.clone(),
                bytes: value.as_deref(),
                binary: formats(i) == FieldFormat::Binary,
            })
        };
        let signal = match &cols[0] {
            Source::Param(i) => param(*i)?.text()?,
            Source::Text(s) => s.as_str(),
            _ => return None,
        };
        let id = |src: &Source| -> Option<Option<EntityId>> {
            match src {
                Source::Default | Source::Null => Some(None),
                Source::Param(i) => match param(*i)?.int()? {
                    None => Some(None),
                    Some(v) => EntityId::from_i64(v).map(Some),
                },
                Source::Number(n) => EntityId::from_i64(n.parse().ok()?).map(Some),
                Source::Text(_) => None,
            }
        };
        // A NULL entity_id is an error the generic path reports.
        let entity = id(&cols[1])??;
        let user = id(&cols[2])?;
        let weight = match &cols[3] {
            Source::Default => 1.0,
            Source::Param(i) => param(*i)?.float()??,
            Source::Number(n) => n.parse().ok()?,
            Source::Null | Source::Text(_) => return None,
        };
        // NaN and infinities are refused by the generic path's own checks.
        if !weight.is_finite() {
            return None;
        }
        let ts = match &cols[4] {
            Source::Default | Source::Null => None,
            Source::Param(i) => param(*i)?.timestamp()?,
            Source::Text(s) => Some(Timestamp::parse(s).ok()?),
            Source::Number(_) => return None,
        };
        Some(Bound {
            signal,
            entity,
            user,
            weight,
            ts,
        })
    }
}

/// A planned `SELECT <columns> FROM <entity table> WHERE id = $n`; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FastSelect {
    pub kind: EntityKind,
    /// Indexes of the selected columns in the table's columns.
    pub projection: Vec<usize>,
    /// The table as planned against: if it has changed since (dropped, re-created), the
    /// statement goes back to the generic path, which re-plans it or reports the change.
    pub table: TableDef,
    /// The ids read: `lo ≤ id ≤ hi` (`id = $n` is `lo = hi`).
    lo: IdBound,
    hi: IdBound,
    /// Parameters the statement uses: exactly `$1..$params`.
    params: usize,
}

/// Most ids one fast read may span; a wider range goes to the generic path, which
/// streams its result under the memory limit.
pub(crate) const FAST_READ_IDS_MAX: u64 = 10_000;

/// One end of an id range: `$n`, or `$n + k` / `$n - k` with an integer literal `k`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct IdBound {
    /// The parameter (0-based).
    param: usize,
    offset: i64,
}

impl IdBound {
    fn parse(e: &Expr) -> Option<IdBound> {
        match e {
            Expr::Value(v) => match &v.value {
                SqlValue::Placeholder(p) => Some(IdBound {
                    param: p.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)?,
                    offset: 0,
                }),
                _ => None,
            },
            Expr::BinaryOp { left, op, right } => {
                let base = IdBound::parse(left)?;
                let Expr::Value(v) = right.as_ref() else {
                    return None;
                };
                let SqlValue::Number(n, _) = &v.value else {
                    return None;
                };
                let k: i64 = n.parse().ok()?;
                let offset = match op {
                    BinaryOperator::Plus => k,
                    BinaryOperator::Minus => k.checked_neg()?,
                    _ => return None,
                };
                (base.offset == 0).then_some(IdBound { offset, ..base })
            }
            _ => None,
        }
    }
}

/// How DataFusion resolves an identifier: unquoted names fold to lower case.
fn ident_name(i: &Ident) -> String {
    match i.quote_style {
        None => i.value.to_ascii_lowercase(),
        Some(_) => i.value.clone(),
    }
}

/// `sql` as a single `SELECT … FROM <entity table> …` (one table, no join): the parsed
/// query, the table's name as written, and its kind. `None` for anything else.
fn entity_select(
    sql: &str,
) -> Option<(
    Box<tidal::datafusion::sql::sqlparser::ast::Query>,
    tidal::datafusion::sql::sqlparser::ast::ObjectName,
    EntityKind,
)> {
    let mut parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    if parsed.len() != 1 {
        return None;
    }
    let Statement::Query(query) = parsed.pop()? else {
        return None;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [from] = select.from.as_slice() else {
        return None;
    };
    let TableFactor::Table { name, .. } = &from.relation else {
        return None;
    };
    let [table] = name.0.as_slice() else {
        return None;
    };
    let table = ident_name(table.as_ident()?);
    let kind: EntityKind = table.parse().ok()?;
    if kind.table_name() != table {
        return None;
    }
    let name = name.clone();
    Some((query, name, kind))
}

impl FastSelect {
    /// Plans `sql` against `schema`, or `None` if it is not exactly a point read of
    /// plain columns (or `*`) of an entity table by `id = $n`.
    pub fn plan(sql: &str, schema: &Schema) -> Option<FastSelect> {
        let (query, name, kind) = entity_select(sql)?;
        let SetExpr::Select(select) = query.body.as_ref() else {
            return None;
        };
        let def = schema.table(kind).ok()?;
        // DataFusion sees the table's columns under lower-case names (`table_schema`).
        let column = |name: &str| {
            def.columns
                .iter()
                .position(|c| c.name.to_ascii_lowercase() == name)
        };
        let mut projection = Vec::new();
        let mut items = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::Wildcard(_) => {
                    projection.extend(0..def.columns.len());
                    items.push("*".to_string());
                }
                SelectItem::UnnamedExpr(Expr::Identifier(i)) => {
                    projection.push(column(&ident_name(i))?);
                    items.push(i.to_string());
                }
                SelectItem::ExprWithAlias {
                    expr: Expr::Identifier(i),
                    alias,
                } => {
                    projection.push(column(&ident_name(i))?);
                    items.push(format!("{i} AS {alias}"));
                }
                _ => return None,
            }
        }
        let is_id = |e: &Expr| matches!(e, Expr::Identifier(i) if ident_name(i) == "id");
        if def.columns.first()?.name != "id" {
            return None;
        }
        let (lo, hi) = match select.selection.as_ref()? {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => {
                let bound = if is_id(left) {
                    right
                } else if is_id(right) {
                    left
                } else {
                    return None;
                };
                let b = IdBound::parse(bound)?;
                (b, b)
            }
            Expr::Between {
                expr,
                negated: false,
                low,
                high,
            } if is_id(expr) => (IdBound::parse(low)?, IdBound::parse(high)?),
            _ => return None,
        };
        let params = {
            let used = [lo.param, hi.param];
            let n = used.iter().max()? + 1;
            // `$1..$n` all used (see `dense_params`).
            if !(0..n).all(|i| used.contains(&i)) {
                return None;
            }
            n
        };
        // Nothing else in the statement: it prints back as exactly this shape (any
        // other clause — DISTINCT, ORDER BY, LIMIT, a join, an alias — would show).
        let shape = format!(
            "SELECT {} FROM {name} WHERE {}",
            items.join(", "),
            select.selection.as_ref()?
        );
        if query.to_string() != shape {
            return None;
        }
        Some(FastSelect {
            kind,
            projection,
            table: def.clone(),
            lo,
            hi,
            params,
        })
    }

    /// The ids to read, `lo ≤ id ≤ hi`, `Some(None)` when a bound is NULL (no rows), or
    /// `None` when a parameter is not a plain integer, a bound overflows or the range
    /// is wider than [`FAST_READ_IDS_MAX`] (the generic path then decides).
    pub fn bind(
        &self,
        types: &[Type],
        values: &[Option<Bytes>],
        formats: impl Fn(usize) -> FieldFormat,
    ) -> Option<Option<(i64, i64)>> {
        if values.len() != self.params {
            return None;
        }
        let bound = |b: IdBound| -> Option<Option<i64>> {
            let v = Param {
                ty: types.get(b.param)?.clone(),
                bytes: values.get(b.param)?.as_deref(),
                binary: formats(b.param) == FieldFormat::Binary,
            }
            .int()?;
            match v {
                None => Some(None),
                Some(v) => v.checked_add(b.offset).map(Some),
            }
        };
        let (Some(lo), Some(hi)) = (bound(self.lo)?, bound(self.hi)?) else {
            return Some(None);
        };
        // Ids are never negative.
        let lo = lo.max(0);
        if hi >= lo && hi.abs_diff(lo) >= FAST_READ_IDS_MAX {
            return None;
        }
        Some(Some((lo, hi)))
    }
}

/// One Bind parameter with its declared type and format.
struct Param<'a> {
    ty: Type,
    bytes: Option<&'a [u8]>,
    binary: bool,
}

impl<'a> Param<'a> {
    /// Text of a text-typed parameter (`NULL` is not plain: no `Some`).
    fn text(&self) -> Option<&'a str> {
        match self.ty {
            Type::TEXT | Type::VARCHAR => std::str::from_utf8(self.bytes?).ok(),
            _ => None,
        }
    }

    /// An integer-typed parameter: `Some(None)` for NULL.
    fn int(&self) -> Option<Option<i64>> {
        let Some(b) = self.bytes else {
            return matches!(self.ty, Type::INT2 | Type::INT4 | Type::INT8).then_some(None);
        };
        if !matches!(self.ty, Type::INT2 | Type::INT4 | Type::INT8) {
            return None;
        }
        Some(Some(int_param(&self.ty, b, self.binary).ok()?))
    }

    /// A float- or integer-typed parameter: `Some(None)` for NULL.
    fn float(&self) -> Option<Option<f64>> {
        if matches!(self.ty, Type::INT2 | Type::INT4 | Type::INT8) {
            return self.int().map(|v| v.map(|v| v as f64));
        }
        let Some(b) = self.bytes else {
            return matches!(self.ty, Type::FLOAT4 | Type::FLOAT8).then_some(None);
        };
        if !matches!(self.ty, Type::FLOAT4 | Type::FLOAT8) {
            return None;
        }
        Some(Some(float_param(&self.ty, b, self.binary).ok()?))
    }

    /// A binary timestamp-typed parameter: `Some(None)` for NULL (the column default).
    /// The generic path reads timestamp parameters through DataFusion's cast to its
    /// nanosecond TIMESTAMP: text ones are left to it (its text format is not ours), and
    /// binary ones outside that type's range (years 1677–2262) too, which it refuses.
    fn timestamp(&self) -> Option<Option<Timestamp>> {
        if !matches!(self.ty, Type::TIMESTAMP | Type::TIMESTAMPTZ) {
            return None;
        }
        let Some(b) = self.bytes else {
            return Some(None);
        };
        if !self.binary {
            return None;
        }
        let us = timestamp_param(&self.ty, b)
            .ok()?
            .checked_add(PG_EPOCH_MICROS)?;
        us.checked_mul(1000)?;
        Some(Some(Timestamp(us)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_type() -> impl Strategy<Value = Type> {
        prop::sample::select(vec![
            Type::TEXT,
            Type::VARCHAR,
            Type::INT2,
            Type::INT4,
            Type::INT8,
            Type::FLOAT4,
            Type::FLOAT8,
            Type::NUMERIC,
            Type::TIMESTAMP,
            Type::TIMESTAMPTZ,
            Type::DATE,
            Type::BYTEA,
            Type::BOOL,
        ])
    }

    proptest! {
        /// Whatever a client binds — any types, formats, bytes, counts — decoding either
        /// yields events or defers; it never panics.
        #[test]
        fn bind_never_panics(
            params in prop::collection::vec(
                (any_type(), prop::option::of(prop::collection::vec(any::<u8>(), 0..12)), any::<bool>()),
                0..7,
            ),
        ) {
            let types: Vec<Type> = params.iter().map(|p| p.0.clone()).collect();
            let values: Vec<Option<Bytes>> =
                params.iter().map(|p| p.1.clone().map(Bytes::from)).collect();
            let binary: Vec<bool> = params.iter().map(|p| p.2).collect();
            let format = |i: usize| {
                if binary.get(i).copied().unwrap_or(false) {
                    FieldFormat::Binary
                } else {
                    FieldFormat::Text
                }
            };
            let insert = FastInsert::plan(
                "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES ($1, $2, $3, $4, $5)",
            )
            .unwrap();
            if let Some(events) = insert.bind(&types, &values, format) {
                prop_assert_eq!(events.len(), 1);
                prop_assert!(events[0].weight.is_finite());
            }
            let select = FastSelect::plan("SELECT * FROM items WHERE id = $1", &schema()).unwrap();
            let _ = select.bind(&types, &values, format);
        }
    }

    fn binary(_: usize) -> FieldFormat {
        FieldFormat::Binary
    }

    fn text(_: usize) -> FieldFormat {
        FieldFormat::Text
    }

    fn b(v: &[u8]) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(v))
    }

    #[test]
    fn plans_only_the_one_row_shape() {
        let p = FastInsert::plan(
            "INSERT INTO signals (signal, entity_id, user_id, ts) VALUES ($1, $2, $3, $4)",
        )
        .unwrap();
        assert_eq!(
            p.rows[0],
            [
                Source::Param(0),
                Source::Param(1),
                Source::Param(2),
                Source::Default,
                Source::Param(3)
            ]
        );
        let p = FastInsert::plan("insert into SIGNALS values ('like', $1, NULL, 2.5)").unwrap();
        assert_eq!(p.rows[0][0], Source::Text("like".into()));
        assert_eq!(p.rows[0][2], Source::Null);
        assert_eq!(p.rows[0][3], Source::Number("2.5".into()));
        let p = FastInsert::plan(
            "INSERT INTO signals (entity_id, signal) VALUES ($1, 'like'), ($2, 'view'), (3, $3)",
        );
        assert_eq!(
            p, None,
            "text and parameter in one column: left to the generic path"
        );
        let p =
            FastInsert::plan("INSERT INTO signals VALUES ($1, $2, NULL), ($3, $4, $5)").unwrap();
        assert_eq!(p.rows.len(), 2);
        assert_eq!(p.rows[1][2], Source::Param(4));
        for sql in [
            "INSERT INTO signals VALUES ($1, $2), ($3, $4, $5)",
            "INSERT INTO signals (signal, entity_id) SELECT $1, $2",
            "INSERT INTO signals (signal, entity_id) VALUES ($1, $2 + 1)",
            "INSERT INTO signals (signal, entity_id) VALUES ($1, -5)",
            "INSERT INTO signals (signal, user_id) VALUES ($1, $2)",
            "INSERT INTO signals (signal, entity_id, entity_id) VALUES ($1, $2, $3)",
            "INSERT INTO signals (signal, entity_id, nope) VALUES ($1, $2, $3)",
            "INSERT INTO signals (signal, entity_id) VALUES ($1, $2, $3)",
            "INSERT INTO items (id) VALUES ($1)",
            "INSERT INTO signals (signal, entity_id) VALUES ($1, $2) RETURNING *",
            "INSERT INTO signals (signal, entity_id) VALUES ($0, $2)",
            "INSERT INTO signals (\"Signal\", entity_id) VALUES ($1, $2)",
        ] {
            assert_eq!(FastInsert::plan(sql), None, "{sql}");
        }
    }

    fn schema() -> Schema {
        use tidal_core::{ColumnDef, ColumnType, SchemaChange, TableDef};
        let mut schema = Schema::new();
        let cols = vec![
            ColumnDef::new("id", ColumnType::BigInt),
            ColumnDef::new("title", ColumnType::Text),
            ColumnDef::new("score", ColumnType::Double),
        ];
        let def = TableDef::new(EntityKind::Item, cols, vec![]).unwrap();
        schema.apply(&SchemaChange::CreateTable(def)).unwrap();
        schema
    }

    #[test]
    fn plans_only_exact_point_reads() {
        let schema = schema();
        let plan = |sql: &str| FastSelect::plan(sql, &schema);
        let p = plan("SELECT * FROM items WHERE id = $1").unwrap();
        assert_eq!(
            (p.kind, p.projection.clone(), &p.table),
            (
                EntityKind::Item,
                vec![0, 1, 2],
                schema.table(EntityKind::Item).unwrap()
            )
        );
        let p = plan("select SCORE, title AS t, \"id\" from Items where $1 = id").unwrap();
        assert_eq!(p.projection, vec![2, 1, 0]);
        let p = plan("SELECT id FROM items WHERE id BETWEEN $1 AND $1 + 100").unwrap();
        let one = |v: i64| vec![Some(Bytes::copy_from_slice(&v.to_be_bytes()))];
        assert_eq!(p.bind(&[Type::INT8], &one(7), binary), Some(Some((7, 107))));
        assert_eq!(p.bind(&[Type::INT8], &[None], binary), Some(None));
        assert_eq!(
            p.bind(&[Type::INT8], &one(i64::MAX), binary),
            None,
            "overflow"
        );
        let p = plan("SELECT id FROM items WHERE id BETWEEN $2 - 3 AND $1").unwrap();
        let two = |a: i64, b: i64| {
            vec![
                Some(Bytes::copy_from_slice(&a.to_be_bytes())),
                Some(Bytes::copy_from_slice(&b.to_be_bytes())),
            ]
        };
        let t2 = [Type::INT8, Type::INT8];
        assert_eq!(p.bind(&t2, &two(10, 5), binary), Some(Some((2, 10))));
        assert_eq!(
            p.bind(&t2, &two(3, 50), binary),
            Some(Some((47, 3))),
            "empty"
        );
        let wide = FAST_READ_IDS_MAX as i64;
        assert_eq!(p.bind(&t2, &two(wide + 2, 0), binary), None, "too wide");
        assert_eq!(p.bind(&t2, &two(wide, 3), binary), None, "too wide");
        assert_eq!(
            p.bind(&t2, &two(wide - 1, 3), binary),
            Some(Some((0, wide - 1)))
        );
        for sql in [
            "SELECT * FROM items WHERE id = $1 LIMIT 1",
            "SELECT * FROM items WHERE id = $1 ORDER BY title",
            "SELECT DISTINCT title FROM items WHERE id = $1",
            "SELECT * FROM items AS t WHERE id = $1",
            "SELECT * FROM items WHERE t.id = $1",
            "SELECT * FROM items WHERE id = $1 AND true",
            "SELECT * FROM items WHERE id > $1",
            "SELECT * FROM items WHERE id = 1",
            "SELECT * FROM items WHERE title = $1",
            "SELECT * FROM items, users WHERE id = $1",
            "SELECT * FROM public.items WHERE id = $1",
            "SELECT * FROM users WHERE id = $1",
            "SELECT * FROM signals WHERE id = $1",
            "SELECT nope FROM items WHERE id = $1",
            "SELECT \"Title\" FROM items WHERE id = $1",
            "SELECT score * 2 FROM items WHERE id = $1",
            "SELECT decay('like', id) FROM items WHERE id = $1",
            "WITH x AS (SELECT 1) SELECT * FROM items WHERE id = $1",
            "SELECT * FROM items WHERE id = $1 UNION SELECT * FROM items WHERE id = $2",
            "SELECT * FROM items WHERE id = $1 FOR UPDATE",
            "SELECT * FROM items WHERE id = $0",
            "SELECT * FROM items WHERE id = $2",
            "SELECT * FROM items WHERE id BETWEEN $1 AND $3",
            "SELECT * FROM items WHERE id NOT BETWEEN $1 AND $2",
            "SELECT * FROM items WHERE id BETWEEN $1 AND $1 * 2",
            "SELECT * FROM items WHERE id BETWEEN $1 AND $1 + 1.5",
            "SELECT * FROM items WHERE id BETWEEN $1 + 1 + 1 AND $1",
            "SELECT * FROM items WHERE title BETWEEN $1 AND $2",
            "SELECT * FROM items WHERE id = $1 + 1 OR id = $1",
        ] {
            assert_eq!(plan(sql), None, "{sql}");
        }
    }

    #[test]
    fn binds_natural_types_and_defers_everything_else() {
        let p = FastInsert::plan(
            "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES ($1, $2, $3, $4, $5)",
        )
        .unwrap();
        let types = [
            Type::TEXT,
            Type::INT8,
            Type::INT4,
            Type::FLOAT8,
            Type::TIMESTAMPTZ,
        ];
        let values = [
            b(b"like"),
            b(&42i64.to_be_bytes()),
            b(&7i32.to_be_bytes()),
            b(&2.5f64.to_be_bytes()),
            // 2026-11-25 10:00:00 UTC, in microseconds since 2000-01-01.
            b(
                &(Timestamp::parse("2026-11-25 10:00:00").unwrap().0 - PG_EPOCH_MICROS)
                    .to_be_bytes(),
            ),
        ];
        let got = p.bind(&types, &values, binary).unwrap();
        assert_eq!(
            got,
            vec![Bound {
                signal: "like",
                entity: EntityId(42),
                user: Some(EntityId(7)),
                weight: 2.5,
                ts: Some(Timestamp::parse("2026-11-25 10:00:00").unwrap()),
            }]
        );
        // The same in text format — except a text timestamp, which the generic path's
        // cast reads (by its own rules), so it is left to it.
        let mut values_text = [
            b(b"like"),
            b(b" 42"),
            b(b"7"),
            b(b"2.5"),
            b(b"2026-11-25 12:00:00+02"),
        ];
        assert_eq!(p.bind(&types, &values_text, text), None);
        values_text[4] = None;
        let got_text = p.bind(&types, &values_text, text).unwrap();
        assert_eq!(got_text, vec![Bound { ts: None, ..got[0] }]);
        // NULL user and ts take the defaults.
        let mut v = values.clone();
        v[2] = None;
        v[4] = None;
        let got = p.bind(&types, &v, binary).unwrap();
        assert_eq!((got[0].user, got[0].ts), (None, None));

        // Everything the generic path must judge: NULL signal/entity/weight, a negative
        // id, a wrong width, unparsable text, a non-natural type.
        let defer = |i: usize, value: Option<Bytes>, ty: Type, fmt: fn(usize) -> FieldFormat| {
            let mut v = values.to_vec();
            v[i] = value;
            let mut t = types.to_vec();
            t[i] = ty;
            assert_eq!(p.bind(&t, &v, fmt), None, "param {i}");
        };
        defer(0, None, Type::TEXT, binary);
        defer(1, None, Type::INT8, binary);
        defer(3, None, Type::FLOAT8, binary);
        defer(1, b(&(-1i64).to_be_bytes()), Type::INT8, binary);
        defer(1, b(&1i32.to_be_bytes()), Type::INT8, binary);
        defer(1, b(b"12"), Type::TEXT, text);
        defer(0, b(b"like"), Type::BYTEA, binary);
        defer(3, b(&[0, 1]), Type::NUMERIC, binary);
        defer(4, b(&1i32.to_be_bytes()), Type::DATE, binary);
        // Binary timestamps outside DataFusion's nanosecond TIMESTAMP (1677–2262).
        let far = Timestamp::parse("2300-01-01").unwrap().0 - PG_EPOCH_MICROS;
        defer(4, b(&far.to_be_bytes()), Type::TIMESTAMP, binary);
        let values_text = values_text.to_vec();
        let mut v = values_text.clone();
        v[1] = b(b"4.5");
        assert_eq!(p.bind(&types, &v, text), None);
        let mut v = values_text.clone();
        v[3] = b(b"NaN");
        assert_eq!(p.bind(&types, &v, text), None);
        // Too few parameters, or one more than the statement uses (the generic path
        // decodes it too).
        assert_eq!(p.bind(&types, &values[..3], binary), None);
        let mut more = values.to_vec();
        more.push(b(b"unused"));
        let mut more_types = types.to_vec();
        more_types.push(Type::TEXT);
        assert_eq!(p.bind(&more_types, &more, binary), None);
        // A statement that skips `$k` is not planned.
        assert_eq!(
            FastInsert::plan("INSERT INTO signals (signal, entity_id) VALUES ($1, $3)"),
            None
        );
    }
}

/// Largest `LIMIT` the nearest-neighbour fast path takes.
pub(crate) const FAST_ANN_LIMIT_MAX: usize = 1_000;

/// One result column of a [`FastAnn`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AnnItem {
    /// The i-th entry of `projection`.
    Column(usize),
    /// The distance the statement orders by.
    Distance,
}

/// A planned `SELECT <columns | col <op> $1 [AS d]> FROM <entity table>
/// ORDER BY col <op> $1 LIMIT k` — pgvector's nearest-neighbour query — answered by the
/// HNSW index without planning (see `SqlSession::nearest_rows`). Only when an index of
/// the operator's class exists at Execute; otherwise, and for anything else (a WHERE, a
/// NULL or malformed vector), the generic path runs and reports.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FastAnn {
    pub table: TableDef,
    pub column: String,
    pub metric: tidal_core::VectorMetric,
    pub k: usize,
    pub projection: Vec<usize>,
    pub items: Vec<AnnItem>,
}

fn ann_metric(op: &BinaryOperator) -> Option<tidal_core::VectorMetric> {
    match op {
        BinaryOperator::LtDashGt => Some(tidal_core::VectorMetric::L2),
        BinaryOperator::Spaceship => Some(tidal_core::VectorMetric::Cosine),
        BinaryOperator::Custom(s) if s == "<#>" => Some(tidal_core::VectorMetric::InnerProduct),
        _ => None,
    }
}

/// `col <op> $1`: the column's name and the metric.
fn ann_distance(e: &Expr) -> Option<(String, tidal_core::VectorMetric)> {
    let Expr::BinaryOp { left, op, right } = e else {
        return None;
    };
    let Expr::Identifier(col) = left.as_ref() else {
        return None;
    };
    let Expr::Value(v) = right.as_ref() else {
        return None;
    };
    match &v.value {
        SqlValue::Placeholder(p) if p == "$1" => Some((ident_name(col), ann_metric(op)?)),
        _ => None,
    }
}

impl FastAnn {
    /// Plans `sql` against `schema`, or `None` if it is not exactly that shape.
    pub fn plan(sql: &str, schema: &Schema) -> Option<FastAnn> {
        let (query, name, kind) = entity_select(sql)?;
        let SetExpr::Select(select) = query.body.as_ref() else {
            return None;
        };
        if select.selection.is_some() {
            return None;
        }
        let def = schema.table(kind).ok()?;
        let order = query.order_by.as_ref()?;
        let tidal::datafusion::sql::sqlparser::ast::OrderByKind::Expressions(keys) = &order.kind
        else {
            return None;
        };
        let [key] = keys.as_slice() else {
            return None;
        };
        if key.options.asc == Some(false) || key.options.nulls_first.is_some() {
            return None;
        }
        let (column, metric) = ann_distance(&key.expr)?;
        let ci = def
            .columns
            .iter()
            .position(|c| c.name.to_ascii_lowercase() == column)?;
        if !matches!(def.columns[ci].ty, tidal_core::ColumnType::Vector(_)) {
            return None;
        }
        let k = match query.limit_clause.as_ref()? {
            tidal::datafusion::sql::sqlparser::ast::LimitClause::LimitOffset {
                limit: Some(Expr::Value(v)),
                offset: None,
                limit_by,
            } if limit_by.is_empty() => match &v.value {
                SqlValue::Number(n, _) => n.parse::<usize>().ok()?,
                _ => return None,
            },
            _ => return None,
        };
        if k == 0 || k > FAST_ANN_LIMIT_MAX {
            return None;
        }
        let column_of = |name: &str| {
            def.columns
                .iter()
                .position(|c| c.name.to_ascii_lowercase() == name)
        };
        let mut projection = Vec::new();
        let mut items = Vec::new();
        let mut texts = Vec::new();
        for item in &select.projection {
            let (expr, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
                _ => return None,
            };
            match expr {
                Expr::Identifier(i) => {
                    items.push(AnnItem::Column(projection.len()));
                    projection.push(column_of(&ident_name(i))?);
                }
                e if ann_distance(e) == Some((column.clone(), metric)) => {
                    items.push(AnnItem::Distance)
                }
                _ => return None,
            }
            texts.push(match alias {
                Some(a) => format!("{expr} AS {a}"),
                None => expr.to_string(),
            });
        }
        // Nothing else in the statement: it prints back as exactly this shape.
        let shape = format!(
            "SELECT {} FROM {name} ORDER BY {} LIMIT {k}",
            texts.join(", "),
            key
        );
        if query.to_string() != shape {
            return None;
        }
        Some(FastAnn {
            table: def.clone(),
            column,
            metric,
            k,
            projection,
            items,
        })
    }

    /// The query vector from `$1` (pgvector's binary or text form), or `None` for
    /// anything the generic path should see (NULL, malformed, non-finite).
    pub fn bind(
        &self,
        values: &[Option<Bytes>],
        formats: impl Fn(usize) -> FieldFormat,
    ) -> Option<Vec<f32>> {
        let [Some(raw)] = values else {
            return None;
        };
        let v = if formats(0) == FieldFormat::Binary {
            if raw.len() < 4 {
                return None;
            }
            let dims = i16::from_be_bytes([raw[0], raw[1]]);
            let body = &raw[4..];
            if dims < 1 || body.len() != dims as usize * 4 {
                return None;
            }
            body.chunks_exact(4)
                .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            tidal_sql::parse_vector(std::str::from_utf8(raw).ok()?).ok()?
        };
        v.iter().all(|x| x.is_finite()).then_some(v)
    }
}
