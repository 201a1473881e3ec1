"""``python -m agent.cli``: the ``recbridge`` command (how the study runner starts its jobs)."""

from agent.cli.main import app

app()
