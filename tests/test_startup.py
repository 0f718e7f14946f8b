"""Start-up hygiene: the top-level CLI lists commands without importing them (issue 9, item 5).

`lrfr --help`, `status` and `make-list` must not pay for torch (1.5 s+ here). These tests check
which modules a fresh interpreter has loaded after each command, not how long it took: timings
live in ``benchmarks/startup.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from PIL import Image

import lrfr_cli.cli as cli_mod
from lrfr_cli.cli import COMMANDS, CommandSpec, available_commands, load_command

HEAVY = ("torch", "torchvision", "cv2", "facenet_pytorch")
COMMANDS_DIR = Path(cli_mod.__file__).parent / "commands"
# The order the design notes document (DESIGN.md, "What users do with it"), status last.
DOCUMENTED_ORDER = ["align", "make-list", "make-bin", "degrade", "train", "finetune", "eval", "quality", "sr", "report", "export", "status"]

# Runs each command in-process in a fresh interpreter and records which heavy modules were loaded
# right after it. `train --help` comes last: it must load torch, which shows the probe can fail.
_PROBE = textwrap.dedent(
    """
    import json, os, sys
    heavy = {heavy!r}
    out, ws, tree = sys.argv[1], sys.argv[2], sys.argv[3]
    from lrfr_cli.cli import app
    seen, codes = {{}}, {{}}

    def run(label, args, env=None):
        os.environ.update(env or {{}})
        try:
            app(args=args, prog_name="lrfr")
            codes[label] = 0
        except SystemExit as e:
            codes[label] = e.code or 0
        for k in env or {{}}:
            del os.environ[k]
        seen[label] = sorted(m for m in heavy if m in sys.modules)

    seen["import"] = sorted(m for m in heavy if m in sys.modules)
    run("--help", ["--help"])
    run("complete", [], {{"_LRFR_COMPLETE": "complete_bash", "COMP_WORDS": "lrfr de", "COMP_CWORD": "1"}})
    run("status", ["-w", ws, "status"])
    run("make-list --help", ["make-list", "--help"])
    run("make-list", ["-w", ws, "make-list", tree, "--out", "tiny"])
    run("status again", ["-w", ws, "--json", "status"])
    run("train --help", ["train", "--help"])
    with open(out, "w") as f:
        json.dump({{"seen": seen, "codes": codes}}, f)
    """
).format(heavy=HEAVY)


def _tiny_tree(root: Path) -> Path:
    """Two identities, two 8x8 JPEGs each."""
    for ident in ("a", "b"):
        (root / ident).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(root / ident / f"{i}.jpg")
    return root


def test_help_status_make_list_do_not_import_torch(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    tree = _tiny_tree(tmp_path / "tree")
    ws = tmp_path / "ws"
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), str(ws), str(tree)], check=False, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    seen, codes = res["seen"], res["codes"]
    for label in ("import", "--help", "complete", "status", "make-list --help", "make-list", "status again"):
        assert seen[label] == [], f"lrfr {label} imported {seen[label]}"
        assert codes.get(label, 0) == 0, f"lrfr {label} exited {codes[label]}"
    # make-list really ran (its list has the 4 hand-made images) and status then sees the artifact.
    assert (ws / "lists" / "tiny" / "train.txt").read_text().count("\n") == 4
    assert "degrade" in r.stdout.split()  # the completion reply
    # Control: the probe does see torch once a command that needs it is loaded.
    assert codes["train --help"] == 0 and "torch" in seen["train --help"]


def _help_rows(text: str) -> list[tuple[str, str]]:
    """(name, help) rows of the command panels (every panel but "Options"), wrapped help re-joined."""
    rows: list[tuple[str, str]] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("╭"):
            inside = "─ Options ─" not in line
            continue
        if line.startswith("╰"):
            inside = False
            continue
        if inside:
            body = line.strip().strip("│").rstrip()
            m = re.match(r" (\S+)\s+(.*)$", body)
            if m:
                rows.append((m.group(1), m.group(2).strip()))
            elif rows:
                rows[-1] = (rows[-1][0], rows[-1][1] + " " + body.strip())
    return rows


def test_help_lists_every_command_in_documented_order(cli) -> None:
    r = cli(None, "--help")
    assert r.exit_code == 0
    rows = _help_rows(r.stdout)
    on_disk = {p.stem.replace("_", "-") for p in COMMANDS_DIR.glob("*.py") if not p.stem.startswith("_")}
    expected = [n for n in DOCUMENTED_ORDER if n in on_disk]
    assert [n for n, _ in rows] == expected
    for name, help_text in rows:
        real = load_command(next(s for s in COMMANDS if s.name == name))
        assert help_text == real.help.splitlines()[0], name


def test_table_covers_every_command_module_and_matches_its_docstring() -> None:
    """A command module without a table line would be unreachable; a stale help line would lie."""
    modules = {p.stem for p in COMMANDS_DIR.glob("*.py") if not p.stem.startswith("_")}
    assert modules == {s.module for s in available_commands()}
    for spec in available_commands():
        cmd = load_command(spec)
        assert cmd.name == spec.name
        assert spec.help == (cmd.help or "").splitlines()[0], f"COMMANDS help of {spec.name} differs from its docstring"


def test_train_help_still_works(cli) -> None:
    r = cli(None, "train", "--help")
    assert r.exit_code == 0
    assert "--loss" in r.stdout and "--backbone" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["frobnicate"], "No such command 'frobnicate'"),
        (["degrad"], "Did you mean 'degrade'"),
        (["--bogus"], "No such option: --bogus"),
        (["degrade", "--bogus"], "No such option: --bogus"),
    ],
)
def test_usage_errors_are_one_red_line(cli, args: list[str], needle: str) -> None:
    r = cli(None, *args)
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and needle in lines[0] and "--help" in lines[0]
    assert r.stdout == ""


def test_global_options_after_a_lazy_subcommand(cli, ws: Path) -> None:
    r = cli(None, "status", "--json", "-w", str(ws))
    assert r.exit_code == 0, r.stderr
    assert r.json() == {"command": "status", "workspace": str(ws.resolve()), "artifacts": []}


def test_planned_command_is_skipped_and_a_new_one_is_one_table_line(cli, monkeypatch) -> None:
    """A table line whose module is absent is invisible; one whose module exists just works."""
    mod = types.ModuleType("lrfr_cli.commands.hello_fake")
    mod.__spec__ = types.SimpleNamespace(name=mod.__name__)  # what find_spec reports for sys.modules entries

    def hello(who: str = cli_mod.typer.Option("world", "--who", help="Whom to greet.")) -> None:
        """Greet someone."""
        cli_mod.typer.echo(f"hello {who}")

    mod.register = lambda app: app.command("hello")(hello)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(
        cli_mod,
        "COMMANDS",
        (*COMMANDS, CommandSpec("absent", "absent_planned", "Not written yet."), CommandSpec("hello", "hello_fake", "Greet someone.")),
    )
    names = [n for n, _ in _help_rows(cli(None, "--help").stdout)]
    assert names[-1] == "hello" and "absent" not in names
    r = cli(None, "hello", "--who", "lazy")
    assert r.exit_code == 0 and r.stdout.strip() == "hello lazy"
    r = cli(None, "absent")
    assert r.exit_code == 2 and "No such command 'absent'" in r.stderr
