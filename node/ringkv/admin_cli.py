"""`ringkv admin`: a node's view of the cluster and its topology operations, in the spirit of `nodetool`.

    ringkv admin status        [--url URL]   # members: up/down, status, rack, tokens, ownership; ring agreement
    ringkv admin ring          [--url URL]   # the ring digest, every member's view, who is joining/leaving
    ringkv admin streams       [--url URL]   # this node's mode and the ranges it is streaming in
    ringkv admin decommission  [--url URL] [--no-wait]   # hand this node's ranges over and leave; progress bar
    ringkv admin removenode X  [--url URL] [--no-wait]   # re-replicate dead node X's ranges, take it out
    ringkv admin cleanup       [--url URL] [--no-wait]   # drop the ranges this node no longer replicates
    ringkv admin drain         [--url URL] [--no-wait]   # stop taking client requests, flush (before a stop)

Exit codes: 0 done; 1 the node refused or the operation failed; 2 usage error or the node cannot be reached.
A decommissioned node stops at the end: the command then reports success once the node is gone after its
operation reached the `left` phase.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ringkv.loadgen.progress import bar
from ringkv.repair_cli import DEFAULT_URL, Progress, Refused, Unreachable, _call, human_bytes

PROG = "ringkv admin"
POLL_S = 0.5


def add_parser(sub: Any) -> None:
    p = sub.add_parser("admin", help="cluster status and topology operations (status, ring, streams, decommission)")
    p.add_argument("what", choices=["status", "ring", "streams", "decommission", "removenode", "cleanup",
                                      "drain"])
    p.add_argument("target", nargs="?", help="removenode: the id of the dead node to remove")
    p.add_argument("--url", "--node", dest="url", default=os.environ.get("RINGKV_URL", DEFAULT_URL),
                   help=f"node URL (env RINGKV_URL, default {DEFAULT_URL})")
    p.add_argument("--json", action="store_true", help="print the node's JSON answer")
    p.add_argument("--no-wait", action="store_true", help="decommission: start it and return")


def status_table(members: dict[str, Any], ring: dict[str, Any]) -> str:
    ownership = {n["node_id"]: n["ownership"] for n in ring.get("nodes", [])}
    views = ring.get("views") or {}
    lines = [f"cluster {members.get('cluster_name')!r} seen from {members.get('node_id')}: ring {ring.get('digest')}, "
             f"{'all members agree' if ring.get('agreed') else 'members DISAGREE on the ring'}",
             f"  {'NODE':<14} {'STATUS':<8} {'UP':<4} {'DC/RACK':<16} {'TOKENS':>6} {'OWNS':>7}  VIEW"]
    for m in members.get("members", []):
        owns = ownership.get(m["node_id"])
        lines.append(f"  {m['node_id']:<14} {m['status']:<8} {'up' if m['up'] else 'DOWN':<4} "
                     f"{m['datacenter'] + '/' + m['rack']:<16} {m['tokens']:>6} "
                     f"{'-' if owns is None else f'{owns * 100:.1f}%':>7}  {views.get(m['node_id'], '-')}")
    return "\n".join(lines)


def streams_table(node: dict[str, Any]) -> str:
    lines = [f"{node.get('node_id')}: {node.get('mode')}, ring {node.get('ring')}, "
             f"{'agreed' if node.get('agreed') else 'not agreed'}"]
    for s in node.get("streaming") or []:
        lines.append(f"  {s['range']:<44} from {s['source'] or '-':<10} {s['state']:<10} {s['keys']:>9,} keys "
                     f"{human_bytes(s['bytes']):>10}  {s['elapsed_s']:.1f}s")
    if not node.get("streaming"):
        lines.append("  no streams")
    return "\n".join(lines)


def _left(peers: list[str], node_id: str) -> bool:
    """Whether any of `peers` (URLs) sees `node_id` as left (a decommissioned node stops at the end)."""
    for url in peers:
        try:
            members = _call("GET", url + "/admin/v1/members")
        except (Unreachable, Refused):
            continue
        for m in members.get("members", []):
            if m["node_id"] == node_id and m["status"] == "left":
                return True
    return False


def _operation(base: str, args: argparse.Namespace) -> int:
    body = {"node": args.target} if args.what == "removenode" else {}
    me = _call("GET", base + "/admin/v1/members")
    peers = [f"http://{m['host']}:{m['http_port']}" for m in me.get("members", [])
             if not m.get("local") and m.get("up")]
    op = _call("POST", f"{base}/admin/v1/{args.what}", body)
    if args.no_wait:
        print(json.dumps(op) if args.json else f"{args.what} {op['id']} started on {base}")
        return 0
    progress = Progress(sys.stderr)
    try:
        while op.get("state") == "running":
            p = op.get("progress") or {}
            done, total = int(p.get("ranges_done", 0)), int(p.get("ranges_total", 0))
            if "ranges_total" in p or "scanned" in p:
                line = (f"{args.what} {bar(done / total if total else 0.0)} {done}/{total} ranges  "
                        f"{int(p.get('keys', p.get('dropped', 0))):,} keys  {human_bytes(p.get('bytes', 0))}  "
                        f"{p.get('phase', '')}")
                if progress.tty:
                    sys.stderr.write("\r\033[K  " + line)
                    sys.stderr.flush()
            time.sleep(POLL_S)
            try:
                op = _call("GET", f"{base}/admin/v1/operations/{op['id']}")
            except Unreachable:
                if args.what == "decommission" and _left(peers, str(me.get("node_id"))):
                    op = {**op, "state": "done"}  # it stopped, as a decommissioned node does, and the others
                    break  # see it left
                raise
    finally:
        progress.finish()
    print(json.dumps(op) if args.json else f"{args.what} {op['id']} {op.get('state')}: {op.get('progress')}")
    if op.get("state") == "done":
        return 0
    print(f"{PROG}: {args.what} {op.get('state')}: {op.get('error')}", file=sys.stderr)
    return 1


def main(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        print(f"{PROG}: --url must be an http:// or https:// URL", file=sys.stderr)
        return 2
    try:
        if args.what == "removenode" and not args.target:
            print(f"{PROG}: removenode needs the id of the node to remove", file=sys.stderr)
            return 2
        if args.what in ("decommission", "removenode", "cleanup", "drain"):
            return _operation(base, args)
        if args.what == "status":
            members, ring = _call("GET", base + "/admin/v1/members"), _call("GET", base + "/admin/v1/ring")
            print(json.dumps({"members": members, "ring": ring}) if args.json else status_table(members, ring))
        elif args.what == "ring":
            ring = _call("GET", base + "/admin/v1/ring")
            print(json.dumps(ring, indent=2) if args.json else
                  f"ring {ring['digest']} ({'agreed' if ring.get('agreed') else 'NOT agreed'}); views: "
                  + ", ".join(f"{k}={v}" for k, v in sorted((ring.get("views") or {}).items()))
                  + (f"; joining: {', '.join(ring['joining'])}" if ring.get("joining") else ""))
        else:
            node = _call("GET", base + "/admin/v1/node")
            print(json.dumps(node, indent=2) if args.json else streams_table(node))
        return 0
    except Unreachable as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except Refused as e:
        print(f"{PROG}: the node refused: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
