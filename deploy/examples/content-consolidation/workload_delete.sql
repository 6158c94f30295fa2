-- pgbench: the legacy clean-up job removes stages of some decisions.
\set d random(1, 700)
DELETE FROM content_generation_metadata_comprehensive WHERE decision_id = :d;
DELETE FROM tweets WHERE decision_id = :d + 1;
DELETE FROM outcomes WHERE decision_id = :d + 2;
