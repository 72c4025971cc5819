"""``magiceraser evaluate``: the command line around :class:`magiceraser.evaluation.protocol.Evaluation`.

It loads the config, runs the evaluation, prints the table and what could not be evaluated, and
turns the result into the exit code (0 a complete table, 1 no row, 2 a required method missing,
nothing to do, or missing weights, data or metric library). The protocol itself, and the files it writes, are
described in ``protocol.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from magiceraser.errors import UserError
from magiceraser.evaluation.config import EvalConfig
from magiceraser.evaluation.console import log
from magiceraser.evaluation.protocol import Evaluation, EvaluationResult


def report_missing_methods(missing: Mapping[str, str]) -> None:
    """One line per required method that could not run: the table lacks its row, so the run fails."""
    for name, reason in missing.items():
        print(f"magiceraser evaluate: method {name!r} was not evaluated: {reason}; provide it, "
              f"or set optional: true on that method to allow a table without it", file=sys.stderr)


def print_result(result: EvaluationResult) -> None:
    """The table, what was not evaluated and where the files are (stdout), missing methods (stderr)."""
    if result.nothing_to_do:
        return
    print(result.table, flush=True)
    for line in result.not_evaluated:
        log(f"not evaluated: {line}")
    log(f"results in {result.out_dir}/results.md, results.csv, per_image.jsonl, grids/")
    if result.missing:
        report_missing_methods(result.missing)


def main(argv: Sequence[str] | None = None) -> int:
    from magiceraser.cli_args import config_argparser, load_cli_config, user_error_exit

    parser = config_argparser("evaluate", "Evaluate methods with the paper's protocol (letterbox 512, PSNR/SSIM/LPIPS/FID).")
    args = parser.parse_args(argv)
    cfg = load_cli_config(EvalConfig, args)
    try:
        result = Evaluation(cfg)()
    except (UserError, FileNotFoundError) as exc:  # a dataset file or folder the config names is the user's too
        # The dispatcher's own report (tests and scripts call this main directly).
        code = user_error_exit("evaluate", exc if isinstance(exc, UserError) else UserError(str(exc)), args)
        if code is None:
            raise
        return code
    print_result(result)
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
