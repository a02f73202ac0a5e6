"""Alembic's environment for the feedback store: online migrations on a connection we hand in.

`lifelong.feedback_store.database.upgrade` opens the connection (and its transaction) and puts
it in `config.attributes["connection"]`; there is no alembic.ini. To write a new migration,
autogenerate against a database at head, then review the script by hand:

    from lifelong.feedback_store.database import alembic_config, make_engine
    from alembic import command
    engine = make_engine("sqlite:////tmp/head.db"); ...upgrade(engine)...
    config = alembic_config()
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.revision(config, message="add x to y", autogenerate=True)
"""

from __future__ import annotations

from alembic import context

from lifelong.feedback_store.models import Base

if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; migrate a live database")

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "no connection: run migrations through lifelong.feedback_store.database.upgrade"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
