-- RETRIEVE items USING PROFILE trending LIMIT 50 AT '@AT@', written for PostgreSQL 15
-- over the raw events (benches/peers/retrieve_bench.sh substitutes @AT@, @AT_EPOCH_S@ and
-- @SKIP_LAMBDA_S@ = ln 2 / the skip half-life in seconds).
--   score = velocity('view', '1h') + 2 * velocity('like', '24h') - decay('skip')
--   velocity(s, W) = sum of weight over (at - W, at] / hours(W)
--   decay(s)       = sum of weight * 2^(-(at - ts) / half_life) over ts <= at
-- Diversity (at most 2 per creator_id, greedy in score order) as row_number() per
-- creator: the same top 50 as tidal's greedy rule whenever at least 50 items survive it
-- (tidal's fill rule only matters when fewer do).
WITH win AS (
    SELECT entity_id,
           sum(weight) FILTER (WHERE signal = 'view'
                                 AND ts > TIMESTAMPTZ '@AT@+00' - interval '1 hour') AS view_1h,
           sum(weight) FILTER (WHERE signal = 'like') AS like_24h
    FROM events
    WHERE signal IN ('view', 'like')
      AND ts > TIMESTAMPTZ '@AT@+00' - interval '24 hours'
      AND ts <= TIMESTAMPTZ '@AT@+00'
    GROUP BY entity_id
), skip AS (
    SELECT entity_id,
           sum(weight * exp((date_part('epoch', ts) - @AT_EPOCH_S@) * @SKIP_LAMBDA_S@)) AS skip_decay
    FROM events
    WHERE signal = 'skip' AND ts <= TIMESTAMPTZ '@AT@+00'
    GROUP BY entity_id
), scored AS (
    SELECT i.id, i.creator_id, i.created_at, i.category,
           coalesce(win.view_1h, 0) / 1.0 + 2 * coalesce(win.like_24h, 0) / 24.0
               - coalesce(skip.skip_decay, 0) AS score
    FROM items i
    LEFT JOIN win ON win.entity_id = i.id
    LEFT JOIN skip ON skip.entity_id = i.id
), diverse AS (
    SELECT *, row_number() OVER (PARTITION BY creator_id ORDER BY score DESC, id) AS nth
    FROM scored
)
SELECT id, score, creator_id, created_at, category
FROM diverse
WHERE nth <= 2
ORDER BY score DESC, id
LIMIT 50
