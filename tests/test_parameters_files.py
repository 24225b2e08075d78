"""Every shipped parameters file matches its notebook, and can open no gate by accident."""

from __future__ import annotations

import importlib
from pathlib import Path

import papermill
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PARAMETER_FILES = sorted((ROOT / "parameters").glob("*.yaml"))
COMMON = {"database_url_env", "mode", "confirm_database", "answers", "incident_id", "operator"}


def test_every_notebook_has_its_parameters_file():
    notebooks = {p.stem for p in (ROOT / "notebooks").glob("[0-9]*.ipynb")}
    assert notebooks, "the playbook has notebooks"
    assert notebooks == {p.stem for p in PARAMETER_FILES}


@pytest.mark.parametrize("path", PARAMETER_FILES, ids=lambda p: p.stem)
def test_parameters_file_names_only_parameters_the_notebook_declares(path):
    declared = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{path.stem}.ipynb"))
    assert COMMON <= set(declared), f"{path.stem} lacks common parameters"
    given = yaml.safe_load(path.read_text()) or {}
    unknown = set(given) - set(declared)
    assert not unknown, f"{path.name} sets parameters its notebook does not have: {unknown}"


@pytest.mark.parametrize("path", PARAMETER_FILES, ids=lambda p: p.stem)
def test_shipped_parameters_answer_every_gate_no_and_run_in_review_mode(path):
    given = yaml.safe_load(path.read_text()) or {}
    assert given.get("mode", "review") == "review"
    answers = given.get("answers", {})
    assert all(value == "no" for value in answers.values()), answers
    assert "DATABASE_URL" not in "".join(str(v) for v in given.values() if v != "DATABASE_URL")
    assert "postgresql://" not in path.read_text(), "no connection string in parameters"


@pytest.mark.parametrize("path", [p for p in PARAMETER_FILES if p.stem != "00_triage"],
                         ids=lambda p: p.stem)
def test_shipped_parameters_answer_exactly_the_questions_of_the_notebooks_gate(path):
    """The gate's question ids are written once, in its step module (GATE_QUESTIONS); the
    shipped answers name each of them, and nothing else."""
    steps = importlib.import_module(f"playbook.steps.{path.stem.split('_', 1)[1]}")
    given = yaml.safe_load(path.read_text()) or {}
    assert set(given.get("answers", {})) == set(steps.GATE_QUESTIONS)
