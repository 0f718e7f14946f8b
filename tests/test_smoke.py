from lrfr_cli import __version__


def test_version_and_help(cli):
    r = cli(None, "--version")
    assert r.exit_code == 0 and __version__ in r.stdout
    r = cli(None, "--help")
    assert r.exit_code == 0
    for name in ("make-list", "degrade", "status"):
        assert name in r.stdout


def test_shell_completion_completes_commands_and_options():
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "lrfr")  # the venv's console script
    env = {**os.environ, "_LRFR_COMPLETE": "complete_bash", "COMP_WORDS": "lrfr de", "COMP_CWORD": "1"}
    out = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["degrade"]
    env.update(COMP_WORDS="lrfr degrade --me", COMP_CWORD="2")
    out = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=60)
    assert "--method" in out.stdout.split()


def test_every_option_has_help(cli):
    """--help explains every option of every command (no bare option lines)."""
    from lrfr_cli.cli import app
    from typer.main import get_command

    group = get_command(app)
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        for p in cmd.params:
            if getattr(p, "param_type_name", "") == "option" and p.name != "help":
                assert getattr(p, "help", None), f"lrfr {name} {p.opts}: no help text"
