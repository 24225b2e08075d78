"""Reversing any migration: the state before it (the shadow database), the reverse plan
(live compared with that state), and the proof that the plan reached it.

- :mod:`.shadow`: a project's ``supabase/migrations`` folder, and the state before a target
  migration rebuilt from it onto a Supabase-like base, as ``supabase db diff`` builds its
  shadow database.
- :mod:`.schema_diff`: what differs between two databases (migra's engine, plus publication
  membership, default privileges and schema grants, which migra leaves out), as the SQL
  that turns the first into the second.
"""
