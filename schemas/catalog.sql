-- Catalog views of an l2s-data store (format version 2).
-- The store registers each committed table as a raw relation named _<table> (pyarrow datasets
-- over the committed Parquet parts; the manifests of a local store through DuckDB's own Parquet
-- reader, over exactly the snapshot's files; all scanned lazily), then runs this file on an in-memory DuckDB
-- connection before locking it. Parts are content-addressed and may repeat rows (the same
-- samples put twice), so those views deduplicate. Manifests never repeat a key: the snapshot
-- registers only live files, and _excluded lists the attempts whose rows do not count
-- (tombstoned, or the loser of a double commit).
CREATE VIEW samples AS
    SELECT DISTINCT ON (sample_id) * FROM _samples ORDER BY sample_id;
CREATE VIEW memberships AS
    SELECT DISTINCT * FROM _memberships;
CREATE VIEW recipes AS
    SELECT DISTINCT ON (recipe_id, name) * FROM _recipes ORDER BY recipe_id, name, created_at;
CREATE VIEW manifests AS
    SELECT * FROM _manifests WHERE attempt NOT IN (SELECT attempt FROM _excluded);
-- A run may be committed more than once (a status that changes): its latest row counts.
CREATE VIEW runs AS
    SELECT DISTINCT ON (run_id) * FROM _runs ORDER BY run_id, created_at DESC;
-- One row per (run, method, alpha, sample), however many processes evaluated the same config:
-- as with a shard committed twice, the first commit counts (the earliest created_at; equal
-- times fall to the smaller response, then scores, so every reader picks the same row).
CREATE VIEW evaluations AS
    SELECT DISTINCT ON (run_id, method, alpha, sample_id) * FROM _evaluations
    ORDER BY run_id, method, alpha, sample_id, created_at, response, scores_json;
CREATE VIEW errors AS
    SELECT DISTINCT * FROM _errors;
CREATE VIEW extractions AS
    SELECT DISTINCT ON (run_id) * FROM _extractions ORDER BY run_id, created_at;
-- One row per committed shard attempt and key (recipe, view, position, layer).
CREATE VIEW shards AS
    SELECT shard, attempt, recipe_id, view, position, layer, dtype, dim,
           count(*) AS rows, min(written_at) AS written_at
    FROM manifests GROUP BY ALL;
