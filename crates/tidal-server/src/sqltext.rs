//! SQL text handling at the wire edge: splitting a simple-query string into statements,
//! binding `$n` parameters as typed literals, and recognising session commands.

use bytes::Bytes;
use pgwire::api::Type;
use tidal::datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use tidal::datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::ServerError;

/// Days / µs between 1970-01-01 (Arrow's and tidalDB's epoch) and PostgreSQL's
/// 2000-01-01, for binary dates and timestamps.
pub(crate) const PG_EPOCH_DAYS: i64 = 10_957;
pub(crate) const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * 86_400_000_000;

/// The bytes of a binary value of a fixed-width type.
fn fixed<'a>(ty: &Type, value: &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if value.len() == n {
        Ok(value)
    } else {
        Err(format!(
            "binary {} needs {n} bytes, got {}",
            ty.name(),
            value.len()
        ))
    }
}

fn utf8(value: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(value).map_err(|e| e.to_string())
}

/// An integer parameter (`int2`, `int4`, `int8`, `oid`; text or binary). The one
/// decoding both the literal binding and the server's fast paths use; `Err` is the
/// reason.
pub(crate) fn int_param(ty: &Type, value: &[u8], binary: bool) -> Result<i64, String> {
    if !binary {
        let text = utf8(value)?;
        let v: i64 = text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an integer"))?;
        let fits = match *ty {
            Type::INT2 => i16::try_from(v).is_ok(),
            Type::INT4 => i32::try_from(v).is_ok(),
            Type::OID => u32::try_from(v).is_ok(),
            _ => true,
        };
        if !fits {
            return Err(format!("{v} is out of range for type {}", ty.name()));
        }
        return Ok(v);
    }
    Ok(match *ty {
        Type::INT2 => i16::from_be_bytes(arr(fixed(ty, value, 2)?)).into(),
        Type::INT4 => i32::from_be_bytes(arr(fixed(ty, value, 4)?)).into(),
        Type::OID => u32::from_be_bytes(arr(fixed(ty, value, 4)?)).into(),
        Type::INT8 => i64::from_be_bytes(arr(fixed(ty, value, 8)?)),
        _ => return Err(format!("binary {} is not an integer", ty.name())),
    })
}

/// Whether `text` is written as an integer (`[+-]digits`), whatever its size.
fn is_integer_text(text: &str) -> bool {
    let digits = text.trim().trim_start_matches(['+', '-']);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A floating-point parameter (`float4`, `float8`; `numeric` in text only).
pub(crate) fn float_param(ty: &Type, value: &[u8], binary: bool) -> Result<f64, String> {
    if !binary {
        let text = utf8(value)?;
        return text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a number"));
    }
    Ok(match *ty {
        Type::FLOAT4 => f32::from_be_bytes(arr(fixed(ty, value, 4)?)).into(),
        Type::FLOAT8 => f64::from_be_bytes(arr(fixed(ty, value, 8)?)),
        _ => return Err(format!("binary {} is not a float", ty.name())),
    })
}

/// A binary `timestamp`/`timestamptz` parameter: µs since PostgreSQL's epoch.
pub(crate) fn timestamp_param(ty: &Type, value: &[u8]) -> Result<i64, String> {
    Ok(i64::from_be_bytes(arr(fixed(ty, value, 8)?)))
}

/// Tokens with string values unescaped (`'it''s'` → `it's`), for reading values.
fn tokenize(sql: &str) -> Result<Vec<Token>, ServerError> {
    tokens(sql, true)
}

/// Tokens exactly as written (`'it''s'` stays `it''s`), so that printing them gives the
/// statement text back; used wherever SQL is re-assembled from tokens.
fn tokenize_raw(sql: &str) -> Result<Vec<Token>, ServerError> {
    tokens(sql, false)
}

/// A raw token's text. The tokenizer always unescapes `E'…'` and `U&'…'` strings, so
/// those are written back as standard strings with the same value.
fn render(t: &Token) -> String {
    match t {
        Token::EscapedStringLiteral(s) | Token::UnicodeStringLiteral(s) => quote(s),
        other => other.to_string(),
    }
}

fn tokens(sql: &str, unescape: bool) -> Result<Vec<Token>, ServerError> {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .with_unescape(unescape)
        .tokenize()
        .map_err(|e| {
            ServerError::Sql(tidal_sql::SqlError::Syntax {
                message: e.to_string(),
            })
        })
}

/// Splits on top-level `;` (not inside strings, quoted names or comments); empty
/// statements are dropped.
pub fn split(sql: &str) -> Result<Vec<String>, ServerError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    // Whitespace and comments alone are no statement (PostgreSQL answers EmptyQuery).
    let mut blank = true;
    for t in tokenize_raw(sql)? {
        if t == Token::SemiColon {
            if !blank {
                out.push(std::mem::take(&mut cur));
            }
            cur.clear();
            blank = true;
        } else {
            blank &= matches!(t, Token::Whitespace(_));
            cur.push_str(&render(&t));
        }
    }
    if !blank {
        out.push(cur);
    }
    Ok(out)
}

/// The highest `$n` in the statement (0 if none).
pub fn placeholder_count(sql: &str) -> Result<usize, ServerError> {
    Ok(tokenize_raw(sql)?
        .iter()
        .filter_map(|t| match t {
            Token::Placeholder(p) => p.strip_prefix('$')?.parse::<usize>().ok(),
            _ => None,
        })
        .max()
        .unwrap_or(0))
}

/// Replaces every `$n` by the SQL literal for parameter n.
pub fn bind(sql: &str, literals: &[String]) -> Result<String, ServerError> {
    let mut out = String::with_capacity(sql.len() + 16 * literals.len());
    for t in tokenize_raw(sql)? {
        match &t {
            Token::Placeholder(p) => {
                let n = p
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| (1..=literals.len()).contains(n))
                    .ok_or_else(|| ServerError::BadParameter {
                        index: 0,
                        reason: format!("{p} has no bound value"),
                    })?;
                out.push_str(&literals[n - 1]);
            }
            _ => out.push_str(&render(&t)),
        }
    }
    Ok(out)
}

/// For a tidalDB statement (RETRIEVE, SEARCH, SUGGEST) with parameters where its clauses take
/// literals — `QUERY $1` (text), `LIMIT $2` and `FOR USER $3` (bigint), `AT $4` (a
/// timestamp as text) — sets those parameters' types (where the client gave none) and
/// returns the statement with every `$n` replaced by a placeholder literal of its type,
/// which parses like the bound statement will (for Describe, before values exist).
/// `None` when the statement has no parameters.
pub fn clause_parameters(
    sql: &str,
    params: &mut [Option<Type>],
) -> Result<Option<String>, ServerError> {
    let tokens = tokenize_raw(sql)?;
    let mut previous = String::new();
    let mut any = false;
    for t in &tokens {
        match t {
            Token::Whitespace(_) => continue,
            Token::Placeholder(p) => {
                any = true;
                let ty = match previous.as_str() {
                    "QUERY" | "AT" => Some(Type::TEXT),
                    "LIMIT" | "USER" | "CANDIDATES" => Some(Type::INT8),
                    _ => None,
                };
                if let (Some(ty), Some(n)) = (
                    ty,
                    p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()),
                ) && let Some(slot) = params.get_mut(n.wrapping_sub(1))
                    && slot.is_none()
                {
                    *slot = Some(ty);
                }
            }
            _ => {}
        }
        previous = match t {
            Token::Word(w) => w.value.to_ascii_uppercase(),
            _ => String::new(),
        };
    }
    if !any {
        return Ok(None);
    }
    let literals: Vec<String> = params
        .iter()
        .map(|t| match t {
            Some(t) if *t == Type::INT8 || *t == Type::INT4 || *t == Type::INT2 => "1".into(),
            Some(t) if *t == Type::FLOAT8 || *t == Type::FLOAT4 => "1.0".into(),
            Some(t) if *t == Type::BOOL => "true".into(),
            Some(t) if *t == Type::TIMESTAMP => "'2000-01-01 00:00:00'".into(),
            _ => "'x'".into(),
        })
        .collect();
    bind(sql, &literals).map(Some)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Only semicolons and whitespace: PostgreSQL answers it with EmptyQueryResponse.
pub fn is_empty_query(q: &str) -> bool {
    q.chars().all(|c| c == ';' || c.is_whitespace())
}

/// The SQL literal for one bound parameter value (`None` = NULL).
pub fn literal(
    index: usize,
    ty: &Type,
    value: Option<&Bytes>,
    binary: bool,
) -> Result<String, ServerError> {
    let Some(value) = value else {
        return Ok("NULL".into());
    };
    let bad = |reason: String| {
        let ty = ty.name().to_string();
        if binary {
            ServerError::ParameterBinary { index, ty, reason }
        } else {
            ServerError::ParameterText { index, ty, reason }
        }
    };
    if crate::encode::is_vector(ty) {
        let text = if binary {
            vector_from_binary(value).map_err(bad)?
        } else {
            utf8(value)
                .map_err(|reason| ServerError::ParameterEncoding { index, reason })?
                .to_string()
        };
        // The cast checks the literal with pgvector's errors (22P02, 22000).
        return Ok(format!("CAST({} AS vector)", quote(&text)));
    }
    if !binary {
        let text =
            utf8(value).map_err(|reason| ServerError::ParameterEncoding { index, reason })?;
        return Ok(match *ty {
            Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => match int_param(ty, value, false) {
                Ok(v) => v.to_string(),
                // An integer, but too large for the type (PostgreSQL: 22003).
                Err(reason) if is_integer_text(text) => {
                    return Err(ServerError::ParameterRange {
                        index,
                        ty: ty.name().to_string(),
                        reason,
                    });
                }
                Err(reason) => return Err(bad(reason)),
            },
            Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => {
                float_literal(float_param(ty, value, false).map_err(bad)?)
            }
            Type::BOOL => match text.trim().to_ascii_lowercase().as_str() {
                "t" | "true" | "yes" | "on" | "1" => "TRUE".into(),
                "f" | "false" | "no" | "off" | "0" => "FALSE".into(),
                other => return Err(bad(format!("{other:?} is not a boolean"))),
            },
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                format!("CAST({} AS TIMESTAMP)", quote(text))
            }
            Type::DATE => format!("CAST({} AS DATE)", quote(text)),
            // An array in PostgreSQL's text form (`{a,"b c"}`, what psycopg sends for a
            // Python list): parsed by the TEXT[] cast, then cast to the element type.
            // Quoted as plain text it would be one string and `x = ANY($1)` would fail.
            Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY | Type::NAME_ARRAY => {
                format!("CAST({} AS TEXT[])", quote(text))
            }
            Type::BOOL_ARRAY
            | Type::INT2_ARRAY
            | Type::INT4_ARRAY
            | Type::INT8_ARRAY
            | Type::FLOAT4_ARRAY
            | Type::FLOAT8_ARRAY => {
                let element = match *ty {
                    Type::BOOL_ARRAY => "BOOLEAN",
                    Type::INT2_ARRAY => "SMALLINT",
                    Type::INT4_ARRAY => "INT",
                    Type::INT8_ARRAY => "BIGINT",
                    Type::FLOAT4_ARRAY => "REAL",
                    _ => "DOUBLE",
                };
                format!("CAST(CAST({} AS TEXT[]) AS {element}[])", quote(text))
            }
            _ => quote(text),
        });
    }
    let fixed = |n: usize| fixed(ty, value, n).map_err(bad);
    Ok(match *ty {
        Type::BOOL => if fixed(1)?[0] != 0 { "TRUE" } else { "FALSE" }.into(),
        Type::INT2 | Type::INT4 | Type::OID | Type::INT8 => {
            int_param(ty, value, true).map_err(bad)?.to_string()
        }
        Type::FLOAT4 | Type::FLOAT8 => float_literal(float_param(ty, value, true).map_err(bad)?),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let us = timestamp_param(ty, value)
                .map_err(bad)?
                .saturating_add(PG_EPOCH_MICROS);
            format!(
                "CAST({} AS TIMESTAMP)",
                quote(&tidal::Timestamp(us).to_string())
            )
        }
        Type::DATE => {
            let d = i32::from_be_bytes(arr(fixed(4)?)) as i64 + PG_EPOCH_DAYS;
            let (y, m, dd) = tidal_core::time::civil_from_days(d);
            format!("CAST('{y:04}-{m:02}-{dd:02}' AS DATE)")
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            quote(std::str::from_utf8(value).map_err(|e| bad(e.to_string()))?)
        }
        Type::BYTEA => {
            let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
            format!("X'{hex}'")
        }
        Type::TEXT_ARRAY
        | Type::VARCHAR_ARRAY
        | Type::BPCHAR_ARRAY
        | Type::NAME_ARRAY
        | Type::BOOL_ARRAY
        | Type::INT2_ARRAY
        | Type::INT4_ARRAY
        | Type::INT8_ARRAY
        | Type::FLOAT4_ARRAY
        | Type::FLOAT8_ARRAY
        | Type::TIMESTAMP_ARRAY
        | Type::TIMESTAMPTZ_ARRAY
        | Type::DATE_ARRAY => array_literal(index, value)?,
        _ => {
            return Err(ServerError::Unsupported(format!(
                "binary parameters of type {} are not supported; send it as text",
                ty.name()
            )));
        }
    })
}

/// pgvector's binary form (int16 dimensions, int16 unused, float4s; big-endian) as
/// its text form.
fn vector_from_binary(value: &[u8]) -> Result<String, String> {
    if value.len() < 4 {
        return Err("truncated vector".into());
    }
    let dims = i16::from_be_bytes([value[0], value[1]]);
    let body = &value[4..];
    if dims < 1 || body.len() != dims as usize * 4 {
        return Err(format!(
            "a vector of {dims} dimensions needs {} bytes of components, got {}",
            (dims.max(0) as usize) * 4,
            body.len()
        ));
    }
    let mut out = String::with_capacity(body.len() * 3);
    out.push('[');
    for (i, c) in body.chunks_exact(4).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let v = f32::from_be_bytes(arr(c));
        // Non-finite components are refused by the cast with pgvector's message.
        if v.is_finite() {
            out.push_str(&format!("{v:?}"));
        } else if v.is_nan() {
            out.push_str("NaN");
        } else if v > 0.0 {
            out.push_str("Infinity");
        } else {
            out.push_str("-Infinity");
        }
    }
    out.push(']');
    Ok(out)
}

/// A one-dimensional array in PostgreSQL's binary form (what drivers such as
/// tokio-postgres send for `Vec<String>`) as `ARRAY[...]`; `'{}'` when empty.
fn array_literal(index: usize, value: &[u8]) -> Result<String, ServerError> {
    let bad = |reason: String| ServerError::ParameterBinary {
        index,
        ty: "array".into(),
        reason,
    };
    let mut rest = value;
    let mut take = |n: usize| -> Result<&[u8], ServerError> {
        if rest.len() < n {
            return Err(bad("truncated".into()));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let dims = i32::from_be_bytes(arr(take(4)?));
    let _has_nulls = take(4)?;
    let elem_oid = u32::from_be_bytes(arr(take(4)?));
    if dims == 0 {
        return Ok("'{}'".into());
    }
    if dims != 1 {
        return Err(ServerError::Unsupported(format!(
            "parameter ${index}: arrays of {dims} dimensions are not supported"
        )));
    }
    let len = i32::from_be_bytes(arr(take(4)?));
    let _lower_bound = take(4)?;
    let elem = Type::from_oid(elem_oid)
        .ok_or_else(|| bad(format!("unknown element type (oid {elem_oid})")))?;
    let len = usize::try_from(len).map_err(|_| bad(format!("negative length {len}")))?;
    let mut items = Vec::with_capacity(len.min(1024));
    for _ in 0..len {
        let n = i32::from_be_bytes(arr(take(4)?));
        match usize::try_from(n) {
            Err(_) => items.push("NULL".to_string()),
            Ok(n) => {
                let item = Bytes::copy_from_slice(take(n)?);
                items.push(literal(index, &elem, Some(&item), true)?);
            }
        }
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes".into()));
    }
    if items.is_empty() {
        return Ok("'{}'".into());
    }
    Ok(format!("ARRAY[{}]", items.join(", ")))
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

fn float_literal(v: f64) -> String {
    if v.is_finite() {
        // `{:?}` keeps a decimal point or exponent, so the literal stays a float.
        format!("{v:?}")
    } else if v.is_nan() {
        "CAST('NaN' AS DOUBLE)".into()
    } else if v > 0.0 {
        "CAST('Infinity' AS DOUBLE)".into()
    } else {
        "CAST('-Infinity' AS DOUBLE)".into()
    }
}

/// Session and transaction commands the server answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    Begin,
    Commit,
    Rollback,
    /// `SAVEPOINT name`.
    Savepoint(String),
    /// `RELEASE [SAVEPOINT] name`.
    Release(String),
    /// `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name`.
    RollbackTo(String),
    Set {
        name: String,
        value: Option<String>,
    },
    Show {
        name: String,
    },
    Discard,
}

/// Recognises BEGIN/COMMIT/ROLLBACK, SET/RESET/SHOW of settings and DISCARD.
pub fn session_command(sql: &str) -> Result<Option<SessionCommand>, ServerError> {
    let words: Vec<Token> = tokenize(sql)?
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let word = |i: usize| -> Option<String> {
        match words.get(i)? {
            Token::Word(w) => Some(w.value.to_ascii_lowercase()),
            _ => None,
        }
    };
    let first = word(0).unwrap_or_default();
    // The savepoint name after `words[i..]` skipping an optional SAVEPOINT keyword.
    let savepoint = |mut i: usize| -> Result<String, ServerError> {
        if word(i).as_deref() == Some("savepoint") && words.len() > i + 1 {
            i += 1;
        }
        let name = identifier(words.get(i))
            .filter(|_| words.len() == i + 1)
            .ok_or_else(|| {
                ServerError::Sql(tidal_sql::SqlError::Syntax {
                    message: format!("{} needs one savepoint name", first.to_uppercase()),
                })
            })?;
        Ok(name)
    };
    Ok(Some(match first.as_str() {
        "begin" | "start" => SessionCommand::Begin,
        "commit" | "end" => SessionCommand::Commit,
        "savepoint" => SessionCommand::Savepoint(savepoint(1)?),
        "release" => SessionCommand::Release(savepoint(1)?),
        "rollback" | "abort" => {
            let mut i = 1;
            if matches!(word(i).as_deref(), Some("work" | "transaction")) {
                i += 1;
            }
            if word(i).as_deref() == Some("to") {
                SessionCommand::RollbackTo(savepoint(i + 1)?)
            } else {
                SessionCommand::Rollback
            }
        }
        "discard" => SessionCommand::Discard,
        // The whole name: `hnsw.ef_search` is three tokens.
        "reset" if words.len() >= 2 => SessionCommand::Set {
            name: words[1..]
                .iter()
                .map(|t| t.to_string())
                .filter(|t| t != ";")
                .collect::<String>()
                .to_ascii_lowercase(),
            value: None,
        },
        "show"
            if !matches!(
                word(1).as_deref(),
                Some("signals" | "profiles" | "relationships")
            ) && words.len() >= 2 =>
        {
            let name: String = words[1..].iter().map(|t| t.to_string()).collect();
            SessionCommand::Show {
                name: name.to_ascii_lowercase(),
            }
        }
        "set" => {
            let mut i = 1;
            if matches!(word(i).as_deref(), Some("session" | "local")) {
                i += 1;
            }
            // SET TIME ZONE x
            let name =
                if word(i).as_deref() == Some("time") && word(i + 1).as_deref() == Some("zone") {
                    i += 2;
                    "timezone".to_string()
                } else {
                    let mut name = word(i).unwrap_or_default();
                    i += 1;
                    while words.get(i) == Some(&Token::Period) {
                        name.push('.');
                        name.push_str(&word(i + 1).unwrap_or_default());
                        i += 2;
                    }
                    if matches!(words.get(i), Some(Token::Eq)) || word(i).as_deref() == Some("to") {
                        i += 1;
                    }
                    name
                };
            let value: Vec<String> = words[i.min(words.len())..]
                .iter()
                .map(|t| match t {
                    Token::SingleQuotedString(s) => s.clone(),
                    Token::Word(w) => w.value.clone(),
                    other => other.to_string(),
                })
                .collect();
            let value = value.join(" ");
            let value = if value.eq_ignore_ascii_case("default") {
                None
            } else {
                Some(value)
            };
            SessionCommand::Set { name, value }
        }
        _ => return Ok(None),
    }))
}

/// The statement's first word, lower-cased (letters only): a cheap look at what kind of
/// statement it is before tokenizing.
pub(crate) fn first_word(sql: &str) -> String {
    sql.trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// SQL-level `PREPARE name AS …` / `EXECUTE name(…)` are refused (0A000): DataFusion
/// would keep them in the one session state all connections share, so one client's
/// statements would be visible to, and replaceable by, every other. Drivers prepare
/// through the protocol (Parse/Bind/Execute), which is per connection.
pub fn refuse_sql_prepare(sql: &str) -> Result<(), ServerError> {
    let first = first_word(sql);
    if first == "prepare" || first == "execute" {
        return Err(ServerError::Unsupported(format!(
            "SQL {} is not supported; prepare statements with the extended protocol \
             (every driver's prepared statements), which keeps them per connection",
            first.to_ascii_uppercase()
        )));
    }
    Ok(())
}

/// `DEALLOCATE [PREPARE] name | ALL`: `Some(Some(name))`, `Some(None)` for ALL, `None`
/// for any other statement.
pub fn deallocate(sql: &str) -> Result<Option<Option<String>>, ServerError> {
    if first_word(sql) != "deallocate" {
        return Ok(None);
    }
    let raw = tokenize_raw(sql)?;
    let words: Vec<&Token> = raw
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let is = |i: usize, w: &str| matches!(words.get(i), Some(Token::Word(x)) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w));
    if !is(0, "deallocate") {
        return Ok(None);
    }
    let at = if is(1, "prepare") && words.len() > 2 {
        2
    } else {
        1
    };
    if words.len() != at + 1 {
        return Err(ServerError::Sql(tidal_sql::SqlError::Syntax {
            message: "DEALLOCATE [PREPARE] name | ALL".into(),
        }));
    }
    if is(at, "all") {
        return Ok(Some(None));
    }
    match identifier(words.get(at).copied()) {
        Some(name) => Ok(Some(Some(name))),
        None => Err(ServerError::Sql(tidal_sql::SqlError::Syntax {
            message: "DEALLOCATE needs a statement name or ALL".into(),
        })),
    }
}

/// A cursor statement: `DECLARE`, `FETCH`/`MOVE` (forward only), `CLOSE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorCommand {
    /// `DECLARE name [NO SCROLL] [INSENSITIVE] CURSOR [WITH[OUT] HOLD] FOR query`.
    Declare {
        name: String,
        hold: bool,
        query: String,
    },
    /// `FETCH`/`MOVE [NEXT | FORWARD [n | ALL] | n | ALL] [FROM | IN] name`; `count`
    /// `None` is ALL. `MOVE` skips the rows instead of returning them.
    Fetch {
        name: String,
        count: Option<u64>,
        skip: bool,
    },
    /// `CLOSE name`, or `CLOSE ALL` (`name` `None`).
    Close { name: Option<String> },
}

/// A cursor or savepoint name: an identifier, folded to lower case unless quoted.
fn identifier(t: Option<&Token>) -> Option<String> {
    match t? {
        Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
        Token::Word(w) => Some(w.value.to_ascii_lowercase()),
        _ => None,
    }
}

/// Recognises the cursor statements (see [`CursorCommand`]); `None` for anything else.
pub fn cursor_command(sql: &str) -> Result<Option<CursorCommand>, ServerError> {
    let first = first_word(sql);
    if !matches!(first.as_str(), "declare" | "fetch" | "move" | "close") {
        return Ok(None);
    }
    let raw = tokenize_raw(sql)?;
    let words: Vec<&Token> = raw
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let kw = |i: usize| -> String {
        match words.get(i) {
            Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_ascii_lowercase(),
            _ => String::new(),
        }
    };
    let syntax = |message: String| ServerError::Sql(tidal_sql::SqlError::Syntax { message });
    Ok(Some(match first.as_str() {
        "declare" => {
            let name = identifier(words.get(1).copied())
                .ok_or_else(|| syntax("DECLARE needs a cursor name".into()))?;
            let mut i = 2;
            let mut hold = false;
            loop {
                match kw(i).as_str() {
                    "insensitive" | "asensitive" => i += 1,
                    "no" if kw(i + 1) == "scroll" => i += 2,
                    "scroll" | "binary" => {
                        return Err(ServerError::Unsupported(format!(
                            "DECLARE ... {} CURSOR is not supported (cursors scan forward and \
                             return rows in the format each FETCH asks for)",
                            kw(i).to_ascii_uppercase()
                        )));
                    }
                    "cursor" => {
                        i += 1;
                        break;
                    }
                    _ => {
                        return Err(syntax(
                            "DECLARE name CURSOR FOR query: CURSOR expected".into(),
                        ));
                    }
                }
            }
            match (kw(i).as_str(), kw(i + 1).as_str()) {
                ("with", "hold") => {
                    hold = true;
                    i += 2;
                }
                ("without", "hold") => i += 2,
                _ => {}
            }
            if kw(i) != "for" {
                return Err(syntax("DECLARE name CURSOR FOR query: FOR expected".into()));
            }
            // The query is the statement's text after FOR, exactly as written.
            let for_token = words[i];
            let at = raw
                .iter()
                .position(|t| std::ptr::eq(t, for_token))
                .map_or(raw.len(), |p| p + 1);
            let query: String = raw[at..].iter().map(render).collect();
            if query.trim().is_empty() {
                return Err(syntax("DECLARE ... FOR needs a query".into()));
            }
            CursorCommand::Declare {
                name,
                hold,
                query: query.trim().to_string(),
            }
        }
        "fetch" | "move" => {
            let mut i = 1;
            let count = match kw(i).as_str() {
                "next" => {
                    i += 1;
                    Some(1)
                }
                "all" => {
                    i += 1;
                    None
                }
                "forward" => {
                    i += 1;
                    match (kw(i).as_str(), words.get(i)) {
                        ("all", _) => {
                            i += 1;
                            None
                        }
                        (_, Some(Token::Number(n, _))) => {
                            i += 1;
                            Some(fetch_count(n)?)
                        }
                        _ => Some(1),
                    }
                }
                "prior" | "first" | "last" | "absolute" | "relative" | "backward" => {
                    return Err(ServerError::ForwardOnly);
                }
                _ => match words.get(i) {
                    Some(Token::Number(n, _)) => {
                        i += 1;
                        Some(fetch_count(n)?)
                    }
                    Some(Token::Minus) => return Err(ServerError::ForwardOnly),
                    _ => Some(1),
                },
            };
            if matches!(kw(i).as_str(), "from" | "in") {
                i += 1;
            }
            let name = identifier(words.get(i).copied())
                .ok_or_else(|| syntax(format!("{} needs a cursor name", first.to_uppercase())))?;
            if words.len() > i + 1 {
                return Err(syntax(format!(
                    "unexpected {} after the cursor name",
                    words[i + 1]
                )));
            }
            CursorCommand::Fetch {
                name,
                count,
                skip: first == "move",
            }
        }
        _ => {
            let name = if kw(1) == "all" {
                None
            } else {
                Some(
                    identifier(words.get(1).copied())
                        .ok_or_else(|| syntax("CLOSE needs a cursor name or ALL".into()))?,
                )
            };
            if words.len() > 2 {
                return Err(syntax(format!("unexpected {} after CLOSE", words[2])));
            }
            CursorCommand::Close { name }
        }
    }))
}

/// A FETCH count: a positive integer (FETCH 0 re-reads the current row, which needs a
/// scrollable cursor).
fn fetch_count(n: &str) -> Result<u64, ServerError> {
    match n.parse::<u64>() {
        Ok(0) => Err(ServerError::Unsupported(
            "FETCH 0 (the current row again) needs a scrollable cursor".into(),
        )),
        Ok(n) => Ok(n),
        Err(_) => Err(ServerError::Sql(tidal_sql::SqlError::Syntax {
            message: format!("FETCH count {n} is not a positive integer"),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_errors_have_postgres_sqlstates() {
        let state = |ty: Type, v: &[u8], binary: bool| {
            literal(1, &ty, Some(&Bytes::copy_from_slice(v)), binary).map_err(|e| e.sqlstate())
        };
        assert_eq!(state(Type::INT4, b"3000000000", false), Err("22003"));
        assert_eq!(state(Type::INT2, b"40000", false), Err("22003"));
        assert_eq!(
            state(Type::INT4, b"-2147483648", false).as_deref(),
            Ok("-2147483648")
        );
        assert_eq!(state(Type::INT8, b"abc", false), Err("22P02"));
        assert_eq!(
            state(Type::INT8, b"99999999999999999999", false),
            Err("22003")
        );
        assert_eq!(state(Type::INT8, b"1.5", false), Err("22P02"));
        assert_eq!(state(Type::TEXT, &[0x66, 0xff], false), Err("22021"));
        assert_eq!(state(Type::INT8, &[0, 1, 2], true), Err("22P03"));
        assert_eq!(state(Type::BOOL, b"maybe", false), Err("22P02"));
    }

    #[test]
    fn sql_prepare_is_refused() {
        for sql in [
            "PREPARE q AS SELECT 1",
            " execute q(1)",
            "Prepare q(int) AS SELECT $1",
        ] {
            assert_eq!(
                refuse_sql_prepare(sql).unwrap_err().sqlstate(),
                "0A000",
                "{sql}"
            );
        }
        for sql in [
            "SELECT 'PREPARE'",
            "prepared",
            "executes",
            "DEALLOCATE PREPARE ALL",
        ] {
            assert!(refuse_sql_prepare(sql).is_ok(), "{sql}");
        }
    }

    #[test]
    fn deallocate_statements() {
        let d = |s: &str| deallocate(s).unwrap();
        assert_eq!(d("DEALLOCATE ALL"), Some(None));
        assert_eq!(d("deallocate prepare all"), Some(None));
        assert_eq!(d("DEALLOCATE \"_pg3_1\""), Some(Some("_pg3_1".into())));
        assert_eq!(d("DEALLOCATE S_1"), Some(Some("s_1".into())));
        assert_eq!(
            d("DEALLOCATE PREPARE prepare"),
            Some(Some("prepare".into()))
        );
        assert_eq!(d("SELECT 1"), None);
        assert_eq!(d("deallocated"), None);
        for bad in ["DEALLOCATE", "DEALLOCATE a b", "DEALLOCATE 1"] {
            assert_eq!(deallocate(bad).unwrap_err().sqlstate(), "42601", "{bad}");
        }
    }

    #[test]
    fn cursor_commands() {
        let c = |s: &str| cursor_command(s).unwrap();
        assert_eq!(
            c("DECLARE \"Pages\" NO SCROLL CURSOR WITH HOLD FOR SELECT 'a;''b' FROM t"),
            Some(CursorCommand::Declare {
                name: "Pages".into(),
                hold: true,
                query: "SELECT 'a;''b' FROM t".into()
            })
        );
        assert_eq!(
            c("declare Pg cursor for select 1"),
            Some(CursorCommand::Declare {
                name: "pg".into(),
                hold: false,
                query: "select 1".into()
            })
        );
        let fetch = |name: &str, count, skip| {
            Some(CursorCommand::Fetch {
                name: name.into(),
                count,
                skip,
            })
        };
        assert_eq!(
            c("FETCH FORWARD 7 FROM \"pages\""),
            fetch("pages", Some(7), false)
        );
        assert_eq!(c("fetch c"), fetch("c", Some(1), false));
        assert_eq!(c("FETCH NEXT IN c"), fetch("c", Some(1), false));
        assert_eq!(c("FETCH ALL c"), fetch("c", None, false));
        assert_eq!(c("FETCH FORWARD ALL FROM c"), fetch("c", None, false));
        assert_eq!(c("FETCH 3 c"), fetch("c", Some(3), false));
        assert_eq!(c("MOVE FORWARD 2 IN c"), fetch("c", Some(2), true));
        assert_eq!(
            c("CLOSE c"),
            Some(CursorCommand::Close {
                name: Some("c".into())
            })
        );
        assert_eq!(c("close all"), Some(CursorCommand::Close { name: None }));
        assert_eq!(c("SELECT 1"), None);
        assert_eq!(c("fetched"), None);
        for bad in [
            "FETCH BACKWARD 1 FROM c",
            "FETCH -1 FROM c",
            "FETCH PRIOR FROM c",
        ] {
            assert_eq!(
                cursor_command(bad).unwrap_err().sqlstate(),
                "55000",
                "{bad}"
            );
        }
        for bad in [
            "FETCH 0 FROM c",
            "DECLARE c SCROLL CURSOR FOR SELECT 1",
            "DECLARE c BINARY CURSOR FOR SELECT 1",
        ] {
            assert_eq!(
                cursor_command(bad).unwrap_err().sqlstate(),
                "0A000",
                "{bad}"
            );
        }
        for bad in [
            "DECLARE c CURSOR SELECT 1",
            "DECLARE c CURSOR FOR",
            "DECLARE CURSOR FOR SELECT 1",
            "FETCH FROM",
            "FETCH 2 FROM c d",
            "CLOSE",
            "CLOSE a b",
        ] {
            assert_eq!(
                cursor_command(bad).unwrap_err().sqlstate(),
                "42601",
                "{bad}"
            );
        }
    }

    #[test]
    fn split_respects_strings_and_comments() {
        let parts =
            split("SELECT ';' AS a; -- c;\nSELECT 2;;  ; INSERT INTO t VALUES ('x;y')").unwrap();
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert!(
            split(" ; -- only a comment\n ; /* and another */")
                .unwrap()
                .is_empty()
        );
        assert!(parts[0].contains("';'"));
        assert!(parts[2].contains("'x;y'"));
    }

    #[test]
    fn split_and_bind_keep_escapes() {
        let sql = "SELECT 'it''s; ok' AS a, E'x\\'y', \"we\"\"ird\"; SELECT $$do;l$$";
        let parts = split(sql).unwrap();
        assert_eq!(
            parts,
            vec![
                "SELECT 'it''s; ok' AS a, 'x''y', \"we\"\"ird\"".to_string(),
                " SELECT $$do;l$$".to_string()
            ]
        );
        let lits = vec!["'o''k'".to_string()];
        assert_eq!(
            bind("SELECT 'it''s', $1", &lits).unwrap(),
            "SELECT 'it''s', 'o''k'"
        );
    }

    #[test]
    fn clause_parameters_type_and_stand_in_for_tidal_literals() {
        let mut params = vec![None, None, None, Some(Type::INT4)];
        let sql = "SEARCH items QUERY $1 FOR USER $2 WHERE category = $4 LIMIT $3";
        let described = clause_parameters(sql, &mut params).unwrap().unwrap();
        assert_eq!(
            params,
            vec![
                Some(Type::TEXT),
                Some(Type::INT8),
                Some(Type::INT8),
                Some(Type::INT4)
            ]
        );
        assert_eq!(
            described,
            "SEARCH items QUERY 'x' FOR USER 1 WHERE category = 1 LIMIT 1"
        );
        assert!(
            clause_parameters("SEARCH items QUERY 'q'", &mut [])
                .unwrap()
                .is_none()
        );
        // A given type is kept.
        let mut params = vec![Some(Type::VARCHAR)];
        clause_parameters("SEARCH items QUERY $1", &mut params).unwrap();
        assert_eq!(params, vec![Some(Type::VARCHAR)]);
    }

    #[test]
    fn bind_replaces_placeholders_outside_strings() {
        let lits = vec!["42".to_string(), "'it''s'".to_string()];
        let sql = bind("SELECT $1, '$2', $2 FROM t WHERE id = $1", &lits).unwrap();
        assert_eq!(sql, "SELECT 42, '$2', 'it''s' FROM t WHERE id = 42");
        assert!(bind("SELECT $3", &lits).is_err());
        assert_eq!(placeholder_count("SELECT $1, $12, '$40'").unwrap(), 12);
    }

    #[test]
    fn binary_parameters_decode() {
        let b = Bytes::from(42i64.to_be_bytes().to_vec());
        assert_eq!(literal(1, &Type::INT8, Some(&b), true).unwrap(), "42");
        let b = Bytes::from(1.5f64.to_be_bytes().to_vec());
        assert_eq!(literal(1, &Type::FLOAT8, Some(&b), true).unwrap(), "1.5");
        let b = Bytes::from(0i64.to_be_bytes().to_vec());
        assert_eq!(
            literal(1, &Type::TIMESTAMP, Some(&b), true).unwrap(),
            "CAST('2000-01-01 00:00:00' AS TIMESTAMP)"
        );
        assert!(literal(1, &Type::INT8, Some(&Bytes::from_static(b"12")), true).is_err());
        let t = Bytes::from_static(b"o'k");
        assert_eq!(literal(1, &Type::TEXT, Some(&t), false).unwrap(), "'o''k'");
        assert!(literal(1, &Type::INT4, Some(&Bytes::from_static(b"x1")), false).is_err());
    }

    #[test]
    fn binary_array_parameters_decode() {
        // {"a b", NULL, "it's"} as text[]: ndim, has_null, elem oid, len, lbound, items.
        let mut b = Vec::new();
        for v in [1i32, 1, Type::TEXT.oid() as i32, 3, 1] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        for item in [Some("a b"), None, Some("it's")] {
            match item {
                Some(s) => {
                    b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        let v = Bytes::from(b.clone());
        assert_eq!(
            literal(1, &Type::TEXT_ARRAY, Some(&v), true).unwrap(),
            "ARRAY['a b', NULL, 'it''s']"
        );
        let truncated = Bytes::from(b[..b.len() - 1].to_vec());
        assert!(literal(1, &Type::TEXT_ARRAY, Some(&truncated), true).is_err());
        // Text-format arrays go through the TEXT[] cast (which parses `{...}`).
        let t = Bytes::from_static(b"{r,\"p q\"}");
        assert_eq!(
            literal(1, &Type::TEXT_ARRAY, Some(&t), false).unwrap(),
            "CAST('{r,\"p q\"}' AS TEXT[])"
        );
        let n = Bytes::from_static(b"{1,2}");
        assert_eq!(
            literal(1, &Type::INT8_ARRAY, Some(&n), false).unwrap(),
            "CAST(CAST('{1,2}' AS TEXT[]) AS BIGINT[])"
        );
        // An empty array has no dimensions.
        let mut e = Vec::new();
        for v in [0i32, 0, Type::INT8.oid() as i32] {
            e.extend_from_slice(&v.to_be_bytes());
        }
        let e = Bytes::from(e);
        assert_eq!(
            literal(1, &Type::INT8_ARRAY, Some(&e), true).unwrap(),
            "'{}'"
        );
    }

    #[test]
    fn session_commands() {
        use SessionCommand::*;
        assert_eq!(session_command("BEGIN").unwrap(), Some(Begin));
        assert_eq!(session_command("start transaction").unwrap(), Some(Begin));
        // RESET of a dotted name resets that name (it once reset just "hnsw").
        for sql in ["RESET hnsw.ef_search", "reset HNSW.EF_SEARCH;"] {
            assert_eq!(
                session_command(sql).unwrap(),
                Some(Set {
                    name: "hnsw.ef_search".into(),
                    value: None
                })
            );
        }
        assert_eq!(
            session_command("SET statement_timeout = '5s'").unwrap(),
            Some(Set {
                name: "statement_timeout".into(),
                value: Some("5s".into())
            })
        );
        assert_eq!(
            session_command("SET TIME ZONE 'UTC'").unwrap(),
            Some(Set {
                name: "timezone".into(),
                value: Some("UTC".into())
            })
        );
        assert_eq!(
            session_command("show DateStyle").unwrap(),
            Some(Show {
                name: "datestyle".into()
            })
        );
        assert_eq!(session_command("SHOW SIGNALS").unwrap(), None);
        assert_eq!(session_command("SHOW PROFILES").unwrap(), None);
        assert_eq!(session_command("SELECT 1").unwrap(), None);
    }
}
