"""Load: the coaching rollback while the application keeps working (``make soak``).

A bounded loop of application-like transactions (4 threads, each its own session to the
local server on 127.0.0.1: read a profile, write and read journal entries, read the
coaching tables) runs before, during and after notebook 20's export and drop. Measured:
errors and p50/p99/max latency per kind, before and during the rollback. The rollback
states lock_timeout, so the application's queries never wait longer than that (plus the
drop's own short lock hold); profiles and journal see no error at all; coaching reads
fail once the tables are gone, as expected, and are counted apart. No row is lost."""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg import errors as pgerrors

from playbook.runs import begin_run
from playbook.steps import rollback_coaching_tables as steps20

THREADS = 4
MAX_OPS_PER_THREAD = 50_000
MAX_SECONDS = 60.0
LOCK_TIMEOUT_S = 1.0
MARGIN_S = 0.5
EXTRA_MESSAGES = 50_000


@dataclass
class Sample:
    kind: str
    started: float
    seconds: float
    error: str = ""


@dataclass
class Load:
    url: str
    stop: threading.Event = field(default_factory=threading.Event)
    samples: list[Sample] = field(default_factory=list)
    inserted_journal: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def worker(self, seed: int, users: list, virtues: list, connections: list) -> None:
        rng = random.Random(seed)
        ops = [("profiles", "SELECT * FROM public.profiles WHERE id = %s", "user"),
               ("journal", "INSERT INTO public.journal_entries (user_id, virtue_id, title, body) "
                "VALUES (%s, %s, 'load', 'written under load')", "user+virtue"),
               ("journal", "SELECT count(*) FROM public.journal_entries WHERE user_id = %s",
                "user"),
               ("coaching", "SELECT * FROM public.sponsor_chat_messages WHERE connection_id = "
                "%s ORDER BY id DESC LIMIT 20", "connection"),
               ("coaching", "SELECT * FROM public.sponsor_connections WHERE id = %s",
                "connection")]
        deadline = time.monotonic() + MAX_SECONDS
        with psycopg.connect(self.url, autocommit=True, application_name="app-load") as conn:
            for _ in range(MAX_OPS_PER_THREAD):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                kind, query, needs = rng.choice(ops)
                args = {"user": (rng.choice(users),),
                        "user+virtue": (rng.choice(users), rng.choice(virtues)),
                        "connection": (rng.choice(connections),)}[needs]
                started = time.monotonic()
                error = ""
                try:
                    conn.execute(query, args).fetchall() if query.startswith("SELECT") \
                        else conn.execute(query, args)
                    if query.startswith("INSERT"):
                        with self.lock:
                            self.inserted_journal += 1
                except pgerrors.UndefinedTable:
                    error = "table gone"
                except psycopg.Error as exc:
                    error = type(exc).__name__
                self.samples.append(Sample(kind, started, time.monotonic() - started, error))
                time.sleep(0.002)


def _summary(samples: list[Sample]) -> str:
    ok = [s.seconds * 1000 for s in samples if not s.error]
    errors = defaultdict(int)
    for s in samples:
        if s.error:
            errors[s.error] += 1
    if not ok:
        return f"n={len(samples)} errors={dict(errors) or 0}"
    q = statistics.quantiles(ok, n=100) if len(ok) > 1 else [ok[0]] * 99
    return (f"n={len(samples):>6} p50={q[49]:7.2f} ms p99={q[98]:8.2f} ms "
            f"max={max(ok):8.2f} ms errors={dict(errors) or 0}")


@pytest.mark.soak
def test_the_coaching_rollback_under_application_load(demo_db, coaching, tmp_path, capsys):
    with demo_db.connect() as conn:
        conn.execute("INSERT INTO public.sponsor_chat_messages (connection_id, sender_id, body) "
                     "SELECT c.id, c.practitioner_user_id, 'bulk ' || g FROM "
                     "public.sponsor_connections c, generate_series(1, %s) g "
                     "WHERE c.id = 1 + g %% 20", (EXTRA_MESSAGES // 20 * 20,))
        conn.commit()
        users = [r[0] for r in conn.execute("SELECT id FROM public.profiles")]
        virtues = [r[0] for r in conn.execute("SELECT id FROM public.virtues")]
        connections = [r[0] for r in conn.execute("SELECT id FROM public.sponsor_connections")]
        journal_before = conn.execute("SELECT count(*) FROM public.journal_entries").fetchone()[0]
        profiles_before = conn.execute("SELECT count(*) FROM public.profiles").fetchone()[0]
    assert "127.0.0.1" in demo_db.url
    load = Load(demo_db.url)
    threads = [threading.Thread(target=load.worker, args=(i, users, virtues, connections))
               for i in range(THREADS)]
    for thread in threads:
        thread.start()
    time.sleep(3)  # the baseline
    run = begin_run("20_rollback_coaching_tables", mode="execute",
                    confirm_database=demo_db.name)
    rollback_started = time.monotonic()
    steps20.export_data(run, coaching, tmp_path / "export", show_progress=False)
    dropped_at = time.monotonic()
    outcome = steps20.perform_rollback(run, coaching, tmp_path / "export",
                             lock_timeout=f"{int(LOCK_TIMEOUT_S * 1000)}ms")
    rollback_ended = time.monotonic()
    time.sleep(2)
    load.stop.set()
    for thread in threads:
        thread.join(MAX_SECONDS)

    def phase(s: Sample) -> str:
        if s.started < rollback_started:
            return "before"
        if s.started <= rollback_ended:
            return "during"
        return "after"

    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in load.samples:
        groups[(s.kind, phase(s))].append(s)
    lines = [f"soak: {THREADS} application threads, {len(load.samples)} transactions, "
             f"export {dropped_at - rollback_started:.2f} s, drop "
             f"{rollback_ended - dropped_at:.2f} s ("
             f"{outcome.set_index('check').loc['committed', 'observed']}), lock_timeout "
             f"{LOCK_TIMEOUT_S:.1f} s"]
    for kind in ("profiles", "journal", "coaching"):
        for when in ("before", "during", "after"):
            lines.append(f"soak: {kind:<8} {when:<6} {_summary(groups[(kind, when)])}")
    with demo_db.connect() as conn:
        journal_after = conn.execute("SELECT count(*) FROM public.journal_entries").fetchone()[0]
        profiles_after = conn.execute("SELECT count(*) FROM public.profiles").fetchone()[0]
    lost = (journal_before + load.inserted_journal - journal_after) + (profiles_before -
                                                                       profiles_after)
    lines.append(f"soak: rows lost in profiles/journal_entries: {lost}; journal rows written "
                 f"under load: {load.inserted_journal}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))

    assert "committed" in set(outcome["check"])
    assert lost == 0
    protected = [s for s in load.samples if s.kind in ("profiles", "journal")]
    assert [s for s in protected if s.error] == []
    assert groups[("profiles", "before")] and groups[("profiles", "during")]
    slowest = max(s.seconds for s in load.samples if not s.error)
    assert slowest <= LOCK_TIMEOUT_S + MARGIN_S, f"an application query waited {slowest:.2f} s"
    gone = [s for s in load.samples if s.kind == "coaching" and s.error]
    assert gone and {s.error for s in gone} == {"table gone"}
    assert all(phase(s) != "before" for s in gone)
