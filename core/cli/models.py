"""``python -m core models``: the checkpoints a Run can use, with what their records say."""

from __future__ import annotations

import argparse

from core.config import Settings, is_shipped_checkpoint
from core.model.catalog import list_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: the models folder is ``FIELDFLOW_MODELS_DIR``."""


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print each model on offer: its name (a folder model's is its ``--checkpoint NAME``), its
    file and its summary; ``*`` marks the default."""
    choices = list_models(settings)
    default = settings.checkpoint
    for choice in choices:
        mark = "*" if choice.path.resolve() == default.resolve() else " "
        state = "" if choice.usable else " [cannot be used]"
        print(f"{mark} {choice.label}{state}")
        print(f"    {choice.path}")
        print(f"    {choice.summary()}")
        for warning in choice.warnings():
            print(f"    warning: {warning}")
    if not choices:
        print("No model: the shipped checkpoint is not installed and the folder holds none.")
    shipped = "the shipped one" if is_shipped_checkpoint(default) else str(default)
    print(
        f"* the default ({shipped}). Models folder: {settings.models_dir} (FIELDFLOW_MODELS_DIR); "
        "a model saved there ('python -m core train --init assets/model.pt --data MY_CUBES "
        f"--out {settings.models_dir}/NAME.pt') is offered in the app and taken by "
        "'--checkpoint NAME'."
    )
    return 0
