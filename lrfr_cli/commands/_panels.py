"""Which ``--help`` panel each option is listed in, for every command, in one place.

``train --help`` lists 55 options; in one panel nobody finds ``--lr``. The tables here group them
(data, model, loss and LR recipe, loop, devices, ...) without touching the option declarations, so
commands stay plain Typer functions and a new option needs one word here to join a panel. An
option not in its command's table goes to :data:`OTHER` (listed last, with ``--help``); a panel
set in the declaration itself (``rich_help_panel=``) wins. Panels, and the options in each,
are listed in table order.
``tests/test_help.py`` checks that every name here is an option of its command.

Kept free of heavy imports: ``lrfr --help`` reads :data:`COMMAND_PANELS` without torch.
"""

from __future__ import annotations

from typing import Any

OTHER = "Other options"

_VALIDATION = ("--val-pairs", "--val-root")
_RUN = ("--run", "--epochs", "--max-steps", "--checkpoint-every", "--log-every", "--seed", "--resume", "--force")

PANELS: dict[str, dict[str, tuple[str, ...]]] = {
    "align": {
        "Output": ("--out", "--size", "--format", "--jpeg-quality", "--ext", "--force"),
        "Detection and crop": ("--select", "--min-face", "--min-prob", "--thresholds", "--max-side", "--crop-margin", "--fallback", "--assume-cropped"),
        "Performance": ("--device", "--batch-size", "--workers", "--threads"),
    },
    "make-list": {
        "Output": ("--out", "--force"),
        "Selection": ("--min-images", "--exclude", "--ext"),
        "Validation split": ("--val-fraction", "--val-mode", "--seed"),
    },
    "degrade": {
        "Output": ("--name", "--sizes", "--upsample", "--format", "--ext", "--force"),
        "Degradation": ("--down-method", "--blur", "--noise", "--jpeg", "--seed"),
        "Performance": ("--workers",),
    },
    "train": {
        "Data": ("--data", "--data-root", "--allow-outside-root", "--sampler", "--images-per-identity", "--flip", "--cache"),
        "Validation": (*_VALIDATION, "--val-bin", "--val-bin-channels", "--val-sizes", "--val-every", "--val-metric"),
        "Model": ("--backbone", "--embedding-size", "--task"),
        "Loss and LR recipe": (
            "--loss", "--loss-opt", "--margin", "--scale", "--quality", "--optimizer", "--lr", "--head-lr-scale",
            "--momentum", "--weight-decay", "--schedule", "--warmup-steps", "--clip-grad", "--freeze-backbone",
        ),
        "Cross-resolution batches (CRB)": ("--crb", "--crb-mode", "--lr-sizes", "--lr-prob"),
        "Loop and run": (*_RUN[:3], "--batch-size", *_RUN[3:]),
        "Devices and distributed": ("--device", "--precision", "--channels-last", "--compile", "--workers", "--threads", "--classifier", "--sample-rate"),
        "Super-resolution (--task sr)": ("--arch", "--sr-loss", "--sr-patch", "--perceptual", "--perceptual-weight", "--adversarial", "--disc-lr-scale", "--sr-val-images"),
    },
    "finetune": {
        "Method": ("--method", "--method-opt", "--loss", "--loss-opt", "--lr-sizes", "--triplet-margin", "--id-weight", "--p-down", "--p-down-end", "--lambda", "--feature-loss"),
        "Model": ("--from", "--backbone", "--checkpoint", "--embedding-size"),
        "ONNX --from input": ("--channel-order", "--layout", "--pixel-mean", "--pixel-std"),
        "Data": ("--data", "--data-root", "--allow-outside-root", "--p", "--k", "--flip", "--cache"),
        "Validation": _VALIDATION,
        "LR recipe": ("--optimizer", "--lr", "--head-lr", "--momentum", "--weight-decay", "--schedule", "--warmup-steps", "--clip-grad", "--freeze-backbone"),
        "Loop and run": _RUN,
        "Devices and distributed": ("--device", "--precision", "--channels-last", "--workers", "--threads"),
    },
    "eval": {
        "Protocol and output": ("--dataset", "--data", "--bin-channels", "--name", "--force"),
        "Model": ("--model", "--backbone", "--checkpoint", "--channel-order", "--flip", "--backend"),
        "ONNX --model input": ("--layout", "--pixel-mean", "--pixel-std"),
        "LFW": ("--sizes", "--setting", "--pairs", "--threshold-pairs", "--align", "--sr"),
        "SCface and TinyFace": ("--distance", "--landmarks", "--distractors"),
        "Low-resolution probes": ("--down-method", "--up-method", "--blur", "--noise", "--jpeg", "--seed"),
        "Performance": ("--device", "--precision", "--batch-size", "--workers"),
    },
    "sr": {
        "Model and output": ("--model", "--out", "--sheet", "--force"),
        "Input": ("--lr-size", "--down-method", "--ext"),
        "Performance": ("--batch-size", "--device", "--threads"),
    },
    "report": {
        "Input and output": ("--runs", "--format", "--name", "--save", "--plots", "--list-metrics"),
        "CI gates": ("--fail-under", "--baseline", "--max-drop"),
    },
    "export": {
        "Model": ("--model", "--backbone", "--checkpoint", "--channel-order", "--pixel-mean", "--pixel-std"),
        "Output": ("--format", "--out", "--layout", "--opset", "--force"),
        "Check against PyTorch": ("--check", "--check-images", "--check-count"),
    },
}

# Panels of ``lrfr --help``'s command list; a command not here is listed under OTHER_COMMANDS.
OTHER_COMMANDS = "Other commands"
COMMAND_PANELS: dict[str, str] = {
    "align": "Prepare data",
    "make-list": "Prepare data",
    "make-bin": "Prepare data",
    "degrade": "Prepare data",
    "train": "Train",
    "finetune": "Train",
    "eval": "Evaluate and ship",
    "quality": "Evaluate and ship",
    "sr": "Evaluate and ship",
    "report": "Evaluate and ship",
    "export": "Evaluate and ship",
    "status": "Workspace",
}


def option_name(param: Any) -> str:
    """The name an option is known by in :data:`PANELS`: its first ``--long`` form."""
    return next((o for o in param.opts if o.startswith("--")), param.opts[0] if param.opts else param.name or "")


def apply_panels(command_name: str, command: Any) -> None:
    """Put each of ``command``'s options in its panel and order the options panel by panel.

    Arguments keep their order (it is their meaning) and stay in front; ``--help`` joins
    :data:`OTHER` through the command's ``help_panel``.
    """
    table = PANELS.get(command_name)
    if not table:
        return
    panel_of = {name: panel for panel, names in table.items() for name in names}
    rank = {name: i for i, name in enumerate(panel_of)}  # the table's order, panel by panel
    order = {panel: i for i, panel in enumerate(table)}
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    options = [p for p in command.params if p.param_type_name != "argument"]
    for param in options:
        if getattr(param, "rich_help_panel", None) is None:
            param.rich_help_panel = panel_of.get(option_name(param), OTHER)
    # Panels in table order, options within a panel too; others after, in declaration order.
    options.sort(key=lambda p: (order.get(p.rich_help_panel, len(order) + (p.rich_help_panel == OTHER)), rank.get(option_name(p), len(rank))))
    command.params[:] = arguments + options
    command.help_panel = OTHER
