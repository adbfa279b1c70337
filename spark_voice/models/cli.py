"""`spark-voice models prepare | verify | list | use ROLE FILE | rollback ROLE`."""

from __future__ import annotations

import argparse
import json
import sys

from ..cli_common import settings_from_args
from ..types import ROLES


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


# ------------------------------------------------------------------------------------ commands
def cmd_prepare(args) -> int:
    from .prepare import prepare_all

    s = settings_from_args(args)
    roles = args.role or None
    out = prepare_all(s, small=args.small, force=args.force, roles=roles)
    missing = [r for r, files in out.items() if not files]
    if args.json:
        _print_json({r: [str(p) for p in files] for r, files in out.items()})
    return 1 if missing else 0


def cmd_verify(args) -> int:
    from .switch import verify_models

    s = settings_from_args(args)
    reports = verify_models(s)
    bad = [r for r in reports if not r["ok"]]
    if args.json:
        _print_json({"profile": s.profile, "ok": not bad, "models": reports})
        return 1 if bad else 0
    print(f"# profile {s.profile}, root {s.root_dir}")
    if not reports:
        print("no model files needed (mock providers)")
    for r in reports:
        label = r["role"] if r["what"] == r["role"] else f"{r['role']}:{r['what']}"
        if r["ok"]:
            info = r["info"]
            bits = [info["size"]] + [b for b in (info.get("architecture"), info.get("name"),
                                                 info.get("quantization")) if b]
            print(f"ok    {label:<13} {r['path']}  ({', '.join(bits)})")
        else:
            print(f"FAIL  {label:<13} {r['path']}")
            print(f"      {r['error']}")
            print(f"      fix: {r['fix']}")
        for w in r.get("warnings", []):
            print(f"      warning: {w}")
    if bad:
        print(f"{len(bad)} of {len(reports)} model(s) not usable", file=sys.stderr)
    return 1 if bad else 0


def cmd_list(args) -> int:
    from .switch import list_models

    s = settings_from_args(args)
    bad = [r for r in args.roles if r not in ROLES]
    if bad:
        from ..errors import ConfigError

        raise ConfigError(f"unknown model role {bad[0]!r}; accepted values: {', '.join(ROLES)}")
    data = list_models(s)
    if args.roles:
        data = {r: data[r] for r in args.roles}
    if args.json:
        _print_json(data)
        return 0
    for role, d in data.items():
        state = "" if d["active_exists"] else "  (MISSING)"
        print(f"{role}: {d['variable']}={d['value']}  [{d['source']}] -> {d['active']}{state}")
        if not d["models"]:
            print(f"    (nothing under {d['folder']})")
        for m in d["models"]:
            mark = "*" if m["active"] else " "
            desc = m["info"] and ", ".join(b for b in (m["info"]["size"], m["info"].get("architecture"),
                                                       m["info"].get("name"), m["info"].get("quantization")) if b)
            print(f"  {mark} {m['name']:<40} {desc if m['ok'] else 'not usable: ' + str(m['error'])}")
        if d["history"]:
            prev = d["history"][0]
            print(f"    rollback -> {prev if prev is not None else '(remove from .env)'}")
    return 0


def cmd_use(args) -> int:
    from .switch import use_model

    s = settings_from_args(args)
    res = use_model(s, args.role, args.file)
    if args.json:
        _print_json(res.as_dict())
        return 0
    print(f"{res.role}: {res.variable}={res.value} written to {res.env_path}")
    if res.info is not None:
        print(f"    {res.path} ({res.info.summary()})")
    print(f"    previous: {res.previous if res.previous is not None else '(not set in .env)'}; "
          f"undo with `spark-voice models rollback {res.role}`")
    print("    restart the server to use it (docker compose: `up -d` recreates the container)")
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def cmd_rollback(args) -> int:
    from .switch import rollback

    s = settings_from_args(args)
    res = rollback(s, args.role)
    if args.json:
        _print_json(res.as_dict())
        return 0
    now = f"{res.variable}={res.value}" if res.value is not None else f"{res.variable} removed from .env"
    print(f"{res.role}: {now} ({res.env_path}); now {res.path}")
    if res.info is None:
        print(f"warning: {res.path} is missing or not a valid {res.role} model", file=sys.stderr)
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print("    restart the server to use it")
    return 0


# ------------------------------------------------------------------------------------ parser
def add_parser(subparsers, common) -> argparse.ArgumentParser:
    p = subparsers.add_parser("models", help="prepare, verify, list and switch model files (./models/<role>)")
    sub = p.add_subparsers(dest="models_command", required=True, metavar="{prepare,verify,list,use,rollback}")

    pr = common(sub.add_parser("prepare", help="put the models under ./models (--small: the small CPU models)"))
    pr.add_argument("--small", action="store_true", help="small real models for the dev profile and the tests")
    pr.add_argument("--force", action="store_true", help="redo files that are already there")
    pr.add_argument("--role", action="append", choices=ROLES, help="only this role (repeatable)")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_prepare)

    v = common(sub.add_parser("verify", help="check every configured model file (exit 1 with what to fix)"))
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    ls = common(sub.add_parser("list", help="models under ./models per role; * = active"))
    ls.add_argument("roles", nargs="*", metavar="ROLE", help="only these roles (llm, stt, embedding, tts)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    u = common(sub.add_parser("use", help="validate FILE for ROLE and make it active in .env (atomic)"))
    u.add_argument("role", choices=ROLES)
    u.add_argument("file", help="a file (folder for tts): path, or a name under ./models/<role>")
    u.add_argument("--json", action="store_true")
    u.set_defaults(func=cmd_use)

    rb = common(sub.add_parser("rollback", help="restore the model that ROLE used before the last `use`"))
    rb.add_argument("role", choices=ROLES)
    rb.add_argument("--json", action="store_true")
    rb.set_defaults(func=cmd_rollback)
    return p
