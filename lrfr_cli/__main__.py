"""``python -m lrfr_cli``: the same CLI as the ``lrfr`` console script."""

from .cli import app

app(prog_name="lrfr")
