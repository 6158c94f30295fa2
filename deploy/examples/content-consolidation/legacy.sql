-- The legacy schema of a social-media bot: every step of a posting decision in its own table,
-- all keyed by decision_id.
CREATE TABLE content_metadata (decision_id int PRIMARY KEY, topic text NOT NULL, tone text,
                               created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE content_generation_metadata_comprehensive (decision_id int PRIMARY KEY, model text NOT NULL,
                                                         prompt_tokens int, generated_text text NOT NULL);
CREATE TABLE posted_decisions (decision_id int PRIMARY KEY, posted_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE tweets (decision_id int PRIMARY KEY, tweet_id bigint NOT NULL, tweet_text text NOT NULL);
CREATE TABLE posts (decision_id int PRIMARY KEY, platform text NOT NULL, url text);
CREATE TABLE outcomes (decision_id int PRIMARY KEY, outcome text NOT NULL);
CREATE TABLE real_tweet_metrics (decision_id int PRIMARY KEY, likes int NOT NULL, retweets int NOT NULL);
CREATE TABLE tweet_analytics (decision_id int PRIMARY KEY, impressions bigint NOT NULL, engagement_rate numeric(6,4));
