//! Parameter types of write statements, from the target columns: `$n` in an INSERT's
//! VALUES takes its column's type, `SET c = $n` in an UPDATE takes c's type, and the
//! rest (WHERE clauses, SELECT sources) comes from DataFusion's planner.

use pgwire::api::Type;
use std::ops::ControlFlow;

use tidal::datafusion::sql::sqlparser::ast::{
    AssignmentTarget, BinaryOperator, DataType as SqlType, Expr, FunctionArg, FunctionArgExpr,
    FunctionArguments, SetExpr, Statement, TableObject, Value, visit_expressions,
};
use tidal::datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use tidal::datafusion::sql::sqlparser::parser::Parser;
use tidal_core::EntityKind;
use tidal_sql::{SqlSession, TidalStatement};

use crate::{ServerError, encode};

fn placeholder(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => p.strip_prefix('$')?.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The pg type of a column of `table` (`signals` or an entity table).
fn column_type(session: &SqlSession, table: &str, column: &str) -> Option<Type> {
    let column = column.to_ascii_lowercase();
    if table.eq_ignore_ascii_case("signals") {
        return Some(match column.as_str() {
            "signal" => Type::TEXT,
            "entity_id" | "user_id" => Type::INT8,
            "weight" => Type::FLOAT8,
            "ts" => Type::TIMESTAMP,
            _ => return None,
        });
    }
    if session.engine().schema().relationship(table).is_ok() {
        return Some(match column.as_str() {
            "src" | "dst" => Type::INT8,
            "created_at" => Type::TIMESTAMP,
            _ => return None,
        });
    }
    let kind: EntityKind = table.parse().ok()?;
    let schema = session.engine().schema();
    let def = schema.table(kind).ok()?;
    let col = def.columns.iter().find(|c| c.name == column)?;
    encode::pg_type(&tidal_sql::arrow_type(col.ty)).ok()
}

fn set(params: &mut [Option<Type>], n: usize, ty: Option<Type>) {
    if let (Some(slot), Some(ty)) = (n.checked_sub(1).and_then(|i| params.get_mut(i)), ty)
        && slot.is_none()
    {
        *slot = Some(ty);
    }
}

/// Fills in the unknown entries of `params` for an INSERT/UPDATE/DELETE.
pub async fn infer_write(
    session: &SqlSession,
    sql: &str,
    stmt: &TidalStatement,
    params: &mut [Option<Type>],
) -> Result<(), ServerError> {
    if params.iter().all(Option::is_some) {
        return Ok(());
    }
    let parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok();
    match parsed.as_deref() {
        Some([Statement::Insert(insert)]) => {
            let table = match &insert.table {
                TableObject::TableName(name) => name.to_string(),
                _ => return Ok(()),
            };
            let columns: Vec<String> = if insert.columns.is_empty() {
                default_columns(session, &table)
            } else {
                insert.columns.iter().map(|c| c.to_string()).collect()
            };
            if let Some(source) = &insert.source
                && let SetExpr::Values(values) = source.body.as_ref()
            {
                for row in &values.rows {
                    for (i, e) in row.iter().enumerate() {
                        if let (Some(n), Some(col)) = (placeholder(e), columns.get(i)) {
                            set(params, n, column_type(session, &table, col));
                        }
                    }
                }
            }
        }
        Some([Statement::Update(update)]) => {
            let table = update.table.relation.to_string();
            for a in &update.assignments {
                if let (AssignmentTarget::ColumnName(c), Some(n)) =
                    (&a.target, placeholder(&a.value))
                {
                    let col = c.0.last().map(|p| p.to_string()).unwrap_or_default();
                    set(params, n, column_type(session, &table, &col));
                }
            }
        }
        _ => {}
    }
    infer_from_syntax(sql, params);
    // WHERE clauses and SELECT sources: ask the planner about the compiled query.
    let query = match stmt {
        TidalStatement::ChangeRows(c) => Some(c.query.as_str()),
        TidalStatement::DeleteEdges { query, .. } => Some(query.as_str()),
        TidalStatement::InsertRows { source, .. }
        | TidalStatement::InsertSignals { source, .. }
        | TidalStatement::InsertEdges { source, .. } => Some(source.as_str()),
        _ => None,
    };
    if let Some(query) = query
        && params.iter().any(Option::is_none)
        && let Ok(plan) = session.context().state().create_logical_plan(query).await
        && let Ok(types) = plan.get_parameter_types()
    {
        for (name, dt) in types {
            if let (Some(n), Some(dt)) = (name.strip_prefix('$').and_then(|n| n.parse().ok()), dt) {
                set(params, n, encode::pg_type(&dt).ok());
            }
        }
    }
    Ok(())
}

fn default_columns(session: &SqlSession, table: &str) -> Vec<String> {
    if table.eq_ignore_ascii_case("signals") {
        return ["signal", "entity_id", "user_id", "weight", "ts"]
            .map(String::from)
            .to_vec();
    }
    if session.engine().schema().relationship(table).is_ok() {
        return tidal_sql::EDGE_COLUMNS.map(String::from).to_vec();
    }
    let Ok(kind) = table.parse::<EntityKind>() else {
        return Vec::new();
    };
    session
        .engine()
        .schema()
        .table(kind)
        .map(|t| t.columns.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

/// Types DataFusion's planner leaves open (it only types placeholders compared with
/// columns): `$n::TYPE` / `CAST($n AS TYPE)` take the cast's type, and arguments of the
/// signal functions take the declared argument types (`decay('like', $1)` → BIGINT), as
/// PostgreSQL types parameters from a function's signature.
pub fn infer_from_syntax(sql: &str, params: &mut [Option<Type>]) {
    if params.iter().all(Option::is_some) {
        return;
    }
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return;
    };
    let _ = visit_expressions(&statements, |e| {
        match e {
            Expr::Cast {
                expr, data_type, ..
            } => {
                if let Some(n) = placeholder(expr) {
                    set(params, n, cast_type(data_type));
                }
            }
            // `x = ANY($n)`: an array. Its element type is the other side's, which the
            // syntax does not tell; drivers that send a list untyped (psycopg's text
            // lists) send its text form, which a TEXT[] parses.
            Expr::AnyOp { right, .. } | Expr::AllOp { right, .. } => {
                if let Some(n) = placeholder(right) {
                    set(params, n, Some(Type::TEXT_ARRAY));
                }
            }
            // pgvector's operators and functions take vectors, as their signatures
            // type them in PostgreSQL.
            Expr::BinaryOp { left, op, right } if is_vector_operator(op) => {
                for side in [left, right] {
                    if let Some(n) = placeholder(side) {
                        set(params, n, Some(encode::vector_pg_type()));
                    }
                }
            }
            Expr::Function(f)
                if VECTOR_FUNCTIONS.contains(&f.name.to_string().to_ascii_lowercase().as_str()) =>
            {
                if let FunctionArguments::List(list) = &f.args {
                    for arg in &list.args {
                        if let FunctionArg::Unnamed(FunctionArgExpr::Expr(a)) = arg
                            && let Some(n) = placeholder(a)
                        {
                            set(params, n, Some(encode::vector_pg_type()));
                        }
                    }
                }
            }
            Expr::Function(f) => {
                let name = f.name.to_string().to_ascii_lowercase();
                if let (Some(types), FunctionArguments::List(list)) =
                    (signal_function_args(&name), &f.args)
                {
                    for (arg, ty) in list.args.iter().zip(types) {
                        if let FunctionArg::Unnamed(FunctionArgExpr::Expr(a)) = arg
                            && let Some(n) = placeholder(a)
                        {
                            set(params, n, Some(ty.clone()));
                        }
                    }
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Catalog comparisons with an OID column (`WHERE t.oid = $1`, as tokio-postgres and
/// pgjdbc look types up): the parameter is an `oid`, which drivers send as 4 bytes.
/// (The catalog's OID columns are BIGINT, so DataFusion types the parameter INT8.)
pub fn infer_oid_comparisons(sql: &str, params: &mut [Option<Type>]) {
    if !sql.to_ascii_lowercase().contains("pg_catalog") {
        return;
    }
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return;
    };
    let is_oid_column = |e: &Expr| match e {
        Expr::Identifier(i) => i.value.eq_ignore_ascii_case("oid"),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .is_some_and(|i| i.value.eq_ignore_ascii_case("oid")),
        _ => false,
    };
    let _ = visit_expressions(&statements, |e| {
        if let Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = e
        {
            for (col, other) in [(left, right), (right, left)] {
                if is_oid_column(col)
                    && let Some(n) = placeholder(other)
                    && let Some(slot) = n.checked_sub(1).and_then(|i| params.get_mut(i))
                    && slot.is_none()
                {
                    *slot = Some(Type::OID);
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Functions whose every argument is a vector.
const VECTOR_FUNCTIONS: &[&str] = &[
    "l2_distance",
    "cosine_distance",
    "inner_product",
    "vector_negative_inner_product",
    "l1_distance",
    "vector_dims",
    "vector_norm",
];

fn is_vector_operator(op: &BinaryOperator) -> bool {
    match op {
        BinaryOperator::LtDashGt | BinaryOperator::Spaceship => true,
        BinaryOperator::Custom(s) => s == "<#>" || s == "<+>",
        _ => false,
    }
}

/// Argument types of the signal functions (SQL.md §4), `preference(user)` (§7),
/// `affinity(user, creator [, at])` and `in_degree(relationship, dst)` (§8).
fn signal_function_args(name: &str) -> Option<&'static [Type]> {
    Some(match name {
        "affinity" => &[Type::INT8, Type::INT8, Type::TIMESTAMP],
        "in_degree" => &[Type::TEXT, Type::INT8],
        "decay" => &[Type::TEXT, Type::INT8, Type::TIMESTAMP],
        "window_count" | "velocity" | "acceleration" => {
            &[Type::TEXT, Type::INT8, Type::TEXT, Type::TIMESTAMP]
        }
        "signal_total" | "last_signal_at" => &[Type::TEXT, Type::INT8],
        "preference" => &[Type::INT8],
        _ => return None,
    })
}

/// The pg type of a cast target, for the types tidalDB has.
fn cast_type(t: &SqlType) -> Option<Type> {
    let name = t.to_string().to_ascii_uppercase();
    let base = name.split('(').next().unwrap_or_default().trim();
    Some(match base {
        "BIGINT" | "INT8" | "INT64" => Type::INT8,
        "INT" | "INTEGER" | "INT4" | "INT32" => Type::INT4,
        "SMALLINT" | "INT2" | "INT16" => Type::INT2,
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT8" | "FLOAT64" => Type::FLOAT8,
        "REAL" | "FLOAT4" | "FLOAT32" => Type::FLOAT4,
        "BOOLEAN" | "BOOL" => Type::BOOL,
        "TEXT" | "VARCHAR" | "CHARACTER VARYING" | "STRING" => Type::TEXT,
        "TEXT[]" | "VARCHAR[]" => Type::TEXT_ARRAY,
        "DATE" => Type::DATE,
        "VECTOR" => encode::vector_pg_type(),
        "TIMESTAMPTZ" => Type::TIMESTAMPTZ,
        _ if base.starts_with("TIMESTAMP") && base.contains("WITH TIME ZONE") => Type::TIMESTAMPTZ,
        _ if base.starts_with("TIMESTAMP") => Type::TIMESTAMP,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_typed_by_casts_and_signal_functions() {
        let mut p = vec![None; 5];
        infer_from_syntax(
            "SELECT decay($1, $2), window_count('like', id, $3, $4::TIMESTAMP) \
             FROM items WHERE id > $5::BIGINT",
            &mut p,
        );
        assert_eq!(
            p,
            vec![
                Some(Type::TEXT),
                Some(Type::INT8),
                Some(Type::TEXT),
                Some(Type::TIMESTAMP),
                Some(Type::INT8)
            ]
        );
        // Types already known are kept.
        let mut p = vec![Some(Type::INT4)];
        infer_from_syntax("SELECT signal_total('like', $1)", &mut p);
        assert_eq!(p, vec![Some(Type::INT4)]);
        let mut p = vec![None];
        infer_from_syntax("SELECT CAST($1 AS DOUBLE PRECISION)", &mut p);
        assert_eq!(p, vec![Some(Type::FLOAT8)]);
        // The right side of `= ANY(...)` is an array (pgcli sends `relkind = ANY(%s)`).
        let mut p = vec![None, Some(Type::INT8_ARRAY)];
        infer_from_syntax(
            "SELECT 1 FROM pg_catalog.pg_class WHERE relkind = ANY($1) AND oid = ANY($2)",
            &mut p,
        );
        assert_eq!(p, vec![Some(Type::TEXT_ARRAY), Some(Type::INT8_ARRAY)]);
    }
}
