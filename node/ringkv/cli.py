"""The `ringkv` command line: `node`, `run`, the client verbs `put`, `get`, `delete`, and `bench`, `check`,
`repair`, `admin`, `certs`.

Client commands read RINGKV_URL, RINGKV_TOKEN (or RINGKV_TOKEN_FILE) and RINGKV_CA_CERT (`security/credentials`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from typing import Any

import orjson

from ringkv import __version__, config

DEFAULT_LOCAL_DIR = "./data/local"


def _local_up_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    p.add_argument("--data-dir", default=DEFAULT_LOCAL_DIR, help=f"where data and logs go ({DEFAULT_LOCAL_DIR})")
    p.add_argument("--base-port", type=int, default=8080, help="HTTP port of n1; n2 gets +1... (default 8080)")
    p.add_argument("--replication-factor", type=int, default=3)
    p.add_argument("--durability", default="sync", choices=["sync", "batch", "off"])
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no tokens (default: a cluster CA, mutual TLS, HTTPS and an admin token)")


def _local(args: argparse.Namespace) -> int:
    from ringkv import local

    action = "up" if args.command == "run" else args.local_command
    if action == "up":
        if not 1 <= args.nodes <= 64:
            print("ringkv: --nodes must be between 1 and 64", file=sys.stderr)
            return 2
        try:
            cluster = local.up(args.data_dir, args.nodes, args.base_port, args.replication_factor, args.durability,
                               secure=not args.insecure)
        except (RuntimeError, TimeoutError) as e:
            print(f"ringkv: {e}", file=sys.stderr)
            return 1
        mode = "secure: mutual TLS between nodes, HTTPS, admin token" if cluster.secure else \
            "INSECURE: no TLS, no authentication"
        print(f"ringkv: {len(cluster.nodes)} nodes ready (RF {cluster.replication}, {mode}; data in "
              f"{cluster.data_dir})")
        for node in cluster.nodes:
            print(f"  {node.node_id}  {node.url}  pid {node.pid}  log {node.log_path}")
        env = cluster.env()
        dir_flag = "" if args.data_dir == DEFAULT_LOCAL_DIR else f" --data-dir {args.data_dir}"
        print(f"reach it:  eval \"$(ringkv local env{dir_flag})\"   # sets {', '.join(env)}")
        print("try:  ringkv put hello '\"world\"'  &&  ringkv get hello")
        auth = (f"--cacert {env['RINGKV_CA_CERT']} -H \"Authorization: Bearer $(cat {env['RINGKV_TOKEN_FILE']})\" "
                if cluster.secure else "")
        print(f"      curl {auth}'{cluster.nodes[-1].url}/api/v1/getValue?key=hello'")
        if cluster.secure:
            print(f"status page: {cluster.nodes[0].url}/ui   (any node serves it; sign in with the admin token in "
                  f"{env['RINGKV_TOKEN_FILE']}; the browser does not know the cluster CA {env['RINGKV_CA_CERT']}: "
                  "import it, or accept the warning)")
        else:
            print(f"status page: {cluster.nodes[0].url}/ui   (any node serves it)")
        print(f"stop: ringkv local down{dir_flag}")
        return 0
    if action == "env":
        loaded = local.LocalCluster.load(os.path.abspath(args.data_dir))
        if loaded is None:
            print(f"ringkv: no local cluster in {args.data_dir}", file=sys.stderr)
            return 1
        for name, value in loaded.env().items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    if action == "status":
        loaded = local.LocalCluster.load(os.path.abspath(args.data_dir))
        if loaded is None:
            print(f"ringkv: no local cluster in {args.data_dir}", file=sys.stderr)
            return 1
        rows = loaded.status()
        if args.json:
            print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        else:
            for row in rows:
                state = "up" if row["up"] else ("running, not answering" if row["alive"] else "down")
                print(f"{row['node_id']:<5} pid {row['pid']:<8} {row['http']:<24} {state}")
        return 0 if all(r["up"] for r in rows) else 3
    stopped = local.down(args.data_dir)
    if stopped is None:
        print(f"ringkv: no local cluster in {args.data_dir}", file=sys.stderr)
        return 1
    print(f"ringkv: stopped {len(stopped.nodes)} nodes")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringkv", description="ringkv distributed key-value store")
    parser.add_argument("--version", action="version", version=f"ringkv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    node = sub.add_parser("node", help="run one node (flags also settable as RINGKV_* variables)")
    config.add_arguments(node)
    run = sub.add_parser("run", help="start a local 3-node cluster (same as 'local up')")
    _local_up_arguments(run)
    local = sub.add_parser("local", help="a cluster of node processes on this machine: up, status, env, down")
    local_sub = local.add_subparsers(dest="local_command", metavar="ACTION", required=True)
    _local_up_arguments(local_sub.add_parser("up", help="start the nodes (detached) and wait until ready"))
    status = local_sub.add_parser("status", help="each node's id, pid, endpoint, up/down")
    status.add_argument("--data-dir", default=DEFAULT_LOCAL_DIR)
    status.add_argument("--json", action="store_true")
    down = local_sub.add_parser("down", help="stop the nodes (SIGTERM, then SIGKILL after a timeout)")
    down.add_argument("--data-dir", default=DEFAULT_LOCAL_DIR)
    env = local_sub.add_parser("env", help="shell exports pointing client commands at the cluster: "
                               "eval \"$(ringkv local env)\"")
    env.add_argument("--data-dir", default=DEFAULT_LOCAL_DIR)

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
    from ringkv.loadgen import cli as bench_cli

    bench_cli.add_parser(sub)
    from ringkv.check import cli as check_cli

    check_cli.add_parser(sub)
    from ringkv import admin_cli, certs_cli, repair_cli

    repair_cli.add_parser(sub)
    admin_cli.add_parser(sub)
    certs_cli.add_parser(sub)
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
    try:
        return _main(argv)
    except BrokenPipeError:  # `ringkv admin status | head`: the reader has gone; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("run", "local"):
        return _local(args)
    if args.command == "bench":
        from ringkv.loadgen import cli as bench_cli

        return bench_cli.main(args)
    if args.command == "check":
        from ringkv.check import cli as check_cli

        return check_cli.main(args)
    if args.command == "repair":
        from ringkv import repair_cli

        return repair_cli.main(args)
    if args.command == "certs":
        from ringkv import certs_cli

        return certs_cli.main(args)
    if args.command == "admin":
        from ringkv import admin_cli

        return admin_cli.main(args)
    if args.command == "node":
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
