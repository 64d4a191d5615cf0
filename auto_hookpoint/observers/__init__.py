"""Observers built on the hook core: each watches sites while a forward runs.

Each file is one observer and imports only the core: ``capture``, ``trace``,
``memory_profile``, ``find_nonfinite`` and ``generation_trace``/``current_step``.
"""
