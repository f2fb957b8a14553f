"""``gbm worker --socket PATH``: serve ``gbm`` commands from a warm process (a local Snakemake run starts one)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "worker", help="serve gbm commands from a process with torch, Inception and MLflow already loaded",
        description="Preload what gbm commands import, then run each command a client sends to SOCKET in a "
                    "forked child (gbm.jobs.warm.server). A gbm process with GBM_WARM_SOCKET=SOCKET in its "
                    "environment is such a client. The pipeline starts one per local Snakemake run (config key "
                    "warm_workers); it ends on SIGTERM or when the process --watch-pid names is gone.",
    )
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--watch-pid", type=int, default=None,
                        help="end when this process (the parent that started the worker) is gone")
    parser.add_argument("--listen-fd", type=int, default=None,
                        help="an inherited descriptor already listening on SOCKET (no race with early clients)")
    parser.add_argument("--no-preload", action="store_true", help="import nothing ahead (for tests)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from gbm.jobs.warm.server import serve

    return serve(args.socket, args.watch_pid, preload_modules=not args.no_preload, listen_fd=args.listen_fd)
