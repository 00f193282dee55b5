"""`python -m mgm.integrations.lmms_eval.run`: lmms-eval's own CLI, with an exit status that tells failure.

    python -m mgm.integrations.lmms_eval.run --model mgm --model_args pretrained=/ckpt,device=cpu \\
        --tasks my_vqa --include_path tasks/ --output_path results/ --log_samples

Every argument goes unchanged to lmms-eval's CLI (`lmms-eval --help`), which runs as usual. lmms-eval
itself logs an evaluation that raised (a task name it does not know, a data file that is missing, a
model that cannot be built, device=cuda without CUDA) and still exits 0; here such a run exits 1, so
scripts and CI can tell a failed evaluation from a finished one.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from mgm.errors import UserError, exit_on_user_error


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    """Run lmms-eval's CLI on `argv`; 1 when any of its evaluations raised, else 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["-h"], ["--help"]):  # ours, at once and without lmms-eval; its own options: `lmms-eval --help`
        print("usage: python -m mgm.integrations.lmms_eval.run [lmms-eval arguments ...]\n" + (__doc__ or ""))
        return 0
    try:
        import lmms_eval.__main__ as lmms_cli
        from lmms_eval.cli.dispatch import main as lmms_main
    except ImportError:
        raise UserError("lmms-eval is not installed in this python: pip install 'mgm[lmms-eval]' "
                        "(or scripts/setup_eval_harness_venv.sh lmms-eval)") from None
    failures: list[BaseException] = []
    evaluate_one = lmms_cli.cli_evaluate_single

    def recorded(*args, **kwargs):
        # lmms-eval's cli_evaluate calls this once per configuration and swallows what it raises
        try:
            return evaluate_one(*args, **kwargs)
        except Exception as exc:
            failures.append(exc)
            raise

    lmms_cli.cli_evaluate_single = recorded
    saved_argv = sys.argv
    sys.argv = ["lmms-eval", *argv]  # lmms-eval's CLI parses sys.argv itself
    try:
        lmms_main()
    finally:
        lmms_cli.cli_evaluate_single = evaluate_one
        sys.argv = saved_argv
    if failures:
        print(f"error: {len(failures)} lmms-eval evaluation(s) failed: "
              + "; ".join(f"{type(e).__name__}: {e}" for e in failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
