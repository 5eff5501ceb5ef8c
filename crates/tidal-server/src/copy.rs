//! COPY over the wire: `COPY signals|items|users|creators|<relationship> [(cols)] FROM STDIN` in text or
//! CSV (one atomic engine write for the whole COPY; a bad row names its line and
//! nothing is applied), and `COPY table|(query) TO STDOUT` streamed row by row.

use tidal::datafusion::arrow::array::{Array, RecordBatch};
use tidal::datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use tidal::datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use tidal::datafusion::sql::sqlparser::parser::Parser;
use tidal_core::{ColumnType, EntityId, EntityKind, Schema, Timestamp, Value};
use tidal_engine::Engine;

use crate::{ServerError, encode};

/// Raw COPY input accepted in one statement (it becomes one transaction, which the
/// engine caps at 256 MiB of encoded operations anyway).
pub const COPY_BYTES_MAX: usize = 256 << 20;

/// Text or CSV, with PostgreSQL's option defaults.
#[derive(Debug, Clone)]
pub struct CopyFormat {
    pub csv: bool,
    pub delimiter: char,
    pub null: String,
    pub header: bool,
    pub quote: char,
    pub escape: char,
}

impl CopyFormat {
    fn text() -> CopyFormat {
        CopyFormat {
            csv: false,
            delimiter: '\t',
            null: "\\N".into(),
            header: false,
            quote: '"',
            escape: '"',
        }
    }
}

/// A parsed COPY statement.
#[derive(Debug, Clone)]
pub enum CopyCommand {
    In {
        table: String,
        columns: Vec<String>,
        format: CopyFormat,
    },
    /// `query` is the SQL whose rows are sent.
    Out { query: String, format: CopyFormat },
}

fn syntax(message: impl Into<String>) -> ServerError {
    ServerError::Sql(tidal_sql::SqlError::Syntax {
        message: message.into(),
    })
}

/// Parses `sql` if it is a COPY statement.
pub fn parse(sql: &str) -> Result<Option<CopyCommand>, ServerError> {
    let first = sql.trim_start().get(..4).unwrap_or("");
    if !first.eq_ignore_ascii_case("copy") {
        return Ok(None);
    }
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| syntax(e.to_string()))?;
    let [
        Statement::Copy {
            source,
            to,
            target,
            options,
            legacy_options,
            ..
        },
    ] = stmts.as_slice()
    else {
        return Err(syntax("expected one COPY statement"));
    };
    let mut format = CopyFormat::text();
    let mut delimiter = None;
    let mut null = None;
    for o in options {
        match o {
            CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                "csv" => format.csv = true,
                "text" => format.csv = false,
                other => {
                    return Err(ServerError::Unsupported(format!(
                        "COPY format {other} is not supported (use text or csv)"
                    )));
                }
            },
            CopyOption::Delimiter(c) => delimiter = Some(*c),
            CopyOption::Null(s) => null = Some(s.clone()),
            CopyOption::Header(h) => format.header = *h,
            CopyOption::Quote(c) => format.quote = *c,
            CopyOption::Escape(c) => format.escape = *c,
            CopyOption::Encoding(e)
                if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            other => {
                return Err(ServerError::Unsupported(format!(
                    "COPY option {other} is not supported"
                )));
            }
        }
    }
    for o in legacy_options {
        match o {
            CopyLegacyOption::Csv(csv) => {
                format.csv = true;
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => format.header = true,
                        CopyLegacyCsvOption::Quote(q) => format.quote = *q,
                        CopyLegacyCsvOption::Escape(e) => format.escape = *e,
                        other => {
                            return Err(ServerError::Unsupported(format!(
                                "COPY option {other} is not supported"
                            )));
                        }
                    }
                }
            }
            CopyLegacyOption::Delimiter(c) => delimiter = Some(*c),
            CopyLegacyOption::Null(s) => null = Some(s.clone()),
            CopyLegacyOption::Header => format.header = true,
            other => {
                return Err(ServerError::Unsupported(format!(
                    "COPY option {other} is not supported"
                )));
            }
        }
    }
    if format.csv {
        format.delimiter = ',';
        format.null = String::new();
    }
    if let Some(d) = delimiter {
        format.delimiter = d;
    }
    if let Some(n) = null {
        format.null = n;
    }
    if format.header && !format.csv {
        return Err(syntax("COPY HEADER is available only in CSV mode"));
    }
    match (to, target, source) {
        (
            false,
            CopyTarget::Stdin,
            CopySource::Table {
                table_name,
                columns,
            },
        ) => Ok(Some(CopyCommand::In {
            table: table_name.to_string().to_ascii_lowercase(),
            columns: columns
                .iter()
                .map(|c| c.value.to_ascii_lowercase())
                .collect(),
            format,
        })),
        (
            true,
            CopyTarget::Stdout,
            CopySource::Table {
                table_name,
                columns,
            },
        ) => {
            let cols = if columns.is_empty() {
                "*".to_string()
            } else {
                columns
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Ok(Some(CopyCommand::Out {
                query: format!("SELECT {cols} FROM {table_name}"),
                format,
            }))
        }
        (true, CopyTarget::Stdout, CopySource::Query(q)) => Ok(Some(CopyCommand::Out {
            query: q.to_string(),
            format,
        })),
        _ => Err(ServerError::Unsupported(
            "only COPY ... FROM STDIN and COPY ... TO STDOUT are supported (files are read \
             and written by the client, e.g. psql's \\copy)"
                .into(),
        )),
    }
}

/// What one COPY row becomes.
#[derive(Debug)]
enum Pending {
    Signal {
        signal: String,
        entity: EntityId,
        user: Option<EntityId>,
        weight: f64,
        ts: Option<Timestamp>,
    },
    Row(Vec<Value>),
    Edge {
        src: EntityId,
        dst: EntityId,
        created_at: Option<Timestamp>,
    },
}

/// Where the rows go and how fields map to columns.
#[derive(Debug)]
enum Target {
    Signals {
        /// For each input field: index into (signal, entity_id, user_id, weight, ts).
        map: Vec<usize>,
    },
    Entity {
        kind: EntityKind,
        /// For each input field: (column index, type).
        map: Vec<(usize, ColumnType)>,
        width: usize,
    },
    /// A relationship's edges.
    Edges {
        name: String,
        /// For each input field: index into (src, dst, created_at).
        map: Vec<usize>,
    },
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::Signals { .. } => "signals",
            Target::Entity { kind, .. } => kind.table_name(),
            Target::Edges { name, .. } => name,
        }
    }
}

/// An in-progress `COPY ... FROM STDIN`.
#[derive(Debug)]
pub struct CopyIn {
    target: Target,
    format: CopyFormat,
    buf: Vec<u8>,
    /// 1-based line number of the next record's first line.
    line: u64,
    header_pending: bool,
    rows: Vec<(u64, Pending)>,
    bytes: usize,
    ended: bool,
    pub error: Option<ServerError>,
    /// The COPY statement's timer: it ends when this does (CopyDone or CopyFail).
    pub timer: Option<crate::metrics::StatementTimer>,
    started: std::time::Instant,
    /// Input bytes at which the next progress line is logged.
    next_report_bytes: usize,
}

/// A bulk COPY logs its progress (rows, MiB, rate) every this many input bytes.
pub const COPY_PROGRESS_BYTES: usize = 64 << 20;

const SIGNAL_COLUMNS: [&str; 5] = ["signal", "entity_id", "user_id", "weight", "ts"];

impl CopyIn {
    pub fn new(
        schema: &Schema,
        table: &str,
        columns: &[String],
        format: CopyFormat,
    ) -> Result<CopyIn, ServerError> {
        let target = if table == "signals" {
            let names: Vec<&str> = if columns.is_empty() {
                SIGNAL_COLUMNS.to_vec()
            } else {
                columns.iter().map(String::as_str).collect()
            };
            let mut map = Vec::new();
            for n in &names {
                let i = SIGNAL_COLUMNS.iter().position(|c| c == n).ok_or_else(|| {
                    ServerError::Sql(tidal_sql::SqlError::Engine(
                        tidal_core::CoreError::UnknownColumn {
                            table: "signals".into(),
                            column: n.to_string(),
                        }
                        .into(),
                    ))
                })?;
                if map.contains(&i) {
                    return Err(syntax(format!("column \"{n}\" specified more than once")));
                }
                map.push(i);
            }
            for required in [0, 1] {
                if !map.contains(&required) {
                    return Err(syntax(format!(
                        "COPY signals needs the column \"{}\"",
                        SIGNAL_COLUMNS[required]
                    )));
                }
            }
            Target::Signals { map }
        } else if let Ok(rel) = schema.relationship(table) {
            let names: Vec<&str> = if columns.is_empty() {
                tidal_sql::EDGE_COLUMNS.to_vec()
            } else {
                columns.iter().map(String::as_str).collect()
            };
            let mut map = Vec::new();
            for n in &names {
                let i = tidal_sql::EDGE_COLUMNS
                    .iter()
                    .position(|c| c == n)
                    .ok_or_else(|| {
                        ServerError::Sql(tidal_sql::SqlError::Engine(
                            tidal_core::CoreError::UnknownColumn {
                                table: rel.name.clone(),
                                column: n.to_string(),
                            }
                            .into(),
                        ))
                    })?;
                if map.contains(&i) {
                    return Err(syntax(format!("column \"{n}\" specified more than once")));
                }
                map.push(i);
            }
            for required in [0, 1] {
                if !map.contains(&required) {
                    return Err(syntax(format!(
                        "COPY {} needs the column \"{}\"",
                        rel.name,
                        tidal_sql::EDGE_COLUMNS[required]
                    )));
                }
            }
            Target::Edges {
                name: rel.name.clone(),
                map,
            }
        } else {
            let kind: EntityKind = table.parse().map_err(|_| {
                ServerError::Sql(tidal_sql::SqlError::Engine(
                    tidal_core::CoreError::UnknownRelation {
                        name: table.to_string(),
                    }
                    .into(),
                ))
            })?;
            let def = schema
                .table(kind)
                .map_err(|e| ServerError::Sql(tidal_sql::SqlError::Engine(e.into())))?;
            let names: Vec<String> = if columns.is_empty() {
                def.columns.iter().map(|c| c.name.clone()).collect()
            } else {
                columns.to_vec()
            };
            let mut map = Vec::new();
            for n in &names {
                let i = def.column_index(n).ok_or_else(|| {
                    ServerError::Sql(tidal_sql::SqlError::Engine(
                        tidal_core::CoreError::UnknownColumn {
                            table: table.to_string(),
                            column: n.clone(),
                        }
                        .into(),
                    ))
                })?;
                if map.iter().any(|(j, _)| *j == i) {
                    return Err(syntax(format!("column \"{n}\" specified more than once")));
                }
                map.push((i, def.columns[i].ty));
            }
            Target::Entity {
                kind,
                map,
                width: def.columns.len(),
            }
        };
        Ok(CopyIn {
            header_pending: format.header,
            target,
            format,
            buf: Vec::new(),
            line: 1,
            rows: Vec::new(),
            bytes: 0,
            ended: false,
            error: None,
            timer: None,
            started: std::time::Instant::now(),
            next_report_bytes: COPY_PROGRESS_BYTES,
        })
    }

    /// Columns per row (for the CopyInResponse).
    pub fn columns(&self) -> usize {
        match &self.target {
            Target::Signals { map } => map.len(),
            Target::Entity { map, .. } => map.len(),
            Target::Edges { map, .. } => map.len(),
        }
    }

    /// Consumes a chunk of CopyData. Errors are kept (reported at CopyDone) and the
    /// rest of the data is ignored, as PostgreSQL does.
    pub fn feed(&mut self, data: &[u8]) {
        if self.error.is_some() || self.ended {
            return;
        }
        self.bytes += data.len();
        if self.bytes > COPY_BYTES_MAX {
            self.error = Some(ServerError::Unsupported(format!(
                "COPY input exceeds {COPY_BYTES_MAX} bytes; split it into several COPY \
                 statements (each one is a single transaction)"
            )));
            return;
        }
        self.buf.extend_from_slice(data);
        if let Err(e) = self.drain(false) {
            self.error = Some(e);
        }
        if self.bytes >= self.next_report_bytes {
            self.next_report_bytes = self.bytes + COPY_PROGRESS_BYTES;
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                target_table = self.target.name(),
                rows = self.rows.len(),
                mib = self.bytes >> 20,
                mib_per_s = ((self.bytes >> 20) as f64 / secs) as u64,
                rows_per_s = (self.rows.len() as f64 / secs) as u64,
                "COPY progress (applied as one transaction at the end)"
            );
        }
    }

    /// Parses every complete record in the buffer (all of it when `eof`).
    fn drain(&mut self, eof: bool) -> Result<(), ServerError> {
        let mut start = 0;
        while let Some((end, next, newlines)) = self.record_end(start, eof) {
            let raw = std::str::from_utf8(&self.buf[start..end]).map_err(|_| {
                ServerError::BadParameter {
                    index: 0,
                    reason: format!("COPY line {}: invalid UTF-8", self.line),
                }
            })?;
            let raw = raw.strip_suffix('\r').unwrap_or(raw).to_string();
            let line = self.line;
            self.line += newlines;
            start = next;
            if self.header_pending {
                self.header_pending = false;
                continue;
            }
            // End-of-data, as PostgreSQL reads it in both formats (psql may pass it
            // on); a quoted "\." in CSV is data.
            if raw == "\\." {
                self.ended = true;
                break;
            }
            if raw.is_empty() && eof && start >= self.buf.len() {
                break;
            }
            let fields = if self.format.csv {
                split_csv(&raw, &self.format)
            } else {
                split_text(&raw, &self.format)
            }
            .map_err(|reason| line_err(line, reason))?;
            let pending = self
                .convert(&fields)
                .map_err(|reason| line_err(line, reason))?;
            self.rows.push((line, pending));
        }
        self.buf.drain(..start);
        Ok(())
    }

    /// End of the record starting at `start`: (end of data, start of next, newlines).
    fn record_end(&self, start: usize, eof: bool) -> Option<(usize, usize, u64)> {
        let buf = &self.buf[start..];
        if buf.is_empty() {
            return None;
        }
        let mut in_quotes = false;
        let mut newlines = 0;
        let q = self.format.quote as u8;
        for (i, &b) in buf.iter().enumerate() {
            if self.format.csv && b == q {
                in_quotes = !in_quotes;
            } else if b == b'\n' {
                newlines += 1;
                if !in_quotes {
                    return Some((start + i, start + i + 1, newlines));
                }
            }
        }
        eof.then_some((self.buf.len(), self.buf.len(), newlines))
    }

    fn convert(&self, fields: &[Option<String>]) -> Result<Pending, String> {
        match &self.target {
            Target::Signals { map } => {
                if fields.len() != map.len() {
                    return Err(format!(
                        "expected {} fields, got {}",
                        map.len(),
                        fields.len()
                    ));
                }
                let mut v: [Option<&str>; 5] = [None; 5];
                for (f, &i) in fields.iter().zip(map) {
                    v[i] = f.as_deref();
                }
                let signal = v[0].ok_or("signal is NULL")?.to_string();
                let entity = parse_id(v[1].ok_or("entity_id is NULL")?, "entity_id")?;
                let user = v[2].map(|u| parse_id(u, "user_id")).transpose()?;
                let weight = match v[3] {
                    Some(w) => parse_float(w, "weight")?,
                    None => 1.0,
                };
                let ts = v[4].map(|t| Timestamp::parse(t).map_err(|e| format!("ts: {e}")));
                Ok(Pending::Signal {
                    signal,
                    entity,
                    user,
                    weight,
                    ts: ts.transpose()?,
                })
            }
            Target::Entity { map, width, .. } => {
                if fields.len() != map.len() {
                    return Err(format!(
                        "expected {} fields, got {}",
                        map.len(),
                        fields.len()
                    ));
                }
                let mut row = vec![Value::Null; *width];
                for (f, (i, ty)) in fields.iter().zip(map) {
                    if let Some(text) = f {
                        row[*i] = parse_value(text, *ty)?;
                    }
                }
                Ok(Pending::Row(row))
            }
            Target::Edges { map, .. } => {
                if fields.len() != map.len() {
                    return Err(format!(
                        "expected {} fields, got {}",
                        map.len(),
                        fields.len()
                    ));
                }
                let mut v: [Option<&str>; 3] = [None; 3];
                for (f, &i) in fields.iter().zip(map) {
                    v[i] = f.as_deref();
                }
                Ok(Pending::Edge {
                    src: parse_id(v[0].ok_or("src is NULL")?, "src")?,
                    dst: parse_id(v[1].ok_or("dst is NULL")?, "dst")?,
                    created_at: v[2]
                        .map(|t| Timestamp::parse(t).map_err(|e| format!("created_at: {e}")))
                        .transpose()?,
                })
            }
        }
    }

    /// Parses whatever is buffered as the end of the input, without applying anything
    /// (for the fuzz target).
    #[doc(hidden)]
    pub fn parse_all(&mut self) -> Result<usize, ServerError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.drain(true)?;
        Ok(self.rows.len())
    }

    /// Finishes parsing and applies every row as one transaction. Returns the row count.
    pub fn finish(mut self, engine: &Engine) -> Result<usize, ServerError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.drain(true)?;
        let mut txn = engine.begin();
        let n = self.rows.len();
        for (line, p) in self.rows {
            let r = match (p, &self.target) {
                (
                    Pending::Signal {
                        signal,
                        entity,
                        user,
                        weight,
                        ts,
                    },
                    _,
                ) => txn.signal(&signal, entity, user, weight, ts),
                (Pending::Row(row), Target::Entity { kind, .. }) => txn.insert(*kind, row),
                (
                    Pending::Edge {
                        src,
                        dst,
                        created_at,
                    },
                    Target::Edges { name, .. },
                ) => txn.edge_insert(name, src, dst, created_at),
                (Pending::Row(_) | Pending::Edge { .. }, _) => Ok(()),
            };
            r.map_err(|e| with_line(line, e))?;
        }
        txn.commit()
            .map_err(|e| ServerError::Sql(tidal_sql::SqlError::Engine(e)))?;
        if self.bytes >= COPY_PROGRESS_BYTES {
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                target_table = self.target.name(),
                rows = n,
                mib = self.bytes >> 20,
                rows_per_s = (n as f64 / secs) as u64,
                elapsed_ms = (secs * 1e3) as u64,
                "COPY committed"
            );
        }
        Ok(n)
    }
}

fn line_err(line: u64, reason: String) -> ServerError {
    ServerError::CopyLine {
        line,
        source: Box::new(ServerError::InvalidText(reason)),
    }
}

/// Keeps the engine error's class (so its SQLSTATE) and adds the line.
fn with_line(line: u64, e: tidal_engine::EngineError) -> ServerError {
    ServerError::CopyLine {
        line,
        source: Box::new(ServerError::Sql(tidal_sql::SqlError::Engine(e))),
    }
}

fn parse_id(s: &str, what: &str) -> Result<EntityId, String> {
    let v: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{what}: {s:?} is not an integer"))?;
    u64::try_from(v)
        .map(EntityId)
        .map_err(|_| format!("{what}: {v} is negative"))
}

fn parse_float(s: &str, what: &str) -> Result<f64, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "nan" => Ok(f64::NAN),
        "infinity" | "inf" => Ok(f64::INFINITY),
        "-infinity" | "-inf" => Ok(f64::NEG_INFINITY),
        t => t
            .parse()
            .map_err(|_| format!("{what}: {s:?} is not a number")),
    }
}

fn parse_value(s: &str, ty: ColumnType) -> Result<Value, String> {
    Ok(match ty {
        ColumnType::BigInt | ColumnType::Int => Value::Int(
            s.trim()
                .parse()
                .map_err(|_| format!("{s:?} is not an integer"))?,
        ),
        ColumnType::Double => Value::Double(parse_float(s, "value")?),
        ColumnType::Real => Value::Real(parse_float(s, "value")? as f32),
        ColumnType::Boolean => Value::Bool(match s.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "yes" | "on" | "1" => true,
            "f" | "false" | "no" | "off" | "0" => false,
            _ => return Err(format!("{s:?} is not a boolean")),
        }),
        ColumnType::Text => Value::Text(s.to_string()),
        ColumnType::Timestamp => Value::Timestamp(Timestamp::parse(s).map_err(|e| e.to_string())?),
        ColumnType::TextArray => Value::TextArray(parse_array(s)?),
        ColumnType::Vector(n) => {
            let inner = s
                .trim()
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .ok_or_else(|| format!("{s:?} is not a vector literal like [1,2,3]"))?;
            let v: Vec<f32> = if inner.trim().is_empty() {
                Vec::new()
            } else {
                inner
                    .split(',')
                    .map(|x| {
                        x.trim()
                            .parse::<f32>()
                            .map_err(|_| format!("{x:?} is not a number"))
                    })
                    .collect::<Result<_, _>>()?
            };
            if v.len() != n as usize {
                return Err(format!("expected {n} dimensions, not {}", v.len()));
            }
            Value::Vector(v)
        }
    })
}

/// `{a,"b c",NULL}` → items (NULL items are not allowed in TEXT[] columns).
fn parse_array(s: &str) -> Result<Vec<String>, String> {
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| format!("{s:?} is not an array literal like {{a,b}}"))?;
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    while chars.peek().is_some() {
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => item.extend(chars.next()),
                    Some('"') => break,
                    Some(c) => item.push(c),
                    None => return Err(format!("unterminated quote in {s:?}")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                item.push(c);
                chars.next();
            }
            let t = item.trim().to_string();
            if t.eq_ignore_ascii_case("null") {
                return Err("NULL elements are not allowed in TEXT[] columns".into());
            }
            item = t;
        }
        out.push(item);
        match chars.next() {
            None | Some(',') => {}
            Some(c) => return Err(format!("unexpected {c:?} in array literal")),
        }
    }
    Ok(out)
}

/// PostgreSQL text format: delimiter-separated, `\N` null, backslash escapes.
fn split_text(line: &str, f: &CopyFormat) -> Result<Vec<Option<String>>, String> {
    let mut out = Vec::new();
    for raw in line.split(f.delimiter) {
        if raw == f.null {
            out.push(None);
            continue;
        }
        let mut s = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                s.push(c);
                continue;
            }
            match chars.next() {
                Some('t') => s.push('\t'),
                Some('n') => s.push('\n'),
                Some('r') => s.push('\r'),
                Some('b') => s.push('\u{8}'),
                Some('f') => s.push('\u{c}'),
                Some('v') => s.push('\u{b}'),
                Some(other) => s.push(other),
                None => return Err("line ends with a lone backslash".into()),
            }
        }
        out.push(Some(s));
    }
    Ok(out)
}

/// CSV: quoted fields may hold delimiters, quotes (doubled or escaped) and newlines; an
/// unquoted field equal to the NULL string is NULL.
fn split_csv(line: &str, f: &CopyFormat) -> Result<Vec<Option<String>>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut s = String::new();
        let mut quoted = false;
        if chars.peek() == Some(&f.quote) {
            quoted = true;
            chars.next();
            loop {
                match chars.next() {
                    Some(c) if c == f.escape && chars.peek() == Some(&f.quote) => {
                        s.push(f.quote);
                        chars.next();
                    }
                    Some(c) if c == f.quote => break,
                    Some(c) => s.push(c),
                    None => return Err("unterminated CSV quoted field".into()),
                }
            }
        }
        while let Some(&c) = chars.peek() {
            if c == f.delimiter {
                break;
            }
            if quoted {
                return Err(format!("unexpected {c:?} after a quoted field"));
            }
            s.push(c);
            chars.next();
        }
        out.push(if !quoted && s == f.null {
            None
        } else {
            Some(s)
        });
        if chars.next().is_none() {
            break;
        }
    }
    Ok(out)
}

/// A CSV field, quoted when it must be.
pub fn csv_field(v: &str, f: &CopyFormat) -> String {
    let needs = v.is_empty()
        || v == f.null
        || v.contains(f.delimiter)
        || v.contains(f.quote)
        || v.contains('\n')
        || v.contains('\r');
    if !needs {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push(f.quote);
    for c in v.chars() {
        if c == f.quote || c == f.escape {
            out.push(f.escape);
        }
        out.push(c);
    }
    out.push(f.quote);
    out
}

/// One COPY TO row in text or CSV form, with its line terminator.
pub fn format_row(
    batch: &RecordBatch,
    row: usize,
    f: &CopyFormat,
    out: &mut String,
) -> Result<(), ServerError> {
    for (i, col) in batch.columns().iter().enumerate() {
        if i > 0 {
            out.push(f.delimiter);
        }
        if col.data_type() == &tidal::datafusion::arrow::datatypes::DataType::Null
            || col.is_null(row)
        {
            out.push_str(&f.null);
            continue;
        }
        let mut v = String::new();
        encode::text_value(col, row, &mut v)?;
        if f.csv {
            out.push_str(&csv_field(&v, f));
        } else {
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' if f.delimiter == '\t' => out.push_str("\\t"),
                    c if c == f.delimiter => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
        }
    }
    out.push('\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_text_fields() {
        let csv = CopyFormat {
            csv: true,
            delimiter: ',',
            null: String::new(),
            ..CopyFormat::text()
        };
        assert_eq!(
            split_csv(r#"a,"b,c",,"say ""hi""","""#, &csv).unwrap(),
            vec![
                Some("a".into()),
                Some("b,c".into()),
                None,
                Some("say \"hi\"".into()),
                Some("".into())
            ]
        );
        assert!(split_csv(r#""open"#, &csv).is_err());
        let text = CopyFormat::text();
        assert_eq!(
            split_text("a\\tb\t\\N\tc\\\\d", &text).unwrap(),
            vec![Some("a\tb".into()), None, Some("c\\d".into())]
        );
        assert_eq!(
            parse_array(r#"{x,"y z","q\"uote"}"#).unwrap(),
            vec!["x", "y z", "q\"uote"]
        );
        assert!(parse_array("{a,NULL}").is_err());
        assert!(matches!(
            parse_value("[1, 2]", ColumnType::Vector(2)),
            Ok(Value::Vector(v)) if v == vec![1.0, 2.0]
        ));
        assert!(parse_value("[1]", ColumnType::Vector(2)).is_err());
    }

    #[test]
    fn parses_copy_statements() {
        let c = parse("COPY signals (signal, entity_id) FROM STDIN WITH (FORMAT csv, HEADER true)")
            .unwrap()
            .unwrap();
        assert!(
            matches!(c, CopyCommand::In { ref table, ref columns, ref format }
            if table == "signals" && columns.len() == 2 && format.csv && format.header)
        );
        let c = parse("copy (select 1) to stdout").unwrap().unwrap();
        assert!(matches!(c, CopyCommand::Out { .. }));
        assert!(parse("COPY items FROM '/etc/passwd'").is_err());
        assert!(parse("SELECT 1").unwrap().is_none());
    }
}
