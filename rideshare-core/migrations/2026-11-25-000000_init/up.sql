-- Users in creation order (seq), rides with their riders in join order (seq), the replica's
-- bookkeeping (applied log index, next ride id) and the request ids it has applied.
CREATE TABLE users (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL
);

CREATE TABLE rides (
    id BIGINT PRIMARY KEY NOT NULL,
    created_by TEXT NOT NULL,
    at BIGINT NOT NULL,
    source INTEGER NOT NULL,
    destination INTEGER NOT NULL
);
CREATE INDEX rides_route ON rides (source, destination, at, id);
CREATE INDEX rides_creator ON rides (created_by);

CREATE TABLE riders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ride_id BIGINT NOT NULL,
    username TEXT NOT NULL,
    UNIQUE (ride_id, username)
);
CREATE INDEX riders_username ON riders (username);

CREATE TABLE meta (
    key TEXT PRIMARY KEY NOT NULL,
    value BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('next_ride_id', 1), ('applied_index', 0);

CREATE TABLE requests (
    request_id TEXT PRIMARY KEY NOT NULL,
    log_index BIGINT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX requests_log_index ON requests (log_index);
