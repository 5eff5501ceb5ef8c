// node-postgres (`pg`) against `tidal serve`: parameterized queries (text parameters,
// as node-postgres sends them), results parsed by pg's type parsers from the column
// type OIDs, transactions, errors with SQLSTATE and a connection that stays usable
// after them. (node-postgres reads every result in text: its `binary` option asks the
// server for binary values but its parser still decodes the bytes as UTF-8 text, against
// PostgreSQL too, so binary results are not checked here.)
//
// Run by the wire test `drivers::node_pg` with TIDAL_URL set (and NODE_PATH pointing at
// the `pg` package); exits non-zero on the first mismatch.

'use strict';

const assert = require('node:assert/strict');
const { Client } = require('pg');

async function expectError(client, sql, params, code) {
  try {
    await client.query(sql, params);
  } catch (e) {
    assert.equal(e.code, code, `SQLSTATE of ${sql}`);
    return;
  }
  assert.fail(`${sql} did not fail`);
}

async function main() {
  const client = new Client({ connectionString: process.env.TIDAL_URL });
  await client.connect();
  try {
    await client.query(
      "CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '7 days' WINDOWS ('24h', 'all')");
    await client.query(
      'CREATE TABLE items (id BIGINT PRIMARY KEY, title TEXT, score DOUBLE, rating REAL, ' +
      'rank INT, flag BOOLEAN, created_at TIMESTAMP, tags TEXT[], embedding VECTOR(3)) ' +
      "WITH (kind = 'item')");

    // node-postgres reads TIMESTAMP (without zone) in the process's local zone; the
    // test runs it with TZ=UTC.
    const ts = new Date(Date.UTC(2025, 10, 24, 16, 0, 0, 123));
    const tags = ['plain', 'b c', 'quo"te', 'com,ma', '', 'NULL', 'back\\slash', 'ünï'];
    const ins = await client.query(
      'INSERT INTO items (id, title, score, rating, rank, flag, created_at, tags, embedding) ' +
      'VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)',
      [1, "it's ü", 0.25, 2.5, -42, true, ts, tags, '[0.5, 1, -2.25]']);
    assert.equal(ins.rowCount, 1, 'INSERT rowCount');
    assert.equal(ins.command, 'INSERT');
    await client.query(
      'INSERT INTO items (id, title, score, rating, rank, flag, created_at, tags, embedding) ' +
      'VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)',
      [2, null, null, null, null, null, null, null, null]);
    // A named (prepared once, reused) statement.
    for (let i = 0; i < 5; i++) {
      await client.query({
        name: 'ins-title',
        text: 'INSERT INTO items (id, title) VALUES ($1, $2)',
        values: [10 + i, `many ${i}`],
      });
    }

    const res = await client.query(
      'SELECT id, title, score, rating, rank, flag, created_at, tags, embedding ' +
      'FROM items WHERE id IN (1, 2) ORDER BY id');
    assert.deepEqual(res.fields.map((f) => f.name),
      ['id', 'title', 'score', 'rating', 'rank', 'flag', 'created_at', 'tags', 'embedding']);
    assert.deepEqual(res.fields.map((f) => f.dataTypeID),
      [20, 25, 701, 700, 23, 16, 1114, 1009, 16000]);
    // pg leaves int8 as a string (it does not fit a JS number in general).
    assert.deepEqual(res.rows[0], {
      id: '1', title: "it's ü", score: 0.25, rating: 2.5, rank: -42, flag: true,
      created_at: ts, tags, embedding: '[0.5,1,-2.25]',
    });
    assert.deepEqual(res.rows[1], {
      id: '2', title: null, score: null, rating: null, rank: null, flag: null,
      created_at: null, tags: null, embedding: null,
    });

    // Parameters in WHERE.
    const ids = async (sql, params) =>
      (await client.query(sql, params)).rows.map((r) => Number(r.id));
    assert.deepEqual(await ids('SELECT id FROM items WHERE flag = $1', [true]), [1]);
    assert.deepEqual(await ids('SELECT id FROM items WHERE created_at = $1', [ts]), [1]);
    assert.deepEqual(await ids('SELECT id FROM items WHERE rank = $1', [-42]), [1]);
    assert.deepEqual(
      await ids('SELECT id FROM items WHERE id BETWEEN $1 AND $2 ORDER BY id', [10, 12]),
      [10, 11, 12]);

    // Values of types that only arise from expressions.
    const ex = await client.query(
      "SELECT DATE '2024-02-29' AS d, CAST(7 AS SMALLINT) AS s, ARRAY[1, 2, 3] AS a, " +
      "CAST(ARRAY[1, 2, 3] AS INT[]) AS a4, 'x'::bytea AS b, " +
      "TIMESTAMPTZ '2024-01-02 03:04:05+02' AS tz");
    assert.equal(ex.rows[0].s, 7);
    // Integer literals are BIGINT (PostgreSQL: INT), and pg leaves int8 as strings.
    assert.deepEqual(ex.fields.map((f) => f.dataTypeID), [1082, 21, 1016, 1007, 17, 1114]);
    assert.deepEqual(ex.rows[0].a, ['1', '2', '3']);
    assert.deepEqual(ex.rows[0].a4, [1, 2, 3]);
    assert.deepEqual(ex.rows[0].b, Buffer.from('x'));
    // One time zone, UTC: the value is converted and typed TIMESTAMP.
    assert.deepEqual(ex.rows[0].tz, new Date(Date.UTC(2024, 0, 2, 1, 4, 5)));
    assert.deepEqual(ex.rows[0].d, new Date(2024, 1, 29));

    // Several statements in one simple query.
    const multi = await client.query("SELECT 'a' AS one; SELECT 'b' AS two");
    assert.deepEqual(multi.map((r) => r.rows[0]), [{ one: 'a' }, { two: 'b' }]);

    // Signals.
    await client.query(
      'INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES ($1, $2, $3, $4, $5)',
      ['like', 1, 100, 1.0, ts]);
    const n = await client.query("SELECT count(*) AS n FROM signals WHERE signal = 'like'");
    assert.equal(Number(n.rows[0].n), 1);

    // Transactions.
    await client.query('BEGIN');
    await client.query('INSERT INTO items (id, title) VALUES ($1, $2)', [500, 'rolled back']);
    await client.query('ROLLBACK');
    await client.query('BEGIN');
    await client.query('INSERT INTO items (id, title) VALUES ($1, $2)', [501, 'committed']);
    await client.query('COMMIT');
    assert.deepEqual(
      await ids('SELECT id FROM items WHERE id BETWEEN 500 AND 501 ORDER BY id', []), [501]);

    // Errors keep the connection usable.
    await expectError(client, 'SELEC 1', [], '42601');
    await expectError(client, 'SELECT * FROM nope', [], '42P01');
    await expectError(client, 'SELECT nope FROM items WHERE id = $1', [1], '42703');
    await expectError(client, 'SELECT 1 / 0', [], '22012');
    await expectError(client, 'SELECT id FROM items WHERE id = $1', ['not a number'], '22P02');
    assert.deepEqual((await client.query("SELECT 'ok' AS one")).rows, [{ one: 'ok' }]);
  } finally {
    await client.end();
  }
  console.log('node-postgres: ok');
}

main().catch((e) => {
  console.error('node-postgres check failed:', e);
  process.exit(1);
});
