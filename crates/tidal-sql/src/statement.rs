//! tidalDB's own statements, parsed with DataFusion's parser (its tokenizer and the
//! PostgreSQL dialect) before anything reaches DataFusion's planner:
//!
//! ```text
//! CREATE SIGNAL name ON items|users|creators
//!     DECAY EXPONENTIAL HALF_LIFE 'interval' | DECAY NONE
//!     [WINDOWS ('15m', '24h', 'all', ...)] [MARKS seen|liked|hidden] [PREFERENCE lr]
//! DROP SIGNAL [IF EXISTS] name
//! SHOW SIGNALS
//! CREATE TABLE items|users|creators (id BIGINT PRIMARY KEY, col TYPE, ...)
//!     WITH (kind = 'item'|'user'|'creator' [, text_fields = 'title,body'])
//! DROP TABLE [IF EXISTS] items|users|creators
//! ```
//!
//! Signal names may be SQL keywords (`like`, `view`): they are read as plain words.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::sql::parser::DFParserBuilder;
use datafusion::sql::sqlparser::ast::Ident;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use tidal_core::{
    CohortDim, ColumnType, CoreError, DecaySpec, EntityKind, Mark, ProfileDef, SchemaChange,
    SignalDef, SignalId, TableDef, Window,
};
use tidal_engine::Engine;

use crate::SqlError;
use crate::profile::Retrieve;

/// A statement tidalDB handles itself.
#[derive(Debug, Clone, PartialEq)]
pub enum TidalStatement {
    /// `CREATE SIGNAL [IF NOT EXISTS]`: with IF NOT EXISTS, an existing signal of that
    /// name is left as it is (whatever its definition), as PostgreSQL does for tables.
    CreateSignal {
        def: SignalDef,
        if_not_exists: bool,
    },
    DropSignal {
        name: String,
        if_exists: bool,
    },
    /// `ALTER SIGNAL name ADD COHORTS (...)`.
    AlterSignalCohorts {
        name: String,
        add: Vec<CohortDim>,
    },
    ShowSignals,
    /// `CREATE TABLE [IF NOT EXISTS]`: with IF NOT EXISTS, an existing table of that
    /// kind is left as it is.
    CreateTable {
        def: TableDef,
        if_not_exists: bool,
    },
    DropTable {
        kind: EntityKind,
        if_exists: bool,
    },
    /// `INSERT INTO signals [(columns)] <query>`: the query (VALUES or SELECT) is run by
    /// DataFusion and its rows become one atomic batch of events.
    InsertSignals {
        columns: Vec<String>,
        source: String,
        /// The rows, when the source is a VALUES list of plain literals: they are used
        /// as they are, without planning the source through DataFusion.
        values: Option<RecordBatch>,
    },
    /// `UPDATE t SET ... [WHERE ...]` / `DELETE FROM t [WHERE ...]`.
    ChangeRows(RowChange),
    /// `INSERT INTO items|users|creators [(columns)] <query> [ON CONFLICT (id) ...]`.
    InsertRows {
        kind: EntityKind,
        columns: Vec<String>,
        source: String,
        on_conflict: OnConflict,
    },
    /// `CREATE [OR REPLACE] PROFILE`; the definition's signals and version are filled in
    /// when it runs.
    CreateProfile {
        def: ProfileDef,
        replace: bool,
    },
    DropProfile {
        name: String,
        if_exists: bool,
    },
    ShowProfiles,
    Retrieve(Retrieve),
    /// `SEARCH items QUERY '...' ...` (SQL.md §6).
    Search(crate::search::Search),
    /// `SUGGEST items FOR USER u ...` (SQL.md §7).
    Suggest(crate::suggest::Suggest),
    /// `CREATE INDEX [IF NOT EXISTS] [name] ON t USING hnsw (column opclass)
    /// [WITH (m = .., ef_construction = ..)]` (SQL.md §7).
    CreateIndex {
        def: tidal_core::VectorIndexDef,
        if_not_exists: bool,
        /// No name was given: `def.name` is PostgreSQL's `<table>_<column>_idx`, and
        /// a number is appended when that is taken.
        generated_name: bool,
    },
    DropIndex {
        name: String,
        if_exists: bool,
    },
    /// `CREATE RELATIONSHIP [IF NOT EXISTS] name FROM users TO users|creators|items`
    /// (SQL.md §8).
    CreateRelationship {
        def: tidal_core::RelationshipDef,
        if_not_exists: bool,
    },
    DropRelationship {
        name: String,
        if_exists: bool,
    },
    /// `SHOW RELATIONSHIPS`: name, from, to, edges.
    ShowRelationships,
    /// `INSERT INTO <relationship> [(src, dst[, created_at])] <query>`: every row one
    /// edge, all in one transaction. Parsed for any table name that is not one of
    /// tidalDB's own: whether it is a relationship is decided when it runs.
    InsertEdges {
        name: String,
        columns: Vec<String>,
        source: String,
    },
    /// `DELETE FROM <relationship> [WHERE …]`, compiled to the query finding the edges:
    /// `SELECT src, dst FROM <name> [WHERE …]`.
    DeleteEdges {
        name: String,
        query: String,
    },
}

/// `UPDATE`/`DELETE` on an entity table, compiled to a query that finds the rows (and,
/// for UPDATE, computes the new values): `SELECT id, <value>... FROM t WHERE ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    pub kind: EntityKind,
    pub query: String,
    /// Assigned columns, in the order of the query's value columns (empty for DELETE).
    pub columns: Vec<String>,
    pub delete: bool,
}

/// What an entity INSERT does with an id that already exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnConflict {
    /// Plain INSERT: the statement fails (23505) and applies nothing.
    Error,
    /// `ON CONFLICT (id) DO NOTHING`: the row is skipped.
    Nothing,
    /// `ON CONFLICT (id) DO UPDATE SET c = EXCLUDED.c, ...`: these columns take the new
    /// values, the others keep the stored ones.
    Update(Vec<String>),
}

fn insert_signals(
    df: &mut datafusion::sql::parser::DFParser<'_>,
) -> Result<TidalStatement, SqlError> {
    use datafusion::sql::parser::Statement as DFStatement;
    use datafusion::sql::sqlparser::ast::Statement;
    let DFStatement::Statement(stmt) = df.parse_statement()? else {
        return Err(syntax(
            "expected INSERT INTO signals [(columns)] VALUES ... | SELECT ...",
        ));
    };
    let Statement::Insert(insert) = *stmt else {
        return Err(syntax(
            "expected INSERT INTO signals [(columns)] VALUES ... | SELECT ...",
        ));
    };
    if insert.on.is_some() || insert.returning.is_some() {
        return Err(syntax(
            "INSERT INTO signals takes no ON CONFLICT or RETURNING clause",
        ));
    }
    let source = insert
        .source
        .ok_or_else(|| syntax("INSERT INTO signals needs VALUES or a SELECT"))?;
    let columns = insert
        .columns
        .iter()
        .map(|c| c.to_string().to_ascii_lowercase())
        .collect();
    Ok(TidalStatement::InsertSignals {
        columns,
        values: literal_values(&source),
        source: source.to_string(),
    })
}

/// Rows of a `VALUES` list whose every value is a plain literal (number, string, NULL,
/// boolean, `CAST('…' AS TIMESTAMP)` or `TIMESTAMP '…'`) as one batch, typed the way
/// DataFusion types the same literals (integers BIGINT, other numbers DOUBLE, strings
/// TEXT, timestamps TIMESTAMP). `None` when anything else appears, or a column mixes
/// kinds: DataFusion plans those.
fn literal_values(q: &datafusion::sql::sqlparser::ast::Query) -> Option<RecordBatch> {
    use datafusion::arrow::array::{StringArray, TimestampNanosecondArray};
    use datafusion::common::ScalarValue;
    use datafusion::sql::sqlparser::ast::{
        CastKind, DataType as SqlType, Expr, SetExpr, TimezoneInfo, UnaryOperator, Value,
    };
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Null,
        Int,
        Float,
        Text,
        Bool,
        Ts,
    }
    #[derive(Clone)]
    enum Lit {
        Null,
        Int(i64),
        Float(f64),
        Text(String),
        Bool(bool),
        Ts(i64),
    }
    fn ts(text: &str) -> Option<Lit> {
        // The same conversion DataFusion's CAST(text AS TIMESTAMP) does.
        let a = StringArray::from(vec![text]);
        let c = datafusion::arrow::compute::cast_with_options(
            &a,
            &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Nanosecond, None),
            &datafusion::arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            },
        )
        .ok()?;
        let c = c.as_any().downcast_ref::<TimestampNanosecondArray>()?;
        c.is_valid(0).then(|| Lit::Ts(c.value(0)))
    }
    fn lit(e: &Expr) -> Option<Lit> {
        match e {
            Expr::Value(v) => match &v.value {
                Value::Null => Some(Lit::Null),
                Value::Boolean(b) => Some(Lit::Bool(*b)),
                Value::SingleQuotedString(s) => Some(Lit::Text(s.clone())),
                Value::Number(n, false) => match n.parse::<i64>() {
                    Ok(i) => Some(Lit::Int(i)),
                    // Integers past BIGINT become DECIMAL in DataFusion: leave them to it.
                    Err(_) if n.contains(['.', 'e', 'E']) => n.parse::<f64>().ok().map(Lit::Float),
                    Err(_) => None,
                },
                _ => None,
            },
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => match lit(expr)? {
                Lit::Int(i) => i.checked_neg().map(Lit::Int),
                Lit::Float(f) => Some(Lit::Float(-f)),
                _ => None,
            },
            Expr::Cast {
                kind: CastKind::Cast,
                expr,
                data_type: SqlType::Timestamp(None, TimezoneInfo::None),
                format: None,
                ..
            } => match lit(expr)? {
                Lit::Text(t) => ts(&t),
                Lit::Null => Some(Lit::Null),
                _ => None,
            },
            Expr::TypedString(t)
                if matches!(t.data_type, SqlType::Timestamp(None, TimezoneInfo::None)) =>
            {
                match &t.value.value {
                    Value::SingleQuotedString(s) => ts(s),
                    _ => None,
                }
            }
            _ => None,
        }
    }
    let SetExpr::Values(values) = q.body.as_ref() else {
        return None;
    };
    if q.order_by.is_some() || q.limit_clause.is_some() || q.with.is_some() {
        return None;
    }
    let width = values.rows.first()?.content.len();
    let mut cols: Vec<Vec<Lit>> = vec![Vec::with_capacity(values.rows.len()); width];
    for row in &values.rows {
        if row.content.len() != width {
            return None;
        }
        for (c, e) in cols.iter_mut().zip(&row.content) {
            c.push(lit(e)?);
        }
    }
    let mut fields = Vec::with_capacity(width);
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(width);
    for (i, c) in cols.iter().enumerate() {
        let kind = |l: &Lit| match l {
            Lit::Null => Kind::Null,
            Lit::Int(_) => Kind::Int,
            Lit::Float(_) => Kind::Float,
            Lit::Text(_) => Kind::Text,
            Lit::Bool(_) => Kind::Bool,
            Lit::Ts(_) => Kind::Ts,
        };
        let mut k = Kind::Null;
        for l in c {
            k = match (k, kind(l)) {
                (a, Kind::Null) => a,
                (Kind::Null, b) => b,
                (a, b) if a == b => a,
                (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
                _ => return None,
            };
        }
        // An all-NULL column keeps DataFusion's Null type, which casts to anything.
        let array: ArrayRef = if k == Kind::Null {
            Arc::new(datafusion::arrow::array::NullArray::new(c.len()))
        } else {
            let scalar = |l: &Lit| match (k, l) {
                (Kind::Int, Lit::Int(i)) => ScalarValue::Int64(Some(*i)),
                (Kind::Int, _) => ScalarValue::Int64(None),
                (Kind::Float, Lit::Int(i)) => ScalarValue::Float64(Some(*i as f64)),
                (Kind::Float, Lit::Float(f)) => ScalarValue::Float64(Some(*f)),
                (Kind::Float, _) => ScalarValue::Float64(None),
                (Kind::Text, Lit::Text(t)) => ScalarValue::Utf8(Some(t.clone())),
                (Kind::Text, _) => ScalarValue::Utf8(None),
                (Kind::Bool, Lit::Bool(b)) => ScalarValue::Boolean(Some(*b)),
                (Kind::Bool, _) => ScalarValue::Boolean(None),
                (_, Lit::Ts(t)) => ScalarValue::TimestampNanosecond(Some(*t), None),
                _ => ScalarValue::TimestampNanosecond(None, None),
            };
            ScalarValue::iter_to_array(c.iter().map(scalar)).ok()?
        };
        let ty = array.data_type().clone();
        fields.push(Field::new(format!("column{}", i + 1), ty, true));
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).ok()
}

fn change_rows(
    df: &mut datafusion::sql::parser::DFParser<'_>,
    kind: EntityKind,
) -> Result<TidalStatement, SqlError> {
    use datafusion::sql::parser::Statement as DFStatement;
    use datafusion::sql::sqlparser::ast::{AssignmentTarget, FromTable, Statement};
    let DFStatement::Statement(stmt) = df.parse_statement()? else {
        return Err(syntax("expected UPDATE or DELETE"));
    };
    let table = kind.table_name();
    let (selection, assignments, delete) = match *stmt {
        Statement::Update(u) => {
            if !u.table.joins.is_empty() || u.from.is_some() {
                return Err(syntax("UPDATE ... FROM and joins are not supported"));
            }
            if u.returning.is_some() || u.limit.is_some() || !u.order_by.is_empty() {
                return Err(syntax("UPDATE takes no RETURNING, ORDER BY or LIMIT"));
            }
            (u.selection, u.assignments, false)
        }
        Statement::Delete(d) => {
            let tables = match &d.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            if tables.len() != 1 || !tables[0].joins.is_empty() || d.using.is_some() {
                return Err(syntax("DELETE works on one table, without USING or joins"));
            }
            if d.returning.is_some() || d.limit.is_some() || !d.order_by.is_empty() {
                return Err(syntax("DELETE takes no RETURNING, ORDER BY or LIMIT"));
            }
            (d.selection, Vec::new(), true)
        }
        _ => return Err(syntax("expected UPDATE or DELETE")),
    };
    let mut columns = Vec::new();
    let mut values = Vec::new();
    for a in &assignments {
        let AssignmentTarget::ColumnName(name) = &a.target else {
            return Err(syntax("assign one column at a time in UPDATE SET"));
        };
        let name = name.to_string().to_ascii_lowercase();
        if name == "id" {
            return Err(syntax(
                "the id of an entity cannot be changed; insert a new row instead",
            ));
        }
        values.push(format!(", ({}) AS __tidal_v{}", a.value, values.len()));
        columns.push(name);
    }
    let filter = selection.map(|e| format!(" WHERE {e}")).unwrap_or_default();
    let query = format!("SELECT id{} FROM {table}{filter}", values.concat());
    Ok(TidalStatement::ChangeRows(RowChange {
        kind,
        query,
        columns,
        delete,
    }))
}

fn insert_rows(
    df: &mut datafusion::sql::parser::DFParser<'_>,
    kind: EntityKind,
) -> Result<TidalStatement, SqlError> {
    use datafusion::sql::parser::Statement as DFStatement;
    use datafusion::sql::sqlparser::ast::{
        AssignmentTarget, OnConflictAction, OnInsert, Statement,
    };
    let usage = "expected INSERT INTO table [(columns)] VALUES ... | SELECT ... [ON CONFLICT (id) DO NOTHING | DO UPDATE SET col = EXCLUDED.col, ...]";
    let DFStatement::Statement(stmt) = df.parse_statement()? else {
        return Err(syntax(usage));
    };
    let Statement::Insert(insert) = *stmt else {
        return Err(syntax(usage));
    };
    if insert.returning.is_some() {
        return Err(syntax("RETURNING is not supported"));
    }
    let source = insert.source.ok_or_else(|| syntax(usage))?;
    let columns = insert
        .columns
        .iter()
        .map(|c| c.to_string().to_ascii_lowercase())
        .collect();
    let on_conflict = match insert.on {
        None => OnConflict::Error,
        Some(OnInsert::OnConflict(oc)) => {
            if let Some(t) = &oc.conflict_target
                && t.to_string().to_ascii_lowercase().replace(' ', "") != "(id)"
            {
                return Err(syntax(format!("the conflict target must be (id), not {t}")));
            }
            match oc.action {
                OnConflictAction::DoNothing => OnConflict::Nothing,
                OnConflictAction::DoUpdate(u) => {
                    if u.selection.is_some() {
                        return Err(syntax(
                            "ON CONFLICT ... DO UPDATE ... WHERE is not supported",
                        ));
                    }
                    let mut cols = Vec::new();
                    for a in &u.assignments {
                        let AssignmentTarget::ColumnName(name) = &a.target else {
                            return Err(syntax("assign one column at a time in DO UPDATE SET"));
                        };
                        let name = name.to_string().to_ascii_lowercase();
                        if a.value.to_string().to_ascii_lowercase() != format!("excluded.{name}") {
                            return Err(syntax(format!(
                                "DO UPDATE SET supports only col = EXCLUDED.col (got {} = {})",
                                name, a.value
                            )));
                        }
                        cols.push(name);
                    }
                    OnConflict::Update(cols)
                }
            }
        }
        Some(other) => return Err(syntax(format!("unsupported clause {other}"))),
    };
    Ok(TidalStatement::InsertRows {
        kind,
        columns,
        source: source.to_string(),
        on_conflict,
    })
}

/// `users`, `creators` or `items` in CREATE RELATIONSHIP.
fn relationship_end(p: &mut Parser<'_>) -> Result<EntityKind, SqlError> {
    let word = ident(p, "users, creators or items")?;
    EntityKind::ALL
        .into_iter()
        .find(|k| k.table_name() == word)
        .ok_or_else(|| SqlError::from(CoreError::UnknownTableName { name: word }))
}

/// The unqualified, lower-cased name of a table in INSERT/DELETE (`public.follows`
/// is `follows`).
fn table_name_of(name: &datafusion::sql::sqlparser::ast::ObjectName) -> String {
    name.0
        .last()
        .map(|p| match p.as_ident() {
            Some(i) if i.quote_style.is_some() => i.value.clone(),
            Some(i) => i.value.to_ascii_lowercase(),
            None => p.to_string().to_ascii_lowercase(),
        })
        .unwrap_or_default()
}

fn insert_edges(
    df: &mut datafusion::sql::parser::DFParser<'_>,
) -> Result<TidalStatement, SqlError> {
    use datafusion::sql::parser::Statement as DFStatement;
    use datafusion::sql::sqlparser::ast::{Statement, TableObject};
    let usage =
        "expected INSERT INTO relationship [(src, dst[, created_at])] VALUES ... | SELECT ...";
    let DFStatement::Statement(stmt) = df.parse_statement()? else {
        return Err(syntax(usage));
    };
    let Statement::Insert(insert) = *stmt else {
        return Err(syntax(usage));
    };
    let TableObject::TableName(table) = &insert.table else {
        return Err(syntax(usage));
    };
    if insert.returning.is_some() || insert.on.is_some() {
        return Err(syntax(
            "INSERT INTO a relationship takes no ON CONFLICT or RETURNING: a duplicate edge is \
             already the same edge",
        ));
    }
    let source = insert.source.ok_or_else(|| syntax(usage))?;
    Ok(TidalStatement::InsertEdges {
        name: table_name_of(table),
        columns: insert
            .columns
            .iter()
            .map(|c| c.to_string().to_ascii_lowercase())
            .collect(),
        source: source.to_string(),
    })
}

fn delete_edges(
    df: &mut datafusion::sql::parser::DFParser<'_>,
) -> Result<TidalStatement, SqlError> {
    use datafusion::sql::parser::Statement as DFStatement;
    use datafusion::sql::sqlparser::ast::{FromTable, Statement, TableFactor};
    let DFStatement::Statement(stmt) = df.parse_statement()? else {
        return Err(syntax("expected DELETE FROM relationship [WHERE ...]"));
    };
    let Statement::Delete(d) = *stmt else {
        return Err(syntax("expected DELETE FROM relationship [WHERE ...]"));
    };
    let tables = match &d.from {
        FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
    };
    if tables.len() != 1 || !tables[0].joins.is_empty() || d.using.is_some() {
        return Err(syntax("DELETE works on one table, without USING or joins"));
    }
    if d.returning.is_some() || d.limit.is_some() || !d.order_by.is_empty() {
        return Err(syntax("DELETE takes no RETURNING, ORDER BY or LIMIT"));
    }
    let TableFactor::Table { name, .. } = &tables[0].relation else {
        return Err(syntax("DELETE FROM needs a table name"));
    };
    let name = table_name_of(name);
    let filter = d
        .selection
        .map(|e| format!(" WHERE {e}"))
        .unwrap_or_default();
    let query = format!(
        "SELECT src, dst FROM {}{filter}",
        Ident::with_quote('"', &name)
    );
    Ok(TidalStatement::DeleteEdges { name, query })
}

/// Maps a column type as the SQL parser prints it to a tidalDB column type.
fn column_type(column: &str, printed: &str) -> Result<ColumnType, SqlError> {
    let t = printed.trim().to_ascii_uppercase();
    let ty = match t.as_str() {
        "BIGINT" | "INT8" => ColumnType::BigInt,
        "INT" | "INTEGER" | "INT4" => ColumnType::Int,
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT8" | "FLOAT" => ColumnType::Double,
        "REAL" | "FLOAT4" => ColumnType::Real,
        "BOOLEAN" | "BOOL" => ColumnType::Boolean,
        "TEXT" | "VARCHAR" | "STRING" | "CHARACTER VARYING" => ColumnType::Text,
        "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => ColumnType::Timestamp,
        "TEXT[]" | "VARCHAR[]" => ColumnType::TextArray,
        _ => {
            let dims = t
                .strip_prefix("VECTOR(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|n| n.trim().parse::<u32>().ok());
            match dims {
                Some(n) => ColumnType::Vector(n),
                None => {
                    return Err(SqlError::from(CoreError::BadColumn {
                        column: column.to_string(),
                        reason: format!(
                            "type {printed} is not supported (BIGINT, INT, DOUBLE, REAL, BOOLEAN, \
                             TEXT, TIMESTAMP, TEXT[] or VECTOR(n))"
                        ),
                    }));
                }
            }
        }
    };
    Ok(ty)
}

fn create_table(
    df: &mut datafusion::sql::parser::DFParser<'_>,
) -> Result<TidalStatement, SqlError> {
    use datafusion::sql::parser::Statement as DFStatement;
    use datafusion::sql::sqlparser::ast::{CreateTableOptions, SqlOption, Statement};
    let stmt = df.parse_statement()?;
    let DFStatement::Statement(stmt) = stmt else {
        return Err(syntax(
            "expected CREATE TABLE name (columns) WITH (kind = '...')",
        ));
    };
    let Statement::CreateTable(ct) = *stmt else {
        return Err(syntax(
            "expected CREATE TABLE name (columns) WITH (kind = '...')",
        ));
    };
    let mut kind = None;
    let mut text_fields = Vec::new();
    let mut boosts = Vec::new();
    let mut analyzer = tidal_core::TextAnalyzer::Default;
    let options = match &ct.table_options {
        CreateTableOptions::With(o) | CreateTableOptions::Options(o) => o.as_slice(),
        _ => &[],
    };
    for o in options {
        let SqlOption::KeyValue { key, value } = o else {
            return Err(syntax(format!("unsupported table option {o}")));
        };
        let v = value.to_string();
        let v = v.trim_matches('\'');
        match key.value.to_ascii_lowercase().as_str() {
            "kind" => kind = Some(v.parse::<EntityKind>()?),
            "text_fields" => {
                (text_fields, boosts) = text_field_list(v)?;
            }
            "text_analyzer" => analyzer = v.parse()?,
            other => {
                return Err(syntax(format!(
                    "unknown table option {other:?} (expected kind, text_fields, text_analyzer)"
                )));
            }
        }
    }
    let name = ct.name.to_string().to_ascii_lowercase();
    let kind = kind.ok_or_else(|| {
        syntax(format!(
            "CREATE TABLE {name} needs WITH (kind = 'item' | 'user' | 'creator'); tidalDB tables are entity tables"
        ))
    })?;
    if name != kind.table_name() {
        return Err(syntax(format!(
            "the {} table must be named {}, not {name}",
            kind.as_str(),
            kind.table_name()
        )));
    }
    let mut columns = Vec::with_capacity(ct.columns.len());
    for c in &ct.columns {
        let cname = if c.name.quote_style.is_some() {
            c.name.value.clone()
        } else {
            c.name.value.to_ascii_lowercase()
        };
        let ty = column_type(&cname, &c.data_type.to_string())?;
        column_options(&cname, &c.options)?;
        columns.push(tidal_core::ColumnDef::new(&cname, ty));
    }
    if text_fields.is_empty() && analyzer != tidal_core::TextAnalyzer::Default {
        return Err(syntax("text_analyzer needs text_fields"));
    }
    Ok(TidalStatement::CreateTable {
        def: TableDef::new(kind, columns, text_fields)?.with_text_options(analyzer, boosts)?,
        if_not_exists: ct.if_not_exists,
    })
}

/// Refuses column options tidalDB would otherwise ignore: a constraint that is
/// accepted must be enforced. `id` is the primary key and never NULL; every other
/// column is nullable and has no default.
fn column_options(
    column: &str,
    options: &[datafusion::sql::sqlparser::ast::ColumnOptionDef],
) -> Result<(), SqlError> {
    use datafusion::sql::sqlparser::ast::ColumnOption;
    for o in options {
        match &o.option {
            ColumnOption::Null => {}
            ColumnOption::NotNull | ColumnOption::PrimaryKey(_) if column == "id" => {}
            other => {
                return Err(SqlError::DataFusion(
                    datafusion::error::DataFusionError::NotImplemented(format!(
                        "column option {other} on {column} is not supported: id is the primary \
                     key; other columns are nullable, without defaults or constraints \
                     (check values in the application, or remove the option)"
                    )),
                ));
            }
        }
    }
    Ok(())
}

/// `'title^2, body'` → the field names (lower case) and their boosts (1 unless given).
fn text_field_list(v: &str) -> Result<(Vec<String>, Vec<f32>), SqlError> {
    let mut names = Vec::new();
    let mut boosts = Vec::new();
    for part in v.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (name, boost) = match part.split_once('^') {
            Some((n, b)) => {
                let b: f32 = b.trim().parse().map_err(|_| {
                    syntax(format!(
                        "text_fields: {part:?} needs a number after ^ (title^2)"
                    ))
                })?;
                (n.trim(), b)
            }
            None => (part, 1.0),
        };
        names.push(name.to_ascii_lowercase());
        boosts.push(boost);
    }
    Ok((names, boosts))
}

pub(crate) fn is_word(t: &Token, w: &str) -> bool {
    matches!(t, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w))
}

pub(crate) fn peek_words(p: &Parser<'_>, words: &[&str]) -> bool {
    words
        .iter()
        .enumerate()
        .all(|(i, w)| is_word(&p.peek_nth_token_ref(i).token, w))
}

pub(crate) fn syntax(msg: impl Into<String>) -> SqlError {
    SqlError::Syntax {
        message: msg.into(),
    }
}

pub(crate) fn found(p: &Parser<'_>) -> String {
    match &p.peek_token_ref().token {
        Token::EOF => "end of input".to_string(),
        t => format!("\"{t}\""),
    }
}

pub(crate) fn expect_word(p: &mut Parser<'_>, w: &str) -> Result<(), SqlError> {
    if is_word(&p.peek_token_ref().token, w) {
        p.next_token();
        Ok(())
    } else {
        Err(syntax(format!("expected {w}, found {}", found(p))))
    }
}

/// An identifier: unquoted words fold to lower case, as in PostgreSQL.
pub(crate) fn ident(p: &mut Parser<'_>, what: &str) -> Result<String, SqlError> {
    match p.peek_token_ref().token.clone() {
        Token::Word(w) => {
            p.next_token();
            Ok(if w.quote_style.is_some() {
                w.value
            } else {
                w.value.to_ascii_lowercase()
            })
        }
        _ => Err(syntax(format!("expected {what}, found {}", found(p)))),
    }
}

pub(crate) fn string(p: &mut Parser<'_>, what: &str) -> Result<String, SqlError> {
    match p.peek_token_ref().token.clone() {
        Token::SingleQuotedString(s) => {
            p.next_token();
            Ok(s)
        }
        _ => Err(syntax(format!(
            "expected {what} as a quoted string, found {}",
            found(p)
        ))),
    }
}

pub(crate) fn end(p: &mut Parser<'_>) -> Result<(), SqlError> {
    while p.peek_token_ref().token == Token::SemiColon {
        p.next_token();
    }
    match p.peek_token_ref().token {
        Token::EOF => Ok(()),
        _ => Err(syntax(format!(
            "unexpected {} after the statement",
            found(p)
        ))),
    }
}

/// `DROP <word> [IF EXISTS] name` → (name, if_exists); `None` if the statement is not
/// a DROP of that kind.
fn drop_target(
    p: &mut Parser<'_>,
    word: &str,
    what: &str,
) -> Result<Option<(String, bool)>, SqlError> {
    if !peek_words(p, &["DROP", word]) {
        return Ok(None);
    }
    p.next_token();
    p.next_token();
    let if_exists = peek_words(p, &["IF", "EXISTS"]);
    if if_exists {
        p.next_token();
        p.next_token();
    }
    Ok(Some((ident(p, what)?, if_exists)))
}

/// Parses `sql` if it is one of tidalDB's statements; `Ok(None)` hands it to DataFusion.
pub fn parse(sql: &str) -> Result<Option<TidalStatement>, SqlError> {
    let dialect = PostgreSqlDialect {};
    let mut df = DFParserBuilder::new(sql).with_dialect(&dialect).build()?;
    let p = &mut df.parser;
    if peek_words(p, &["SHOW", "SIGNALS"]) {
        p.next_token();
        p.next_token();
        end(p)?;
        return Ok(Some(TidalStatement::ShowSignals));
    }
    if peek_words(p, &["SHOW", "PROFILES"]) {
        p.next_token();
        p.next_token();
        end(p)?;
        return Ok(Some(TidalStatement::ShowProfiles));
    }
    if let Some((name, if_exists)) = drop_target(p, "PROFILE", "a profile name")? {
        end(p)?;
        return Ok(Some(TidalStatement::DropProfile { name, if_exists }));
    }
    for (words, replace) in [
        (&["CREATE", "PROFILE"][..], false),
        (&["CREATE", "OR", "REPLACE", "PROFILE"][..], true),
    ] {
        if peek_words(p, words) {
            for _ in words {
                p.next_token();
            }
            let (def, replace) = crate::profile::parse_create_profile(p, replace)?;
            return Ok(Some(TidalStatement::CreateProfile { def, replace }));
        }
    }
    if peek_words(p, &["SEARCH"]) {
        p.next_token();
        return Ok(Some(TidalStatement::Search(crate::search::parse_search(
            p,
        )?)));
    }
    if peek_words(p, &["SUGGEST"]) {
        p.next_token();
        return Ok(Some(TidalStatement::Suggest(
            crate::suggest::parse_suggest(p)?,
        )));
    }
    if peek_words(p, &["RETRIEVE"]) {
        p.next_token();
        return Ok(Some(TidalStatement::Retrieve(
            crate::profile::parse_retrieve(p)?,
        )));
    }
    if let Some((name, if_exists)) = drop_target(p, "SIGNAL", "a signal name")? {
        end(p)?;
        return Ok(Some(TidalStatement::DropSignal { name, if_exists }));
    }
    if let Some((name, if_exists)) = drop_target(p, "TABLE", "a table name")? {
        end(p)?;
        let kind = name
            .parse::<EntityKind>()
            .ok()
            .filter(|k| k.table_name() == name);
        return match kind {
            Some(kind) => Ok(Some(TidalStatement::DropTable { kind, if_exists })),
            None if if_exists => Ok(None),
            None => Err(SqlError::from(CoreError::UnknownTableName { name })),
        };
    }
    if peek_words(p, &["INSERT", "INTO", "SIGNALS"]) {
        return insert_signals(&mut df).map(Some);
    }
    for kind in EntityKind::ALL {
        if peek_words(p, &["INSERT", "INTO", kind.table_name()]) {
            return insert_rows(&mut df, kind).map(Some);
        }
        if peek_words(p, &["UPDATE", kind.table_name()])
            || peek_words(p, &["DELETE", "FROM", kind.table_name()])
        {
            return change_rows(&mut df, kind).map(Some);
        }
    }
    if peek_words(p, &["INSERT", "INTO"]) {
        return insert_edges(&mut df).map(Some);
    }
    if peek_words(p, &["DELETE", "FROM"]) {
        return delete_edges(&mut df).map(Some);
    }
    if peek_words(p, &["UPDATE"]) {
        return Err(SqlError::DataFusion(
            datafusion::error::DataFusionError::NotImplemented(
                "UPDATE works on items, users and creators; a relationship's edges are \
                 inserted and deleted, not updated"
                    .into(),
            ),
        ));
    }
    if peek_words(p, &["SHOW", "RELATIONSHIPS"]) {
        p.next_token();
        p.next_token();
        end(p)?;
        return Ok(Some(TidalStatement::ShowRelationships));
    }
    if let Some((name, if_exists)) = drop_target(p, "RELATIONSHIP", "a relationship name")? {
        end(p)?;
        return Ok(Some(TidalStatement::DropRelationship { name, if_exists }));
    }
    if peek_words(p, &["CREATE", "RELATIONSHIP"]) {
        p.next_token();
        p.next_token();
        let if_not_exists = peek_words(p, &["IF", "NOT", "EXISTS"]);
        if if_not_exists {
            for _ in 0..3 {
                p.next_token();
            }
        }
        let name = ident(p, "a relationship name")?;
        expect_word(p, "FROM")?;
        let from = relationship_end(p)?;
        expect_word(p, "TO")?;
        let to = relationship_end(p)?;
        end(p)?;
        let def = tidal_core::RelationshipDef {
            name,
            from,
            to,
            id: 0,
        };
        def.validate()?;
        return Ok(Some(TidalStatement::CreateRelationship {
            def,
            if_not_exists,
        }));
    }
    if peek_words(p, &["CREATE", "TABLE"]) {
        return create_table(&mut df).map(Some);
    }
    if peek_words(p, &["CREATE", "INDEX"]) || peek_words(p, &["CREATE", "UNIQUE", "INDEX"]) {
        return create_index(&mut df).map(Some);
    }
    if let Some((name, if_exists)) = drop_target(p, "INDEX", "an index name")? {
        end(p)?;
        return Ok(Some(TidalStatement::DropIndex { name, if_exists }));
    }
    if peek_words(p, &["ALTER", "SIGNAL"]) {
        p.next_token();
        p.next_token();
        let name = ident(p, "a signal name")?;
        expect_word(p, "ADD")?;
        expect_word(p, "COHORTS")?;
        let add = cohort_dims(p)?;
        end(p)?;
        return Ok(Some(TidalStatement::AlterSignalCohorts { name, add }));
    }
    if !peek_words(p, &["CREATE", "SIGNAL"]) {
        return Ok(None);
    }
    p.next_token();
    p.next_token();
    let if_not_exists = peek_words(p, &["IF", "NOT", "EXISTS"]);
    if if_not_exists {
        for _ in 0..3 {
            p.next_token();
        }
    }
    let name = ident(p, "a signal name")?;
    expect_word(p, "ON")?;
    let kind: EntityKind = ident(p, "items, users or creators")?.parse()?;
    expect_word(p, "DECAY")?;
    let decay = if is_word(&p.peek_token_ref().token, "NONE") {
        p.next_token();
        DecaySpec::None
    } else {
        expect_word(p, "EXPONENTIAL")?;
        expect_word(p, "HALF_LIFE")?;
        DecaySpec::exponential(&string(p, "the half-life")?)?
    };
    let mut windows = Vec::new();
    if is_word(&p.peek_token_ref().token, "WINDOWS") {
        p.next_token();
        p.expect_token(&Token::LParen)
            .map_err(|e| syntax(e.to_string()))?;
        loop {
            windows.push(Window::parse(&string(p, "a window")?)?);
            match p.next_token().token {
                Token::Comma => continue,
                Token::RParen => break,
                t => return Err(syntax(format!("expected , or ) in WINDOWS, found \"{t}\""))),
            }
        }
    }
    let mut def = SignalDef::new(&name, kind, decay, windows)?;
    if is_word(&p.peek_token_ref().token, "MARKS") {
        p.next_token();
        let mark: Mark = ident(p, "seen, liked or hidden")?.parse()?;
        def = def.with_marks(mark);
    }
    if is_word(&p.peek_token_ref().token, "PREFERENCE") {
        p.next_token();
        let lr = crate::search::number(p, "the learning rate after PREFERENCE")?;
        def = def.with_preference(lr)?;
    }
    if is_word(&p.peek_token_ref().token, "AFFINITY") {
        p.next_token();
        let delta = crate::search::number(p, "the weight after AFFINITY")?;
        def = def.with_affinity(delta)?;
    }
    if is_word(&p.peek_token_ref().token, "COHORTS") {
        p.next_token();
        def = def.with_cohorts(cohort_dims(p)?)?;
    }
    end(p)?;
    Ok(Some(TidalStatement::CreateSignal { def, if_not_exists }))
}

/// `(region, age_group, (region, age_group))` after `COHORTS`.
pub(crate) fn cohort_dims(p: &mut Parser<'_>) -> Result<Vec<CohortDim>, SqlError> {
    let open = |p: &mut Parser<'_>| {
        p.expect_token(&Token::LParen)
            .map_err(|e| syntax(format!("COHORTS: {e}")))
    };
    open(p)?;
    let mut dims = Vec::new();
    loop {
        if p.peek_token_ref().token == Token::LParen {
            p.next_token();
            let mut columns = Vec::new();
            loop {
                columns.push(ident(p, "a users column")?);
                match p.next_token().token {
                    Token::Comma => continue,
                    Token::RParen => break,
                    t => {
                        return Err(syntax(format!(
                            "expected , or ) in a composite cohort, found \"{t}\""
                        )));
                    }
                }
            }
            if columns.len() < 2 {
                return Err(syntax(
                    "a composite cohort names two or more columns: (region, age_group)",
                ));
            }
            dims.push(CohortDim::new(columns));
        } else {
            dims.push(CohortDim::new(vec![ident(p, "a users column")?]));
        }
        match p.next_token().token {
            Token::Comma => continue,
            Token::RParen => break,
            t => return Err(syntax(format!("expected , or ) in COHORTS, found \"{t}\""))),
        }
    }
    Ok(dims)
}

/// `CREATE INDEX … USING hnsw (column opclass) WITH (m = 16, ef_construction = 64)`,
/// with pgvector's options and defaults.
fn create_index(
    df: &mut datafusion::sql::parser::DFParser<'_>,
) -> Result<TidalStatement, SqlError> {
    use datafusion::sql::sqlparser::ast::{Expr, IndexType, Statement};
    let unsupported = |what: String| {
        SqlError::DataFusion(datafusion::error::DataFusionError::NotImplemented(what))
    };
    let stmt = df
        .parser
        .parse_statement()
        .map_err(|e| syntax(e.to_string()))?;
    end(&mut df.parser)?;
    let Statement::CreateIndex(ci) = stmt else {
        return Err(syntax("expected CREATE INDEX"));
    };
    if ci.unique {
        return Err(unsupported(
            "unique indexes are not supported: every entity table's id is its key".into(),
        ));
    }
    if ci.predicate.is_some() || !ci.include.is_empty() {
        return Err(unsupported(
            "partial indexes and INCLUDE are not supported".into(),
        ));
    }
    match &ci.using {
        Some(IndexType::Custom(m)) if m.value.eq_ignore_ascii_case("hnsw") => {}
        Some(other) => {
            return Err(unsupported(format!(
                "access method \"{other}\" is not supported; use USING hnsw on a vector column"
            )));
        }
        None => {
            return Err(unsupported(
                "only HNSW vector indexes exist: CREATE INDEX … USING hnsw (column vector_l2_ops | vector_cosine_ops | vector_ip_ops)".into(),
            ));
        }
    }
    let table = ci.table_name.to_string().to_ascii_lowercase();
    let kind = table
        .parse::<EntityKind>()
        .ok()
        .filter(|k| k.table_name() == table)
        .ok_or_else(|| {
            SqlError::from(CoreError::UnknownTableName {
                name: table.clone(),
            })
        })?;
    let [col] = ci.columns.as_slice() else {
        return Err(unsupported("an hnsw index has exactly one column".into()));
    };
    let Expr::Identifier(column) = &col.column.expr else {
        return Err(unsupported(
            "an hnsw index is on a column, not an expression".into(),
        ));
    };
    let column = column.value.to_ascii_lowercase();
    let opclass = col
        .operator_class
        .as_ref()
        .map(|o| o.to_string())
        .unwrap_or_else(|| "vector_l2_ops".into());
    let metric = tidal_core::VectorMetric::from_opclass(&opclass).ok_or_else(|| {
        SqlError::from(CoreError::BadIndex {
            name: column.clone(),
            reason: format!(
                "operator class \"{opclass}\" does not exist for access method \"hnsw\" (use vector_l2_ops, vector_cosine_ops or vector_ip_ops)"
            ),
        })
    })?;
    let name = match &ci.name {
        Some(n) => n.to_string().to_ascii_lowercase(),
        // PostgreSQL's generated name.
        None => format!("{table}_{column}_idx"),
    };
    let mut def = tidal_core::VectorIndexDef {
        name: name.clone(),
        kind,
        column,
        metric,
        m: tidal_core::VectorIndexDef::M_DEFAULT,
        ef_construction: tidal_core::VectorIndexDef::EF_CONSTRUCTION_DEFAULT,
        id: 0,
    };
    for option in &ci.with {
        let bad = |reason: String| {
            SqlError::from(CoreError::BadIndex {
                name: name.clone(),
                reason,
            })
        };
        let Expr::BinaryOp { left, op, right } = option else {
            return Err(bad(format!("expected option = value, found {option}")));
        };
        if *op != datafusion::sql::sqlparser::ast::BinaryOperator::Eq {
            return Err(bad(format!("expected option = value, found {option}")));
        }
        let key = left.to_string().to_ascii_lowercase();
        let value: u32 = right
            .to_string()
            .trim_matches('\'')
            .parse()
            .map_err(|_| bad(format!("invalid value for option \"{key}\": {right}")))?;
        match key.as_str() {
            "m" => def.m = value,
            "ef_construction" => def.ef_construction = value,
            _ => return Err(bad(format!("unrecognized parameter \"{key}\""))),
        }
    }
    def.validate()?;
    Ok(TidalStatement::CreateIndex {
        def,
        if_not_exists: ci.if_not_exists,
        generated_name: ci.name.is_none(),
    })
}

/// Runs a parsed statement against the engine; SHOW returns its rows.
pub fn execute(engine: &Engine, stmt: TidalStatement) -> Result<Vec<RecordBatch>, SqlError> {
    match stmt {
        TidalStatement::CreateSignal { def, if_not_exists } => {
            if if_not_exists && engine.schema().signal(&def.name).is_ok() {
                return Ok(Vec::new());
            }
            let mut txn = engine.begin();
            txn.schema_change(SchemaChange::CreateSignal(def))?;
            txn.commit()?;
            Ok(Vec::new())
        }
        TidalStatement::DropSignal { name, if_exists } => {
            if if_exists && engine.schema().signal(&name).is_err() {
                return Ok(Vec::new());
            }
            let mut txn = engine.begin();
            txn.schema_change(SchemaChange::DropSignal {
                name,
                id: SignalId(0),
            })?;
            txn.commit()?;
            Ok(Vec::new())
        }
        TidalStatement::AlterSignalCohorts { name, add } => {
            let mut txn = engine.begin();
            txn.schema_change(SchemaChange::AlterSignalCohorts {
                name,
                id: SignalId(0),
                add,
            })?;
            txn.commit()?;
            Ok(Vec::new())
        }
        TidalStatement::ShowSignals => Ok(vec![show_signals(engine)?]),
        TidalStatement::ShowProfiles => Ok(vec![show_profiles(engine)?]),
        TidalStatement::DropProfile { name, if_exists } => {
            if if_exists && engine.schema().profile(&name).is_err() {
                return Ok(Vec::new());
            }
            let mut txn = engine.begin();
            txn.schema_change(SchemaChange::DropProfile { name })?;
            txn.commit()?;
            Ok(Vec::new())
        }
        TidalStatement::CreateProfile { def, replace } => {
            let mut txn = engine.begin();
            txn.schema_change(SchemaChange::CreateProfile { def, replace })?;
            txn.commit()?;
            Ok(Vec::new())
        }
        TidalStatement::Retrieve(_) | TidalStatement::Search(_) | TidalStatement::Suggest(_) => {
            Err(syntax(
                "RETRIEVE, SEARCH and SUGGEST run through SqlSession::sql",
            ))
        }
        TidalStatement::InsertSignals { .. }
        | TidalStatement::InsertRows { .. }
        | TidalStatement::ChangeRows(_) => Err(syntax("INSERT runs through SqlSession::sql")),
        TidalStatement::CreateTable { def, if_not_exists } => {
            if if_not_exists && engine.schema().table(def.kind).is_ok() {
                return Ok(Vec::new());
            }
            let mut txn = engine.begin();
            txn.schema_change(SchemaChange::CreateTable(def))?;
            txn.commit()?;
            Ok(Vec::new())
        }
        TidalStatement::DropTable { kind, if_exists } => {
            if if_exists && engine.schema().table(kind).is_err() {
                return Ok(Vec::new());
            }
            let mut txn = engine.begin();
            txn.schema_change(SchemaChange::DropTable { kind })?;
            txn.commit()?;
            Ok(Vec::new())
        }
        TidalStatement::ShowRelationships => Ok(vec![show_relationships(engine)?]),
        TidalStatement::InsertEdges { .. } | TidalStatement::DeleteEdges { .. } => {
            Err(syntax("INSERT and DELETE run through SqlSession::sql"))
        }
        stmt @ (TidalStatement::CreateIndex { .. }
        | TidalStatement::DropIndex { .. }
        | TidalStatement::CreateRelationship { .. }
        | TidalStatement::DropRelationship { .. }) => {
            let mut txn = engine.begin();
            add_statement(&mut txn, stmt)?;
            txn.commit()?;
            Ok(Vec::new())
        }
    }
}

/// Adds a DDL statement to an open transaction (not committed). SHOW and the DML
/// statements are not handled here.
pub fn add_statement(
    txn: &mut tidal_engine::WriteTxn<'_>,
    stmt: TidalStatement,
) -> Result<(), SqlError> {
    let change = match stmt {
        TidalStatement::CreateSignal { def, if_not_exists } => {
            if if_not_exists && txn.schema().signal(&def.name).is_ok() {
                return Ok(());
            }
            SchemaChange::CreateSignal(def)
        }
        TidalStatement::DropSignal { name, if_exists } => {
            if if_exists && txn.schema().signal(&name).is_err() {
                return Ok(());
            }
            SchemaChange::DropSignal {
                name,
                id: SignalId(0),
            }
        }
        TidalStatement::AlterSignalCohorts { name, add } => SchemaChange::AlterSignalCohorts {
            name,
            id: SignalId(0),
            add,
        },
        TidalStatement::CreateTable { def, if_not_exists } => {
            if if_not_exists && txn.schema().table(def.kind).is_ok() {
                return Ok(());
            }
            SchemaChange::CreateTable(def)
        }
        TidalStatement::DropTable { kind, if_exists } => {
            if if_exists && txn.schema().table(kind).is_err() {
                return Ok(());
            }
            SchemaChange::DropTable { kind }
        }
        TidalStatement::CreateProfile { def, replace } => {
            SchemaChange::CreateProfile { def, replace }
        }
        TidalStatement::DropProfile { name, if_exists } => {
            if if_exists && txn.schema().profile(&name).is_err() {
                return Ok(());
            }
            SchemaChange::DropProfile { name }
        }
        TidalStatement::CreateIndex {
            mut def,
            if_not_exists,
            generated_name,
        } => {
            if generated_name {
                let base = def.name.clone();
                let mut n = 0;
                while txn.schema().index(&def.name).is_ok() {
                    n += 1;
                    def.name = format!("{base}{n}");
                }
            } else if if_not_exists && txn.schema().index(&def.name).is_ok() {
                return Ok(());
            }
            SchemaChange::CreateIndex(def)
        }
        TidalStatement::DropIndex { name, if_exists } => {
            if if_exists && txn.schema().index(&name).is_err() {
                return Ok(());
            }
            SchemaChange::DropIndex { name }
        }
        TidalStatement::CreateRelationship { def, if_not_exists } => {
            if if_not_exists && txn.schema().relationship(&def.name).is_ok() {
                return Ok(());
            }
            SchemaChange::CreateRelationship(def)
        }
        TidalStatement::DropRelationship { name, if_exists } => {
            if if_exists && txn.schema().relationship(&name).is_err() {
                return Ok(());
            }
            SchemaChange::DropRelationship { name, id: 0 }
        }
        _ => return Err(syntax("not a schema statement")),
    };
    txn.schema_change(change)?;
    Ok(())
}

/// `SHOW RELATIONSHIPS`: name, from, to.
fn show_relationships(engine: &Engine) -> Result<RecordBatch, SqlError> {
    let schema = engine.schema();
    let rels: Vec<&tidal_core::RelationshipDef> = schema.relationships().collect();
    let names: StringArray = rels.iter().map(|r| Some(r.name.as_str())).collect();
    let from: StringArray = rels.iter().map(|r| Some(r.from.table_name())).collect();
    let to: StringArray = rels.iter().map(|r| Some(r.to.table_name())).collect();
    let out = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("from", DataType::Utf8, false),
        Field::new("to", DataType::Utf8, false),
    ]));
    RecordBatch::try_new(
        out,
        vec![Arc::new(names) as ArrayRef, Arc::new(from), Arc::new(to)],
    )
    .map_err(|e| SqlError::DataFusion(e.into()))
}

/// `SHOW PROFILES`: name, entity, version, definition.
fn show_profiles(engine: &Engine) -> Result<RecordBatch, SqlError> {
    use datafusion::arrow::array::Int64Array;
    let schema = engine.schema();
    let profiles: Vec<&ProfileDef> = schema.profiles().collect();
    let names: StringArray = profiles.iter().map(|p| Some(p.name.as_str())).collect();
    let kinds: StringArray = profiles.iter().map(|p| Some(p.kind.table_name())).collect();
    let versions: Int64Array = profiles
        .iter()
        .map(|p| Some(i64::from(p.version)))
        .collect();
    let defs: StringArray = profiles.iter().map(|p| Some(p.definition())).collect();
    let out = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("entity", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("definition", DataType::Utf8, false),
    ]));
    RecordBatch::try_new(
        out,
        vec![
            Arc::new(names) as ArrayRef,
            Arc::new(kinds),
            Arc::new(versions),
            Arc::new(defs),
        ],
    )
    .map_err(|e| SqlError::DataFusion(e.into()))
}

fn show_signals(engine: &Engine) -> Result<RecordBatch, SqlError> {
    let schema = engine.schema();
    let signals: Vec<&SignalDef> = schema.signals().collect();
    let text = |f: &dyn Fn(&SignalDef) -> String| -> ArrayRef {
        Arc::new(signals.iter().map(|s| Some(f(s))).collect::<StringArray>())
    };
    let half_life: Float64Array = signals
        .iter()
        .map(|s| s.decay.half_life_us().map(|us| us as f64 / 1e6))
        .collect();
    let marks: StringArray = signals.iter().map(|s| s.marks.map(Mark::as_str)).collect();
    let preference: Float64Array = signals.iter().map(|s| s.preference).collect();
    let affinity: Float64Array = signals.iter().map(|s| s.affinity).collect();
    let cohorts: StringArray = signals
        .iter()
        .map(|s| {
            (!s.cohorts.is_empty()).then(|| {
                s.cohorts
                    .iter()
                    .map(CohortDim::sql)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        })
        .collect();
    let out = Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("entity", DataType::Utf8, false),
        Field::new("decay", DataType::Utf8, false),
        Field::new("half_life_seconds", DataType::Float64, true),
        Field::new("windows", DataType::Utf8, false),
        Field::new("marks", DataType::Utf8, true),
        Field::new("preference", DataType::Float64, true),
        Field::new("affinity", DataType::Float64, true),
        Field::new("cohorts", DataType::Utf8, true),
    ]);
    let columns = vec![
        text(&|s| s.name.clone()),
        text(&|s| s.kind.table_name().to_string()),
        text(&|s| s.decay.kind_name().to_string()),
        Arc::new(half_life) as ArrayRef,
        text(&|s| {
            s.windows
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }),
        Arc::new(marks) as ArrayRef,
        Arc::new(preference) as ArrayRef,
        Arc::new(affinity) as ArrayRef,
        Arc::new(cohorts) as ArrayRef,
    ];
    Ok(RecordBatch::try_new(Arc::new(out), columns)
        .map_err(datafusion::error::DataFusionError::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_forms() {
        let s = parse("CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '14 days' WINDOWS ('24h', '7d', 'all');").unwrap();
        let Some(TidalStatement::CreateSignal { def, .. }) = s else {
            panic!("{s:?}")
        };
        assert_eq!(def.name, "like");
        assert_eq!(def.windows_text(), "1d, 7d, all");
        let s =
            parse("create signal Share on ITEMS decay none windows ('all') marks liked").unwrap();
        let Some(TidalStatement::CreateSignal { def, .. }) = s else {
            panic!("{s:?}")
        };
        assert_eq!(
            (def.name.as_str(), def.decay, def.marks),
            ("share", DecaySpec::None, Some(Mark::Liked))
        );
        assert_eq!(
            parse("DROP SIGNAL IF EXISTS view").unwrap(),
            Some(TidalStatement::DropSignal {
                name: "view".into(),
                if_exists: true
            })
        );
        assert_eq!(
            parse("show signals").unwrap(),
            Some(TidalStatement::ShowSignals)
        );
        assert_eq!(parse("SELECT 1").unwrap(), None);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = |sql: &str| parse(sql).unwrap_err().to_string();
        assert!(e("CREATE SIGNAL v ON posts DECAY NONE").contains("posts"));
        assert!(
            e("CREATE SIGNAL v ON items DECAY EXPONENTIAL HALF_LIFE '0 days'")
                .contains("out of range")
        );
        assert!(e("CREATE SIGNAL v ON items DECAY NONE WINDOWS ('1w')").contains("1w"));
        assert!(e("CREATE SIGNAL v ON items DECAY EXPONENTIAL").contains("HALF_LIFE"));
        assert!(e("CREATE SIGNAL v ON items DECAY NONE junk").contains("junk"));
        assert!(
            e("CREATE SIGNAL ON items DECAY NONE").contains("ON"),
            "{}",
            e("CREATE SIGNAL ON items DECAY NONE")
        );
    }
}
