"""The feedback store: interactions, feedback, tasks and the adapter registry in SQL (SQLAlchemy).

A library: it imports nothing else of lifelong and takes plain values (URLs, limits).

- `database`: engines (SQLite tuned for durability, PostgreSQL) and Alembic migrations.
- `models`: the tables; `records`: what callers submit; `errors`: what the store raises.
- `interactions`, `feedback`, `tasks`, `registry`, `runs`: store functions per noun. Each takes
  a session first, everything else by keyword, and flushes but never commits: the caller frames
  the transaction (`with sessions.begin() as session: ...`).
- `interaction_log`: the gateway's background, batched writer of interactions.
- `feedback_committer`: group commit for acknowledged feedback at high rates.
- `training_data`: the reads training needs (new feedback, SFT, preference, binary examples).
"""
