"""nginx as a peer (the equivalent rewriting reverse proxy) and as a load balancer for the scale part.

Each nginx runs in the foreground (`daemon off`) from a generated config in its
own temp dir, one worker process (like one mitmdump process), listening on
127.0.0.1 only. Access logging is on, to a file: the peer of the addon's
per-request log line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from peerproc import launch, stop_group


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (
            p
            for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
            if os.path.exists(p)
        ),
        None,
    )


def _common(workdir: Path, port: int, upstream_servers: list[int], keepalive: int) -> tuple[str, str]:
    temp = workdir / "temp"
    temp.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    os.chmod(temp, 0o777)  # workers may run as nobody
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstream_servers)
    head = f"""worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 100000;
    upstream backend {{
{servers}
        keepalive {keepalive};
    }}
"""
    proxy = """        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
        proxy_request_buffering off;
"""
    return head, proxy


def rewriting_config(workdir: Path, port: int, upstream_port: int, compat_prefix: str) -> Path:
    """What the addon does, in nginx: strip a leading /v1, prepend the compat prefix, stream responses."""
    head, proxy = _common(workdir, port, [upstream_port], 32)
    conf = (
        head
        + f"""    server {{
        listen 127.0.0.1:{port};
{proxy}        proxy_set_header Host 127.0.0.1:{upstream_port};
        location = /v1 {{ proxy_pass http://backend{compat_prefix}; }}
        location /v1/ {{ proxy_pass http://backend{compat_prefix}/; }}
        location / {{ proxy_pass http://backend{compat_prefix}/; }}
    }}
}}
"""
    )
    path = workdir / "nginx.conf"
    path.write_text(conf)
    return path


def balancer_config(workdir: Path, port: int, backend_ports: list[int]) -> Path:
    """Round-robin over several proxies with keep-alive upstream connections (they do the rewrite)."""
    head, proxy = _common(workdir, port, backend_ports, 64)
    conf = (
        head
        + f"""    server {{
        listen 127.0.0.1:{port};
{proxy}        proxy_set_header Host $http_host;
        location / {{ proxy_pass http://backend; }}
    }}
}}
"""
    )
    path = workdir / "nginx.conf"
    path.write_text(conf)
    return path


@dataclass
class Nginx:
    proc: subprocess.Popen
    port: int
    workdir: Path

    def output(self) -> str:
        parts = []
        for name in ("stdout.log", "error.log"):
            p = self.workdir / name
            if p.exists():
                parts.append(p.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self, timeout: float = 10) -> None:
        stop_group(self.proc, timeout)  # master and its worker share one session


def start(binary: str, conf: Path, port: int, wait_for_port, timeout: float = 10) -> Nginx:
    workdir = conf.parent
    cmd = [binary, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf), "-g", "daemon off;"]
    proc, listening = launch(
        cmd,
        cwd=workdir,
        log_path=workdir / "stdout.log",
        port=port,
        wait_for_port=wait_for_port,
        timeout=timeout,
    )
    n = Nginx(proc, port, workdir)
    if not listening:
        n.stop()
        time.sleep(0.1)
        raise RuntimeError(f"nginx did not start: {n.output()[-500:]}")
    return n
