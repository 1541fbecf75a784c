"""The database and what rides on it: units of work, the transactional outbox, idempotency records,
expiry, group commit, migrations."""
