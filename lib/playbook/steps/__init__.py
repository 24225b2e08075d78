"""The notebooks' steps: one module per notebook, one function per code cell.

``steps/rollback_sequence.py`` is ``notebooks/10_rollback_sequence.ipynb``, and so on (the
notebook's name without its number). Read the two side by side: the notebook says what a
step does and what could go wrong, the module how.

The naming rule: a step is named after its cell's heading, in the procedure document's
words, verb first (``verify_the_issue``, ``run_rollback``); the cell that asks the
operator is ``gate``. Every step takes the :class:`~playbook.runs.Run` first and returns
what the next cell shows or needs; nothing passes between cells any other way (a gate is
kept by the run it is asked for, :meth:`Run.add_gate`).
"""
