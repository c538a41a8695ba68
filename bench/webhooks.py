"""Webhook throughput and latency on real PostgreSQL and Redis, against a bare endpoint.

`python -m intake serve` (one process; PostgreSQL in a throwaway database, Redis as broker and
flags, no worker: a webhook never waits for one) and, as the reference, a bare FastAPI app on
the same uvicorn that answers 200 to a POST. wrk drives both from loopback with requests
signed beforehand, each with a provider message id of its own, so every request is a real
insert (checked afterwards by counting the rows).

Two passes per route:
  max     closed loop, --connections connections, --seconds long: requests/s, p50, p99
  paced   the same at half the bare endpoint's rate, or at half the route's own max rate
          when the route cannot reach that (the report says which): p50, p99
Targets: route rate >= 0.4 x bare rate; paced p99 < 50 ms.

wrk (`apt-get install -y wrk`) paces with its `delay` hook, a closed loop with a wait between
a response and the next request; the rate it reached is reported beside the one it aimed at.

    python bench/webhooks.py [--pg-dsn "host=127.0.0.1 user=postgres"]
                             [--redis redis://127.0.0.1:6379/13] [--seconds 8] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.db import Database  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from models.tenants import configure_tenant, create_tenant  # noqa: E402
from tests.api.webhook_payloads import SECRETS, fresh_message, signed  # noqa: E402

ROUTES = ("twilio", "whatsapp", "telegram", "email/mailgun", "email/raw")
BARE_PATH = "/bare"
RATE_CEILING = 6000  # requests/s a route could conceivably reach here: sizes the request pools
TARGET_RATIO = 0.4
TARGET_P99_MS = 50.0
LOAD_BEFORE = ", ".join(f"{x:.2f}" for x in os.getloadavg())  # other work shares the cores

# wrk's Lua: each thread reads its own file of length-prefixed raw requests and sends them in
# order, never one twice; `done` prints the figures as one JSON line.
WRK_SCRIPT = r"""
local requests, index, delay_ms = {}, 0, 0
function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  local pos = 1
  while pos <= #data do
    local newline = string.find(data, "\n", pos, true)
    local size = tonumber(string.sub(data, pos, newline - 1))
    requests[#requests + 1] = string.sub(data, newline + 1, newline + size)
    pos = newline + 1 + size
  end
  delay_ms = tonumber(args[2] or "0")
end
function request()
  index = index + 1
  if index > #requests then
    if #requests > 1 then io.stderr:write("request pool exhausted\n") end
    index = 1
  end
  return requests[index]
end
if tonumber(os.getenv("WRK_DELAY_MS") or "0") > 0 then
  function delay() return delay_ms end
end
function done(summary, latency, requests_)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "status_errors": %d,'
    .. ' "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


@dataclass
class Pass:
    label: str
    rate: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    stored: int | None = None
    cpu_ms: float | None = None  # the server's CPU time per request, less sensitive to noise


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def bare_app() -> Any:
    from fastapi import FastAPI, Response

    app = FastAPI()

    @app.post(BARE_PATH)
    async def bare() -> Response:
        return Response(status_code=200)

    return app


def serve_bare(port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app(), host="127.0.0.1", port=port, log_config=None, access_log=False)


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited while starting:\n{log.read_text()[-2000:]}")
        try:
            httpx.get(url + "/healthz", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)  # polling a server that is starting, with a deadline
    raise SystemExit(f"{url} did not start in 30 s")


@contextmanager
def process(
    args: list[str], env: dict[str, str], log: Path, url: str
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        args,
        env=env,
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_up(url, proc, log)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def raw_request(path: str, headers: dict[str, str], body: bytes, port: int) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def write_pool(path: Path, requests: Iterator[bytes]) -> int:
    count = 0
    with path.open("wb") as out:
        for request in requests:
            out.write(f"{len(request)}\n".encode() + request)
            count += 1
    return count


def preflight(route: str, tenant_id: uuid.UUID, url: str) -> None:
    """One signed request through httpx first: a pool the app refuses would measure refusals."""
    payload, _ = fresh_message(route)
    req = signed(route, payload, tenant_id=tenant_id, base_url=url)
    response = httpx.post(url + req.path, content=req.body, headers=req.headers, timeout=10)
    if response.status_code != 200:
        raise SystemExit(f"{route}: the app answered {response.status_code}: {response.text}")


def route_requests(route: str, tenant_id: uuid.UUID, port: int, count: int) -> Iterator[bytes]:
    base = f"http://127.0.0.1:{port}"
    for _ in range(count):
        payload, _ = fresh_message(route)
        req = signed(route, payload, tenant_id=tenant_id, base_url=base)
        yield raw_request(req.path, req.headers, req.body, port)


def bare_requests(port: int, count: int, body: bytes) -> Iterator[bytes]:
    request = raw_request(
        BARE_PATH, {"content-type": "application/x-www-form-urlencoded"}, body, port
    )
    for _ in range(count):
        yield request


def run_wrk(
    url: str,
    pool: Path,
    script: Path,
    *,
    seconds: float,
    connections: int,
    delay_ms: float = 0.0,
    reuse: bool = False,
) -> dict[str, Any]:
    env = {**os.environ, "WRK_DELAY_MS": f"{delay_ms:.3f}"}
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{round(seconds)}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
            "--",
            str(pool),
            f"{delay_ms:.3f}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 60,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"wrk failed: {result.stdout}{result.stderr}")
    if "exhausted" in result.stderr and not reuse:
        raise SystemExit("the request pool ran out: raise RATE_CEILING")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def as_pass(label: str, figures: dict[str, Any]) -> Pass:
    return Pass(
        label=label,
        rate=figures["requests"] / (figures["duration_us"] / 1e6),
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        requests=figures["requests"],
        errors=figures["status_errors"] + figures["socket_errors"],
    )


def count_rows(db: Database, tenant_id: uuid.UUID) -> int:
    from sqlalchemy import func, select

    from models.schema import Message

    with db.sessions() as session:
        return (
            session.scalar(
                select(func.count()).select_from(Message).where(Message.tenant_id == tenant_id)
            )
            or 0
        )


def new_tenant(db: Database) -> uuid.UUID:
    with db.unit_of_work() as session:
        tenant = create_tenant(session, name=f"bench-{uuid.uuid4().hex[:8]}").tenant
        configure_tenant(session, tenant_id=tenant.id, values=SECRETS)
        return tenant.id


def measure_route(
    route: str,
    db: Database,
    url: str,
    port: int,
    work: Path,
    script: Path,
    args: argparse.Namespace,
    bare: Pass,
    pid: int,
) -> tuple[Pass, Pass, str]:
    slug = route.replace("/", "_")
    tenant = new_tenant(db)
    preflight(route, tenant, url)
    pool = work / f"{slug}-max.pool"
    write_pool(pool, route_requests(route, tenant, port, int(RATE_CEILING * args.seconds)))
    started = cpu_seconds(pid)
    top = as_pass(
        route, run_wrk(url, pool, script, seconds=args.seconds, connections=args.connections)
    )
    top.cpu_ms = (cpu_seconds(pid) - started) * 1000 / max(1, top.requests)
    top.stored = count_rows(db, tenant) - 1  # less the preflight's
    print(
        f"  {route} max: {top.rate:.0f} req/s, p50 {top.p50_ms:.2f} ms, p99 {top.p99_ms:.2f} ms,"
        f" {top.errors} errors, {top.stored} rows, server CPU {top.cpu_ms:.2f} ms/request",
        flush=True,
    )

    basis = "half the bare rate"
    target = bare.rate / 2
    if top.rate < target:
        basis, target = "half the route's own max rate", top.rate / 2
    # wrk waits `delay` after each response, so the rate also depends on the latency: a short
    # calibration run measures that latency at about the target rate, and the delay allows for it.
    paced_connections = 4
    tenant = new_tenant(db)
    pool = work / f"{slug}-calibrate.pool"
    write_pool(pool, route_requests(route, tenant, port, int(target * 2) * 3 + 100))
    guess = paced_connections * 1000.0 / target
    calibration = as_pass(
        route, run_wrk(url, pool, script, seconds=2, connections=paced_connections, delay_ms=guess)
    )
    latency_ms = max(0.0, paced_connections * 1000.0 / calibration.rate - guess)
    tenant = new_tenant(db)
    pool = work / f"{slug}-paced.pool"
    write_pool(pool, route_requests(route, tenant, port, int(target * 2 * args.seconds) + 100))
    paced = as_pass(
        route,
        run_wrk(
            url,
            pool,
            script,
            seconds=args.seconds,
            connections=paced_connections,
            delay_ms=max(0.0, guess - latency_ms),
        ),
    )
    paced.stored = count_rows(db, tenant)
    return top, paced, f"{basis}: {target:.0f}/s"


@contextmanager
def throwaway_database(pg_dsn: str) -> Iterator[str]:
    name = f"intake_bench_{uuid.uuid4().hex[:10]}"
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    with psycopg.connect(pg_dsn + " dbname=postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield (
            f"postgresql+psycopg://{params.get('user', 'postgres')}@"
            f"{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/{name}"
        )
    finally:
        with psycopg.connect(pg_dsn + " dbname=postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def report(bare: Pass, results: list[tuple[Pass, Pass, str]]) -> bool:
    print(f"\nload average before the run: {LOAD_BEFORE}; {os.cpu_count()} cores")
    print(
        f"\n{'endpoint':<16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}"
        f"{'errors':>8}{'rows':>8}{'cpu ms':>8}   paced: req/s (aimed) p50 p99"
    )
    print(
        f"{'bare FastAPI':<16}{bare.rate:>9.0f}{bare.p50_ms:>9.2f}{bare.p99_ms:>9.2f}"
        f"{1:>8.2f}{bare.errors:>8}{'-':>8}{bare.cpu_ms or 0:>8.3f}"
    )
    ok = True
    for top, paced, basis in results:
        ratio = top.rate / bare.rate
        met = ratio >= TARGET_RATIO and paced.p99_ms < TARGET_P99_MS
        ok &= met and top.errors == 0 and paced.errors == 0
        print(
            f"{top.label:<16}{top.rate:>9.0f}{top.p50_ms:>9.2f}{top.p99_ms:>9.2f}"
            f"{ratio:>8.2f}{top.errors:>8}{top.stored:>8}{top.cpu_ms or 0:>8.3f}   "
            f"{paced.rate:.0f} ({basis}) {paced.p50_ms:.2f} {paced.p99_ms:.2f}"
            f"{'' if met else '  <- below target'}"
        )
    print(
        f"\ntargets: rate >= {TARGET_RATIO} x bare; paced p99 < {TARGET_P99_MS:.0f} ms;"
        " cpu ms = the server's CPU time per request"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg-dsn", default="host=127.0.0.1 port=5432 user=postgres")
    parser.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/13",
        help="a Redis database of the benchmark's own: it is flushed",
    )
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        serve_bare(args.bare_server)
        return 0
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark drives the servers with wrk: apt-get install -y wrk")

    work = Path(tempfile.mkdtemp(prefix="intake-bench-webhooks-"))
    script = work / "pool.lua"
    script.write_text(WRK_SCRIPT)
    flags = redis.Redis.from_url(args.redis)
    flags.flushdb()
    try:
        with throwaway_database(args.pg_dsn) as database_url:
            upgrade(database_url)
            db = Database(database_url)
            env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
            env.update(
                PYTHONPATH=str(REPO),
                INTAKE_DATABASE_URL=database_url,
                INTAKE_BROKER_URL=args.redis,
                INTAKE_REDIS_URL=args.redis,
                # Measured here is the route, not the per-tenant limit it would soon hit.
                INTAKE_RATE_LIMIT_WEBHOOKS_PER_MINUTE="0",
            )
            bare_port, app_port = free_port(), free_port()
            bare_url, app_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{app_port}"
            sample_body = next(route_requests("twilio", uuid.uuid4(), app_port, 1))
            sample_body = sample_body.split(b"\r\n\r\n", 1)[1]
            with process(
                [sys.executable, __file__, "--bare-server", str(bare_port)],
                env,
                work / "bare.log",
                bare_url,
            ) as bare_proc:
                pool = work / "bare.pool"
                # The bare endpoint stores nothing, so one request sent over and over will do.
                write_pool(pool, bare_requests(bare_port, 1, sample_body))
                started = cpu_seconds(bare_proc.pid)
                bare = as_pass(
                    "bare",
                    run_wrk(
                        bare_url,
                        pool,
                        script,
                        seconds=args.seconds,
                        connections=args.connections,
                        reuse=True,
                    ),
                )
                bare.cpu_ms = (cpu_seconds(bare_proc.pid) - started) * 1000 / bare.requests
            print(
                f"bare FastAPI: {bare.rate:.0f} req/s, p50 {bare.p50_ms:.2f} ms, "
                f"p99 {bare.p99_ms:.2f} ms",
                flush=True,
            )
            results = []
            serve = [sys.executable, "-m", "intake", "serve", "--port", str(app_port)]
            with process(serve, env, work / "serve.log", app_url) as serve_proc:
                for route in args.routes.split(","):
                    results.append(
                        measure_route(
                            route, db, app_url, app_port, work, script, args, bare, serve_proc.pid
                        )
                    )
                    top, paced, basis = results[-1]
                    print(
                        f"{route}: {top.rate:.0f} req/s ({top.stored} rows), p99 "
                        f"{top.p99_ms:.2f} ms; paced {paced.rate:.0f} req/s ({basis}), "
                        f"p99 {paced.p99_ms:.2f} ms",
                        flush=True,
                    )
            db.dispose()
        return 0 if report(bare, results) else 1
    finally:
        flags.flushdb()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
