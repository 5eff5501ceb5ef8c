// pgjdbc against `tidal serve`: the driver's connect-time and DatabaseMetaData queries
// (what DBeaver and other JDBC tools issue), typed PreparedStatement parameters, text
// results and, once pgjdbc switches to server-prepared statements, binary ones, batches
// (several Bind/Execute before one Sync), transactions, COPY through CopyManager, and
// errors with their SQLSTATE on a connection that stays usable.
//
// Run by the wire test `drivers::pgjdbc` with TIDAL_JDBC_URL set; exits non-zero on the
// first mismatch.

import java.io.StringReader;
import java.io.StringWriter;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;

import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class JdbcCheck {
    static void eq(Object got, Object want, String what) {
        if (!Objects.deepEquals(got, want)) {
            throw new AssertionError(what + ": got " + show(got) + ", want " + show(want));
        }
    }

    static String show(Object o) {
        return o instanceof Object[] ? Arrays.toString((Object[]) o) : String.valueOf(o);
    }

    static void expectError(Connection c, String sql, String sqlstate) throws SQLException {
        try (Statement st = c.createStatement()) {
            st.execute(sql);
        } catch (SQLException e) {
            eq(e.getSQLState(), sqlstate, "SQLSTATE of " + sql);
            return;
        }
        throw new AssertionError(sql + " did not fail");
    }

    static List<Long> ids(Connection c, String sql) throws SQLException {
        List<Long> out = new ArrayList<>();
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            while (rs.next()) {
                out.add(rs.getLong(1));
            }
        }
        return out;
    }

    public static void main(String[] args) throws Exception {
        String url = System.getenv("TIDAL_JDBC_URL");
        Timestamp ts = Timestamp.valueOf("2025-11-24 16:00:00.123456");
        String[] tags = {"plain", "b c", "quo\"te", "com,ma", "", "NULL", "back\\slash", "ünï"};
        try (Connection c = DriverManager.getConnection(url)) {
            DatabaseMetaData md = c.getMetaData();
            eq(md.getDatabaseProductName(), "PostgreSQL", "product name");
            eq(md.getDatabaseMajorVersion(), 15, "major version");
            try (Statement st = c.createStatement()) {
                st.execute("CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '7 days' "
                        + "WINDOWS ('24h', 'all')");
                st.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, title TEXT, score DOUBLE, "
                        + "rating REAL, rank INT, flag BOOLEAN, created_at TIMESTAMP, tags TEXT[], "
                        + "embedding VECTOR(3)) WITH (kind = 'item')");
            }

            // Metadata, as a JDBC tool browses it.
            try (ResultSet rs = md.getTables(null, null, "items", new String[] {"TABLE"})) {
                eq(rs.next(), true, "getTables finds items");
                eq(rs.getString("TABLE_NAME"), "items", "TABLE_NAME");
                eq(rs.next(), false, "getTables finds only items");
            }
            List<String> cols = new ArrayList<>();
            List<Integer> types = new ArrayList<>();
            try (ResultSet rs = md.getColumns(null, null, "items", null)) {
                while (rs.next()) {
                    cols.add(rs.getString("COLUMN_NAME"));
                    types.add(rs.getInt("DATA_TYPE"));
                }
            }
            eq(cols, List.of("id", "title", "score", "rating", "rank", "flag", "created_at", "tags",
                    "embedding"), "getColumns names");
            eq(types, List.of(Types.BIGINT, Types.VARCHAR, Types.DOUBLE, Types.REAL, Types.INTEGER,
                    Types.BIT, Types.TIMESTAMP, Types.ARRAY, Types.OTHER), "getColumns types");

            String insert = "INSERT INTO items (id, title, score, rating, rank, flag, created_at, "
                    + "tags, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";
            try (PreparedStatement ps = c.prepareStatement(insert)) {
                ps.setLong(1, 1);
                ps.setString(2, "it's ü");
                ps.setDouble(3, 0.25);
                ps.setFloat(4, 2.5f);
                ps.setInt(5, -42);
                ps.setBoolean(6, true);
                ps.setTimestamp(7, ts);
                ps.setArray(8, c.createArrayOf("text", tags));
                ps.setString(9, "[0.5, 1, -2.25]");
                eq(ps.executeUpdate(), 1, "executeUpdate");
                ps.setLong(1, 2);
                ps.setNull(2, Types.VARCHAR);
                ps.setNull(3, Types.DOUBLE);
                ps.setNull(4, Types.REAL);
                ps.setNull(5, Types.INTEGER);
                ps.setNull(6, Types.BOOLEAN);
                ps.setNull(7, Types.TIMESTAMP);
                ps.setNull(8, Types.ARRAY);
                ps.setNull(9, Types.VARCHAR);
                eq(ps.executeUpdate(), 1, "executeUpdate of NULLs");
            }
            // A batch: several Bind/Execute, one Sync.
            try (PreparedStatement ps =
                    c.prepareStatement("INSERT INTO items (id, title) VALUES (?, ?)")) {
                for (int i = 0; i < 20; i++) {
                    ps.setLong(1, 10 + i);
                    ps.setString(2, "batch " + i);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                eq(counts.length, 20, "batch size");
                for (int n : counts) {
                    eq(n, 1, "batch count");
                }
            }

            // pgjdbc sends the first executions unnamed, in text; from prepareThreshold
            // (5) on it uses a named statement and asks for binary results.
            String select = "SELECT id, title, score, rating, rank, flag, created_at, tags, "
                    + "embedding FROM items WHERE id = ?";
            try (PreparedStatement ps = c.prepareStatement(select)) {
                for (int run = 0; run < 8; run++) {
                    ps.setLong(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        eq(rs.next(), true, "row 1, run " + run);
                        eq(rs.getLong(1), 1L, "id");
                        eq(rs.getString(2), "it's ü", "title");
                        eq(rs.getDouble(3), 0.25, "score");
                        eq(rs.getFloat(4), 2.5f, "rating");
                        eq(rs.getInt(5), -42, "rank");
                        eq(rs.getBoolean(6), true, "flag");
                        eq(rs.getTimestamp(7), ts, "created_at, run " + run);
                        Array arr = rs.getArray(8);
                        eq((Object[]) arr.getArray(), tags, "tags, run " + run);
                        eq(rs.getString(9), "[0.5,1,-2.25]", "embedding");
                        eq(rs.next(), false, "one row");
                    }
                    ps.setLong(1, 2);
                    try (ResultSet rs = ps.executeQuery()) {
                        eq(rs.next(), true, "row 2, run " + run);
                        for (int col = 2; col <= 9; col++) {
                            eq(rs.getObject(col), null, "NULL column " + col + ", run " + run);
                        }
                    }
                }
            }
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT id FROM items WHERE created_at = ? AND flag = ? AND rank = ?")) {
                ps.setTimestamp(1, ts);
                ps.setBoolean(2, true);
                ps.setInt(3, -42);
                try (ResultSet rs = ps.executeQuery()) {
                    eq(rs.next() ? rs.getLong(1) : -1L, 1L, "typed WHERE parameters");
                }
            }

            // Signals.
            try (PreparedStatement ps = c.prepareStatement(
                    "INSERT INTO signals (signal, entity_id, user_id, weight, ts) "
                            + "VALUES (?, ?, ?, ?, ?)")) {
                for (int i = 0; i < 3; i++) {
                    ps.setString(1, "like");
                    ps.setLong(2, 1);
                    ps.setLong(3, 100 + i);
                    ps.setDouble(4, 1.0);
                    ps.setTimestamp(5, ts);
                    eq(ps.executeUpdate(), 1, "signal insert");
                }
            }
            eq(ids(c, "SELECT count(*) FROM signals WHERE signal = 'like'"), List.of(3L),
                    "signal count");

            // COPY through CopyManager.
            CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
            StringBuilder csv = new StringBuilder("id,title\n");
            for (int i = 100; i < 200; i++) {
                csv.append(i).append(",\"copied, ").append(i).append("\"\n");
            }
            eq(copy.copyIn("COPY items (id, title) FROM STDIN (FORMAT csv, HEADER true)",
                    new StringReader(csv.toString())), 100L, "copyIn rows");
            StringWriter out = new StringWriter();
            eq(copy.copyOut("COPY (SELECT id, title FROM items WHERE id BETWEEN 100 AND 101 "
                    + "ORDER BY id) TO STDOUT (FORMAT csv)", out), 2L, "copyOut rows");
            eq(out.toString(), "100,\"copied, 100\"\n101,\"copied, 101\"\n", "copyOut text");

            // Transactions.
            c.setAutoCommit(false);
            try (Statement st = c.createStatement()) {
                st.executeUpdate("INSERT INTO items (id, title) VALUES (500, 'rolled back')");
                c.rollback();
                st.executeUpdate("INSERT INTO items (id, title) VALUES (501, 'committed')");
                c.commit();
            }
            c.setAutoCommit(true);
            eq(ids(c, "SELECT id FROM items WHERE id BETWEEN 500 AND 501 ORDER BY id"),
                    List.of(501L), "transaction outcomes");

            // Errors keep the connection usable.
            expectError(c, "SELEC 1", "42601");
            expectError(c, "SELECT * FROM nope", "42P01");
            expectError(c, "SELECT nope FROM items", "42703");
            expectError(c, "SELECT 1 / 0", "22012");
            eq(ids(c, "SELECT 1"), List.of(1L), "usable after errors");
        }
        System.out.println("pgjdbc: ok");
    }
}
