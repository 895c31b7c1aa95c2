"""The `ringkv` command line: `node`, `run`, and the client verbs `put`, `get`, `delete`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import orjson

from ringkv import __version__, config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringkv", description="ringkv distributed key-value store")
    parser.add_argument("--version", action="version", version=f"ringkv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    node = sub.add_parser("node", help="run one node (flags also settable as RINGKV_* variables)")
    config.add_arguments(node)
    run = sub.add_parser("run", help="run the store locally in the foreground (data in ./data)")
    config.add_arguments(run)

    url_help = "node URL (env RINGKV_URL, default http://127.0.0.1:8080)"
    put = sub.add_parser("put", help="write a key: ringkv put KEY JSON")
    put.add_argument("key")
    put.add_argument("value", help='a JSON string, list or object, e.g. \'{"a": 1}\' or \'"text"\'')
    put.add_argument("--context", help="context from a previous get (replaces what that read saw)")
    get = sub.add_parser("get", help="read a key: ringkv get KEY")
    get.add_argument("key")
    delete = sub.add_parser("delete", help="delete a key: ringkv delete KEY")
    delete.add_argument("key")
    delete.add_argument("--context")
    for p in (put, get, delete):
        p.add_argument("--url", default=os.environ.get("RINGKV_URL", "http://127.0.0.1:8080"), help=url_help)
    return parser


async def _client_verb(args: argparse.Namespace) -> int:
    from ringkv.client import Client, ClientError

    async with Client(args.url) as client:
        try:
            out: dict[str, Any]
            if args.command == "put":
                try:
                    value = orjson.loads(args.value)
                except orjson.JSONDecodeError as e:
                    print(f"ringkv: VALUE is not JSON ({e}); quote strings: '\"text\"'", file=sys.stderr)
                    return 2
                out = {"key": args.key, "context": await client.put(args.key, value, args.context)}
            elif args.command == "get":
                result = await client.get(args.key)
                if not result.found:
                    print(f"ringkv: key {args.key!r} not found", file=sys.stderr)
                    return 1
                out = {"key": args.key, "context": result.context}
                if result.has_siblings:
                    out["siblings"] = result.values
                else:
                    out["value"] = result.value
            else:
                out = {"key": args.key, "context": await client.delete(args.key, args.context)}
        except ClientError as e:
            print(f"ringkv: {e}", file=sys.stderr)
            return 1
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("node", "run"):
        from ringkv import server

        try:
            cfg = config.from_namespace(args)
        except ValueError as e:
            print(f"ringkv: {e}", file=sys.stderr)
            return 2
        return server.run(cfg)
    return asyncio.run(_client_verb(args))


if __name__ == "__main__":
    sys.exit(main())
