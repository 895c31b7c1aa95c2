"""`ringkv certs`: make the cluster CA, node and client certificates, and bearer tokens.

    ringkv certs create-ca     --certs-dir certs [--cluster NAME]           # ca.crt, ca.key
    ringkv certs create-node   --certs-dir certs --node-id n1 --host n1.example --host 10.0.0.1
                               [--out-dir DIR]                               # node.crt, node.key (+ ca.crt)
    ringkv certs create-client --certs-dir certs --name app --role write    # client.app.crt/.key
    ringkv certs create-token  --tokens-file certs/tokens --name app --role write   # prints the token once
    ringkv certs revoke-token  --tokens-file certs/tokens --name app
    ringkv certs list          --certs-dir certs                             # identities and expiry

Keys are written mode 0600 and never overwritten without --overwrite. Keep ca.key off the nodes (`--ca-key`
reads it from anywhere). Nodes re-read their certificates and the tokens file when they change.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from cryptography import x509

from ringkv.security import certs, identity, tokens

PROG = "ringkv certs"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("certs", help="make the cluster CA, node and client certificates, bearer tokens")
    verbs = p.add_subparsers(dest="certs_command", metavar="ACTION", required=True)

    def with_dir(q: argparse.ArgumentParser) -> argparse.ArgumentParser:
        q.add_argument("--certs-dir", required=True, help="directory holding ca.crt (and, by default, ca.key)")
        q.add_argument("--cluster", default="ringkv", help="the cluster's name, as --cluster-name (default ringkv)")
        q.add_argument("--days", type=int, help="validity in days")
        q.add_argument("--overwrite", action="store_true", help="replace existing files")
        return q

    with_dir(verbs.add_parser("create-ca", help="a new cluster CA"))
    node = with_dir(verbs.add_parser("create-node", help="a node certificate signed by the CA"))
    node.add_argument("--node-id", required=True, help="the node's --node-id ('*': one cert for every node)")
    node.add_argument("--host", action="append", default=[],
                      help="a DNS name or IP address clients use to reach the node (repeat)")
    node.add_argument("--out-dir", help="where node.crt, node.key and a copy of ca.crt go (default --certs-dir)")
    node.add_argument("--ca-key", help="the CA key (default CERTS_DIR/ca.key)")
    client = with_dir(verbs.add_parser("create-client", help="a client certificate (HTTPS client auth)"))
    client.add_argument("--name", required=True)
    client.add_argument("--role", required=True, choices=identity.ROLES)
    client.add_argument("--ca-key", help="the CA key (default CERTS_DIR/ca.key)")
    listing = verbs.add_parser("list", help="the certificates in a directory: identity and expiry")
    listing.add_argument("--certs-dir", required=True)
    for verb, text in (("create-token", "a new bearer token (printed once; only its hash is stored)"),
                       ("revoke-token", "remove a token by name")):
        t = verbs.add_parser(verb, help=text)
        t.add_argument("--tokens-file", required=True)
        t.add_argument("--name", required=True)
        if verb == "create-token":
            t.add_argument("--role", required=True, choices=identity.ROLES)
            t.add_argument("--replace", action="store_true", help="replace the token of an existing name")


def _refuse_existing(paths: list[Path], overwrite: bool) -> str | None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        return f"{', '.join(existing)} exist; pass --overwrite to replace them"
    return None


def _ca(args: argparse.Namespace) -> certs.Pair:
    return certs.load_ca(Path(args.certs_dir), Path(args.ca_key) if args.ca_key else None)


def create_ca(args: argparse.Namespace) -> str:
    d = Path(args.certs_dir)
    if (problem := _refuse_existing([d / certs.CA_CERT, d / certs.CA_KEY], args.overwrite)):
        raise ValueError(problem)
    pair = certs.create_ca(args.cluster, days=args.days or certs.CA_DAYS)
    certs.write(d / certs.CA_KEY, pair.key_pem, secret=True)
    certs.write(d / certs.CA_CERT, pair.cert_pem)
    return f"CA for cluster {args.cluster!r}: {d / certs.CA_CERT} (keep {d / certs.CA_KEY} off the nodes)"


def create_node(args: argparse.Namespace) -> str:
    out = Path(args.out_dir or args.certs_dir)
    if (problem := _refuse_existing([out / certs.NODE_CERT, out / certs.NODE_KEY], args.overwrite)):
        raise ValueError(problem)
    ca = _ca(args)
    pair = certs.create_node(ca, args.cluster, args.node_id, args.host, days=args.days or certs.NODE_DAYS)
    certs.write(out / certs.NODE_KEY, pair.key_pem, secret=True)
    certs.write(out / certs.NODE_CERT, pair.cert_pem)
    if out != Path(args.certs_dir):
        certs.write(out / certs.CA_CERT, ca.cert_pem)
    return f"node {args.node_id!r} of {args.cluster!r}: {out / certs.NODE_CERT} (hosts: {', '.join(args.host) or '-'})"


def create_client(args: argparse.Namespace) -> str:
    d = Path(args.certs_dir)
    crt, key = d / f"client.{args.name}.crt", d / f"client.{args.name}.key"
    if (problem := _refuse_existing([crt, key], args.overwrite)):
        raise ValueError(problem)
    pair = certs.create_client(_ca(args), args.cluster, args.name, args.role, days=args.days or certs.CLIENT_DAYS)
    certs.write(key, pair.key_pem, secret=True)
    certs.write(crt, pair.cert_pem)
    return f"client {args.name!r} ({args.role}) of {args.cluster!r}: {crt}"


def list_certs(args: argparse.Namespace) -> str:
    lines = []
    now = datetime.datetime.now(datetime.UTC)
    for path in sorted(Path(args.certs_dir).glob("*.crt")):
        for cert in x509.load_pem_x509_certificates(path.read_bytes()):
            try:
                sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
                hosts = [str(h) for h in sans.get_values_for_type(x509.DNSName)] + \
                    [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
            except x509.ExtensionNotFound:
                uris, hosts = [], []
            what = ", ".join(uris) or cert.subject.rfc4514_string()
            days = (cert.not_valid_after_utc - now).days
            lines.append(f"{path.name:<20} {what}  expires {cert.not_valid_after_utc:%Y-%m-%d} ({days} days)"
                         + (f"  hosts {', '.join(hosts)}" if hosts else ""))
    return "\n".join(lines) or f"no certificates in {args.certs_dir}"


def _token_entries(path: Path) -> list[tokens.Entry]:
    return tokens.parse(path.read_text(), str(path)) if path.exists() else []


def create_token(args: argparse.Namespace) -> str:
    path = Path(args.tokens_file)
    entries = _token_entries(path)
    if any(e.name == args.name for e in entries) and not args.replace:
        raise ValueError(f"a token named {args.name!r} exists in {path}; pass --replace to issue a new one")
    token = tokens.new_token()
    entries = [e for e in entries if e.name != args.name] + [tokens.Entry(args.name, args.role, tokens.digest(token))]
    certs.write(path, tokens.render(entries).encode(), secret=True)
    print(f"{PROG}: token {args.name!r} ({args.role}) added to {path}; it is shown once:", file=sys.stderr)
    return token


def revoke_token(args: argparse.Namespace) -> str:
    path = Path(args.tokens_file)
    entries = _token_entries(path)
    if not any(e.name == args.name for e in entries):
        raise ValueError(f"no token named {args.name!r} in {path}")
    certs.write(path, tokens.render([e for e in entries if e.name != args.name]).encode(), secret=True)
    return f"token {args.name!r} revoked (nodes stop accepting it once they re-read {path})"


VERBS = {"create-ca": create_ca, "create-node": create_node, "create-client": create_client, "list": list_certs,
         "create-token": create_token, "revoke-token": revoke_token}


def main(args: argparse.Namespace) -> int:
    try:
        print(VERBS[args.certs_command](args))
    except (ValueError, OSError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    return 0
