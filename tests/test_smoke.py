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
    out = subprocess.run([exe], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["degrade"]
    env.update(COMP_WORDS="lrfr degrade --do", COMP_CWORD="2")
    out = subprocess.run([exe], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert "--down-method" in out.stdout.split()


def test_every_option_has_help():
    """--help explains every option of every command (no bare option lines).

    The top-level group lists placeholders so that `lrfr --help` imports nothing heavy; here every
    command is really loaded, so the check sees its real options.
    """
    from typer.main import get_command

    from lrfr_cli.cli import LazyCommand, app, available_commands

    group = get_command(app)
    checked = 0
    for name in group.list_commands(None):  # type: ignore[attr-defined]
        placeholder = group.get_command(None, name)  # type: ignore[attr-defined]
        assert isinstance(placeholder, LazyCommand)
        cmd = placeholder.load()
        options = [p for p in cmd.params if getattr(p, "param_type_name", "") == "option" and p.name != "help"]
        assert options or name == "status", f"lrfr {name}: loaded command has no options (placeholder?)"
        for p in options:
            assert getattr(p, "help", None), f"lrfr {name} {p.opts}: no help text"
        checked += 1
    assert checked == len(available_commands()) >= 6
