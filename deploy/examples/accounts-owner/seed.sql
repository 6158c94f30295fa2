INSERT INTO users (id, email, name, bio)
SELECT g, 'u' || g || '@example.com', 'user ' || g,
       CASE WHEN g % 3 = 0 THEN (SELECT string_agg(md5(g::text || i), '') FROM generate_series(1, 200) i) END
FROM generate_series(101, 200) g;
INSERT INTO user_stats SELECT g, 1, now() FROM generate_series(121, 210) g;
INSERT INTO addresses SELECT g, 100 + g % 120, g || ' High St', 'Town', 'work' FROM generate_series(251, 400) g;
