//! Enough of PostgreSQL's system catalog for psql's describe commands (`\dt`, `\d`,
//! `\d+`, `\l`, `\dn`, `\df`) and the metadata queries JDBC/ODBC drivers and GUI tools
//! send on connect.
//!
//! * A `pg_catalog` schema inside the `tidal` catalog. Its tables (`pg_class`,
//!   `pg_attribute`, `pg_type`, ...) are computed at scan time from the live schema of
//!   `tidal.public`, so DDL shows up in the next query. OIDs are synthetic but stable:
//!   built-in types, namespaces and catalog tables use PostgreSQL's own; user tables get
//!   `16384 + 4 * slot` (their primary-key index and constraint the next two).
//! * The functions psql calls (`pg_table_is_visible`, `format_type`, `pg_get_indexdef`,
//!   ...) as DataFusion UDFs.
//! * [`rewrite`]: the PostgreSQL-only syntax in those queries (`OPERATOR(pg_catalog.~)`,
//!   `COLLATE pg_catalog.default`, `::regclass`, `pg_catalog.`-qualified function
//!   names, ...) turned into SQL DataFusion plans. Statements without such patterns are
//!   returned untouched.
//!
//! Settings shown by `pg_settings` and `current_setting()` are the server defaults; a
//! connection's own `SET`s are visible to `SHOW` only.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use tidal::datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Float32Array, Int16Array, Int16Builder,
    Int32Array, Int64Array, Int64Builder, ListBuilder, RecordBatch, StringArray, StringBuilder,
};
use tidal::datafusion::arrow::compute::cast;
use tidal::datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use tidal::datafusion::catalog::{SchemaProvider, Session, TableProvider};
use tidal::datafusion::datasource::TableType;
use tidal::datafusion::datasource::memory::MemorySourceConfig;
use tidal::datafusion::error::{DataFusionError, Result};
use tidal::datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use tidal::datafusion::physical_plan::ExecutionPlan;
use tidal::datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use tidal::datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
use tidal_core::EntityKind;
use tidal_sql::{CATALOG_NAME, SCHEMA_NAME, SqlSession};

/// The schema name.
pub const PG_CATALOG: &str = "pg_catalog";

const NSP_CATALOG: i64 = 11;
const NSP_PUBLIC: i64 = 2200;
const NSP_INFORMATION_SCHEMA: i64 = 13_000;
/// The one role (`tidal`), as PostgreSQL's bootstrap superuser.
const ROLE_OID: i64 = 10;
const DATABASE_OID: i64 = 5;
const AM_HEAP: i64 = 2;
const AM_BTREE: i64 = 403;
const COLLATION_DEFAULT: i64 = 100;
/// First OID of user objects, as in PostgreSQL.
const FIRST_USER_OID: i64 = 16_384;
/// pgvector's type, as if the extension were installed in `public`.
const VECTOR_OID: i64 = crate::encode::VECTOR_OID as i64;
const VECTOR_ARRAY_OID: i64 = crate::encode::VECTOR_ARRAY_OID as i64;
/// Functions are numbered from here in name order.
const FIRST_PROC_OID: i64 = 20_000;
const ENCODING_UTF8: i64 = 6;

// ---------------------------------------------------------------------------------
// SQL rewriting
// ---------------------------------------------------------------------------------

/// Casts turned into calls of the function of the same name (`x::regclass` →
/// `regclass(x)`): a name becomes an OID, an OID a name.
const REG_TYPES: [&str; 8] = [
    "regclass",
    "regtype",
    "regproc",
    "regprocedure",
    "regnamespace",
    "regrole",
    "regoper",
    "regoperator",
];

/// Normalizes the PostgreSQL-specific syntax of catalog queries (as psql, JDBC drivers
/// and GUI tools send them) into SQL DataFusion can plan:
///
/// * `OPERATOR(pg_catalog.~)` → `~`; `COLLATE pg_catalog.default` (any collation) is
///   dropped;
/// * `pg_catalog.f(...)` → `f(...)` (DataFusion does not resolve qualified function
///   names);
/// * `x::regclass` (and `regtype`, `regproc`, `regnamespace`, `regrole`) →
///   `regclass(x)`, `::oid` → `::BIGINT`, `::name` / `::"char"` / `::pg_node_tree` →
///   `::TEXT`, `::pg_catalog.t` → `::t`;
/// * `FROM pg_type` (an unqualified catalog table after FROM/JOIN) →
///   `FROM pg_catalog.pg_type`;
/// * bare `current_user` / `session_user` → a call;
/// * `SHOW TRANSACTION ISOLATION LEVEL` → `SHOW transaction_isolation`;
/// * in statements that read the catalog only: a query over a catalog table that is
///   always empty in tidalDB becomes `SELECT NULL AS col, ... WHERE false`
///   ([`empty_result`]); scalar and `ARRAY(...)` subqueries DataFusion cannot
///   decorrelate are aggregated or, where provably NULL/empty, replaced
///   ([`wrap_scalar_subqueries`]); `c.oid, c.*` loses the duplicate `c.oid`.
///
/// Statements without any of these come back borrowed and byte-for-byte unchanged.
pub fn rewrite(sql: &str) -> Cow<'_, str> {
    // Cheap pre-check, so that ordinary statements (large INSERTs above all) are not
    // tokenized once more.
    const HINTS: [&str; 16] = [
        "pg_",
        "'{",
        " as reg",
        " as oid",
        "information_schema",
        "::reg",
        "::oid",
        "::name",
        "::\"char\"",
        "::xid",
        "::bpchar",
        "operator",
        "collate",
        "transaction",
        "current_user",
        "session_user",
    ];
    let lower = sql.to_ascii_lowercase();
    if !HINTS.iter().any(|h| lower.contains(h)) {
        return Cow::Borrowed(sql);
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        // Not ours to report: the planner will say what is wrong with it.
        return Cow::Borrowed(sql);
    };
    let (tokens, casts) = rewrite_casts(tokens);
    match rewrite_tokens(&tokens) {
        Some(out) => Cow::Owned(out.iter().map(|t| t.to_string()).collect()),
        None if casts => Cow::Owned(tokens.iter().map(|t| t.to_string()).collect()),
        None => Cow::Borrowed(sql),
    }
}

/// `CAST(x AS regclass)` (any of [`REG_TYPES`]) → `regclass(x)`, and `CAST(x AS oid)`
/// → `CAST(x AS BIGINT)`: the `::` forms' rewrite for the standard spelling, which
/// SQLAlchemy uses; and `generate_subscripts(a, d)` (see below). Returns the tokens and
/// whether anything changed.
fn rewrite_casts(mut tokens: Vec<Token>) -> (Vec<Token>, bool) {
    let mut changed = untyped_array_literals(&mut tokens);
    let mut i = 0;
    while i < tokens.len() {
        if !is_word(&tokens[i], "cast") && !is_word(&tokens[i], "generate_subscripts") {
            i += 1;
            continue;
        }
        let Some(open) = next_sig(&tokens, i + 1).filter(|&k| tokens[k] == Token::LParen) else {
            i += 1;
            continue;
        };
        let Some(close) = matching_paren(&tokens, open) else {
            break;
        };
        if is_word(&tokens[i], "generate_subscripts") {
            // The set-returning generate_subscripts(a, d) in a select list, as the
            // unnest of the subscripts list: unnest(range(1, array_length(a, d) + 1)).
            // Both zip row by row with a neighbouring unnest(a), as in PostgreSQL.
            let inner: String = tokens[open + 1..close]
                .iter()
                .map(|t| t.to_string())
                .collect();
            let text = format!("unnest(range(1, CAST(array_length({inner}) AS BIGINT) + 1))");
            if let Ok(new) = Tokenizer::new(&PostgreSqlDialect {}, &text).tokenize() {
                tokens.splice(i..=close, new);
                changed = true;
            }
            i += 1;
            continue;
        }
        let mut depth = 0usize;
        let mut as_at = None;
        for (k, t) in tokens.iter().enumerate().take(close).skip(open + 1) {
            match t {
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                t if depth == 0 && is_word(t, "as") => as_at = Some(k),
                _ => {}
            }
        }
        let ty: Vec<usize> = as_at
            .map(|a| (a + 1..close).filter(|&k| !is_ws(&tokens[k])).collect())
            .unwrap_or_default();
        let name = match ty.as_slice() {
            [w] => Some(*w),
            [q, dot, w] if is_word(&tokens[*q], PG_CATALOG) && tokens[*dot] == Token::Period => {
                Some(*w)
            }
            _ => None,
        };
        let (Some(as_at), Some(name)) = (as_at, name) else {
            i += 1;
            continue;
        };
        let Token::Word(w) = &tokens[name] else {
            i += 1;
            continue;
        };
        let lower = w.value.to_ascii_lowercase();
        if w.quote_style.is_none() && REG_TYPES.contains(&lower.as_str()) {
            // CAST ( x AS t ) → t ( x )
            tokens.splice(as_at..close, std::iter::empty());
            tokens[i] = Token::make_word(&lower, None);
            changed = true;
        } else if w.quote_style.is_none() && lower == "oid" {
            tokens.splice(ty[0]..=name, [Token::make_keyword("BIGINT")]);
            changed = true;
        }
        i += 1;
    }
    (tokens, changed)
}

/// `= ANY('{a,b}')` / `ALL('{…}')`: PostgreSQL types the untyped literal as an array
/// of the left side's type; psycopg renders Python lists so (pgspecial's `\dt`). The
/// literal becomes `CAST('{a,b}' AS TEXT[])`, which the TEXT[] cast rule parses.
fn untyped_array_literals(tokens: &mut Vec<Token>) -> bool {
    let mut changed = false;
    let mut i = 0;
    while i < tokens.len() {
        if !(is_word(&tokens[i], "any") || is_word(&tokens[i], "all")) {
            i += 1;
            continue;
        }
        let open = next_sig(tokens, i + 1).filter(|&k| tokens[k] == Token::LParen);
        let lit = open.and_then(|o| next_sig(tokens, o + 1)).filter(
            |&k| matches!(&tokens[k], Token::SingleQuotedString(v) if v.trim_start().starts_with('{')),
        );
        let close = lit
            .and_then(|l| next_sig(tokens, l + 1))
            .filter(|&k| tokens[k] == Token::RParen);
        if let (Some(lit), Some(_)) = (lit, close) {
            let cast = [
                Token::make_keyword("CAST"),
                Token::LParen,
                tokens[lit].clone(),
                Token::Whitespace(Whitespace::Space),
                Token::make_keyword("AS"),
                Token::Whitespace(Whitespace::Space),
                Token::make_keyword("TEXT"),
                Token::LBracket,
                Token::RBracket,
                Token::RParen,
            ];
            tokens.splice(lit..=lit, cast);
            changed = true;
        }
        i += 1;
    }
    changed
}

fn is_word(t: &Token, w: &str) -> bool {
    matches!(t, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w))
}

fn is_ws(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

/// The first non-whitespace token at or after `i`.
fn next_sig(tokens: &[Token], i: usize) -> Option<usize> {
    (i..tokens.len()).find(|&k| !is_ws(&tokens[k]))
}

fn last_sig(tokens: &[Token]) -> Option<usize> {
    (0..tokens.len()).rev().find(|&k| !is_ws(&tokens[k]))
}

/// The index of the `)` matching the `(` at `open`.
fn matching_paren(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (k, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

/// Where the operand of a postfix `::` cast starts in the tokens emitted so far: a
/// literal, a (qualified) name, a parenthesized expression or a function call.
fn is_comparison(t: &Token) -> bool {
    matches!(
        t,
        Token::Eq | Token::Neq | Token::Lt | Token::Gt | Token::LtEq | Token::GtEq
    )
}

/// Whether `tokens[from..]` is `<comparison> 'text'::[pg_catalog.]regtype` (not `[]`).
fn compared_to_regtype_literal(tokens: &[Token], from: usize) -> bool {
    let Some(op) = next_sig(tokens, from).filter(|&k| is_comparison(&tokens[k])) else {
        return false;
    };
    let Some(lit) =
        next_sig(tokens, op + 1).filter(|&k| matches!(tokens[k], Token::SingleQuotedString(_)))
    else {
        return false;
    };
    let Some(mut k) = next_sig(tokens, lit + 1).filter(|&k| tokens[k] == Token::DoubleColon) else {
        return false;
    };
    k = match next_sig(tokens, k + 1) {
        Some(q) if is_word(&tokens[q], PG_CATALOG) && tokens.get(q + 1) == Some(&Token::Period) => {
            q + 2
        }
        Some(q) => q,
        None => return false,
    };
    is_word(&tokens[k], "regtype") && tokens.get(k + 1) != Some(&Token::LBracket)
}

/// Whether the rewritten output before `start` ends with `regtype('text') <comparison>`.
fn follows_regtype_literal_comparison(out: &[Token], start: Option<usize>) -> bool {
    let Some(start) = start else { return false };
    let sig: Vec<&Token> = out[..start]
        .iter()
        .rev()
        .filter(|t| !is_ws(t))
        .take(5)
        .collect();
    matches!(
        sig.as_slice(),
        [op, Token::RParen, Token::SingleQuotedString(_), Token::LParen, f]
            if is_comparison(op) && is_word(f, "regtype")
    )
}

fn operand_start(out: &[Token]) -> Option<usize> {
    let mut k = last_sig(out)?;
    match &out[k] {
        Token::RParen => {
            let mut depth = 0usize;
            loop {
                match &out[k] {
                    Token::RParen => depth += 1,
                    Token::LParen => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                k = k.checked_sub(1)?;
            }
            if k > 0 && matches!(out[k - 1], Token::Word(_)) {
                k -= 1;
            } else {
                return Some(k);
            }
        }
        Token::Word(_) => {}
        Token::SingleQuotedString(_)
        | Token::EscapedStringLiteral(_)
        | Token::Number(..)
        | Token::Placeholder(_) => return Some(k),
        _ => return None,
    }
    while k >= 2 && out[k - 1] == Token::Period && matches!(out[k - 2], Token::Word(_)) {
        k -= 2;
    }
    Some(k)
}

/// Aggregates that make a scalar subquery return one row already.
const AGGREGATES: [&str; 11] = [
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "string_agg",
    "array_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
];

/// Subqueries DataFusion cannot plan, in catalog statements:
///
/// * a scalar `(SELECT e FROM ...)` → `(SELECT max(e) FROM ...)`, so that it can be
///   decorrelated (DataFusion only accepts aggregated correlated scalar subqueries;
///   PostgreSQL would fail on two rows, and catalog queries are written for one);
/// * one that is NULL whatever the row (see [`always_null`]) → `NULL`;
/// * `ARRAY(SELECT e FROM ...)` → an empty `TEXT[]` when the subquery provably
///   returns no rows, else `(SELECT array_agg(e) FROM ...)`.
fn wrap_scalar_subqueries(tokens: &[Token]) -> Option<Vec<Token>> {
    // (start, end inclusive or None for an insert, replacement)
    let mut edits: Vec<(usize, Option<usize>, Vec<Token>)> = Vec::new();
    let mut replaced: Vec<(usize, usize)> = Vec::new();
    for open in 0..tokens.len() {
        if tokens[open] != Token::LParen || replaced.iter().any(|(a, b)| (*a..=*b).contains(&open))
        {
            continue;
        }
        let Some(select) = next_sig(tokens, open + 1) else {
            continue;
        };
        if !is_word(&tokens[select], "select") {
            continue;
        }
        let Some(close) = matching_paren(tokens, open) else {
            continue;
        };
        let before = (0..open).rev().find(|&k| !is_ws(&tokens[k]));
        let array = before.filter(|&k| is_word(&tokens[k], "array"));
        if let Some(arr) = array
            && empty_query(&tokens[select..close]).is_some()
        {
            edits.push((
                arr,
                Some(close),
                vec![
                    Token::make_keyword("CAST"),
                    Token::LParen,
                    Token::make_word("make_array", None),
                    Token::LParen,
                    Token::RParen,
                    Token::Whitespace(Whitespace::Space),
                    Token::make_keyword("AS"),
                    Token::Whitespace(Whitespace::Space),
                    Token::make_keyword("TEXT"),
                    Token::LBracket,
                    Token::RBracket,
                    Token::RParen,
                ],
            ));
            replaced.push((arr, close));
            continue;
        }
        // Subqueries that are not scalar: IN (SELECT ...), EXISTS (...), FROM (...), ...
        let not_scalar = before.is_some_and(|k| {
            [
                "in",
                "exists",
                "any",
                "all",
                "some",
                "from",
                "join",
                "lateral",
                "union",
                "intersect",
                "except",
                "as",
                "with",
            ]
            .iter()
            .any(|w| is_word(&tokens[k], w))
        });
        if before.is_none() || (not_scalar && array.is_none()) {
            continue;
        }
        let mut depth = 0usize;
        let mut from = None;
        let mut simple = true;
        for (k, t) in tokens.iter().enumerate().take(close).skip(select + 1) {
            match t {
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                Token::Comma if depth == 0 && from.is_none() => simple = false,
                t if depth == 0 => {
                    if is_word(t, "from") && from.is_none() {
                        from = Some(k);
                    }
                    if [
                        "group", "order", "limit", "union", "having", "distinct", "offset",
                    ]
                    .iter()
                    .any(|w| is_word(t, w))
                    {
                        simple = false;
                    }
                }
                _ => {}
            }
        }
        let Some(from) = from else { continue };
        let Some(first) = next_sig(tokens, select + 1) else {
            continue;
        };
        if array.is_none() && always_null(&tokens[select..close]) {
            // Typed: an untyped NULL column would reach the client as ''.
            edits.push((
                open,
                Some(close),
                vec![
                    Token::make_keyword("CAST"),
                    Token::LParen,
                    Token::make_keyword("NULL"),
                    Token::Whitespace(Whitespace::Space),
                    Token::make_keyword("AS"),
                    Token::Whitespace(Whitespace::Space),
                    Token::make_keyword("TEXT"),
                    Token::RParen,
                ],
            ));
            replaced.push((open, close));
            continue;
        }
        let aggregated = AGGREGATES.iter().any(|a| is_word(&tokens[first], a))
            || (is_word(&tokens[first], PG_CATALOG)
                && next_sig(tokens, first + 2)
                    .is_some_and(|k| AGGREGATES.iter().any(|a| is_word(&tokens[k], a))));
        if !simple || aggregated || first >= from {
            continue;
        }
        if let Some(arr) = array {
            edits.push((arr, Some(arr), Vec::new()));
        }
        let agg = if array.is_some() { "array_agg" } else { "max" };
        edits.push((
            first,
            None,
            vec![Token::make_word(agg, None), Token::LParen],
        ));
        // The expression ends before its alias (`e AS name`), which stays outside.
        let mut depth = 0usize;
        let mut alias = None;
        for (k, t) in tokens.iter().enumerate().take(from).skip(first) {
            match t {
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                t if depth == 0 && is_word(t, "as") => alias = Some(k),
                _ => {}
            }
        }
        let end = (first..alias.unwrap_or(from))
            .rev()
            .find(|&k| !is_ws(&tokens[k]))
            .unwrap_or(first);
        edits.push((end + 1, None, vec![Token::RParen]));
    }
    if edits.is_empty() {
        return None;
    }
    // Edit back to front so that earlier positions stay valid.
    edits.sort_by_key(|(pos, _, _)| *pos);
    let mut out = tokens.to_vec();
    for (pos, end, with) in edits.into_iter().rev() {
        match end {
            Some(end) => {
                out.splice(pos..=end, with);
            }
            None => {
                out.splice(pos..pos, with);
            }
        }
    }
    Some(out)
}

/// `SELECT c.oid, c.* FROM ...` (as GUI tools write it) → `SELECT c.* FROM ...`:
/// DataFusion refuses two columns of the same name, even aliased, and the wildcard
/// brings the column anyway.
fn drop_before_wildcards(tokens: &[Token]) -> Option<Vec<Token>> {
    let select = next_sig(tokens, 0).filter(|&k| is_word(&tokens[k], "select"))?;
    // Items as (first token, last token, the comma after it).
    let mut items: Vec<(Vec<usize>, Option<usize>)> = vec![(Vec::new(), None)];
    let mut depth = 0usize;
    for (k, t) in tokens.iter().enumerate().skip(select + 1) {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth == 0 && is_word(t, "from") {
            break;
        }
        if depth == 0 && *t == Token::Comma {
            if let Some(last) = items.last_mut() {
                last.1 = Some(k);
            }
            items.push((Vec::new(), None));
        } else if !is_ws(t)
            && let Some(last) = items.last_mut()
        {
            last.0.push(k);
        }
    }
    let shape = |item: &[usize]| -> Option<(String, Token)> {
        match item
            .iter()
            .map(|k| &tokens[*k])
            .collect::<Vec<_>>()
            .as_slice()
        {
            [Token::Word(q), Token::Period, last] => {
                Some((q.value.to_lowercase(), (*last).clone()))
            }
            _ => None,
        }
    };
    let wildcards: Vec<String> = items
        .iter()
        .filter_map(|(item, _)| {
            shape(item)
                .filter(|(_, t)| *t == Token::Mul)
                .map(|(q, _)| q)
        })
        .collect();
    if wildcards.is_empty() {
        return None;
    }
    let mut drop: Vec<(usize, usize)> = Vec::new();
    for (item, comma) in &items {
        if let Some((q, Token::Word(_))) = shape(item)
            && wildcards.contains(&q)
            && let Some(comma) = comma
        {
            drop.push((item[0], *comma));
        }
    }
    if drop.is_empty() {
        return None;
    }
    let mut out = tokens.to_vec();
    for (a, b) in drop.into_iter().rev() {
        out.drain(a..=b);
    }
    Some(out)
}

/// A query that provably returns no rows because every branch of it reads an
/// always-empty catalog table (inner-joined, no aggregates) becomes `SELECT NULL AS
/// col, ... WHERE false` with the same column count and, where they are spelled out,
/// names. Its select list is never evaluated, so whatever PostgreSQL-only syntax it
/// holds (psql's policy, statistics and publication footers) needs no translation.
fn empty_result(tokens: &[Token]) -> Option<Vec<Token>> {
    let items = empty_query(tokens)?;
    // `SELECT *` over an empty table keeps its columns only if planned for real.
    let star = items.iter().any(|item| {
        item.last().is_some_and(|k| tokens[*k] == Token::Mul)
            && (item.len() == 1 || tokens[item[item.len() - 2]] == Token::Period)
    });
    if star {
        return None;
    }
    let mut names: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let toks: Vec<&Token> = item.iter().map(|k| &tokens[*k]).collect();
        let ident = |t: &Token| match t {
            Token::Word(w) => Some(w.value.clone()),
            _ => None,
        };
        let n = toks.len();
        let explicit = (n >= 2 && is_word(toks[n - 2], "as"))
            .then(|| ident(toks[n - 1]))
            .flatten();
        let column = toks
            .iter()
            .all(|t| matches!(t, Token::Word(_) | Token::Period))
            .then(|| toks.last().and_then(|t| ident(t)))
            .flatten();
        let mut name = explicit
            .or(column)
            .unwrap_or_else(|| format!("column{}", i + 1));
        if names.contains(&name) {
            name = format!("{name}_{}", i + 1);
        }
        names.push(name);
    }
    let mut out = vec![Token::make_keyword("SELECT")];
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(Token::Comma);
        }
        out.push(Token::Whitespace(Whitespace::Space));
        out.push(Token::make_keyword("NULL"));
        out.push(Token::Whitespace(Whitespace::Space));
        out.push(Token::make_keyword("AS"));
        out.push(Token::Whitespace(Whitespace::Space));
        out.push(Token::make_word(name, Some('"')));
    }
    out.push(Token::Whitespace(Whitespace::Space));
    out.push(Token::make_keyword("WHERE"));
    out.push(Token::Whitespace(Whitespace::Space));
    out.push(Token::make_keyword("false"));
    Some(out)
}

/// If the query (tokens starting at its SELECT) provably returns no rows, the token
/// indexes of each item of its (first) select list.
fn empty_query(tokens: &[Token]) -> Option<Vec<Vec<usize>>> {
    // (token index, depth) of the significant tokens.
    let mut sig: Vec<(usize, usize)> = Vec::new();
    let mut depth = 0usize;
    for (k, t) in tokens.iter().enumerate() {
        match t {
            Token::Whitespace(_) | Token::SemiColon => continue,
            Token::RParen => depth = depth.saturating_sub(1),
            _ => {}
        }
        sig.push((k, depth));
        if *t == Token::LParen {
            depth += 1;
        }
    }
    let word_at = |p: usize, w: &str| sig.get(p).is_some_and(|(k, _)| is_word(&tokens[*k], w));
    if !word_at(0, "select") {
        return None;
    }
    // Branches: split at top-level UNION / INTERSECT / EXCEPT.
    let mut branches: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for (p, &(_, depth)) in sig.iter().enumerate() {
        if depth == 0
            && ["union", "intersect", "except"]
                .iter()
                .any(|w| word_at(p, w))
        {
            branches.push((start, p));
            start = p + 1;
        }
    }
    branches.push((start, sig.len()));
    let mut first_items: Option<Vec<Vec<usize>>> = None;
    for &(b, e) in &branches {
        let p_select = (b..e).find(|&p| word_at(p, "select"))?;
        let p_from = (p_select..e).find(|&p| sig[p].1 == 0 && word_at(p, "from"))?;
        // Select list: no aggregates (they would return a row), except inside
        // scalar subqueries.
        let mut p = p_select + 1;
        while p < p_from {
            if tokens[sig[p].0] == Token::LParen && word_at(p + 1, "select") {
                let d = sig[p].1;
                p += 1;
                while p < p_from && sig[p].1 > d {
                    p += 1;
                }
            } else if AGGREGATES.iter().any(|a| word_at(p, a))
                && sig
                    .get(p + 1)
                    .is_some_and(|(k, _)| tokens[*k] == Token::LParen)
            {
                return None;
            }
            p += 1;
        }
        let mut empty = false;
        let mut outer = false;
        let mut constraints_inner = false;
        for p in p_from + 1..e {
            if sig[p].1 != 0 {
                continue;
            }
            if [
                "where", "group", "having", "order", "limit", "offset", "window",
            ]
            .iter()
            .any(|w| word_at(p, w))
            {
                break;
            }
            if word_at(p, "right") || word_at(p, "full") {
                return None;
            }
            if word_at(p, "left") {
                outer = true;
            }
            // `unnest(x.reloptions)`: tidalDB relations have no storage options.
            let no_options = word_at(p, "unnest")
                && (p + 1..e)
                    .take_while(|&q| sig[q].1 > 0 || q == p + 1)
                    .any(|q| word_at(q, "reloptions"));
            if !outer && (no_options || EMPTY_TABLES.iter().any(|t| word_at(p, t))) {
                empty = true;
            }
            constraints_inner |= !outer && word_at(p, "pg_constraint");
        }
        // `pg_constraint` holds primary keys only: a top-level conjunct `contype = 'f'`
        // (foreign keys, checks, ...) selects nothing (pgcli's foreign-key query, whose
        // correlated subqueries inside unnest() DataFusion cannot plan).
        if constraints_inner && !empty {
            empty = other_constraint_kind(tokens, &sig, p_from, e);
        }
        if !empty {
            return None;
        }
        if first_items.is_none() {
            let mut items = vec![Vec::new()];
            let mut p = p_select + 1;
            if word_at(p, "distinct") || word_at(p, "all") {
                p += 1;
            }
            for q in p..p_from {
                if sig[q].1 == 0 && tokens[sig[q].0] == Token::Comma {
                    items.push(Vec::new());
                } else if let Some(last) = items.last_mut() {
                    last.push(sig[q].0);
                }
            }
            first_items = Some(items);
        }
    }
    first_items
}

/// Whether the top-level WHERE of the branch `(p_from, e)` (significant tokens `sig`)
/// is a conjunction with a term `[x.]contype = 'c'` for a kind other than `'p'`.
fn other_constraint_kind(
    tokens: &[Token],
    sig: &[(usize, usize)],
    p_from: usize,
    e: usize,
) -> bool {
    let word_at = |p: usize, w: &str| sig.get(p).is_some_and(|(k, _)| is_word(&tokens[*k], w));
    let Some(p_where) = (p_from..e).find(|&p| sig[p].1 == 0 && word_at(p, "where")) else {
        return false;
    };
    let end = (p_where..e)
        .find(|&p| {
            sig[p].1 == 0
                && ["group", "having", "order", "limit", "offset", "window"]
                    .iter()
                    .any(|w| word_at(p, w))
        })
        .unwrap_or(e);
    let mut found = false;
    for p in p_where + 1..end {
        if sig[p].1 != 0 {
            continue;
        }
        if word_at(p, "or") || word_at(p, "not") {
            return false;
        }
        let tok = |q: usize| sig.get(q).map(|(k, _)| &tokens[*k]);
        if word_at(p, "contype")
            && p + 2 < end
            && tok(p + 1) == Some(&Token::Eq)
            && matches!(tok(p + 2), Some(Token::SingleQuotedString(v)) if v != "p")
        {
            found = true;
        }
    }
    found
}

/// Catalog tables that are always empty in tidalDB (no column defaults, sequences, inheritance,
/// triggers, rules, policies, comments, extended statistics, publications, ...).
const EMPTY_TABLES: [&str; 18] = [
    "pg_attrdef",
    "pg_sequence",
    "pg_range",
    "pg_inherits",
    "pg_trigger",
    "pg_rewrite",
    "pg_policy",
    "pg_description",
    "pg_shdescription",
    "pg_statistic_ext",
    "pg_publication",
    "pg_publication_rel",
    "pg_publication_namespace",
    "pg_depend",
    "pg_enum",
    "pg_extension",
    "pg_auth_members",
    "pg_event_trigger",
];

/// Whether a scalar subquery (the tokens from its SELECT) is NULL whatever the row:
/// it joins an always-empty catalog table, or looks for a column collation other than
/// its type's (tidalDB has none). These are the correlated subqueries of psql's `\d`
/// that DataFusion cannot decorrelate.
fn always_null(tokens: &[Token]) -> bool {
    let mut depth = 0usize;
    let mut in_from = false;
    let mut empty_table = false;
    for t in tokens {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            t if is_word(t, "from") => in_from = true,
            t if [
                "where", "left", "right", "full", "group", "order", "limit", "union",
            ]
            .iter()
            .any(|w| is_word(t, w)) =>
            {
                in_from = false
            }
            Token::Word(w) if in_from => {
                empty_table |= EMPTY_TABLES.iter().any(|e| w.value.eq_ignore_ascii_case(e));
            }
            _ => {}
        }
    }
    let collation =
        tokens.iter().any(|t| is_word(t, "attcollation")) && tokens.contains(&Token::Neq);
    empty_table || collation
}

/// The tokens of the statement rewritten, or `None` when nothing needed rewriting.
fn rewrite_tokens(tokens: &[Token]) -> Option<Vec<Token>> {
    let sig: Vec<&Token> = tokens.iter().filter(|t| !is_ws(t)).collect();
    if sig.len() == 4
        && ["show", "transaction", "isolation", "level"]
            .iter()
            .zip(&sig)
            .all(|(w, t)| is_word(t, w))
    {
        return Some(vec![
            Token::make_keyword("SHOW"),
            Token::Whitespace(Whitespace::Space),
            Token::make_word("transaction_isolation", None),
        ]);
    }
    if let Some(out) = empty_result(tokens) {
        return Some(out);
    }
    // Only in statements that read the catalog: DataFusion cannot decorrelate a
    // scalar subquery that is not an aggregate.
    let catalogish = tokens.iter().any(|t| {
        matches!(t, Token::Word(w) if w.quote_style.is_none()
            && (w.value.eq_ignore_ascii_case(PG_CATALOG)
                || w.value.eq_ignore_ascii_case("information_schema")
                || is_catalog_table(&w.value.to_ascii_lowercase())))
    });
    let wrapped = if catalogish {
        wrap_scalar_subqueries(tokens)
    } else {
        None
    };
    let mut changed = wrapped.is_some();
    let tokens: &[Token] = wrapped.as_deref().unwrap_or(tokens);
    let aliased = if catalogish {
        drop_before_wildcards(tokens)
    } else {
        None
    };
    changed |= aliased.is_some();
    let tokens: &[Token] = aliased.as_deref().unwrap_or(tokens);
    let space = || Token::Whitespace(Whitespace::Space);
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len() + 8);
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        // OPERATOR(pg_catalog.~) → ~
        if is_word(t, "operator")
            && let Some(open) = next_sig(tokens, i + 1)
            && tokens[open] == Token::LParen
            && let Some(close) = matching_paren(tokens, open)
        {
            let mut inner: Vec<&Token> = tokens[open + 1..close]
                .iter()
                .filter(|t| !is_ws(t))
                .collect();
            if inner.len() >= 2 && is_word(inner[0], PG_CATALOG) && *inner[1] == Token::Period {
                inner.drain(..2);
            }
            if !inner.is_empty() && inner.iter().all(|t| !matches!(t, Token::Word(_))) {
                out.push(space());
                out.extend(inner.into_iter().cloned());
                out.push(space());
                i = close + 1;
                changed = true;
                continue;
            }
        }
        // COLLATE <name> → (nothing)
        if is_word(t, "collate")
            && let Some(mut k) = next_sig(tokens, i + 1)
            && matches!(tokens[k], Token::Word(_))
        {
            while tokens.get(k + 1) == Some(&Token::Period)
                && matches!(tokens.get(k + 2), Some(Token::Word(_)))
            {
                k += 2;
            }
            i = k + 1;
            changed = true;
            continue;
        }
        // pg_catalog.f( → f(
        if matches!(t, Token::Word(w) if w.value.eq_ignore_ascii_case(PG_CATALOG))
            && tokens.get(i + 1) == Some(&Token::Period)
            && matches!(tokens.get(i + 2), Some(Token::Word(_)))
            && next_sig(tokens, i + 3).is_some_and(|k| tokens[k] == Token::LParen)
        {
            i += 2;
            changed = true;
            continue;
        }
        // ::[pg_catalog.]type
        if *t == Token::DoubleColon
            && let Some(mut k) = next_sig(tokens, i + 1)
        {
            if is_word(&tokens[k], PG_CATALOG) && tokens.get(k + 1) == Some(&Token::Period) {
                k += 2;
                changed = true;
            }
            if let Some(Token::Word(w)) = tokens.get(k) {
                let name = if w.quote_style.is_some() {
                    w.value.clone()
                } else {
                    w.value.to_ascii_lowercase()
                };
                // x::regtype[] → regtype_array(x): OIDs to type names, element-wise.
                let array = name == "regtype"
                    && tokens.get(k + 1) == Some(&Token::LBracket)
                    && tokens.get(k + 2) == Some(&Token::RBracket);
                if array && let Some(start) = operand_start(&out) {
                    let operand: Vec<Token> = out.drain(start..).collect();
                    out.push(Token::make_word("regtype_array", None));
                    out.push(Token::LParen);
                    out.extend(operand);
                    out.push(Token::RParen);
                    i = k + 3;
                    changed = true;
                    continue;
                }
                // `col::regtype <> 'trigger'::regtype` (either way round) compares
                // OIDs: the column side keeps its OID instead of becoming a name.
                if name == "regtype"
                    && !array
                    && operand_start(&out)
                        .is_some_and(|st| !matches!(out[st], Token::SingleQuotedString(_)))
                    && (compared_to_regtype_literal(tokens, k + 1)
                        || follows_regtype_literal_comparison(&out, operand_start(&out)))
                {
                    i = k + 1;
                    changed = true;
                    continue;
                }
                if REG_TYPES.contains(&name.as_str())
                    && !array
                    && let Some(start) = operand_start(&out)
                {
                    let operand: Vec<Token> = out.drain(start..).collect();
                    out.push(Token::make_word(&name, None));
                    out.push(Token::LParen);
                    out.extend(operand);
                    out.push(Token::RParen);
                    i = k + 1;
                    changed = true;
                    continue;
                }
                let mapped = match name.as_str() {
                    "oid" | "xid" | "cid" | "tid" => Some("BIGINT"),
                    "name" | "char" | "pg_node_tree" | "int2vector" | "oidvector" | "aclitem"
                    | "bpchar" => Some("TEXT"),
                    _ => None,
                };
                out.push(Token::DoubleColon);
                match mapped {
                    Some(m) => {
                        out.push(Token::make_keyword(m));
                        i = k + 1;
                        changed = true;
                    }
                    None => i = k,
                }
                continue;
            }
        }
        // current_user → "current_user"()
        if let Token::Word(w) = t
            && w.quote_style.is_none()
            && ["current_user", "session_user"]
                .iter()
                .any(|n| w.value.eq_ignore_ascii_case(n))
            && last_sig(&out).is_none_or(|k| out[k] != Token::Period)
            && next_sig(tokens, i + 1).is_none_or(|k| tokens[k] != Token::LParen)
        {
            out.push(Token::make_word(&w.value.to_ascii_lowercase(), Some('"')));
            out.push(Token::LParen);
            out.push(Token::RParen);
            i += 1;
            changed = true;
            continue;
        }
        // FROM pg_class → FROM pg_catalog.pg_class
        if let Token::Word(w) = t
            && w.quote_style.is_none()
            && is_catalog_table(&w.value.to_ascii_lowercase())
            && last_sig(&out).is_some_and(|k| is_word(&out[k], "from") || is_word(&out[k], "join"))
            && next_sig(tokens, i + 1)
                .is_none_or(|k| !matches!(tokens[k], Token::Period | Token::LParen))
        {
            out.push(Token::make_word(PG_CATALOG, None));
            out.push(Token::Period);
            out.push(t.clone());
            i += 1;
            changed = true;
            continue;
        }
        out.push(t.clone());
        i += 1;
    }
    changed.then_some(out)
}

// ---------------------------------------------------------------------------------
// The live schema, as relations with OIDs
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Col {
    name: String,
    ty: i64,
    typmod: i64,
    notnull: bool,
}

/// One relation: a table, a view or an index.
#[derive(Debug, Clone)]
struct Rel {
    oid: i64,
    name: String,
    nsp: i64,
    /// `r` table, `v` view, `i` index.
    kind: char,
    cols: Vec<Col>,
    /// Tables: the primary-key index. Indexes: the table.
    other: Option<i64>,
}

impl Rel {
    fn has_pkey(&self) -> bool {
        self.kind == 'r' && self.other.is_some()
    }

    /// The primary-key constraint of a table.
    fn constraint_oid(&self) -> i64 {
        self.oid + 2
    }
}

/// One function.
#[derive(Debug, Clone)]
struct Proc {
    oid: i64,
    name: String,
    nsp: i64,
    kind: char,
    args: String,
    result: String,
    nargs: i64,
    ndefaults: i64,
    rettype: i64,
    volatile: char,
}

/// Everything the catalog tables and functions read, taken once per scan or call.
struct Snap {
    rels: Vec<Rel>,
    procs: Arc<Vec<Proc>>,
}

impl Snap {
    fn rel(&self, oid: i64) -> Option<&Rel> {
        self.rels.iter().find(|r| r.oid == oid)
    }

    fn rel_by_name(&self, name: &str) -> Option<&Rel> {
        let (nsp, name) = split_qualified(name);
        let nsp = match nsp.as_deref() {
            None => None,
            Some(n) => Some(namespace_oid(n)?),
        };
        // Unqualified names resolve along the search path: pg_catalog, then public.
        [NSP_CATALOG, NSP_PUBLIC]
            .iter()
            .filter(|n| nsp.is_none_or(|x| x == **n))
            .find_map(|n| self.rels.iter().find(|r| r.nsp == *n && r.name == name))
    }

    fn proc(&self, oid: i64) -> Option<&Proc> {
        self.procs.iter().find(|p| p.oid == oid)
    }
}

/// `"My Schema".tbl` → (Some("My Schema"), "tbl"); unquoted parts are lowercased.
fn split_qualified(s: &str) -> (Option<String>, String) {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            c if quoted => cur.push(c),
            c => cur.push(c.to_ascii_lowercase()),
        }
    }
    parts.push(cur);
    let name = parts.pop().unwrap_or_default();
    (parts.pop(), name)
}

fn namespace_oid(name: &str) -> Option<i64> {
    match name {
        PG_CATALOG => Some(NSP_CATALOG),
        SCHEMA_NAME => Some(NSP_PUBLIC),
        "information_schema" => Some(NSP_INFORMATION_SCHEMA),
        _ => None,
    }
}

fn namespace_name(oid: i64) -> Option<&'static str> {
    match oid {
        NSP_CATALOG => Some(PG_CATALOG),
        NSP_PUBLIC => Some(SCHEMA_NAME),
        NSP_INFORMATION_SCHEMA => Some("information_schema"),
        _ => None,
    }
}

/// Tables of `public` in a fixed order, so their OIDs stay put across restarts.
const KNOWN_TABLES: [&str; 10] = [
    "items",
    "users",
    "creators",
    "signals",
    "signal_state",
    "signal_windows",
    "affinities",
    "cohort_windows",
    "cohorts",
    "tidal_stats",
];

/// The shared state behind the catalog tables and functions.
#[derive(Debug)]
struct Catalog {
    public: Arc<dyn SchemaProvider>,
    procs: OnceLock<Arc<Vec<Proc>>>,
}

impl Catalog {
    fn snapshot(&self) -> Snap {
        let mut rels: Vec<Rel> = CATALOG_TABLES
            .iter()
            .map(|t| Rel {
                oid: t.oid,
                name: t.name.to_string(),
                nsp: NSP_CATALOG,
                kind: if t.view { 'v' } else { 'r' },
                cols: t
                    .columns()
                    .into_iter()
                    .map(|(name, ty)| Col {
                        name: name.to_string(),
                        ty: ty.pg_oid(),
                        typmod: -1,
                        notnull: false,
                    })
                    .collect(),
                other: None,
            })
            .collect();
        let mut names = self.public.table_names();
        names.sort_by_key(|n| {
            (
                KNOWN_TABLES
                    .iter()
                    .position(|k| k == n)
                    .unwrap_or(usize::MAX),
                n.clone(),
            )
        });
        let mut extra = KNOWN_TABLES.len() as i64;
        for name in names {
            let slot = match KNOWN_TABLES.iter().position(|k| *k == name) {
                Some(s) => s as i64,
                None => {
                    extra += 1;
                    extra - 1
                }
            };
            // The `public` provider resolves tables without awaiting anything.
            let Ok(Some(table)) = futures::executor::block_on(self.public.table(&name)) else {
                continue;
            };
            let oid = FIRST_USER_OID + 4 * slot;
            let schema = table.schema();
            let cols: Vec<Col> = schema
                .fields()
                .iter()
                .map(|f| {
                    let (ty, typmod) = pg_type_of(f.data_type());
                    Col {
                        name: f.name().clone(),
                        ty,
                        typmod,
                        notnull: !f.is_nullable(),
                    }
                })
                .collect();
            let entity = EntityKind::ALL.iter().any(|k| k.table_name() == name);
            let pkey = entity && cols.first().is_some_and(|c| c.name == "id");
            if pkey {
                rels.push(Rel {
                    oid: oid + 1,
                    name: format!("{name}_pkey"),
                    nsp: NSP_PUBLIC,
                    kind: 'i',
                    cols: cols[..1].to_vec(),
                    other: Some(oid),
                });
            }
            rels.push(Rel {
                oid,
                name,
                nsp: NSP_PUBLIC,
                kind: match table.table_type() {
                    TableType::View => 'v',
                    _ => 'r',
                },
                cols,
                other: pkey.then_some(oid + 1),
            });
        }
        rels.sort_by_key(|r| r.oid);
        Snap {
            rels,
            procs: self.procs.get().cloned().unwrap_or_default(),
        }
    }
}

// ---------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------

/// A built-in type: (oid, typname, name as `format_type` prints it, typlen, category,
/// array type, typinput).
type TypeRow = (
    i64,
    &'static str,
    &'static str,
    i64,
    char,
    i64,
    &'static str,
);

const TYPES: &[TypeRow] = &[
    (16, "bool", "boolean", 1, 'B', 1000, "boolin"),
    (17, "bytea", "bytea", -1, 'U', 1001, "byteain"),
    (18, "char", "\"char\"", 1, 'Z', 1002, "charin"),
    (19, "name", "name", 64, 'S', 1003, "namein"),
    (20, "int8", "bigint", 8, 'N', 1016, "int8in"),
    (21, "int2", "smallint", 2, 'N', 1005, "int2in"),
    (
        22,
        "int2vector",
        "int2vector",
        -1,
        'A',
        1006,
        "int2vectorin",
    ),
    (23, "int4", "integer", 4, 'N', 1007, "int4in"),
    (24, "regproc", "regproc", 4, 'N', 1008, "regprocin"),
    (25, "text", "text", -1, 'S', 1009, "textin"),
    (26, "oid", "oid", 4, 'N', 1028, "oidin"),
    (30, "oidvector", "oidvector", -1, 'A', 1013, "oidvectorin"),
    (114, "json", "json", -1, 'U', 199, "json_in"),
    (
        194,
        "pg_node_tree",
        "pg_node_tree",
        -1,
        'Z',
        0,
        "pg_node_tree_in",
    ),
    (700, "float4", "real", 4, 'N', 1021, "float4in"),
    (701, "float8", "double precision", 8, 'N', 1022, "float8in"),
    (705, "unknown", "unknown", -2, 'X', 0, "unknownin"),
    (1033, "aclitem", "aclitem", 12, 'U', 1034, "aclitemin"),
    (1042, "bpchar", "character", -1, 'S', 1014, "bpcharin"),
    (
        1043,
        "varchar",
        "character varying",
        -1,
        'S',
        1015,
        "varcharin",
    ),
    (1082, "date", "date", 4, 'D', 1182, "date_in"),
    (
        1083,
        "time",
        "time without time zone",
        8,
        'D',
        1183,
        "time_in",
    ),
    (
        1114,
        "timestamp",
        "timestamp without time zone",
        8,
        'D',
        1115,
        "timestamp_in",
    ),
    (
        1184,
        "timestamptz",
        "timestamp with time zone",
        8,
        'D',
        1185,
        "timestamptz_in",
    ),
    (1186, "interval", "interval", 16, 'T', 1187, "interval_in"),
    // Listed (though no column has them) because pgvector's client adapters look
    // them up alongside `vector`.
    (1560, "bit", "bit", -1, 'V', 1561, "bit_in"),
    (1562, "varbit", "bit varying", -1, 'V', 1563, "varbit_in"),
    (1700, "numeric", "numeric", -1, 'N', 1231, "numeric_in"),
    (2205, "regclass", "regclass", 4, 'N', 2210, "regclassin"),
    (2206, "regtype", "regtype", 4, 'N', 2211, "regtypein"),
    (2249, "record", "record", -1, 'P', 2287, "record_in"),
    (2276, "any", "\"any\"", 4, 'P', 0, "any_in"),
    (2277, "anyarray", "anyarray", -1, 'P', 0, "anyarray_in"),
    (2278, "void", "void", 4, 'P', 0, "void_in"),
    (2279, "trigger", "trigger", 4, 'P', 0, "trigger_in"),
    (2283, "anyelement", "anyelement", 4, 'P', 0, "anyelement_in"),
    (2950, "uuid", "uuid", 16, 'U', 2951, "uuid_in"),
    (3802, "jsonb", "jsonb", -1, 'U', 3807, "jsonb_in"),
    (
        VECTOR_OID,
        "vector",
        "vector",
        -1,
        'U',
        VECTOR_ARRAY_OID,
        "vector_in",
    ),
];

fn base_type(oid: i64) -> Option<&'static TypeRow> {
    TYPES.iter().find(|t| t.0 == oid)
}

/// The element type of an array type.
fn array_elem(oid: i64) -> Option<&'static TypeRow> {
    TYPES.iter().find(|t| t.5 == oid && oid != 0)
}

fn type_name(oid: i64) -> Option<String> {
    base_type(oid)
        .map(|t| t.1.to_string())
        .or_else(|| array_elem(oid).map(|t| format!("_{}", t.1)))
}

fn type_oid(name: &str) -> Option<i64> {
    let (_, name) = split_qualified(name);
    let name = name.trim_end_matches("[]");
    let alias = match name {
        "bigint" => "int8",
        "integer" | "int" => "int4",
        "smallint" => "int2",
        "real" => "float4",
        "double precision" | "double" => "float8",
        "boolean" => "bool",
        "character varying" => "varchar",
        "character" => "bpchar",
        other => other,
    };
    TYPES
        .iter()
        .find(|t| t.1 == alias || t.2 == alias)
        .map(|t| t.0)
        .or_else(|| {
            alias
                .strip_prefix('_')
                .and_then(|e| TYPES.iter().find(|t| t.1 == e))
                .map(|t| t.5)
        })
}

/// `format_type(oid, typmod)`.
fn format_type(oid: i64, typmod: Option<i64>) -> String {
    let typmod = typmod.filter(|m| *m >= 0);
    if let Some(t) = base_type(oid) {
        return match (oid, typmod) {
            (VECTOR_OID, Some(n)) => format!("vector({n})"),
            (1043, Some(n)) | (1042, Some(n)) => format!("{}({})", t.2, n - 4),
            _ => t.2.to_string(),
        };
    }
    if let Some(t) = array_elem(oid) {
        return match (oid, typmod) {
            (VECTOR_ARRAY_OID, Some(n)) => format!("vector({n})[]"),
            _ => format!("{}[]", t.2),
        };
    }
    "???".into()
}

/// The PostgreSQL type (and typmod) a column of this Arrow type is declared as.
fn pg_type_of(dt: &DataType) -> (i64, i64) {
    let scalar = |dt: &DataType| -> i64 {
        match dt {
            DataType::Boolean => 16,
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => 21,
            DataType::Int32 | DataType::UInt16 => 23,
            DataType::Int64 | DataType::UInt32 | DataType::UInt64 => 20,
            DataType::Float16 | DataType::Float32 => 700,
            DataType::Float64 => 701,
            DataType::Decimal128(..) | DataType::Decimal256(..) => 1700,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => 17,
            DataType::Date32 | DataType::Date64 => 1082,
            DataType::Timestamp(_, None) => 1114,
            DataType::Timestamp(_, Some(_)) => 1184,
            DataType::Interval(_) => 1186,
            _ => 25,
        }
    };
    match dt {
        DataType::FixedSizeList(f, n) if f.data_type() == &DataType::Float32 => {
            (VECTOR_OID, i64::from(*n))
        }
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            let elem = scalar(f.data_type());
            (base_type(elem).map_or(1009, |t| t.5), -1)
        }
        DataType::Dictionary(_, v) => pg_type_of(v),
        other => (scalar(other), -1),
    }
}

// ---------------------------------------------------------------------------------
// Catalog tables
// ---------------------------------------------------------------------------------

/// Column types of the catalog tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Oid,
    Name,
    Char,
    Text,
    Bool,
    I16,
    I32,
    I64,
    F32,
    TextArr,
    I16Arr,
    OidArr,
}

impl Ty {
    fn parse(name: &str) -> Ty {
        match name {
            "oid" => Ty::Oid,
            "name" => Ty::Name,
            "char" => Ty::Char,
            "bool" => Ty::Bool,
            "int2" => Ty::I16,
            "int4" => Ty::I32,
            "int8" => Ty::I64,
            "float4" => Ty::F32,
            "text[]" => Ty::TextArr,
            "int2[]" => Ty::I16Arr,
            "oid[]" => Ty::OidArr,
            _ => Ty::Text,
        }
    }

    fn arrow(self) -> DataType {
        let list = |dt: DataType| DataType::List(Arc::new(Field::new_list_field(dt, true)));
        match self {
            Ty::Oid | Ty::I64 => DataType::Int64,
            Ty::Name | Ty::Char | Ty::Text => DataType::Utf8,
            Ty::Bool => DataType::Boolean,
            Ty::I16 => DataType::Int16,
            Ty::I32 => DataType::Int32,
            Ty::F32 => DataType::Float32,
            Ty::TextArr => list(DataType::Utf8),
            Ty::I16Arr => list(DataType::Int16),
            Ty::OidArr => list(DataType::Int64),
        }
    }

    /// The column's type in `pg_attribute`.
    fn pg_oid(self) -> i64 {
        match self {
            Ty::Oid => 26,
            Ty::Name => 19,
            Ty::Char => 18,
            Ty::Text => 25,
            Ty::Bool => 16,
            Ty::I16 => 21,
            Ty::I32 => 23,
            Ty::I64 => 20,
            Ty::F32 => 700,
            Ty::TextArr => 1009,
            Ty::I16Arr => 1005,
            Ty::OidArr => 1028,
        }
    }
}

/// One value of a catalog row.
#[derive(Debug, Clone)]
enum V {
    N,
    I(i64),
    F(f64),
    B(bool),
    S(String),
    A(Vec<String>),
    IA(Vec<i64>),
}

fn s(v: impl Into<String>) -> V {
    V::S(v.into())
}

fn c(ch: char) -> V {
    V::S(ch.to_string())
}

impl V {
    fn int(&self) -> Option<i64> {
        match self {
            V::I(v) => Some(*v),
            _ => None,
        }
    }
}

type Rows = Vec<Vec<V>>;

/// A table (or view) of `pg_catalog`.
struct TableSpec {
    name: &'static str,
    oid: i64,
    view: bool,
    /// Columns as `name type, ...` (PostgreSQL's types).
    cols: &'static str,
    rows: fn(&Snap) -> Rows,
}

impl TableSpec {
    fn columns(&self) -> Vec<(&'static str, Ty)> {
        self.cols
            .split(',')
            .filter_map(|c| {
                let (name, ty) = c.trim().split_once(' ')?;
                Some((name, Ty::parse(ty)))
            })
            .collect()
    }
}

fn none(_: &Snap) -> Rows {
    Vec::new()
}

const CATALOG_TABLES: &[TableSpec] = &[
    TableSpec {
        name: "pg_namespace",
        oid: 2615,
        view: false,
        cols: "oid oid, nspname name, nspowner oid, nspacl text[]",
        rows: pg_namespace,
    },
    TableSpec {
        name: "pg_class",
        oid: 1259,
        view: false,
        cols: "oid oid, relname name, relnamespace oid, reltype oid, reloftype oid, \
               relowner oid, relam oid, relfilenode oid, reltablespace oid, relpages int4, \
               reltuples float4, relallvisible int4, reltoastrelid oid, relhasindex bool, \
               relisshared bool, relpersistence char, relkind char, relnatts int2, \
               relchecks int2, relhasrules bool, relhastriggers bool, relhassubclass bool, \
               relrowsecurity bool, relforcerowsecurity bool, relispopulated bool, \
               relreplident char, relispartition bool, relrewrite oid, relfrozenxid int8, \
               relminmxid int8, relacl text[], reloptions text[], relpartbound text",
        rows: pg_class,
    },
    TableSpec {
        name: "pg_attribute",
        oid: 1249,
        view: false,
        cols: "attrelid oid, attname name, atttypid oid, attstattarget int4, attlen int2, \
               attnum int2, attndims int4, attcacheoff int4, atttypmod int4, attbyval bool, \
               attalign char, attstorage char, attcompression char, attnotnull bool, \
               atthasdef bool, atthasmissing bool, attidentity char, attgenerated char, \
               attisdropped bool, attislocal bool, attinhcount int4, attcollation oid, \
               attacl text[], attoptions text[], attfdwoptions text[], attmissingval text",
        rows: pg_attribute,
    },
    TableSpec {
        name: "pg_type",
        oid: 1247,
        view: false,
        cols: "oid oid, typname name, typnamespace oid, typowner oid, typlen int2, \
               typbyval bool, typtype char, typcategory char, typispreferred bool, \
               typisdefined bool, typdelim char, typrelid oid, typsubscript text, \
               typelem oid, typarray oid, typinput text, typoutput text, typreceive text, \
               typsend text, typmodin text, typmodout text, typanalyze text, typalign char, \
               typstorage char, typnotnull bool, typbasetype oid, typtypmod int4, \
               typndims int4, typcollation oid, typdefaultbin text, typdefault text, \
               typacl text[]",
        rows: pg_type,
    },
    TableSpec {
        name: "pg_database",
        oid: 1262,
        view: false,
        cols: "oid oid, datname name, datdba oid, encoding int4, datlocprovider char, \
               datistemplate bool, datallowconn bool, datconnlimit int4, datfrozenxid int8, \
               datminmxid int8, dattablespace oid, datcollate text, datctype text, \
               daticulocale text, datcollversion text, datacl text[]",
        rows: pg_database,
    },
    TableSpec {
        name: "pg_proc",
        oid: 1255,
        view: false,
        cols: "oid oid, proname name, pronamespace oid, proowner oid, prolang oid, \
               procost float4, prorows float4, provariadic oid, prosupport text, \
               prokind char, prosecdef bool, proleakproof bool, proisstrict bool, \
               proretset bool, provolatile char, proparallel char, pronargs int2, \
               pronargdefaults int2, prorettype oid, proargtypes oid[], \
               proallargtypes oid[], proargmodes text[], proargnames text[], \
               proargdefaults text, protrftypes oid[], prosrc text, probin text, \
               prosqlbody text, proconfig text[], proacl text[]",
        rows: pg_proc,
    },
    TableSpec {
        name: "pg_index",
        oid: 2610,
        view: false,
        cols: "indexrelid oid, indrelid oid, indnatts int2, indnkeyatts int2, \
               indisunique bool, indnullsnotdistinct bool, indisprimary bool, \
               indisexclusion bool, indimmediate bool, indisclustered bool, indisvalid bool, \
               indcheckxmin bool, indisready bool, indislive bool, indisreplident bool, \
               indkey int2[], indcollation oid[], indclass oid[], indoption int2[], \
               indexprs text, indpred text",
        rows: pg_index,
    },
    TableSpec {
        name: "pg_constraint",
        oid: 2606,
        view: false,
        cols: "oid oid, conname name, connamespace oid, contype char, condeferrable bool, \
               condeferred bool, convalidated bool, conrelid oid, contypid oid, \
               conindid oid, conparentid oid, confrelid oid, confupdtype char, \
               confdeltype char, confmatchtype char, conislocal bool, coninhcount int4, \
               connoinherit bool, conkey int2[], confkey int2[], conpfeqop oid[], \
               conppeqop oid[], conffeqop oid[], confdelsetcols int2[], conexclop oid[], \
               conbin text",
        rows: pg_constraint,
    },
    TableSpec {
        name: "pg_attrdef",
        oid: 2604,
        view: false,
        cols: "oid oid, adrelid oid, adnum int2, adbin text",
        rows: none,
    },
    TableSpec {
        name: "pg_description",
        oid: 2609,
        view: false,
        cols: "objoid oid, classoid oid, objsubid int4, description text",
        rows: none,
    },
    TableSpec {
        name: "pg_shdescription",
        oid: 2396,
        view: false,
        cols: "objoid oid, classoid oid, description text",
        rows: none,
    },
    TableSpec {
        name: "pg_am",
        oid: 2601,
        view: false,
        cols: "oid oid, amname name, amhandler text, amtype char",
        rows: pg_am,
    },
    TableSpec {
        name: "pg_collation",
        oid: 3456,
        view: false,
        cols: "oid oid, collname name, collnamespace oid, collowner oid, collprovider char, \
               collisdeterministic bool, collencoding int4, collcollate text, \
               collctype text, colliculocale text, collversion text",
        rows: pg_collation,
    },
    TableSpec {
        // No range types; tokio-postgres joins it when it looks a type up.
        name: "pg_range",
        oid: 3541,
        view: false,
        cols: "rngtypid oid, rngsubtype oid, rngmultitypid oid, rngcollation oid, \
               rngsubopc oid, rngcanonical text, rngsubdiff text",
        rows: none,
    },
    TableSpec {
        name: "pg_inherits",
        oid: 2611,
        view: false,
        cols: "inhrelid oid, inhparent oid, inhseqno int4, inhdetachpending bool",
        rows: none,
    },
    TableSpec {
        name: "pg_tablespace",
        oid: 1213,
        view: false,
        cols: "oid oid, spcname name, spcowner oid, spcacl text[], spcoptions text[]",
        rows: pg_tablespace,
    },
    TableSpec {
        name: "pg_extension",
        oid: 3079,
        view: false,
        cols: "oid oid, extname name, extowner oid, extnamespace oid, extrelocatable bool, \
               extversion text, extconfig oid[], extcondition text[]",
        rows: none,
    },
    TableSpec {
        name: "pg_language",
        oid: 2612,
        view: false,
        cols: "oid oid, lanname name, lanowner oid, lanispl bool, lanpltrusted bool, \
               lanplcallfoid oid, laninline oid, lanvalidator oid, lanacl text[]",
        rows: pg_language,
    },
    TableSpec {
        name: "pg_opclass",
        oid: 2616,
        view: false,
        cols: "oid oid, opcmethod oid, opcname name, opcnamespace oid, opcowner oid, \
               opcfamily oid, opcintype oid, opcdefault bool, opckeytype oid",
        rows: pg_opclass,
    },
    TableSpec {
        name: "pg_sequence",
        oid: 2224,
        view: false,
        cols: "seqrelid oid, seqtypid oid, seqstart int8, seqincrement int8, seqmax int8, \
               seqmin int8, seqcache int8, seqcycle bool",
        rows: none,
    },
    TableSpec {
        name: "pg_trigger",
        oid: 2620,
        view: false,
        cols: "oid oid, tgrelid oid, tgparentid oid, tgname name, tgfoid oid, tgtype int2, \
               tgenabled char, tgisinternal bool, tgconstrrelid oid, tgconstrindid oid, \
               tgconstraint oid, tgdeferrable bool, tginitdeferred bool, tgnargs int2, \
               tgattr int2[], tgargs text, tgqual text, tgoldtable name, tgnewtable name",
        rows: none,
    },
    TableSpec {
        name: "pg_rewrite",
        oid: 2618,
        view: false,
        cols: "oid oid, rulename name, ev_class oid, ev_type char, ev_enabled char, \
               is_instead bool, ev_qual text, ev_action text",
        rows: none,
    },
    TableSpec {
        name: "pg_policy",
        oid: 3256,
        view: false,
        cols: "oid oid, polname name, polrelid oid, polcmd char, polpermissive bool, \
               polroles oid[], polqual text, polwithcheck text",
        rows: none,
    },
    TableSpec {
        name: "pg_statistic_ext",
        oid: 3381,
        view: false,
        cols: "oid oid, stxrelid oid, stxname name, stxnamespace oid, stxowner oid, \
               stxstattarget int4, stxkeys int2[], stxkind text[], stxexprs text",
        rows: none,
    },
    TableSpec {
        name: "pg_publication",
        oid: 6104,
        view: false,
        cols: "oid oid, pubname name, pubowner oid, puballtables bool, pubinsert bool, \
               pubupdate bool, pubdelete bool, pubtruncate bool, pubviaroot bool",
        rows: none,
    },
    TableSpec {
        name: "pg_publication_rel",
        oid: 6106,
        view: false,
        cols: "oid oid, prpubid oid, prrelid oid, prqual text, prattrs int2[]",
        rows: none,
    },
    TableSpec {
        name: "pg_publication_namespace",
        oid: 6237,
        view: false,
        cols: "oid oid, pnpubid oid, pnnspid oid",
        rows: none,
    },
    TableSpec {
        name: "pg_depend",
        oid: 2608,
        view: false,
        cols: "classid oid, objid oid, objsubid int4, refclassid oid, refobjid oid, \
               refobjsubid int4, deptype char",
        rows: none,
    },
    TableSpec {
        name: "pg_enum",
        oid: 3501,
        view: false,
        cols: "oid oid, enumtypid oid, enumsortorder float4, enumlabel name",
        rows: none,
    },
    TableSpec {
        name: "pg_auth_members",
        oid: 1261,
        view: false,
        cols: "roleid oid, member oid, grantor oid, admin_option bool",
        rows: none,
    },
    TableSpec {
        name: "pg_roles",
        oid: 12_001,
        view: true,
        cols: "rolname name, rolsuper bool, rolinherit bool, rolcreaterole bool, \
               rolcreatedb bool, rolcanlogin bool, rolreplication bool, rolconnlimit int4, \
               rolpassword text, rolvaliduntil text, rolbypassrls bool, rolconfig text[], \
               oid oid",
        rows: pg_roles,
    },
    TableSpec {
        name: "pg_user",
        oid: 12_002,
        view: true,
        cols: "usename name, usesysid oid, usecreatedb bool, usesuper bool, userepl bool, \
               usebypassrls bool, passwd text, valuntil text, useconfig text[]",
        rows: pg_user,
    },
    TableSpec {
        name: "pg_settings",
        oid: 12_003,
        view: true,
        cols: "name text, setting text, unit text, category text, short_desc text, \
               extra_desc text, context text, vartype text, source text, min_val text, \
               max_val text, enumvals text[], boot_val text, reset_val text, \
               sourcefile text, sourceline int4, pending_restart bool",
        rows: pg_settings,
    },
    TableSpec {
        name: "pg_tables",
        oid: 12_004,
        view: true,
        cols: "schemaname name, tablename name, tableowner name, tablespace name, \
               hasindexes bool, hasrules bool, hastriggers bool, rowsecurity bool",
        rows: pg_tables,
    },
    TableSpec {
        name: "pg_views",
        oid: 12_005,
        view: true,
        cols: "schemaname name, viewname name, viewowner name, definition text",
        rows: pg_views,
    },
    TableSpec {
        name: "pg_indexes",
        oid: 12_006,
        view: true,
        cols: "schemaname name, tablename name, indexname name, tablespace name, \
               indexdef text",
        rows: pg_indexes,
    },
];

fn is_catalog_table(name: &str) -> bool {
    CATALOG_TABLES.iter().any(|t| t.name == name)
}

fn pg_namespace(_: &Snap) -> Rows {
    [NSP_CATALOG, NSP_PUBLIC, NSP_INFORMATION_SCHEMA]
        .iter()
        .map(|&oid| {
            vec![
                V::I(oid),
                s(namespace_name(oid).unwrap_or_default()),
                V::I(ROLE_OID),
                V::N,
            ]
        })
        .collect()
}

fn pg_class(snap: &Snap) -> Rows {
    snap.rels
        .iter()
        .map(|r| {
            vec![
                V::I(r.oid),
                s(&r.name),
                V::I(r.nsp),
                V::I(0),
                V::I(0),
                V::I(ROLE_OID),
                V::I(match r.kind {
                    'r' => AM_HEAP,
                    'i' => AM_BTREE,
                    _ => 0,
                }),
                V::I(if r.kind == 'v' { 0 } else { r.oid }),
                V::I(0),
                V::I(0),
                V::F(-1.0),
                V::I(0),
                V::I(0),
                V::B(r.has_pkey()),
                V::B(false),
                c('p'),
                c(r.kind),
                V::I(r.cols.len() as i64),
                V::I(0),
                V::B(false),
                V::B(false),
                V::B(false),
                V::B(false),
                V::B(false),
                V::B(true),
                c(if r.kind == 'r' { 'd' } else { 'n' }),
                V::B(false),
                V::I(0),
                V::I(0),
                V::I(0),
                V::N,
                V::N,
                V::N,
            ]
        })
        .collect()
}

/// (typlen, typbyval, typalign, typstorage) of a type.
fn type_layout(oid: i64) -> (i64, bool, char, char) {
    match base_type(oid) {
        Some(t) if t.3 > 0 => {
            let len = t.3;
            let align = match len {
                1 => 'c',
                2 => 's',
                4 => 'i',
                _ => 'd',
            };
            (len, len <= 8 && oid != 19, align, 'p')
        }
        Some(t) => (t.3, false, 'i', 'x'),
        None => (-1, false, 'd', 'x'),
    }
}

fn collation_of(ty: i64) -> i64 {
    let elem = array_elem(ty).map_or(ty, |t| t.0);
    match base_type(elem) {
        Some(t) if t.4 == 'S' && elem != 19 => COLLATION_DEFAULT,
        Some(_) if elem == 19 => 950,
        _ => 0,
    }
}

fn pg_attribute(snap: &Snap) -> Rows {
    let mut rows = Vec::new();
    for r in &snap.rels {
        for (i, col) in r.cols.iter().enumerate() {
            let (len, byval, align, storage) = type_layout(col.ty);
            rows.push(vec![
                V::I(r.oid),
                s(&col.name),
                V::I(col.ty),
                V::I(-1),
                V::I(len),
                V::I(i as i64 + 1),
                V::I(i64::from(array_elem(col.ty).is_some())),
                V::I(-1),
                V::I(col.typmod),
                V::B(byval),
                c(align),
                c(storage),
                s(""),
                V::B(col.notnull),
                V::B(false),
                V::B(false),
                s(""),
                s(""),
                V::B(false),
                V::B(true),
                V::I(0),
                V::I(collation_of(col.ty)),
                V::N,
                V::N,
                V::N,
                V::N,
            ]);
        }
    }
    rows
}

fn pg_type(_: &Snap) -> Rows {
    let mut rows = Vec::new();
    let row = |oid: i64,
               name: String,
               len: i64,
               typtype: char,
               cat: char,
               elem: i64,
               array: i64,
               input: &str| {
        let (_, byval, align, storage) = type_layout(oid);
        let stem = input.strip_suffix("in").unwrap_or(input);
        let (output, receive, send) = if input == "array_in" {
            ("array_out".to_string(), "array_recv", "array_send")
        } else {
            (format!("{stem}out"), "-", "-")
        };
        let receive = if receive == "-" {
            format!("{stem}recv")
        } else {
            receive.to_string()
        };
        let send = if send == "-" {
            format!("{stem}send")
        } else {
            send.to_string()
        };
        vec![
            V::I(oid),
            V::S(name),
            V::I(if matches!(oid, VECTOR_OID | VECTOR_ARRAY_OID) {
                NSP_PUBLIC
            } else {
                NSP_CATALOG
            }),
            V::I(ROLE_OID),
            V::I(len),
            V::B(byval),
            c(typtype),
            c(cat),
            V::B(matches!(oid, 16 | 25 | 701 | 1184 | 1186)),
            V::B(true),
            c(','),
            V::I(0),
            s(if elem != 0 {
                "array_subscript_handler"
            } else {
                "-"
            }),
            V::I(elem),
            V::I(array),
            s(input),
            V::S(output),
            V::S(receive),
            V::S(send),
            s("-"),
            s("-"),
            s("-"),
            c(align),
            c(storage),
            V::B(false),
            V::I(0),
            V::I(-1),
            V::I(0),
            V::I(collation_of(oid)),
            V::N,
            V::N,
            V::N,
        ]
    };
    for &(oid, name, _, len, cat, array, input) in TYPES {
        let typtype = if cat == 'P' { 'p' } else { 'b' };
        rows.push(row(oid, name.into(), len, typtype, cat, 0, array, input));
        if array != 0 {
            rows.push(row(
                array,
                format!("_{name}"),
                -1,
                'b',
                'A',
                oid,
                0,
                "array_in",
            ));
        }
    }
    rows
}

fn pg_database(_: &Snap) -> Rows {
    vec![vec![
        V::I(DATABASE_OID),
        s(CATALOG_NAME),
        V::I(ROLE_OID),
        V::I(ENCODING_UTF8),
        c('c'),
        V::B(false),
        V::B(true),
        V::I(-1),
        V::I(0),
        V::I(0),
        V::I(1663),
        s("C"),
        s("C"),
        V::N,
        V::N,
        V::N,
    ]]
}

fn pg_proc(snap: &Snap) -> Rows {
    snap.procs
        .iter()
        .map(|p| {
            vec![
                V::I(p.oid),
                s(&p.name),
                V::I(p.nsp),
                V::I(ROLE_OID),
                V::I(12),
                V::F(1.0),
                V::F(0.0),
                V::I(0),
                s("-"),
                c(p.kind),
                V::B(false),
                V::B(false),
                V::B(false),
                V::B(false),
                c(p.volatile),
                c('s'),
                V::I(p.nargs),
                V::I(p.ndefaults),
                V::I(p.rettype),
                V::IA(Vec::new()),
                V::N,
                V::N,
                V::N,
                V::N,
                V::N,
                s(&p.name),
                V::N,
                V::N,
                V::N,
                V::N,
            ]
        })
        .collect()
}

fn pg_index(snap: &Snap) -> Rows {
    snap.rels
        .iter()
        .filter(|r| r.kind == 'i')
        .map(|r| {
            vec![
                V::I(r.oid),
                V::I(r.other.unwrap_or_default()),
                V::I(1),
                V::I(1),
                V::B(true),
                V::B(false),
                V::B(true),
                V::B(false),
                V::B(true),
                V::B(false),
                V::B(true),
                V::B(false),
                V::B(true),
                V::B(true),
                V::B(false),
                V::IA(vec![1]),
                V::IA(vec![0]),
                V::IA(vec![1980]),
                V::IA(vec![0]),
                V::N,
                V::N,
            ]
        })
        .collect()
}

fn pg_constraint(snap: &Snap) -> Rows {
    snap.rels
        .iter()
        .filter(|r| r.has_pkey())
        .map(|r| {
            vec![
                V::I(r.constraint_oid()),
                s(format!("{}_pkey", r.name)),
                V::I(r.nsp),
                c('p'),
                V::B(false),
                V::B(false),
                V::B(true),
                V::I(r.oid),
                V::I(0),
                V::I(r.other.unwrap_or_default()),
                V::I(0),
                V::I(0),
                c(' '),
                c(' '),
                c(' '),
                V::B(true),
                V::I(0),
                V::B(true),
                V::IA(vec![1]),
                V::N,
                V::N,
                V::N,
                V::N,
                V::N,
                V::N,
                V::N,
            ]
        })
        .collect()
}

/// The one operator class the primary-key indexes use (`pg_index.indclass`):
/// btree `int8_ops`, PostgreSQL's OIDs.
fn pg_opclass(_: &Snap) -> Rows {
    vec![vec![
        V::I(1980),
        V::I(AM_BTREE),
        s("int8_ops"),
        V::I(NSP_CATALOG),
        V::I(ROLE_OID),
        V::I(1976),
        V::I(20),
        V::B(true),
        V::I(0),
    ]]
}

fn pg_am(_: &Snap) -> Rows {
    vec![
        vec![V::I(AM_HEAP), s("heap"), s("heap_tableam_handler"), c('t')],
        vec![V::I(AM_BTREE), s("btree"), s("bthandler"), c('i')],
    ]
}

fn pg_collation(_: &Snap) -> Rows {
    [
        (COLLATION_DEFAULT, "default", 'd', -1, ""),
        (950, "C", 'c', -1, "C"),
        (951, "POSIX", 'c', -1, "POSIX"),
    ]
    .iter()
    .map(|&(oid, name, provider, enc, locale)| {
        vec![
            V::I(oid),
            s(name),
            V::I(NSP_CATALOG),
            V::I(ROLE_OID),
            c(provider),
            V::B(true),
            V::I(enc),
            if locale.is_empty() { V::N } else { s(locale) },
            if locale.is_empty() { V::N } else { s(locale) },
            V::N,
            V::N,
        ]
    })
    .collect()
}

fn pg_tablespace(_: &Snap) -> Rows {
    vec![
        vec![V::I(1663), s("pg_default"), V::I(ROLE_OID), V::N, V::N],
        vec![V::I(1664), s("pg_global"), V::I(ROLE_OID), V::N, V::N],
    ]
}

fn pg_language(_: &Snap) -> Rows {
    [(12, "internal"), (13, "c"), (14, "sql")]
        .iter()
        .map(|&(oid, name)| {
            vec![
                V::I(oid),
                s(name),
                V::I(ROLE_OID),
                V::B(false),
                V::B(oid == 14),
                V::I(0),
                V::I(0),
                V::I(0),
                V::N,
            ]
        })
        .collect()
}

fn pg_roles(_: &Snap) -> Rows {
    vec![vec![
        s(crate::USER),
        V::B(true),
        V::B(true),
        V::B(true),
        V::B(true),
        V::B(true),
        V::B(false),
        V::I(-1),
        s("********"),
        V::N,
        V::B(true),
        V::N,
        V::I(ROLE_OID),
    ]]
}

fn pg_user(_: &Snap) -> Rows {
    vec![vec![
        s(crate::USER),
        V::I(ROLE_OID),
        V::B(true),
        V::B(true),
        V::B(false),
        V::B(true),
        s("********"),
        V::N,
        V::N,
    ]]
}

/// (name, setting, category, description). PostgreSQL's names and the values the
/// server starts every session with.
const SETTINGS: &[(&str, &str, &str, &str)] = &[
    (
        "application_name",
        "",
        "Reporting and Logging",
        "Sets the application name to be reported in statistics and logs.",
    ),
    (
        "client_encoding",
        "UTF8",
        "Client Connection Defaults",
        "Sets the client's character set encoding.",
    ),
    (
        "DateStyle",
        "ISO, MDY",
        "Client Connection Defaults",
        "Sets the display format for date and time values.",
    ),
    (
        "default_transaction_isolation",
        "read committed",
        "Client Connection Defaults",
        "Sets the transaction isolation level of each new transaction.",
    ),
    (
        "default_transaction_read_only",
        "off",
        "Client Connection Defaults",
        "Sets the default read-only status of new transactions.",
    ),
    (
        "extra_float_digits",
        "1",
        "Client Connection Defaults",
        "Sets the number of digits displayed for floating-point values.",
    ),
    (
        "integer_datetimes",
        "on",
        "Preset Options",
        "Shows whether datetimes are integer based.",
    ),
    (
        "IntervalStyle",
        "postgres",
        "Client Connection Defaults",
        "Sets the display format for interval values.",
    ),
    (
        "is_superuser",
        "on",
        "Preset Options",
        "Shows whether the current user is a superuser.",
    ),
    (
        "lc_collate",
        "C",
        "Preset Options",
        "Shows the collation order locale.",
    ),
    (
        "lc_ctype",
        "C",
        "Preset Options",
        "Shows the character classification and case conversion locale.",
    ),
    (
        "lc_messages",
        "C",
        "Client Connection Defaults",
        "Sets the language in which messages are displayed.",
    ),
    (
        "lc_monetary",
        "C",
        "Client Connection Defaults",
        "Sets the locale for formatting monetary amounts.",
    ),
    (
        "lc_numeric",
        "C",
        "Client Connection Defaults",
        "Sets the locale for formatting numbers.",
    ),
    (
        "lc_time",
        "C",
        "Client Connection Defaults",
        "Sets the locale for formatting date and time values.",
    ),
    (
        "max_identifier_length",
        "63",
        "Preset Options",
        "Shows the maximum identifier length.",
    ),
    (
        "search_path",
        "public",
        "Client Connection Defaults",
        "Sets the schema search order for names that are not schema-qualified.",
    ),
    (
        "server_encoding",
        "UTF8",
        "Preset Options",
        "Shows the server (database) character set encoding.",
    ),
    (
        "server_version",
        "15.0",
        "Preset Options",
        "Shows the server version.",
    ),
    (
        "server_version_num",
        "150000",
        "Preset Options",
        "Shows the server version as an integer.",
    ),
    (
        "session_authorization",
        "tidal",
        "Preset Options",
        "Sets the session user name.",
    ),
    (
        "standard_conforming_strings",
        "on",
        "Version and Platform Compatibility",
        "Causes '...' strings to treat backslashes literally.",
    ),
    (
        "statement_timeout",
        "0",
        "Client Connection Defaults",
        "Sets the maximum allowed duration of any statement.",
    ),
    (
        "TimeZone",
        "UTC",
        "Client Connection Defaults",
        "Sets the time zone for displaying and interpreting time stamps.",
    ),
    (
        "transaction_isolation",
        "read committed",
        "Client Connection Defaults",
        "Sets the current transaction's isolation level.",
    ),
    (
        "transaction_read_only",
        "off",
        "Client Connection Defaults",
        "Sets the current transaction's read-only status.",
    ),
];

fn setting(name: &str) -> Option<&'static str> {
    SETTINGS
        .iter()
        .find(|s| s.0.eq_ignore_ascii_case(name))
        .map(|s| s.1)
}

fn pg_settings(_: &Snap) -> Rows {
    SETTINGS
        .iter()
        .map(|&(name, value, category, desc)| {
            let bool_valued = matches!(value, "on" | "off");
            let int_valued = value.parse::<i64>().is_ok();
            vec![
                s(name),
                s(value),
                if name == "statement_timeout" {
                    s("ms")
                } else {
                    V::N
                },
                s(category),
                s(desc),
                V::N,
                s(if category == "Preset Options" {
                    "internal"
                } else {
                    "user"
                }),
                s(if bool_valued {
                    "bool"
                } else if int_valued {
                    "integer"
                } else {
                    "string"
                }),
                s("default"),
                V::N,
                V::N,
                V::N,
                s(value),
                s(value),
                V::N,
                V::N,
                V::B(false),
            ]
        })
        .collect()
}

fn pg_tables(snap: &Snap) -> Rows {
    snap.rels
        .iter()
        .filter(|r| r.kind == 'r')
        .map(|r| {
            vec![
                s(namespace_name(r.nsp).unwrap_or_default()),
                s(&r.name),
                s(crate::USER),
                V::N,
                V::B(r.has_pkey()),
                V::B(false),
                V::B(false),
                V::B(false),
            ]
        })
        .collect()
}

fn pg_views(snap: &Snap) -> Rows {
    snap.rels
        .iter()
        .filter(|r| r.kind == 'v')
        .map(|r| {
            vec![
                s(namespace_name(r.nsp).unwrap_or_default()),
                s(&r.name),
                s(crate::USER),
                V::S(view_definition(r)),
            ]
        })
        .collect()
}

fn view_definition(r: &Rel) -> String {
    if r.nsp == NSP_CATALOG {
        format!(" -- {} is computed by tidalDB", r.name)
    } else {
        format!(
            " -- {} is computed by tidalDB from the signal ledger",
            r.name
        )
    }
}

fn pg_indexes(snap: &Snap) -> Rows {
    snap.rels
        .iter()
        .filter(|r| r.kind == 'i')
        .filter_map(|i| {
            let table = snap.rel(i.other?)?;
            Some(vec![
                s(namespace_name(i.nsp).unwrap_or_default()),
                s(&table.name),
                s(&i.name),
                V::N,
                V::S(index_def(snap, i, 0)?),
            ])
        })
        .collect()
}

/// `pg_get_indexdef(index, column)`: the CREATE INDEX statement, or one column's name.
fn index_def(snap: &Snap, index: &Rel, column: i64) -> Option<String> {
    let table = snap.rel(index.other?)?;
    let cols: Vec<&str> = index.cols.iter().map(|c| c.name.as_str()).collect();
    if column > 0 {
        return cols.get(column as usize - 1).map(|c| c.to_string());
    }
    Some(format!(
        "CREATE UNIQUE INDEX {} ON {}.{} USING btree ({})",
        index.name,
        namespace_name(table.nsp).unwrap_or_default(),
        table.name,
        cols.join(", ")
    ))
}

/// Builds a record batch of catalog rows.
fn batch(cols: &[(&str, Ty)], rows: &Rows) -> Result<RecordBatch> {
    let schema = table_schema(cols);
    let bad = |col: &str| DataFusionError::Internal(format!("pg_catalog: bad value for {col}"));
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(cols.len());
    for (i, (name, ty)) in cols.iter().enumerate() {
        let vals = rows.iter().map(|r| r.get(i).unwrap_or(&V::N));
        let a: ArrayRef = match ty {
            Ty::Oid | Ty::I64 => Arc::new(vals.map(V::int).collect::<Int64Array>()),
            Ty::I32 => Arc::new(
                vals.map(|v| v.int().map(|x| x as i32))
                    .collect::<Int32Array>(),
            ),
            Ty::I16 => Arc::new(
                vals.map(|v| v.int().map(|x| x as i16))
                    .collect::<Int16Array>(),
            ),
            Ty::F32 => Arc::new(
                vals.map(|v| match v {
                    V::F(f) => Some(*f as f32),
                    _ => None,
                })
                .collect::<Float32Array>(),
            ),
            Ty::Bool => Arc::new(
                vals.map(|v| match v {
                    V::B(b) => Some(*b),
                    _ => None,
                })
                .collect::<BooleanArray>(),
            ),
            Ty::Name | Ty::Char | Ty::Text => Arc::new(
                vals.map(|v| match v {
                    V::S(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect::<StringArray>(),
            ),
            Ty::TextArr => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for v in vals {
                    match v {
                        V::A(items) => {
                            for x in items {
                                b.values().append_value(x);
                            }
                            b.append(true);
                        }
                        V::N => b.append(false),
                        _ => return Err(bad(name)),
                    }
                }
                Arc::new(b.finish())
            }
            Ty::I16Arr => {
                let mut b = ListBuilder::new(Int16Builder::new());
                for v in vals {
                    match v {
                        V::IA(items) => {
                            for x in items {
                                b.values().append_value(*x as i16);
                            }
                            b.append(true);
                        }
                        V::N => b.append(false),
                        _ => return Err(bad(name)),
                    }
                }
                Arc::new(b.finish())
            }
            Ty::OidArr => {
                let mut b = ListBuilder::new(Int64Builder::new());
                for v in vals {
                    match v {
                        V::IA(items) => {
                            for x in items {
                                b.values().append_value(*x);
                            }
                            b.append(true);
                        }
                        V::N => b.append(false),
                        _ => return Err(bad(name)),
                    }
                }
                Arc::new(b.finish())
            }
        };
        arrays.push(a);
    }
    Ok(RecordBatch::try_new(schema, arrays)?)
}

fn table_schema(cols: &[(&str, Ty)]) -> SchemaRef {
    Arc::new(Schema::new(
        cols.iter()
            .map(|(n, t)| {
                let f = Field::new(*n, t.arrow(), true);
                // `"char"` columns (typtype, relkind…) and OID columns are sent typed
                // as in PostgreSQL: asyncpg compares "char"s as bytes, tokio-postgres
                // decodes OIDs only from `oid`.
                let pg = match t {
                    Ty::Char => "char",
                    Ty::Oid => "oid",
                    _ => return f,
                };
                f.with_metadata(std::collections::HashMap::from([(
                    crate::encode::PG_TYPE_METADATA.to_string(),
                    pg.to_string(),
                )]))
            })
            .collect::<Vec<_>>(),
    ))
}

/// The `pg_catalog` schema.
#[derive(Debug)]
struct PgCatalogSchema {
    catalog: Arc<Catalog>,
}

#[async_trait]
impl SchemaProvider for PgCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        CATALOG_TABLES.iter().map(|t| t.name.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let name = name.to_ascii_lowercase();
        Ok(CATALOG_TABLES
            .iter()
            .position(|t| t.name == name)
            .map(|index| {
                Arc::new(PgTable {
                    catalog: self.catalog.clone(),
                    index,
                    schema: table_schema(&CATALOG_TABLES[index].columns()),
                }) as Arc<dyn TableProvider>
            }))
    }

    fn table_exist(&self, name: &str) -> bool {
        is_catalog_table(&name.to_ascii_lowercase())
    }
}

/// One catalog table; its rows are computed when it is scanned.
struct PgTable {
    catalog: Arc<Catalog>,
    index: usize,
    schema: SchemaRef,
}

impl Debug for PgTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTable")
            .field("name", &CATALOG_TABLES[self.index].name)
            .finish()
    }
}

#[async_trait]
impl TableProvider for PgTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        if CATALOG_TABLES[self.index].view {
            TableType::View
        } else {
            TableType::Base
        }
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let spec = &CATALOG_TABLES[self.index];
        let snap = self.catalog.snapshot();
        let rows = (spec.rows)(&snap);
        let batch = batch(&spec.columns(), &rows)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

// ---------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------

/// tidalDB's own functions, listed in `public` by `\df`: (name, arguments, result,
/// arguments, of which with defaults, result type OID).
const TIDAL_FUNCTIONS: &[(&str, &str, &str, i64, i64, i64)] = &[
    (
        "decay",
        "signal text, entity bigint, at timestamp without time zone DEFAULT now()",
        "double precision",
        3,
        1,
        701,
    ),
    (
        "window_count",
        "signal text, entity bigint, \"window\" text, at timestamp without time zone DEFAULT now()",
        "double precision",
        4,
        1,
        701,
    ),
    (
        "velocity",
        "signal text, entity bigint, \"window\" text, at timestamp without time zone DEFAULT now()",
        "double precision",
        4,
        1,
        701,
    ),
    (
        "acceleration",
        "signal text, entity bigint, \"window\" text, at timestamp without time zone DEFAULT now()",
        "double precision",
        4,
        1,
        701,
    ),
    (
        "signal_total",
        "signal text, entity bigint",
        "double precision",
        2,
        0,
        701,
    ),
    (
        "last_signal_at",
        "signal text, entity bigint",
        "timestamp without time zone",
        2,
        0,
        1114,
    ),
    (
        "hot",
        "ups double precision, downs double precision, created_at timestamp without time zone",
        "double precision",
        3,
        0,
        701,
    ),
    (
        "wilson",
        "ups double precision, n double precision, z double precision DEFAULT 1.281551565545",
        "double precision",
        3,
        1,
        701,
    ),
    (
        "controversy",
        "ups double precision, downs double precision",
        "double precision",
        2,
        0,
        701,
    ),
    (
        "hn",
        "points double precision, created_at timestamp without time zone, gravity double precision DEFAULT 1.8",
        "double precision",
        3,
        1,
        701,
    ),
    (
        "freshness",
        "ts timestamp without time zone, half_life interval",
        "double precision",
        2,
        0,
        701,
    ),
];

fn volatility_char(v: Volatility) -> char {
    match v {
        Volatility::Immutable => 'i',
        Volatility::Stable => 's',
        Volatility::Volatile => 'v',
    }
}

/// Every function of the session, numbered in name order.
fn collect_procs(state: &dyn Session) -> Vec<Proc> {
    let mut list: Vec<Proc> = Vec::new();
    let describe = |sig: &Signature| -> (String, i64) {
        match &sig.type_signature {
            TypeSignature::Nullary => (String::new(), 0),
            TypeSignature::Exact(types) => (
                types
                    .iter()
                    .map(|t| format_type(pg_type_of(t).0, None))
                    .collect::<Vec<_>>()
                    .join(", "),
                types.len() as i64,
            ),
            other => (other.to_string_repr().join(" | "), 0),
        }
    };
    let any = || ("anyelement".to_string(), 2283);
    let proc = |name: &str, kind: char, sig: &Signature, (result, rettype): (String, i64)| {
        let (args, nargs) = describe(sig);
        Proc {
            oid: 0,
            name: name.to_string(),
            nsp: NSP_CATALOG,
            kind,
            args,
            result,
            nargs,
            ndefaults: 0,
            rettype,
            volatile: volatility_char(sig.volatility),
        }
    };
    for (name, udf) in state.scalar_functions() {
        if let Some(&(_, args, result, nargs, ndefaults, rettype)) =
            TIDAL_FUNCTIONS.iter().find(|t| t.0 == name)
        {
            list.push(Proc {
                oid: 0,
                name: name.clone(),
                nsp: NSP_PUBLIC,
                kind: 'f',
                args: args.to_string(),
                result: result.to_string(),
                nargs,
                ndefaults,
                rettype,
                // Stable within a statement (the unbound signal functions are declared
                // volatile only to keep DataFusion from folding them early).
                volatile: 's',
            });
            continue;
        }
        let returns = match &udf.signature().type_signature {
            TypeSignature::Exact(types) => udf.return_type(types).ok(),
            TypeSignature::Nullary => udf.return_type(&[]).ok(),
            _ => None,
        };
        let returns = returns.map_or_else(any, |dt| {
            let (oid, _) = pg_type_of(&dt);
            (format_type(oid, None), oid)
        });
        list.push(proc(name, 'f', udf.signature(), returns));
    }
    for (name, udf) in state.aggregate_functions() {
        list.push(proc(name, 'a', udf.signature(), any()));
    }
    for (name, udf) in state.window_functions() {
        list.push(proc(name, 'w', udf.signature(), any()));
    }
    list.sort_by(|a, b| (&a.name, a.kind).cmp(&(&b.name, b.kind)));
    list.dedup_by(|a, b| a.name == b.name && a.kind == b.kind);
    for (i, p) in list.iter_mut().enumerate() {
        p.oid = FIRST_PROC_OID + i as i64;
    }
    list
}

/// Argument kinds of the catalog functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Arg {
    /// An OID or other integer (text is converted).
    Int,
    Text,
    Bool,
    /// Text stays text; anything else becomes an integer (for the `reg*` casts).
    TextOrInt,
    /// Anything, passed as text.
    Any,
    /// An array, as it is.
    Array,
}

/// The result type of a catalog function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ret {
    Text,
    Int,
    Bool,
    TextArr,
    /// Text in → OID out; OID in → name out (the `reg*` casts).
    Reg,
}

/// One row's arguments.
struct Call<'a> {
    snap: &'a Snap,
    args: &'a [ArrayRef],
    row: usize,
}

impl Call<'_> {
    fn int(&self, i: usize) -> Option<i64> {
        let a = self.args.get(i)?;
        if a.is_null(self.row) {
            return None;
        }
        a.as_primitive_opt::<Int64Type>().map(|a| a.value(self.row))
    }

    fn text(&self, i: usize) -> Option<&str> {
        let a = self.args.get(i)?;
        if a.is_null(self.row) {
            return None;
        }
        a.as_string_opt::<i32>().map(|a| a.value(self.row))
    }

    fn list_len(&self, i: usize) -> Option<usize> {
        let a = self.args.get(i)?;
        if a.is_null(self.row) {
            return None;
        }
        match a.data_type() {
            DataType::List(_) => Some(a.as_list::<i32>().value(self.row).len()),
            DataType::LargeList(_) => Some(a.as_list::<i64>().value(self.row).len()),
            _ => None,
        }
    }

    /// The integer elements of a list argument (NULL elements as `None`).
    fn list_ints(&self, i: usize) -> Option<Vec<Option<i64>>> {
        let a = self.args.get(i)?;
        if a.is_null(self.row) {
            return None;
        }
        let values = match a.data_type() {
            DataType::List(_) => a.as_list::<i32>().value(self.row),
            DataType::LargeList(_) => a.as_list::<i64>().value(self.row),
            _ => return None,
        };
        let values = cast(&values, &DataType::Int64).ok()?;
        let values = values.as_primitive_opt::<Int64Type>()?;
        Some(values.iter().collect())
    }

    fn boolean(&self, i: usize) -> Option<bool> {
        let a = self.args.get(i)?;
        if a.is_null(self.row) {
            return None;
        }
        a.as_boolean_opt().map(|a| a.value(self.row))
    }
}

type Body = dyn Fn(&Call<'_>) -> V + Send + Sync;

/// A catalog function computed row by row.
struct PgFn {
    name: &'static str,
    args: &'static [Arg],
    min_args: usize,
    ret: Ret,
    signature: Signature,
    catalog: Arc<Catalog>,
    body: Box<Body>,
}

impl Debug for PgFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgFn").field("name", &self.name).finish()
    }
}

impl PartialEq for PgFn {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.args == other.args && self.ret == other.ret
    }
}

impl Eq for PgFn {}

impl Hash for PgFn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.args.hash(state);
    }
}

fn is_text_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
    )
}

impl ScalarUDFImpl for PgFn {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() < self.min_args || arg_types.len() > self.args.len() {
            return Err(DataFusionError::Plan(format!(
                "function {}() takes {} to {} arguments, got {}",
                self.name,
                self.min_args,
                self.args.len(),
                arg_types.len()
            )));
        }
        arg_types
            .iter()
            .zip(self.args)
            .map(|(t, a)| {
                Ok(match a {
                    Arg::Int => DataType::Int64,
                    Arg::Text | Arg::Any => DataType::Utf8,
                    Arg::Bool => DataType::Boolean,
                    Arg::TextOrInt if is_text_type(t) => DataType::Utf8,
                    Arg::TextOrInt => DataType::Int64,
                    Arg::Array => match t {
                        DataType::List(_) | DataType::LargeList(_) | DataType::Null => t.clone(),
                        DataType::FixedSizeList(f, _) => {
                            DataType::List(Arc::new(f.as_ref().clone()))
                        }
                        other => {
                            return Err(DataFusionError::Plan(format!(
                                "function {}() expects an array, not {other}",
                                self.name
                            )));
                        }
                    },
                })
            })
            .collect()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.ret {
            Ret::Text => DataType::Utf8,
            Ret::Int => DataType::Int64,
            Ret::Bool => DataType::Boolean,
            Ret::TextArr => DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            Ret::Reg => match arg_types.first() {
                Some(t) if is_text_type(t) => DataType::Int64,
                _ => DataType::Utf8,
            },
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .zip(self.args)
            .map(|(v, a)| {
                let arr = v.to_array(n)?;
                let target = match a {
                    Arg::Array => return Ok(arr),
                    Arg::Int => DataType::Int64,
                    Arg::Text | Arg::Any => DataType::Utf8,
                    Arg::Bool => DataType::Boolean,
                    Arg::TextOrInt if is_text_type(arr.data_type()) => DataType::Utf8,
                    Arg::TextOrInt => DataType::Int64,
                };
                Ok(cast(&arr, &target)?)
            })
            .collect::<Result<_>>()?;
        let snap = self.catalog.snapshot();
        let out: Vec<V> = (0..n)
            .map(|row| {
                (self.body)(&Call {
                    snap: &snap,
                    args: &arrays,
                    row,
                })
            })
            .collect();
        let ret = self.return_type(
            &arrays
                .iter()
                .map(|a| a.data_type().clone())
                .collect::<Vec<_>>(),
        )?;
        let array: ArrayRef = match ret {
            DataType::Int64 => Arc::new(out.iter().map(V::int).collect::<Int64Array>()),
            DataType::Boolean => {
                let mut b = BooleanBuilder::with_capacity(n);
                for v in &out {
                    match v {
                        V::B(x) => b.append_value(*x),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            DataType::Utf8 => Arc::new(
                out.iter()
                    .map(|v| match v {
                        V::S(s) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect::<StringArray>(),
            ),
            _ => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for v in &out {
                    match v {
                        V::A(items) => {
                            for x in items {
                                b.values().append_value(x);
                            }
                            b.append(true);
                        }
                        _ => b.append(false),
                    }
                }
                Arc::new(b.finish())
            }
        };
        Ok(ColumnarValue::Array(array))
    }
}

/// Builds one catalog function.
fn pg_fn(
    catalog: &Arc<Catalog>,
    name: &'static str,
    args: &'static [Arg],
    min_args: usize,
    ret: Ret,
    body: impl Fn(&Call<'_>) -> V + Send + Sync + 'static,
) -> ScalarUDF {
    let signature = if args.is_empty() {
        Signature::nullary(Volatility::Stable)
    } else {
        Signature::user_defined(Volatility::Stable)
    };
    ScalarUDF::new_from_impl(PgFn {
        name,
        args,
        min_args,
        ret,
        signature,
        catalog: catalog.clone(),
        body: Box::new(body),
    })
}

fn opt_s(v: Option<String>) -> V {
    v.map_or(V::N, V::S)
}

fn opt_b(v: Option<bool>) -> V {
    v.map_or(V::N, V::B)
}

/// `pg_size_pretty(bigint)`.
fn size_pretty(bytes: i64) -> String {
    let units = ["bytes", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    // PostgreSQL switches unit when the value reaches 10 * 1024 of the smaller one.
    while v.abs() >= 10.0 * 1024.0 - 0.5 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{} {}", v.round() as i64, units[unit])
}

fn catalog_functions(cat: &Arc<Catalog>) -> Vec<ScalarUDF> {
    use Arg::{Any, Bool, Int, Text, TextOrInt};
    let visible = |c: &Call<'_>| {
        opt_b(
            c.int(0)
                .and_then(|oid| c.snap.rel(oid))
                .map(|r| matches!(r.nsp, NSP_CATALOG | NSP_PUBLIC))
                .or(Some(false))
                .filter(|_| c.int(0).is_some()),
        )
    };
    let exists = |c: &Call<'_>| opt_b(c.int(0).map(|_| true));
    let no_text = |_: &Call<'_>| V::N;
    let yes = |_: &Call<'_>| V::B(true);
    let unknown = |_: &Call<'_>| V::N;
    let mut fns = vec![
        pg_fn(cat, "pg_table_is_visible", &[Int], 1, Ret::Bool, visible),
        pg_fn(cat, "pg_type_is_visible", &[Int], 1, Ret::Bool, exists),
        // Every collation lives in pg_catalog, which is on every search path.
        pg_fn(cat, "pg_collation_is_visible", &[Int], 1, Ret::Bool, exists),
        // tidalDB has no sequences (ids are the application's).
        pg_fn(
            cat,
            "pg_get_serial_sequence",
            &[Text, Text],
            2,
            Ret::Text,
            no_text,
        ),
        pg_fn(cat, "pg_function_is_visible", &[Int], 1, Ret::Bool, |c| {
            opt_b(c.int(0).map(|oid| {
                c.snap
                    .proc(oid)
                    .is_some_and(|p| matches!(p.nsp, NSP_CATALOG | NSP_PUBLIC))
            }))
        }),
        pg_fn(cat, "pg_get_userbyid", &[Int], 1, Ret::Text, |c| {
            opt_s(c.int(0).map(|oid| {
                if oid == ROLE_OID {
                    crate::USER.to_string()
                } else {
                    format!("unknown (OID={oid})")
                }
            }))
        }),
        pg_fn(cat, "format_type", &[Int, Int], 1, Ret::Text, |c| {
            opt_s(c.int(0).map(|oid| format_type(oid, c.int(1))))
        }),
        pg_fn(cat, "pg_get_expr", &[Text, Int, Bool], 2, Ret::Text, |c| {
            opt_s(c.text(0).map(String::from))
        }),
        pg_fn(cat, "obj_description", &[Int, Text], 1, Ret::Text, no_text),
        pg_fn(cat, "col_description", &[Int, Int], 2, Ret::Text, no_text),
        pg_fn(
            cat,
            "shobj_description",
            &[Int, Text],
            2,
            Ret::Text,
            no_text,
        ),
        pg_fn(cat, "pg_encoding_to_char", &[Int], 1, Ret::Text, |c| {
            opt_s(c.int(0).map(|e| {
                match e {
                    ENCODING_UTF8 => "UTF8",
                    0 => "SQL_ASCII",
                    _ => "",
                }
                .to_string()
            }))
        }),
        pg_fn(cat, "current_setting", &[Text, Bool], 1, Ret::Text, |c| {
            opt_s(c.text(0).and_then(setting).map(String::from))
        }),
        pg_fn(
            cat,
            "pg_get_indexdef",
            &[Int, Int, Bool],
            1,
            Ret::Text,
            |c| {
                opt_s(c.int(0).and_then(|oid| {
                    let index = c.snap.rel(oid).filter(|r| r.kind == 'i')?;
                    index_def(c.snap, index, c.int(1).unwrap_or(0))
                }))
            },
        ),
        pg_fn(
            cat,
            "pg_get_constraintdef",
            &[Int, Bool],
            1,
            Ret::Text,
            |c| {
                opt_s(c.int(0).and_then(|oid| {
                    let table = c
                        .snap
                        .rels
                        .iter()
                        .find(|r| r.has_pkey() && r.constraint_oid() == oid)?;
                    Some(format!("PRIMARY KEY ({})", table.cols.first()?.name))
                }))
            },
        ),
        pg_fn(cat, "pg_get_viewdef", &[Int, Bool], 1, Ret::Text, |c| {
            opt_s(c.int(0).and_then(|oid| {
                let r = c.snap.rel(oid).filter(|r| r.kind == 'v')?;
                Some(view_definition(r))
            }))
        }),
        pg_fn(cat, "pg_get_function_result", &[Int], 1, Ret::Text, |c| {
            opt_s(
                c.int(0)
                    .and_then(|oid| Some(c.snap.proc(oid)?.result.clone())),
            )
        }),
        pg_fn(
            cat,
            "pg_get_function_arguments",
            &[Int],
            1,
            Ret::Text,
            |c| {
                opt_s(
                    c.int(0)
                        .and_then(|oid| Some(c.snap.proc(oid)?.args.clone())),
                )
            },
        ),
        pg_fn(
            cat,
            "pg_get_function_identity_arguments",
            &[Int],
            1,
            Ret::Text,
            |c| {
                opt_s(c.int(0).and_then(|oid| {
                    let args = &c.snap.proc(oid)?.args;
                    Some(
                        args.split(", ")
                            .map(|a| a.split(" DEFAULT ").next().unwrap_or(a))
                            .collect::<Vec<_>>()
                            .join(", "),
                    )
                }))
            },
        ),
        pg_fn(cat, "pg_get_partkeydef", &[Int], 1, Ret::Text, no_text),
        pg_fn(cat, "pg_tablespace_location", &[Int], 1, Ret::Text, |c| {
            opt_s(c.int(0).map(|_| String::new()))
        }),
        // Sizes are not tracked per relation: unknown (NULL).
        pg_fn(cat, "pg_relation_size", &[Int, Text], 1, Ret::Int, unknown),
        pg_fn(cat, "pg_total_relation_size", &[Int], 1, Ret::Int, unknown),
        pg_fn(cat, "pg_table_size", &[Int], 1, Ret::Int, unknown),
        pg_fn(cat, "pg_indexes_size", &[Int], 1, Ret::Int, unknown),
        pg_fn(cat, "pg_database_size", &[Any], 1, Ret::Int, unknown),
        pg_fn(
            cat,
            "pg_get_function_sqlbody",
            &[Int],
            1,
            Ret::Text,
            no_text,
        ),
        pg_fn(cat, "pg_size_pretty", &[Int], 1, Ret::Text, |c| {
            opt_s(c.int(0).map(size_pretty))
        }),
        pg_fn(
            cat,
            "current_schemas",
            &[Bool],
            1,
            Ret::TextArr,
            |c| match c.boolean(0) {
                Some(true) => V::A(vec![PG_CATALOG.into(), SCHEMA_NAME.into()]),
                Some(false) => V::A(vec![SCHEMA_NAME.into()]),
                None => V::N,
            },
        ),
        pg_fn(cat, "current_user", &[], 0, Ret::Text, |_| s(crate::USER)),
        pg_fn(cat, "session_user", &[], 0, Ret::Text, |_| s(crate::USER)),
        pg_fn(cat, "pg_is_in_recovery", &[], 0, Ret::Bool, |_| V::B(false)),
        pg_fn(cat, "regclass", &[TextOrInt], 1, Ret::Reg, |c| {
            match c.text(0) {
                Some(name) => c.snap.rel_by_name(name).map_or(V::N, |r| V::I(r.oid)),
                None => opt_s(c.int(0).map(|oid| match c.snap.rel(oid) {
                    Some(r) if r.nsp == NSP_CATALOG || r.nsp == NSP_PUBLIC => r.name.clone(),
                    Some(r) => format!("{}.{}", namespace_name(r.nsp).unwrap_or_default(), r.name),
                    None => oid.to_string(),
                })),
            }
        }),
        pg_fn(cat, "to_regclass", &[Text], 1, Ret::Int, |c| {
            c.text(0)
                .and_then(|n| c.snap.rel_by_name(n))
                .map_or(V::N, |r| V::I(r.oid))
        }),
        pg_fn(cat, "regtype", &[TextOrInt], 1, Ret::Reg, |c| {
            match c.text(0) {
                Some(name) => type_oid(name).map_or(V::N, V::I),
                None => opt_s(c.int(0).map(|oid| {
                    if type_name(oid).is_some() {
                        format_type(oid, None)
                    } else {
                        oid.to_string()
                    }
                })),
            }
        }),
        // `oids::regtype[]` (rewritten): each type's name, as `regtype` prints it.
        pg_fn(cat, "regtype_array", &[Arg::Array], 1, Ret::TextArr, |c| {
            c.list_ints(0).map_or(V::N, |oids| {
                V::A(
                    oids.into_iter()
                        .map(|oid| match oid {
                            Some(oid) if type_name(oid).is_some() => format_type(oid, None),
                            Some(oid) => oid.to_string(),
                            // What PostgreSQL prints for OID 0; text arrays here
                            // cannot hold a NULL element.
                            None => "-".to_string(),
                        })
                        .collect(),
                )
            })
        }),
        pg_fn(cat, "to_regtype", &[Text], 1, Ret::Int, |c| {
            c.text(0).and_then(type_oid).map_or(V::N, V::I)
        }),
        pg_fn(
            cat,
            "regnamespace",
            &[TextOrInt],
            1,
            Ret::Reg,
            |c| match c.text(0) {
                Some(name) => namespace_oid(&split_qualified(name).1).map_or(V::N, V::I),
                None => {
                    opt_s(c.int(0).map(|oid| {
                        namespace_name(oid).map_or_else(|| oid.to_string(), String::from)
                    }))
                }
            },
        ),
        pg_fn(cat, "regrole", &[TextOrInt], 1, Ret::Reg, |c| {
            match c.text(0) {
                Some(name) if split_qualified(name).1 == crate::USER => V::I(ROLE_OID),
                Some(_) => V::N,
                None => opt_s(c.int(0).map(|oid| {
                    if oid == ROLE_OID {
                        crate::USER.to_string()
                    } else {
                        oid.to_string()
                    }
                })),
            }
        }),
    ];
    // A regproc is shown by name; both spellings resolve to the name.
    for name in ["regproc", "regprocedure", "regoper", "regoperator"] {
        fns.push(pg_fn(cat, name, &[TextOrInt], 1, Ret::Text, |c| {
            match c.text(0) {
                Some(n) => s(split_qualified(n).1),
                None => opt_s(c.int(0).map(|oid| {
                    c.snap
                        .proc(oid)
                        .map_or_else(|| oid.to_string(), |p| p.name.clone())
                })),
            }
        }));
    }
    for (name, lower) in [("array_upper", false), ("array_lower", true)] {
        fns.push(pg_fn(
            cat,
            name,
            &[Arg::Array, Int],
            2,
            Ret::Int,
            move |c| match (c.list_len(0), c.int(1)) {
                (Some(n), Some(1)) if n > 0 => V::I(if lower { 1 } else { n as i64 }),
                _ => V::N,
            },
        ));
    }
    for name in [
        "pg_has_role",
        "has_table_privilege",
        "has_schema_privilege",
        "has_database_privilege",
        "has_column_privilege",
        "has_function_privilege",
        "has_sequence_privilege",
        "has_any_column_privilege",
    ] {
        fns.push(pg_fn(cat, name, &[Any, Any, Any, Any], 2, Ret::Bool, yes));
    }
    fns
}

// ---------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------

/// Adds `pg_catalog` and its functions to the session's `tidal` catalog. Call after
/// every other function is registered, so `pg_proc` lists them all.
pub fn register(session: &SqlSession) {
    let ctx = session.context();
    let Some(tidal) = ctx.catalog(CATALOG_NAME) else {
        tracing::warn!("no {CATALOG_NAME} catalog; pg_catalog not registered");
        return;
    };
    let Some(public) = tidal.schema(SCHEMA_NAME) else {
        tracing::warn!("no {SCHEMA_NAME} schema; pg_catalog not registered");
        return;
    };
    let catalog = Arc::new(Catalog {
        public,
        procs: OnceLock::new(),
    });
    let ours: HashSet<String> = ctx.state().scalar_functions().keys().cloned().collect();
    for f in catalog_functions(&catalog) {
        // Never shadow a function DataFusion or tidalDB already has.
        if !ours.contains(f.name()) {
            ctx.register_udf(f);
        }
    }
    if let Err(e) = tidal.register_schema(
        PG_CATALOG,
        Arc::new(PgCatalogSchema {
            catalog: catalog.clone(),
        }),
    ) {
        tracing::warn!(error = %e, "cannot register pg_catalog");
        return;
    }
    let _ = catalog.procs.set(Arc::new(collect_procs(&ctx.state())));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn rewrite_leaves_ordinary_sql_alone() {
        for sql in [
            "SELECT id, title FROM items WHERE id = 1",
            "SELECT signal_total('like', id) FROM items ORDER BY 1 DESC LIMIT 10",
            "INSERT INTO items (id, title) VALUES (1, 'pg_catalog.x::regclass')",
            "SELECT CAST(x AS BIGINT), y::text FROM t",
            "SHOW statement_timeout",
            "SELECT '1'::int, ts::timestamp, (SELECT max(id) FROM items) FROM items",
            "SELECT id, (SELECT title FROM items i2 WHERE i2.id = items.id) FROM items",
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ] {
            assert!(matches!(rewrite(sql), Cow::Borrowed(_)), "{sql}");
        }
    }

    #[test]
    fn rewrite_psql_patterns() {
        let sql = "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname \
                   OPERATOR(pg_catalog.~) '^(items)$' COLLATE pg_catalog.default \
                   AND pg_catalog.pg_table_is_visible(c.oid)";
        assert_eq!(
            rewrite(sql),
            "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname  ~  '^(items)$'  \
             AND pg_table_is_visible(c.oid)"
        );
        assert_eq!(
            rewrite("SELECT 'items'::pg_catalog.regclass, c.oid::regclass::text, x.y.z::oid"),
            "SELECT regclass('items'), regclass(c.oid)::text, x.y.z::BIGINT"
        );
        assert_eq!(
            rewrite("SELECT pg_catalog.format_type(t.oid, NULL)::regtype FROM pg_type t"),
            "SELECT regtype(format_type(t.oid, NULL)) FROM pg_catalog.pg_type t"
        );
        assert_eq!(
            rewrite(
                "SELECT COALESCE(p.proallargtypes::regtype[], p.proargtypes::regtype[])::text[] FROM pg_proc p"
            ),
            "SELECT COALESCE(regtype_array(p.proallargtypes), regtype_array(p.proargtypes))::text[] FROM pg_catalog.pg_proc p"
        );
        assert_eq!(
            rewrite("SELECT 1 FROM t WHERE c.relkind = ANY('{r,p}') AND x <> ALL ( '{}' )"),
            "SELECT 1 FROM t WHERE c.relkind = ANY(CAST('{r,p}' AS TEXT[])) AND x <> ALL ( CAST('{}' AS TEXT[]) )"
        );
        assert_eq!(rewrite("SELECT '{a}' = ANY(x)"), "SELECT '{a}' = ANY(x)");
        // Comparing regtypes compares OIDs: the column keeps its OID.
        assert_eq!(
            rewrite("SELECT 1 FROM pg_proc p WHERE p.prorettype::regtype != 'trigger'::regtype"),
            "SELECT 1 FROM pg_catalog.pg_proc p WHERE p.prorettype <> regtype('trigger')"
        );
        assert_eq!(
            rewrite("SELECT 1 FROM pg_type t WHERE 'int8'::regtype = t.oid::regtype"),
            "SELECT 1 FROM pg_catalog.pg_type t WHERE regtype('int8') = t.oid"
        );
        assert_eq!(
            rewrite("SELECT t.oid::regtype, 'int8'::regtype = 'bigint'::regtype FROM pg_type t"),
            "SELECT regtype(t.oid), regtype('int8') = regtype('bigint') FROM pg_catalog.pg_type t"
        );
        assert_eq!(
            rewrite("SELECT current_user, session_user, a::\"char\""),
            "SELECT \"current_user\"(), \"session_user\"(), a::TEXT"
        );
        assert_eq!(
            rewrite("show transaction isolation level"),
            "SHOW transaction_isolation"
        );
    }

    #[test]
    fn rewrite_subqueries() {
        // Correlated scalar subqueries are aggregated; ones over always-empty catalog
        // tables are NULL.
        assert_eq!(
            rewrite(
                "SELECT a.attname, (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = a.attrelid), \
                 (SELECT d.adbin FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid AND a.atthasdef) \
                 FROM pg_catalog.pg_attribute a WHERE a.attrelid IN (SELECT oid FROM pg_catalog.pg_class)"
            ),
            "SELECT a.attname, (SELECT max(c.relname) FROM pg_catalog.pg_class c WHERE c.oid = a.attrelid), \
             CAST(NULL AS TEXT) \
             FROM pg_catalog.pg_attribute a WHERE a.attrelid IN (SELECT oid FROM pg_catalog.pg_class)"
        );
        assert_eq!(
            rewrite(
                "SELECT r.rolname, ARRAY(SELECT b.rolname FROM pg_catalog.pg_auth_members m \
                 JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) WHERE m.member = r.oid) as memberof \
                 FROM pg_catalog.pg_roles r"
            ),
            "SELECT r.rolname, CAST(make_array() AS TEXT[]) as memberof FROM pg_catalog.pg_roles r"
        );
        assert_eq!(
            rewrite("SELECT ARRAY(SELECT n.nspname FROM pg_catalog.pg_namespace n) AS a"),
            "SELECT (SELECT array_agg(n.nspname) FROM pg_catalog.pg_namespace n) AS a"
        );
        // A query over an always-empty table is not planned at all.
        assert_eq!(
            rewrite(
                "SELECT pol.polname, pg_catalog.array_to_string(array(select 1), ',') AS roles, \
                 'x' = any(pol.polroles) FROM pg_catalog.pg_policy pol WHERE pol.polrelid = '1' \
                 UNION SELECT a, b, c FROM pg_catalog.pg_trigger ORDER BY 1"
            ),
            "SELECT NULL AS \"polname\", NULL AS \"roles\", NULL AS \"column3\" WHERE false"
        );
        // Only primary keys exist: other constraint kinds select nothing.
        assert_eq!(
            rewrite(
                "SELECT s.nspname AS parentschema, unnest((select array_agg(attname) from \
                 pg_catalog.pg_attribute c WHERE c.attrelid = fk.confrelid)) AS col \
                 FROM pg_catalog.pg_constraint fk JOIN pg_catalog.pg_namespace s \
                 ON s.oid = fk.connamespace WHERE fk.contype = 'f';"
            ),
            "SELECT NULL AS \"parentschema\", NULL AS \"col\" WHERE false"
        );
        for kept in [
            "SELECT conname FROM pg_catalog.pg_constraint WHERE contype = 'p'",
            "SELECT conname FROM pg_catalog.pg_constraint WHERE contype = 'f' OR contype = 'p'",
            "SELECT c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_constraint k \
             ON k.conrelid = c.oid WHERE k.contype = 'f'",
            "SELECT * FROM pg_catalog.pg_policy",
            "SELECT count(*) FROM pg_catalog.pg_inherits",
            "SELECT c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_inherits i ON i.inhrelid = c.oid",
        ] {
            assert!(matches!(rewrite(kept), Cow::Borrowed(_)), "{kept}");
        }
        // GUI tools' `c.oid, c.*`.
        assert_eq!(
            rewrite("SELECT c.oid,c.*,d.description FROM pg_catalog.pg_class c"),
            "SELECT c.*,d.description FROM pg_catalog.pg_class c"
        );
    }

    #[test]
    fn format_types() {
        assert_eq!(format_type(20, None), "bigint");
        assert_eq!(format_type(1009, Some(-1)), "text[]");
        assert_eq!(format_type(VECTOR_OID, Some(3)), "vector(3)");
        assert_eq!(format_type(1114, None), "timestamp without time zone");
        assert_eq!(format_type(4242, None), "???");
        assert_eq!(type_oid("pg_catalog.int4"), Some(23));
        assert_eq!(type_oid("_text"), Some(1009));
        assert_eq!(size_pretty(0), "0 bytes");
        assert_eq!(size_pretty(20_000), "20 kB");
    }

    #[test]
    fn qualified_names() {
        assert_eq!(
            split_qualified("public.Items"),
            (Some("public".into()), "items".into())
        );
        assert_eq!(split_qualified("\"My\"\"T\""), (None, "My\"T".to_string()));
    }

    #[test]
    fn catalog_rows_match_their_columns() {
        let snap = Snap {
            rels: Vec::new(),
            procs: Arc::new(Vec::new()),
        };
        for t in CATALOG_TABLES {
            let rows = (t.rows)(&snap);
            for r in &rows {
                assert_eq!(r.len(), t.columns().len(), "{}", t.name);
            }
            batch(&t.columns(), &rows).unwrap();
        }
    }
}
