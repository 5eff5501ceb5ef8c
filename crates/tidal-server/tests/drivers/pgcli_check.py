"""pgcli against `tidal serve`: the queries pgcli runs when it starts (its connection
set-up, time zone, and the completion refresher's search_path / schemata / tables /
columns / foreign keys / views / types / databases / functions queries), completion
built from them, and the backslash commands a user types first (pgspecial's \\l, \\dt,
\\d table, \\df, \\dn) through pgcli's own executor.

Run by the wire test `drivers::pgcli` with TIDAL_URL set; exits non-zero on the first
mismatch.
"""

import os

from pgcli.completion_refresher import CompletionRefresher
from pgcli.pgcompleter import PGCompleter
from pgcli.pgexecute import PGExecute
from pgspecial.main import PGSpecial
from prompt_toolkit.document import Document

URL = os.environ["TIDAL_URL"]


def eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def run(ex, special, sql):
    """All result sets of `sql` as (title, rows, headers, status); fails on an error."""
    out = []
    for title, cur, headers, status, _sql, success, _special in ex.run(sql, pgspecial=special):
        eq(success, True, f"{sql!r} succeeded")
        rows = list(cur) if cur is not None else []
        out.append((title, rows, list(headers or []), status))
    return out


def main():
    ex = PGExecute(dsn=URL)
    special = PGSpecial()
    eq(ex.server_version.split(".")[0], "15", "server_version")
    eq(ex.is_virtual_database(), False, "not a virtual database")
    tz = ex.get_timezone()
    eq(bool(tz), True, "time zone")

    run(ex, special,
        "CREATE TABLE creators (id BIGINT PRIMARY KEY, name TEXT) "
        "WITH (kind = 'creator')")
    run(ex, special,
        "CREATE TABLE items (id BIGINT PRIMARY KEY, creator_id BIGINT, title TEXT, "
        "created_at TIMESTAMP) WITH (kind = 'item')")
    run(ex, special, "INSERT INTO items (id, creator_id, title) VALUES (1, 10, 'piano')")

    # The completion refresher, exactly as pgcli runs it after connecting.
    completer = PGCompleter(smart_completion=True, pgspecial=special, settings={})
    for name, refresher in CompletionRefresher.refreshers.items():
        try:
            refresher(completer, ex)
        except Exception as e:  # noqa: BLE001 - name the refresher that broke
            raise AssertionError(f"pgcli refresher {name!r} failed: {e!r}") from e

    eq(ex.search_path()[0] in ("pg_catalog", "public"), True, "search_path")
    eq("public" in ex.schemata(), True, "schemata")
    tables = sorted(t for _schema, t in ex.tables())
    eq("items" in tables and "creators" in tables, True, f"tables {tables}")
    cols = [(t, c) for _s, t, c, _ty, _def, _dv in ex.table_columns() if t == "items"]
    eq([c for _t, c in cols], ["id", "creator_id", "title", "created_at"], "table_columns")
    eq(list(ex.foreignkeys()), [], "foreign keys")
    eq([d for d in ex.databases()], ["tidal"], "databases")
    fnames = {f.func_name for f in ex.functions()}
    eq("window_count" in fnames, True, "tidal's functions are listed")

    def complete(text):
        doc = Document(text=text, cursor_position=len(text))
        return {c.text for c in completer.get_completions(doc, None)}

    eq("items" in complete("SELECT * FROM "), True, "table completion")
    got = complete("SELECT * FROM items WHERE ")
    eq("creator_id" in got and "title" in got, True, f"column completion {sorted(got)[:10]}")

    # The backslash commands a newcomer types first.
    (_t, rows, headers, _st), = run(ex, special, "\\l")
    eq([r[0] for r in rows], ["tidal"], "\\l names")
    (_t, rows, _h, _st), = run(ex, special, "\\dt")
    # `signals` (the event history) is a table too; the state tables are views.
    eq(sorted(r[1] for r in rows), ["creators", "items", "signals"], "\\dt names")
    res = run(ex, special, "\\d items")
    cols = [r[0] for r in res[0][1]]
    eq(cols, ["id", "creator_id", "title", "created_at"], "\\d items columns")
    footer = " ".join(str(x) for x in res[0][3:]) if res else ""
    eq("items_pkey" in (res[0][3] or "") or "items_pkey" in footer, True, "\\d shows the key")
    run(ex, special, "\\dn")
    run(ex, special, "\\df window_count")

    # Ordinary statements through pgcli's executor, and an error it reports.
    (_t, rows, headers, _st), = run(ex, special, "SELECT id, title FROM items")
    eq((headers, rows), (["id", "title"], [(1, "piano")]), "SELECT through pgcli")
    results = list(ex.run("SELECT * FROM nope", pgspecial=special,
                          exception_formatter=lambda e: str(e), on_error_resume=True))
    eq(results[0][5], False, "an error is reported as a failed result")
    eq(ex.valid_transaction(), False, "autocommit: no open transaction after an error")
    print("pgcli_check: ok")


if __name__ == "__main__":
    main()
