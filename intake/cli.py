"""The `intake` command: thin wrappers over the same functions the app and the worker use."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NoReturn

from pydantic import ValidationError
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, ProgrammingError

from intake.durations import InvalidDurationError, parse_duration
from intake.logs import configure_logging
from intake.settings import Settings, get_settings
from models.api_keys import (
    ApiKeyNotFoundError,
    InvalidApiKeyNameError,
    issue_api_key,
    list_api_keys,
    revoke_api_key,
)
from models.db import Database
from models.schema import ApiKey
from models.tenants import (
    InvalidTenantSettingError,
    TenantNotFoundError,
    configure_tenant,
    create_tenant,
    get_tenant,
)
from models.whatsapp_routing import PhoneNumberIdError


class CommandError(Exception):
    """A user's mistake or an unreachable service: printed as one line, exit status 1."""


def _tenant_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise CommandError(f"not a tenant id: {text!r}") from None


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> None:
    from models.migrate import upgrade

    upgrade(settings.database_url)
    print(f"schema is at head on {_redacted(settings.database_url)}")


def _port(text: str) -> int:
    """An argparse type: a TCP port to listen on."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, not {port}")
    return port


def _check_can_listen(host: str, port: int) -> None:
    """Bind and release the address first, so that a host that does not resolve or a port in
    use is one line from us rather than uvicorn's start-up lines followed by its error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CommandError(f"cannot listen on {host}:{port}: {reason}") from None


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from api.app import create_app

    _check_can_listen(args.host, args.port)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    from worker.runner import run_worker

    if args.concurrency < 1:  # checked before Celery starts, so it is one line, not a traceback
        raise CommandError(
            f"--concurrency takes a whole number of 1 or more, not {args.concurrency}"
        )
    run_worker(settings, concurrency=args.concurrency, deliveries=args.deliveries)


def cmd_dev(settings: Settings, args: argparse.Namespace) -> None:
    from intake.dev import run_dev

    _check_can_listen(args.host, args.port)
    run_dev(settings, host=args.host, port=args.port)


def cmd_demo(settings: Settings, _args: argparse.Namespace) -> None:
    # The demo tells its own story on stdout; only warnings and errors are logged beside it.
    configure_logging(json_lines=settings.log_json, level=logging.WARNING)
    from intake.demo import run_demo

    run_demo(settings)


def cmd_tenant_create(settings: Settings, args: argparse.Namespace) -> None:
    db = Database(settings.database_url)
    try:
        with db.unit_of_work() as session:
            new = create_tenant(session, name=args.name, region=args.region)
            tenant_id, name = str(new.tenant.id), new.tenant.name
    except InvalidTenantSettingError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps({"id": tenant_id, "name": name, "api_key": new.api_key}))
    else:
        print(f"id: {tenant_id}")
        print(f"name: {name}")
        print(f"api_key: {new.api_key}")
        print("The API key is shown only this once: keep it now.", file=sys.stderr)


def cmd_tenant_configure(settings: Settings, args: argparse.Namespace) -> None:
    values: dict[str, str] = {}
    for pair in args.pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"expected KEY=VALUE, got {pair!r}")
        values[key.strip()] = value
    try:
        keep = parse_duration(args.keep_previous) if args.keep_previous else None
    except InvalidDurationError as exc:
        raise CommandError(str(exc)) from None
    db = Database(settings.database_url)
    try:
        with db.unit_of_work() as session:
            tenant = configure_tenant(
                session, tenant_id=_tenant_id(args.tenant_id), values=values, keep_previous=keep
            )
            previous = dict(tenant.previous_secrets or {})
    except (InvalidTenantSettingError, TenantNotFoundError, PhoneNumberIdError) as exc:
        raise CommandError(str(exc)) from None
    print(f"configured {', '.join(sorted(values))} for tenant {args.tenant_id}")
    for name in sorted(set(values) & set(previous) if keep else ()):
        print(f"the previous {name} stays valid until {previous[name]['expires_at']}")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def _key_json(key: ApiKey) -> dict[str, str | None]:
    return {
        "id": str(key.id),
        "name": key.name,
        "created_at": _iso(key.created_at),
        "last_used_at": _iso(key.last_used_at),
        "revoked_at": _iso(key.revoked_at),
    }


def cmd_key_create(settings: Settings, args: argparse.Namespace) -> None:
    tenant_id = _tenant_id(args.tenant_id)
    db = Database(settings.database_url)
    try:
        with db.unit_of_work() as session:
            get_tenant(session, tenant_id=tenant_id)
            new = issue_api_key(session, tenant_id=tenant_id, name=args.name)
            key_id, name = str(new.key.id), new.key.name
    except (TenantNotFoundError, InvalidApiKeyNameError) as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps({"id": key_id, "name": name, "api_key": new.api_key}))
    else:
        print(f"id: {key_id}")
        print(f"name: {name or ''}")
        print(f"api_key: {new.api_key}")
        print("The API key is shown only this once: keep it now.", file=sys.stderr)


def cmd_key_list(settings: Settings, args: argparse.Namespace) -> None:
    tenant_id = _tenant_id(args.tenant_id)
    db = Database(settings.database_url)
    try:
        with db.sessions() as session:
            get_tenant(session, tenant_id=tenant_id)
            keys = [_key_json(key) for key in list_api_keys(session, tenant_id=tenant_id)]
    except TenantNotFoundError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps(keys))
        return
    for key in keys:
        state = f"revoked {key['revoked_at']}" if key["revoked_at"] else "active"
        print(
            f"{key['id']}  name={key['name'] or '-'}  created={key['created_at']}  "
            f"last_used={key['last_used_at'] or 'never'}  {state}"
        )


def cmd_key_revoke(settings: Settings, args: argparse.Namespace) -> None:
    try:
        key_id = uuid.UUID(args.key_id)
    except ValueError:
        raise CommandError(f"not a key id: {args.key_id!r}") from None
    db = Database(settings.database_url)
    try:
        with db.unit_of_work() as session:
            key, revoked_now = revoke_api_key(session, key_id=key_id)
            revoked_at = _iso(key.revoked_at)
    except ApiKeyNotFoundError as exc:
        raise CommandError(str(exc)) from None
    if revoked_now:
        print(f"revoked key {key_id}")
    else:
        print(f"key {key_id} was already revoked at {revoked_at}")


def cmd_events_failed(settings: Settings, args: argparse.Namespace) -> None:
    from worker.events import list_failed

    db = Database(settings.database_url)
    tenant_id = None
    if args.tenant:
        tenant_id = _tenant_id(args.tenant)
        try:
            with db.sessions() as session:
                get_tenant(session, tenant_id=tenant_id)
        except TenantNotFoundError as exc:
            raise CommandError(str(exc)) from None
    rows = list_failed(db, tenant_id=tenant_id)
    if args.json:
        print(json.dumps([row.to_json() for row in rows]))
        return
    if not rows:
        print("no failed messages")
        return
    for row in rows:
        print(row.line())


def cmd_events_replay(settings: Settings, args: argparse.Namespace) -> None:
    ids = []
    for text in args.ids:
        try:
            ids.append(uuid.UUID(text))
        except ValueError:
            raise CommandError(f"not a message id: {text!r}") from None
    from kombu.exceptions import OperationalError as BrokerError
    from redis import RedisError

    from worker.events import UnknownEventError, replay
    from worker.unrouted import (
        UnroutableChangeError,
        check_unrouted,
        replay_unrouted,
        unrouted_ids_among,
    )

    db = Database(settings.database_url)
    # An id is a failed message or an unrouted shared-route change; every one is checked
    # before anything is replayed.
    unrouted = unrouted_ids_among(db, ids)
    failed = [i for i in ids if i not in unrouted]
    try:
        check_unrouted(db, change_ids=list(unrouted))
        if failed or not unrouted:
            count = replay(db, settings, message_ids=failed)
            print(f"replayed {count} message(s)")
        if unrouted:
            routed = replay_unrouted(db, settings, change_ids=[i for i in ids if i in unrouted])
            print(f"routed {len(unrouted)} unrouted change(s): {routed} new message(s)")
    except (UnknownEventError, UnroutableChangeError) as exc:
        raise CommandError(str(exc)) from None
    except (BrokerError, RedisError, OSError) as exc:
        # The rows are pending again (committed before the wake-up): only the wake-up is lost.
        raise CommandError(
            "the messages are pending again, but the broker does not answer "
            f"({type(exc).__name__}); a worker's reconciler will queue them once it does"
        ) from None


def cmd_events_unrouted(settings: Settings, args: argparse.Namespace) -> None:
    from worker.unrouted import list_unrouted

    rows = list_unrouted(Database(settings.database_url))
    if args.json:
        print(json.dumps([row.to_json() for row in rows]))
        return
    if not rows:
        print("no unrouted changes")
        return
    for row in rows:
        print(row.line())


def cmd_events_redeliver(settings: Settings, args: argparse.Namespace) -> None:
    ids = []
    for text in args.ids:
        try:
            ids.append(uuid.UUID(text))
        except ValueError:
            raise CommandError(f"not a delivery id: {text!r}") from None
    from models.webhook_endpoints import DeliveryNotFoundError
    from worker.deliveries import redeliver

    try:
        count = redeliver(Database(settings.database_url), delivery_ids=ids)
    except DeliveryNotFoundError as exc:
        raise CommandError(str(exc)) from None
    print(f"queued {count} delivery(ies) to be sent again")


def _redacted(url: str) -> str:
    """A URL fit for a log line: any password replaced."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported by the command that uses it
        return "<database url>"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr like every other error (argparse
    prints the whole usage first); subcommands inherit the class, so theirs are too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="intake", description=__doc__)
    parser.add_argument("--log-json", action="store_true", help="one JSON object a log line")
    # Accepted after the command too (`intake serve --log-json`); SUPPRESS keeps an absent
    # flag there from undoing one given before the command.
    common = _Parser(add_help=False)
    common.add_argument("--log-json", action="store_true", default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str,
        handler: Callable[[Settings, argparse.Namespace], None],
        help_: str,
        parent: argparse._SubParsersAction[_Parser] = commands,
    ) -> argparse.ArgumentParser:
        sub = parent.add_parser(name, help=help_, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    add("migrate", cmd_migrate, "create or upgrade the schema")
    for name, handler, help_ in (
        ("serve", cmd_serve, "the HTTP app"),
        ("dev", cmd_dev, "app and worker in one process, embedded"),
    ):
        sub = add(name, handler, help_)
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=_port, default=8000)
    worker = add("worker", cmd_worker, "a Celery worker that ingests queued messages")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument(
        "--deliveries", action="store_true", help="send outbound webhooks instead of ingesting"
    )
    add("demo", cmd_demo, "run the whole pipeline on bundled sample webhooks")

    tenant = commands.add_parser("tenant", help="create and configure tenants")
    tenant_commands = tenant.add_subparsers(dest="tenant_command", required=True)
    create = add("create", cmd_tenant_create, "a new tenant and its API key", tenant_commands)
    create.add_argument("name")
    create.add_argument("--region", default="US", help="phone region, e.g. US, GB, BR")
    create.add_argument("--json", action="store_true")
    configure = add("configure", cmd_tenant_configure, "set channel secrets", tenant_commands)
    configure.add_argument("tenant_id")
    configure.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    configure.add_argument(
        "--keep-previous",
        metavar="DURATION",
        help="each secret replaced stays valid this long beside the new one (90s, 30m, 24h, 2d)",
    )

    key = commands.add_parser("key", help="a tenant's API keys")
    key_commands = key.add_subparsers(dest="key_command", required=True)
    key_create = add("create", cmd_key_create, "another API key for a tenant", key_commands)
    key_create.add_argument("tenant_id")
    key_create.add_argument("--name", help="what the key is for, shown by `key list`")
    key_create.add_argument("--json", action="store_true")
    key_list = add("list", cmd_key_list, "a tenant's keys, never the keys themselves", key_commands)
    key_list.add_argument("tenant_id")
    key_list.add_argument("--json", action="store_true")
    key_revoke = add("revoke", cmd_key_revoke, "refuse a key from now on", key_commands)
    key_revoke.add_argument("key_id")

    events = commands.add_parser("events", help="failed inbound messages")
    event_commands = events.add_subparsers(dest="events_command", required=True)
    failed = add(
        "failed", cmd_events_failed, "list messages that could not be ingested", event_commands
    )
    failed.add_argument("--tenant")
    failed.add_argument("--json", action="store_true")
    replay = add(
        "replay",
        cmd_events_replay,
        "put failed messages back on the queue; route unrouted changes",
        event_commands,
    )
    replay.add_argument("ids", nargs="+", metavar="ID")
    unrouted = add(
        "unrouted",
        cmd_events_unrouted,
        "shared-route WhatsApp changes for a phone_number_id no tenant registered",
        event_commands,
    )
    unrouted.add_argument("--json", action="store_true")
    redeliver = add(
        "redeliver", cmd_events_redeliver, "send outbound event deliveries again", event_commands
    )
    redeliver.add_argument("ids", nargs="+", metavar="DELIVERY_ID")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
        if args.log_json:
            settings = settings.model_copy(update={"log_json": True})
        configure_logging(json_lines=settings.log_json)
        args.handler(settings, args)
    except CommandError as exc:
        print(f"intake: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        problems = "; ".join(
            f"INTAKE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"intake: invalid configuration: {problems}", file=sys.stderr)
        return 1
    except (ArgumentError, NoSuchModuleError, ModuleNotFoundError) as exc:
        print(f"intake: unusable database or broker URL: {exc}", file=sys.stderr)
        return 1
    except (OperationalError, ProgrammingError) as exc:
        first_line = (str(exc.orig).strip().splitlines() or ["unknown error"])[0]
        if isinstance(exc, ProgrammingError) or "no such table" in first_line:
            print("intake: the database has no schema yet: run `intake migrate`", file=sys.stderr)
        else:
            print(f"intake: cannot reach the database: {first_line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the contract: one line and a non-zero exit, never a traceback
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"intake: {type(exc).__name__}: {first_line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
