"""`ringkv repair`: repair what one node replicates with its other replicas, now (like `nodetool repair`).

    ringkv repair --url http://127.0.0.1:8080              # every range the node replicates; waits
    ringkv repair --node http://127.0.0.1:8080 --range LO:HI --json
    ringkv repair --no-wait                                # start it, print its id, return
    ringkv repair --status                                 # the node's anti-entropy: ranges, trees, verification

The repair runs on the node as an operation (`POST /admin/v1/repair`); the command polls
`GET /admin/v1/repair/{id}` every 0.5 s and shows its progress on stderr (a line redrawn in place on a
terminal, a plain line every 5 s otherwise), then prints a summary (or, with `--json`, the final operation).

Exit codes: 0 the repair is done (`--status`: the node answered); 1 it failed or was cancelled, or the node
refused it (say, a range it does not replicate); 2 a usage error or the node cannot be reached; 3 still
running after `--timeout-s` (it goes on on the node); 130 interrupted (likewise).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

from ringkv.loadgen.progress import bar
from ringkv.security import credentials

DEFAULT_URL = "http://127.0.0.1:8080"
POLL_S = 0.5
HTTP_TIMEOUT_S = 10.0
PLAIN_EVERY_S = 5.0  # progress lines when stderr is not a terminal
PROG = "ringkv repair"


class Unreachable(Exception):
    """The node could not be reached (or answered something that is not the admin API)."""


class Refused(Exception):
    """The node answered with an error."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body.get('error', 'error')}: {body.get('message', '')}")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("repair", help="repair the ranges a node replicates with their other replicas, now",
                       description="Start a repair on one node and follow it until it ends.")
    p.add_argument("--url", "--node", dest="url", default=os.environ.get("RINGKV_URL", DEFAULT_URL),
                   help=f"node URL (env RINGKV_URL, default {DEFAULT_URL})")
    p.add_argument("--range", dest="range", metavar="LO:HI",
                   help="repair only this replica range (as `ringkv repair --status` names it)")
    p.add_argument("--no-wait", action="store_true", help="start the repair, print its id and return")
    p.add_argument("--json", action="store_true", help="print the operation (or the status) as JSON")
    p.add_argument("--timeout-s", type=float, default=None,
                   help="stop waiting after this many seconds (exit 3; the repair goes on on the node)")
    p.add_argument("--status", action="store_true",
                   help="show the node's anti-entropy instead: per range its tree, keys and last verification")


# -- HTTP (stdlib: a command that runs a few requests needs no event loop) --------------------------------------


def _call(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    creds = credentials.Credentials.from_env()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json", **creds.headers()})
    try:
        context = creds.ssl_context() if url.startswith("https:") else None
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S, context=context) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise Unreachable(f"cannot reach {url}: {reason}") from None
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        raise Unreachable(f"{method} {url} answered {status} with something that is not JSON") from None
    if not isinstance(doc, dict):
        raise Unreachable(f"{method} {url} answered {status} with an unexpected body")
    if status >= 400:
        raise Refused(status, doc)
    return doc


# -- showing it -------------------------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _counts(op: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
    progress = op.get("progress") or {}
    return int(progress.get("ranges_done", 0)), int(progress.get("ranges_total", 0)), progress


def progress_line(op: dict[str, Any]) -> str:
    done, total, p = _counts(op)
    return (f"repair {bar(done / total if total else 0.0)} {done}/{total} ranges  "
            f"{int(p.get('keys_compared', 0)):,} keys compared  {int(p.get('keys_repaired', 0)):,} repaired  "
            f"{human_bytes(p.get('bytes', 0))}  {float(op.get('elapsed_s', 0.0)):.1f}s")


def summary(op: dict[str, Any]) -> str:
    done, total, p = _counts(op)
    line = (f"repair {op.get('id')} {op.get('state')}: {done}/{total} ranges done, "
            f"{int(p.get('exchanges', 0)):,} exchanges")
    if p.get("exchanges_failed"):
        line += f" ({int(p['exchanges_failed']):,} failed)"
    if p.get("peers_skipped"):
        line += f", {int(p['peers_skipped']):,} peers skipped"
    return (line + f", {int(p.get('keys_compared', 0)):,} keys compared, {int(p.get('keys_repaired', 0)):,} keys "
            f"repaired, {human_bytes(p.get('bytes', 0))}, {float(op.get('elapsed_s', 0.0)):.1f} s")


class Progress:
    """The progress line on `stream`: redrawn at every poll on a terminal, a plain line every 5 s otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last = time.monotonic()
        self._open = False

    def show(self, op: dict[str, Any]) -> None:
        if "ranges_total" not in (op.get("progress") or {}):
            return  # not begun yet: nothing to show
        line = progress_line(op)
        if self.tty:
            self.stream.write("\r\033[K  " + line)
            self._open = True
        elif time.monotonic() - self._last >= PLAIN_EVERY_S:
            self._last = time.monotonic()
            self.stream.write("  " + line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def status_table(url: str, status: dict[str, Any]) -> str:
    ranges = status.get("ranges") or []
    oldest = status.get("oldest_unverified_s")
    enabled = "enabled" if status.get("enabled") else "disabled"
    plural = "" if len(ranges) == 1 else "s"
    lines = [f"anti-entropy on {url} ({enabled}): {len(ranges)} range{plural}, oldest verification "
             f"{'-' if oldest is None else f'{oldest:,.1f} s'} ago, "
             f"{int(status.get('tombstones', 0)):,} tombstones awaiting collection"]
    if ranges:
        width = max(len("RANGE"), *(len(str(r.get("range"))) for r in ranges))
        lines.append(f"  {'RANGE':<{width}}  {'TREE':<8}  {'KEYS':>10}  {'VERIFIED':<16}  REPLICAS")
        for r in ranges:
            ago = r.get("verified_s_ago")
            verified = "never" if ago is None else f"{ago:,.1f} s ago"
            lines.append(f"  {r.get('range')!s:<{width}}  {r.get('tree')!s:<8}  {int(r.get('keys', 0)):>10,}  "
                         f"{verified:<16}  {','.join(r.get('replicas') or [])}")
    exchanges = status.get("exchanges") or {}
    lines.append("exchanges: " + (", ".join(f"{k} {v:,}" for k, v in sorted(exchanges.items())) or "none yet")
                 + f"; keys pulled {int(status.get('keys_pulled', 0)):,}, pushed {int(status.get('keys_pushed', 0)):,}"
                 f"; tombstones reaped {int(status.get('reaped', 0)):,}")
    return "\n".join(lines)


# -- the verb ---------------------------------------------------------------------------------------------------


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _usage_error(args: argparse.Namespace) -> str | None:
    if not args.url.startswith(("http://", "https://")):
        return f"--url must be an http:// or https:// URL, not {args.url!r}"
    if args.range is not None:
        lo, sep, hi = args.range.partition(":")
        try:
            int(lo), int(hi)
        except ValueError:
            sep = ""
        if not sep:
            return f"--range must be LO:HI (two integer tokens, as `ringkv repair --status` shows), not {args.range!r}"
    if args.timeout_s is not None and args.timeout_s <= 0:
        return "--timeout-s must be positive"
    if args.status and (args.range is not None or args.no_wait):
        return "--status takes no --range or --no-wait"
    return None


def _status(base: str, as_json: bool) -> int:
    doc = _call("GET", base + "/admin/v1/antientropy")
    print(json.dumps(doc, indent=2) if as_json else status_table(base, doc))
    return 0


def _follow(base: str, op: dict[str, Any], timeout_s: float | None, stream: TextIO) -> dict[str, Any]:
    """Poll the operation until it is no longer running (or `timeout_s` passes: returned still running)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    progress = Progress(stream)
    try:
        while op.get("state") == "running":
            progress.show(op)
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic())))
            op = _call("GET", f"{base}/admin/v1/repair/{op['id']}")
    finally:
        progress.finish()
    return op


def _repair(args: argparse.Namespace, base: str) -> int:
    op = _call("POST", base + "/admin/v1/repair", {} if args.range is None else {"range": args.range})
    if args.no_wait:
        print(json.dumps(op, indent=2) if args.json else
              f"repair {op['id']} started on {base}; follow it with GET {base}/admin/v1/repair/{op['id']}")
        return 0
    try:
        op = _follow(base, op, args.timeout_s, sys.stderr)
    except KeyboardInterrupt:
        return _fail(f"interrupted; repair {op['id']} goes on on the node", 130)
    print(json.dumps(op, indent=2) if args.json else summary(op))
    state = op.get("state")
    if state == "done":
        return 0
    if state == "running":
        return _fail(f"repair {op['id']} still running after {args.timeout_s:g} s; it goes on on the node", 3)
    return _fail(f"repair {op['id']} {state}: {op.get('error') or 'no error given'}", 1)


def main(args: argparse.Namespace) -> int:
    problem = _usage_error(args)
    if problem is not None:
        return _fail(problem, 2)
    base = args.url.rstrip("/")
    try:
        return _status(base, args.json) if args.status else _repair(args, base)
    except Unreachable as e:
        return _fail(str(e), 2)
    except Refused as e:
        return _fail(f"the node refused: {e}", 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
