-- The new schema: one row per decision and stage.
CREATE TABLE content_queue (decision_id int PRIMARY KEY, topic text, tone text, model text,
                            prompt_tokens int, body text, queued_at timestamptz);
CREATE TABLE posted_content (decision_id int PRIMARY KEY, posted_at timestamptz, tweet_id bigint,
                             text text, platform text, url text);
CREATE TABLE engagement_metrics (decision_id int PRIMARY KEY, outcome text, likes int, retweets int,
                                 impressions bigint, engagement_rate numeric(6,4));
