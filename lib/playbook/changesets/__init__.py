"""Change sets: what the playbook knows about a migration (``migration``: the one
:class:`Migration` model, read from ``lib/playbook/migrations/<name>/migration.yaml``), the
objects its SQL creates (``objects``) and what else depends on them (``dependencies``)."""
