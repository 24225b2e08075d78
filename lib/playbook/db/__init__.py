"""Talking to PostgreSQL: connecting with stated limits, queries and errors translated for
the operator, names as identifiers, the playbook's advisory locks, what the catalog says
about tables (``catalog``), local and scratch servers, PostgreSQL's programs, fingerprints."""
