"""What else would go: objects OUTSIDE the migration that depend on objects inside it.

``DROP ... CASCADE`` would silently take them along (the procedure document's "Foreign
key constraint prevents rollback" answer). The playbook asks the catalog instead:
``pg_depend`` (views through their rewrite rules, foreign keys of other tables, triggers
and policies of other tables calling the migration's functions, column defaults using its
sequences, columns of its types, publication entries), walked transitively, and refuses
the drop while any is found unless the operator names each one in ``include_dependents``.

Not visible to ``pg_depend``, so not found here: plain SQL or PL/pgSQL function bodies
that mention the tables by name (they fail at call time after the rollback).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import psycopg

from ..errors import ConfigurationError, DependentObjectsExist
from .objects import Inventory

# Catalogs whose rows are the migration's objects themselves.
_CLASS_OF_KIND = {
    "table": "pg_class", "view": "pg_class", "sequence": "pg_class", "index": "pg_class",
    "function": "pg_proc", "type": "pg_type", "trigger": "pg_trigger", "policy": "pg_policy",
}

# One step of the walk: what depends on the frontier. An object that is an internal part
# of another (a view's _RETURN rule, an identity sequence, a row type) stands for its owner,
# because dropping it drops the owner.
_STEP = """
SELECT DISTINCT coalesce(o.refclassid, d.classid)::oid, coalesce(o.refobjid, d.objid)::oid,
       CASE WHEN o.refclassid IS NULL THEN d.objsubid ELSE o.refobjsubid END
FROM pg_depend d
JOIN unnest(%s::oid[], %s::oid[]) AS f(classid, objid)
  ON d.refclassid = f.classid AND d.refobjid = f.objid
LEFT JOIN LATERAL (
  SELECT i.refclassid, i.refobjid, i.refobjsubid FROM pg_depend i
  WHERE i.classid = d.classid AND i.objid = d.objid AND i.deptype = 'i' LIMIT 1
) o ON true
WHERE d.deptype IN ('n', 'a', 'i')
"""

# The relation an object belongs to (a constraint's table, a rule's view...), so that a
# constraint on one of the migration's own tables counts as the migration's.
_DESCRIBE = """
SELECT x.classid, x.objid, x.objsubid, ident.type, ident.identity,
       CASE x.classid
         WHEN 'pg_class'::regclass THEN
           coalesce((SELECT indrelid FROM pg_index WHERE indexrelid = x.objid), x.objid)
         WHEN 'pg_constraint'::regclass THEN
           (SELECT nullif(conrelid, 0) FROM pg_constraint WHERE oid = x.objid)
         WHEN 'pg_trigger'::regclass THEN (SELECT tgrelid FROM pg_trigger WHERE oid = x.objid)
         WHEN 'pg_policy'::regclass THEN (SELECT polrelid FROM pg_policy WHERE oid = x.objid)
         WHEN 'pg_attrdef'::regclass THEN (SELECT adrelid FROM pg_attrdef WHERE oid = x.objid)
         WHEN 'pg_rewrite'::regclass THEN (SELECT ev_class FROM pg_rewrite WHERE oid = x.objid)
         WHEN 'pg_type'::regclass THEN
           (SELECT nullif(typrelid, 0) FROM pg_type WHERE oid = x.objid)
       END AS on_relation,
       addr.object_names, addr.object_args
FROM unnest(%s::oid[], %s::oid[], %s::int[]) AS x(classid, objid, objsubid),
     LATERAL pg_identify_object(x.classid, x.objid, x.objsubid) AS ident,
     LATERAL pg_identify_object_as_address(x.classid, x.objid, x.objsubid) AS addr
"""


@dataclass(frozen=True)
class Dependent:
    """An object outside the migration that a drop of the migration would remove."""

    kind: str  # pg_identify_object's type: view, table constraint, trigger, ...
    identity: str  # schema-qualified, e.g. "other_conn_fkey on public.other"
    object_names: tuple[str, ...]
    object_args: tuple[str, ...]
    depends_on: str

    @property
    def label(self) -> str:
        """How the operator names it in ``include_dependents``."""
        return f"{self.kind} {self.identity}"


def _key_set(conn: psycopg.Connection, inventory: Inventory) -> set[tuple[int, int]]:
    keys = set()
    for found in inventory.present:
        catalog = _CLASS_OF_KIND[found.obj.kind]
        classid = conn.execute("SELECT %s::regclass::oid", (catalog,)).fetchone()[0]
        keys.add((classid, found.oid))
    return keys


def find_dependents(conn: psycopg.Connection, inventory: Inventory) -> list[Dependent]:
    """Every object outside the migration that depends, directly or through other
    dependents, on an object the migration created (and which still exists)."""
    ours = _key_set(conn, inventory)
    pg_class = conn.execute("SELECT 'pg_class'::regclass::oid").fetchone()[0]
    our_relations = {objid for classid, objid in ours if classid == pg_class}
    seen: set[tuple[int, int, int]] = set()
    frontier = {(c, o) for c, o in ours}
    reached: list[tuple[int, int, int]] = []
    while frontier:
        rows = conn.execute(
            _STEP, ([c for c, _ in frontier], [o for _, o in frontier])
        ).fetchall()
        frontier = set()
        for classid, objid, objsubid in rows:
            key = (classid, objid, objsubid)
            if key in seen or (classid, objid) in ours:
                continue
            seen.add(key)
            reached.append(key)
            frontier.add((classid, objid))
    if not reached:
        return []
    described = conn.execute(
        _DESCRIBE,
        ([r[0] for r in reached], [r[1] for r in reached], [r[2] for r in reached]),
    ).fetchall()
    found: list[Dependent] = []
    for _classid, _objid, _subid, kind, identity, on_relation, names, args in described:
        if on_relation in our_relations:
            continue  # a part of one of the migration's own tables
        dependent = Dependent(kind, identity, tuple(names or ()), tuple(args or ()),
                              inventory.migration)
        if dependent not in found:
            found.append(dependent)
    return sorted(found, key=lambda d: d.label)


def dependents_table(dependents: Sequence[Dependent],
                     included: Iterable[str] = ()) -> pd.DataFrame:
    included = set(included)
    return pd.DataFrame(
        [{"outside object": d.label, "kind": d.kind,
          "would be dropped": "yes (included)" if d.label in included else "REFUSED"}
         for d in dependents],
        columns=["outside object", "kind", "would be dropped"],
    )


def check_include_dependents(include_dependents: object) -> list[str]:
    """``include_dependents`` as a list of labels; ConfigurationError if malformed."""
    if include_dependents is None:
        return []
    if isinstance(include_dependents, str):  # a list of its characters is no one's intent
        raise ConfigurationError(
            "include_dependents must be a list of labels, got a string "
            f"({include_dependents!r}). Nothing was changed.",
            next_step=f"write it as a list: [{include_dependents!r}].",
        )
    if not isinstance(include_dependents, list | tuple) or not all(
        isinstance(x, str) and x.strip() for x in include_dependents
    ):
        raise ConfigurationError(
            f"include_dependents must be a list of object labels, got {include_dependents!r}. "
            "Nothing was changed.",
            next_step="copy the labels from the 'outside object' column of the dependents "
            "table, e.g. ['view public.coaching_summary'].",
        )
    return [x.strip() for x in include_dependents]


def require_no_unlisted_dependents(dependents: Sequence[Dependent],
                                   include_dependents: Iterable[str]) -> list[Dependent]:
    """The dependents the operator included; DependentObjectsExist while any other exists.
    A label that names nothing is refused too (a typo must not pass as a decision)."""
    included = check_include_dependents(
        include_dependents if isinstance(include_dependents, str) else list(include_dependents))
    labels = {d.label for d in dependents}
    unknown = sorted(set(included) - labels)
    if unknown:
        raise ConfigurationError(
            f"include_dependents names objects that do not depend on the migration: "
            f"{'; '.join(unknown)}. Nothing was changed.",
            next_step="copy labels exactly from the dependents table.",
        )
    refused = [d for d in dependents if d.label not in set(included)]
    if refused:
        listing = "; ".join(d.label for d in refused)
        raise DependentObjectsExist(
            f"Objects outside the migration depend on it and would be dropped with it: "
            f"{listing}. Nothing was changed.",
            next_step="change or remove them first, or, if they must go with the rollback, "
            f"name each under include_dependents: {[d.label for d in refused]!r}.",
        )
    return [d for d in dependents if d.label in set(included)]
