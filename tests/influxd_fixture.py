"""A throw-away InfluxDB 1.x (Debian package ``influxdb``, /usr/bin/influxd)
on loopback ports with its data in a temporary directory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

INFLUXD = shutil.which("influxd") or ("/usr/bin/influxd" if os.path.exists("/usr/bin/influxd") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"

[meta]
  dir = "{d}/meta"

[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http}"
  log-enabled = false

[continuous_queries]
  enabled = false
"""


class Influxd:
    def __init__(self, workdir: str):
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.http_port = free_port()
        cfg = os.path.join(workdir, "influxdb.conf")
        with open(cfg, "w") as fh:
            fh.write(CONFIG.format(d=workdir, rpc=free_port(), http=self.http_port))
        self.log_path = os.path.join(workdir, "influxd.log")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([INFLUXD, "-config", cfg], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited: {open(self.log_path).read()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url("/ping"), timeout=1) as r:
                    if r.status == 204:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("influxd did not come up")
            time.sleep(0.1)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def write_url(self, db: str) -> str:
        return self.url("/write?db=" + db)

    def query(self, q: str, db: str | None = None) -> dict:
        params = {"q": q}
        if db:
            params["db"] = db
        data = urllib.parse.urlencode(params).encode()
        with urllib.request.urlopen(urllib.request.Request(self.url("/query"), data=data), timeout=10) as r:
            return json.load(r)

    def create_db(self, db: str) -> None:
        self.query(f'CREATE DATABASE "{db}"')

    def write(self, db: str, body: bytes) -> int:
        req = urllib.request.Request(self.write_url(db), data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            raise AssertionError(f"influxd rejected the write: {e.code} {e.read()!r}") from None

    def points(self, db: str, measurement: str) -> list[dict]:
        """The measurement's whole points.  InfluxDB 1.x keeps each field of a point
        on its own, so a query that races a write can see a point whose other fields
        are still null: such a row is left out (it shows up whole on a later query)."""
        res = self.query(f'SELECT * FROM "{measurement}"', db)["results"][0]
        out = []
        for series in res.get("series", []):
            for row in series["values"]:
                if None not in row:
                    out.append(dict(zip(series["columns"], row)))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
