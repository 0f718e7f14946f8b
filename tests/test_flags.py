"""One meaning per flag: a short flag stands for one long name in every command, and the old
spellings that meant something else still work for one release, with a note on stderr."""

from __future__ import annotations

from collections import defaultdict

import pytest

from lrfr_cli.cli import COMMANDS, load_command


def _params():
    for spec in COMMANDS:
        cmd = load_command(spec)
        for p in cmd.params:
            yield spec.name, p


def test_each_short_flag_means_one_long_name_across_commands() -> None:
    meaning: dict[str, set[str]] = defaultdict(set)
    where: dict[str, list[str]] = defaultdict(list)
    for command, p in _params():
        if getattr(p, "hidden", False):
            continue
        longs = [o for o in p.opts if o.startswith("--")]
        for short in (o for o in p.opts if len(o) == 2 and o[0] == "-" and o[1] != "-"):
            meaning[short].add(longs[0] if longs else "?")
            where[short].append(f"{command} {longs[0] if longs else '?'}")
    clashes = {s: sorted(where[s]) for s, longs in meaning.items() if len(longs) > 1}
    assert not clashes, clashes
    # the ones the commands agree on (checked, so a new command cannot quietly take one)
    assert meaning["-m"] == {"--model"} and meaning["-b"] == {"--batch-size"} and meaning["-d"] == {"--data"}


def test_hidden_options_are_the_deprecated_spellings_only() -> None:
    for command, p in _params():
        if getattr(p, "hidden", False):
            assert "Deprecated spelling of" in (p.help or ""), (command, p.opts)


@pytest.mark.parametrize(
    ("args", "note"),
    [
        (["train", "-b", "tiny", "-d", "NOPE"], "lrfr train: -b is deprecated"),
        (["finetune", "-m", "distill", "--from", "NOPE", "-d", "NOPE", "-b", "tiny"], "lrfr finetune: -m is deprecated"),
        (["finetune", "--method", "octuplet", "--margin", "0.3", "--from", "NOPE", "-d", "NOPE"], "lrfr finetune: --margin is deprecated"),
        (["eval", "-d", "lfw", "-m", "NOPE"], "lrfr eval: -d is deprecated"),
        (["degrade", "NOPE", "-m", "area"], "lrfr degrade: -m is deprecated"),
        (["align", "NOPE", "--margin", "4"], "lrfr align: --margin is deprecated"),
        (["sr", "NOPE", "--model", "x", "-s", "8"], "lrfr sr: -s is deprecated"),
        (["make-bin", "--pairs", "NOPE", "-r", "NOPE", "--out", "x.bin"], "lrfr make-bin: -r is deprecated"),
    ],
)
def test_old_spellings_still_work_with_a_note(cli, ws, args: list[str], note: str) -> None:
    r = cli(ws, *args)
    assert note in r.stderr and "lrfr 0.3" in r.stderr
    # the option was taken: the command went on to the next problem (the missing data/model)
    assert "NOPE" in r.stdout + r.stderr and "missing option" not in r.stdout + r.stderr


def test_old_and_new_spelling_together_is_one_clear_error(cli, ws) -> None:
    r = cli(ws, "finetune", "--method", "distill", "-m", "octuplet", "--from", "x", "-d", "NOPE")
    assert r.exit_code == 2 and "-m and --method are one option" in r.stdout + r.stderr


def test_a_required_option_with_an_old_spelling_is_still_required(cli, ws) -> None:
    r = cli(ws, "finetune", "--from", "x", "-d", "NOPE")
    assert r.exit_code == 2 and "missing option --method" in r.stdout + r.stderr
