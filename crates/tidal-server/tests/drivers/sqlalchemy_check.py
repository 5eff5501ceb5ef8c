"""SQLAlchemy 2 (Core and ORM, on psycopg 3) and pandas against `tidal serve`, the way
a newcomer, an ORM or a BI tool looks at a database: reflection through `inspect()`
(the dialect's own pg_catalog queries), `Table(autoload_with=...)`, ORM sessions,
`pandas.read_sql` / `read_sql_table` / `to_sql`-free reads, and an automap of the schema.

Run by the wire test `drivers::sqlalchemy_pandas` with TIDAL_URL set; exits non-zero on
the first mismatch.
"""

import datetime as dt
import os

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.ext.automap import automap_base

URL = os.environ["TIDAL_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
TS = dt.datetime(2025, 11, 24, 16, 0, 0)


def eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def setup(engine):
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql(
            "CREATE TABLE creators (id BIGINT PRIMARY KEY, name TEXT) "
            "WITH (kind = 'creator')"
        )
        conn.exec_driver_sql(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, creator_id BIGINT, title TEXT, "
            "score DOUBLE, rating REAL, rank INT, flag BOOLEAN, created_at TIMESTAMP, "
            "tags TEXT[], embedding VECTOR(3)) WITH (kind = 'item')"
        )
        conn.exec_driver_sql(
            "CREATE SIGNAL view ON items DECAY EXPONENTIAL HALF_LIFE '1 day' "
            "WINDOWS ('1h', 'all')"
        )


def refused_options(engine):
    """A constraint tidalDB does not enforce is refused, not silently dropped."""
    with engine.connect() as conn:
        for ddl in [
            "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL) WITH (kind = 'user')",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, n INT DEFAULT 3) WITH (kind = 'user')",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, e TEXT UNIQUE) WITH (kind = 'user')",
        ]:
            try:
                conn.exec_driver_sql(ddl)
            except sa.exc.DBAPIError as e:
                eq(e.orig.sqlstate, "0A000", f"SQLSTATE of {ddl!r}")
                conn.rollback()
            else:
                raise AssertionError(f"{ddl!r} was accepted")
    eq(sa.inspect(engine).has_table("users"), False, "no users table created")


def reflection(engine):
    insp = sa.inspect(engine)
    eq(insp.default_schema_name, "public", "default schema")
    eq("public" in insp.get_schema_names(), True, "schema names")
    # `signals` is the event table every database has (INSERT INTO signals ...).
    eq(sorted(insp.get_table_names()), ["creators", "items", "signals"], "get_table_names")
    eq(insp.has_table("items"), True, "has_table(items)")
    eq(insp.has_table("nope"), False, "has_table(nope)")

    cols = insp.get_columns("items")
    eq(
        [c["name"] for c in cols],
        ["id", "creator_id", "title", "score", "rating", "rank", "flag", "created_at",
         "tags", "embedding"],
        "get_columns names",
    )
    by = {c["name"]: c for c in cols}
    eq(type(by["id"]["type"]).__name__, "BIGINT", "id type")
    eq(by["id"]["nullable"], False, "id not nullable")
    eq(type(by["title"]["type"]).__name__, "TEXT", "title type")
    eq(by["title"]["nullable"], True, "title nullable")
    eq(type(by["score"]["type"]).__name__, "DOUBLE_PRECISION", "score type")
    eq(type(by["rating"]["type"]).__name__, "REAL", "rating type")
    eq(type(by["rank"]["type"]).__name__, "INTEGER", "rank type")
    eq(type(by["flag"]["type"]).__name__, "BOOLEAN", "flag type")
    eq(type(by["created_at"]["type"]).__name__, "TIMESTAMP", "created_at type")
    eq(type(by["tags"]["type"]).__name__, "ARRAY", "tags type")
    eq(type(by["tags"]["type"].item_type).__name__, "TEXT", "tags item type")
    # pgvector's type is not one SQLAlchemy knows: it reflects as NullType with a
    # warning, exactly as against PostgreSQL without pgvector-python's SQLAlchemy type.
    eq(type(by["embedding"]["type"]).__name__, "NullType", "embedding type")
    eq(insp.get_columns("creators")[1]["nullable"], True, "other columns are nullable")

    pk = insp.get_pk_constraint("items")
    eq(pk["constrained_columns"], ["id"], "pk columns")
    eq(pk["name"], "items_pkey", "pk name")
    eq(insp.get_foreign_keys("items"), [], "no foreign keys")
    eq(insp.get_unique_constraints("items"), [], "no unique constraints")
    eq(insp.get_check_constraints("items"), [], "no check constraints")
    # The primary key's index is reported by get_pk_constraint, not get_indexes.
    eq(insp.get_indexes("items"), [], "get_indexes")
    eq(insp.get_table_comment("items")["text"], None, "table comment")
    # The state tables are views over the live state.
    views = insp.get_view_names()
    eq({"signal_state", "signal_windows"} <= set(views), True, f"state views {views}")
    eq(insp.get_sequence_names(), [], "no sequences")

    # Everything at once, as Alembic's autogenerate and BI tools do.
    md = sa.MetaData()
    md.reflect(bind=engine)
    eq(sorted(md.tables), ["creators", "items", "signals"], "MetaData.reflect tables")
    return md


def core(engine):
    items = sa.Table("items", sa.MetaData(), autoload_with=engine)
    eq(items.c.id.primary_key, True, "autoloaded primary key")
    with engine.begin() as conn:
        conn.execute(
            items.insert(),
            [
                {"id": 1, "creator_id": 10, "title": "piano for beginners", "score": 0.5,
                 "rating": 4.5, "rank": 3, "flag": True, "created_at": TS,
                 "tags": ["music", "piano"]},
                {"id": 2, "creator_id": 10, "title": "guitar chords", "score": 1.5,
                 "rating": 3.0, "rank": 1, "flag": False, "created_at": TS,
                 "tags": []},
                {"id": 3, "creator_id": 11, "title": None, "score": None,
                 "rating": None, "rank": None, "flag": None, "created_at": None,
                 "tags": None},
            ],
        )
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(items.c.id, items.c.title, items.c.tags)
            .where(items.c.score > 0.1)
            .order_by(items.c.id)
        ).all()
        eq([tuple(r) for r in rows],
           [(1, "piano for beginners", ["music", "piano"]), (2, "guitar chords", [])],
           "Core select")
        n = conn.execute(sa.select(sa.func.count()).select_from(items)).scalar_one()
        eq(n, 3, "Core count")
        got = conn.execute(
            sa.select(items.c.id).where(items.c.title.like("%piano%"))
        ).scalars().all()
        eq(got, [1], "Core LIKE")
    with engine.begin() as conn:
        conn.execute(items.update().where(items.c.id == 2).values(score=2.5))
        conn.execute(items.delete().where(items.c.id == 3))
    with engine.connect() as conn:
        eq(conn.execute(sa.select(items.c.score).where(items.c.id == 2)).scalar_one(), 2.5,
           "Core update")
        eq(conn.execute(sa.select(sa.func.count()).select_from(items)).scalar_one(), 2,
           "Core delete")
        # Signals through SQLAlchemy: text() with bound parameters.
        conn.execute(
            sa.text("INSERT INTO signals (signal, entity_id, user_id) VALUES ('view', :e, :u)"),
            [{"e": 1, "u": 7}, {"e": 1, "u": 8}, {"e": 2, "u": 7}],
        )
        conn.commit()
        got = conn.execute(
            sa.text("SELECT id, window_count('view', id, '1h') AS n FROM items ORDER BY id")
        ).all()
        eq([tuple(r) for r in got], [(1, 2), (2, 1)], "window_count through text()")


class Base(orm.DeclarativeBase):
    pass


class Creator(Base):
    __tablename__ = "creators"
    id: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.Text)


def orm_checks(engine):
    with orm.Session(engine) as s:
        s.add_all([Creator(id=10, name="ana"), Creator(id=11, name="bo")])
        s.commit()
    with orm.Session(engine) as s:
        c = s.get(Creator, 10)
        eq(c.name, "ana", "ORM get")
        c.name = "ana b"
        s.commit()
    with orm.Session(engine) as s:
        names = s.scalars(sa.select(Creator.name).order_by(Creator.id)).all()
        eq(names, ["ana b", "bo"], "ORM update + select")
        s.delete(s.get(Creator, 11))
        s.commit()
        eq(s.scalar(sa.select(sa.func.count()).select_from(Creator)), 1, "ORM delete")
        # A failed flush rolls back; the session stays usable.
        s.add_all([Creator(id=12, name="new"), Creator(id=10, name="again")])
        try:
            s.commit()
        except sa.exc.DBAPIError as e:
            eq(e.orig.sqlstate, "23505", "duplicate key through the ORM")
            s.rollback()
        else:
            raise AssertionError("a duplicate id was accepted")
        eq(s.scalar(sa.select(sa.func.count()).select_from(Creator)), 1, "nothing applied")

    # Automap: classes generated from reflection, with the reflected primary key.
    auto = automap_base()
    auto.prepare(autoload_with=engine)
    Item = auto.classes["items"]
    with orm.Session(engine) as s:
        it = s.get(Item, 1)
        eq((it.id, it.title, it.rank), (1, "piano for beginners", 3), "automap get")


def pandas_checks(engine):
    df = pd.read_sql_table("items", engine)
    eq(list(df.columns),
       ["id", "creator_id", "title", "score", "rating", "rank", "flag", "created_at",
        "tags", "embedding"], "read_sql_table columns")
    eq(df["id"].tolist(), [1, 2], "read_sql_table ids")
    eq(str(df["created_at"].dtype).startswith("datetime64"), True, "timestamp dtype")
    eq(df.loc[0, "created_at"], pd.Timestamp(TS), "timestamp value")
    df = pd.read_sql_table("creators", engine, columns=["name"])
    eq(df["name"].tolist(), ["ana b"], "read_sql_table columns=")
    df = pd.read_sql(
        sa.text("SELECT id, window_count('view', id, 'all') AS views FROM items "
                "WHERE id >= :lo ORDER BY id"),
        engine,
        params={"lo": 1},
    )
    eq(df.to_dict("list"), {"id": [1, 2], "views": [2, 1]}, "read_sql with params")
    df = pd.read_sql("SELECT * FROM signal_state ORDER BY entity_id", engine)
    eq("entity_id" in df.columns, True, "read_sql of a state table")
    chunks = list(pd.read_sql_query("SELECT id FROM items ORDER BY id", engine, chunksize=1))
    eq([c["id"].tolist() for c in chunks], [[1], [2]], "chunked read_sql_query")


def main():
    engine = sa.create_engine(URL)
    setup(engine)
    refused_options(engine)
    reflection(engine)
    core(engine)
    orm_checks(engine)
    pandas_checks(engine)
    engine.dispose()
    print("sqlalchemy_check: ok")


if __name__ == "__main__":
    main()
