"""Write a checkpoint's weights with the day of year withheld (``ModelConfig.day_of_year``
False): the network then reads only the dates' distances from each other.

    python benchmarks/without_calendar.py IN.pt OUT.pt

For benchmarks/candidates/season_dropout_rule.txt (D' and m5')."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.model.checkpoint import load_checkpoint, save_checkpoint, with_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.checkpoint)
    withheld = with_config(checkpoint, replace(checkpoint.config, day_of_year=False))
    withheld.record["day_of_year_withheld_from"] = args.checkpoint
    save_checkpoint(withheld, args.out)
    print(f"wrote {args.out}: {args.checkpoint}'s weights, the day of year withheld")


if __name__ == "__main__":
    main()
