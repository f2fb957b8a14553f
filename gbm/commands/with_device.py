"""``gbm with-device -- COMMAND``: run COMMAND holding one free GPU (or on the CPU when there is none)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "with-device", help="run a command on a free GPU slot (lock file per device)",
        description="Pick a free GPU (GBM_GPU_SLOTS, else CUDA_VISIBLE_DEVICES, else nvidia-smi), hold its lock "
                    "file and run COMMAND with CUDA_VISIBLE_DEVICES set to it; without a GPU, run on the CPU. "
                    "The pipeline uses the faster 'python -m gbm.jobs.devices -- COMMAND'.",
    )
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    parser.add_argument("command", nargs="+", help="the command (after --)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from gbm.jobs.devices import run_with_device

    try:
        return run_with_device(args.command, timeout=args.timeout)
    except TimeoutError as error:
        raise ValueError(str(error)) from error
