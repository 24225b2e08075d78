"""Rollback playbook for PostgreSQL (Supabase) production databases."""

__version__ = "0.1.0"
