"""``llmgw probe live|ready``: container health checks without curl in the image."""
from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from typing import Any

from llmgw.core.settings import Settings

_PATHS = {"live": "/healthz", "ready": "/readyz"}


def cmd_probe(args: argparse.Namespace) -> int:
    url = args.url
    if not url:
        s = Settings.load(**{k: getattr(args, k) for k in ("config", "data_dir") if getattr(args, k, None)})
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
        url = f"http://{host}:{s.port}"
    try:
        with urllib.request.urlopen(url.rstrip("/") + _PATHS[args.what], timeout=args.timeout_s) as r:
            body = r.read().decode(errors="replace")
            status = r.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read().decode(errors="replace"), exc.code
    except (urllib.error.URLError, OSError) as exc:
        print(f"{args.what}: unreachable ({exc})", file=sys.stderr)
        return 1
    print(f"{args.what}: {status} {body}", file=sys.stdout if status == 200 else sys.stderr)
    return 0 if status == 200 else 1


def register(subparsers: Any) -> None:
    """Add this part's subcommands to `llmgw`."""
    p = subparsers.add_parser("probe", help="check a running gateway's liveness or readiness (exit 0 = ok)")
    p.add_argument("what", choices=sorted(_PATHS), help="live: /healthz; ready: /readyz (snapshot fresh)")
    p.add_argument("--url", help="gateway base URL (default http://LLMGW_HOST:LLMGW_PORT)")
    p.add_argument("--timeout-s", type=float, default=3.0)
    p.set_defaults(func=cmd_probe)
