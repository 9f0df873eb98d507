"""``python -m global_buffer bridge``: run this host's bridge (SPEC §9).

The command line parses its flags here and runs a :class:`gb.Bridge`
until SIGINT or SIGTERM; ``cli.py`` only dispatches to this module.
"""
import json
import logging
import os
import signal
import threading

__all__ = ["add_parser", "cmd_bridge"]


def add_parser(sub):
    """Add the ``bridge`` subcommand to ``cli.py``'s subparsers."""
    b = sub.add_parser(
        "bridge", help="share streams with other hosts over Zenoh",
        description="Run this host's bridge: export the local streams whose names match "
                    "an --export glob, and keep a local mirror of every far stream whose "
                    "name matches an --import glob (readers attach to it by name). "
                    "Zenoh scouting is off: the peers are the endpoints given. Stops "
                    "cleanly on Ctrl-C or SIGTERM.")
    b.add_argument("--listen", action="append", default=[], metavar="ENDPOINT",
                   help="Zenoh endpoint to listen on, e.g. tcp/0.0.0.0:7447 (repeatable)")
    b.add_argument("--connect", action="append", default=[], metavar="ENDPOINT",
                   help="Zenoh endpoint of another host's bridge (repeatable)")
    b.add_argument("--export", action="append", default=[], metavar="GLOB", dest="exports",
                   help="names that may leave this host, a shell glob (repeatable)")
    b.add_argument("--import", action="append", default=[], metavar="GLOB", dest="imports",
                   help="far names mirrored on this host, a shell glob (repeatable)")
    b.add_argument("--zenoh-config", metavar="FILE", default=None,
                   help="Zenoh JSON5 config file (TLS/mTLS, ...), loaded first; "
                        "scouting stays off")
    b.add_argument("--stats", metavar="FILE", default=None,
                   help="write the bridge's counters as JSON to FILE every 0.5 s")
    b.add_argument("-v", "--verbose", action="count", default=0,
                   help="log more (-v: each name, -vv: debug)")
    b.set_defaults(func=cmd_bridge)
    return b


def _write_stats(bridge, path):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(bridge.stats(), f)
    os.replace(tmp, path)


def cmd_bridge(args, out):
    from .bridge import Bridge
    from .cli import CliError

    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.listen and not args.connect:
        raise CliError("give at least one --listen or --connect endpoint")
    if not args.exports and not args.imports:
        raise CliError("give at least one --export or --import glob")
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            bridge = Bridge(args.listen, args.connect, args.exports, args.imports,
                            zenoh_config=args.zenoh_config)
            bridge.start()
        except ImportError as e:
            raise CliError(str(e)) from None
        except Exception as e:  # a bad endpoint or config file: one line, no traceback
            raise CliError(f"cannot start the bridge: {e}") from None
        print(f"bridge {bridge.zid} running (Ctrl-C to stop)", file=out, flush=True)
        try:
            while not stop.wait(0.5):
                if args.stats:
                    _write_stats(bridge, args.stats)
        finally:
            if args.stats:
                _write_stats(bridge, args.stats)
            bridge.close()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print("bridge stopped", file=out, flush=True)
    return 0
