"""Requests from the sample client, through the pods/exec API, and counting them.

Each request prints its own markers (:func:`curl_script`), so a request that was not
seen is never counted and every failure carries curl's own reason.
"""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from dataclasses import dataclass
from typing import Any

from meshctl import kube
from meshctl.errors import one_line
from meshctl.verdicts import FAIL, PASS
from meshctl.verify.result import Answer, Failure

CURL_MAX_TIME = 5  # seconds per request
ANSWER = re.compile(r"Hello version: (?P<version>[\w.-]+), instance: (?P<instance>[\w.-]+)")
# per-request markers the curl script prints around each request (see curl_script)
BEGIN, HTTP_CODE, EXIT = "@@meshctl-request ", "@@meshctl-http ", "@@meshctl-exit "


@dataclass(frozen=True)
class ExecOutput:
    stdout: str
    exit_code: int


class ExecFailed(Exception):
    """The API server could not run a command in the pod; ``str`` says why, in one line."""


def exec_in_pod(k: kube.Kube, pod: str, container: str, command: list[str], *,
                namespace: str, timeout: float) -> ExecOutput:
    """``kubectl exec`` through the API (pods/exec over a websocket), on a fresh client.

    A fresh ApiClient because ``kubernetes.stream`` swaps the client's request method
    for the websocket while it runs; sharing would race with other threads' calls.
    """
    from kubernetes import client as k8s  # imported here: only verify's traffic half needs it
    from kubernetes.stream import stream
    from kubernetes.stream.ws_client import ERROR_CHANNEL

    cfg = k.api.configuration
    api = k8s.ApiClient(configuration=cfg)
    try:
        ws = stream(k8s.CoreV1Api(api).connect_get_namespaced_pod_exec, pod, namespace,
                    container=container, command=command, stdin=False, stdout=True,
                    stderr=True, tty=False, _preload_content=False,
                    _request_timeout=timeout)
        ws.run_forever(timeout=timeout)
        stdout = ws.read_stdout() or ""
        status_text = ws.read_channel(ERROR_CHANNEL) or ""
        ws.close()
    except k8s.ApiException as e:
        raise ExecFailed(one_line(f"pods/exec refused: HTTP {e.status} {e.reason}", 300)) \
            from None
    except Exception as e:  # websocket/TLS/socket errors: the reason is all we need
        raise ExecFailed(one_line(f"pods/exec failed: {type(e).__name__}: "
                                  f"{_short_urls(str(e))}", 300)) from None
    finally:
        api.close()
    return ExecOutput(stdout, _exit_code(status_text))


def _short_urls(text: str) -> str:
    """Cut URLs to scheme://host:port/first-segment: the rest repeats the command."""
    return re.sub(r'"?(https?://[^/"\s]+)(/[^/"\s?]*)[^"\s]*"?', r"\1\2/…", text)


def _exit_code(status_text: str) -> int:
    """The exit code from the exec error channel (a v1 Status), or ExecFailed."""
    if not status_text:
        raise ExecFailed("pods/exec ended without a status: the command may not have run")
    try:
        status = json.loads(status_text)
    except ValueError:
        raise ExecFailed(one_line(f"pods/exec failed: {_short_urls(status_text)}", 300)) \
            from None
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", "1"))
    raise ExecFailed(one_line(
        f"pods/exec failed: {_short_urls(str(status.get('message', status_text)))}", 300))


# --- counting requests -------------------------------------------------------------------


def curl_script(url: str, requests: int, *, max_time: float = CURL_MAX_TIME) -> str:
    """The shell loop run in the curl pod (POSIX sh: busybox in curlimages/curl).

    Each request is framed by markers on their own lines: ``BEGIN n`` before it, curl's
    body and its stderr (``2>&1``, so in order), ``HTTP_CODE`` from ``-w``, then
    ``EXIT`` with curl's exit status.  A request counts as sent when its BEGIN line
    arrived; one whose EXIT line never came is an error, never an answer.
    """
    return (f'i=0; while [ "$i" -lt {int(requests)} ]; do i=$((i+1)); '
            f'echo "{BEGIN}$i"; '
            f"curl -sS --max-time {max_time:g} -w '\\n{HTTP_CODE}%{{http_code}}\\n' "
            f"{shlex.quote(url)} 2>&1; "
            f'echo "{EXIT}$?"; done')


@dataclass(frozen=True)
class Tally:
    """What the client's output says happened, request by request."""

    sent: int
    answers: tuple[Answer, ...]
    failures: tuple[Failure, ...]

    @property
    def errors(self) -> int:
        return sum(f.count for f in self.failures)


def _why(exit_code: int | None, http: str | None, lines: list[str]) -> str | None:
    """``None`` for a helloworld answer, else the reason this request failed, in words."""
    if exit_code is None:
        return "no result: the output ended during the request"
    if exit_code != 0:
        said = next((ln for ln in lines if ln.startswith("curl: (")), None)
        return one_line(said or f"curl exited {exit_code}", 200)
    if http != "200":
        body = next((ln for ln in lines if ln), "")
        return one_line(f"HTTP {http or '?'}" + (f": {body[:80]}" if body else ""), 200)
    if not any(ANSWER.search(ln) for ln in lines):
        body = next((ln for ln in lines if ln), "(empty body)")
        return one_line(f"HTTP 200 but not a helloworld answer: {body[:80]}", 200)
    return None


def count_requests(stdout: str, instances: dict[str, str]) -> Tally:
    """Per request: an answer (by version and the cluster of the pod that gave it) or a
    failure with its reason.  Lines before the first marker are ignored."""
    answers: Counter[tuple[str, str]] = Counter()
    failures: Counter[str] = Counter()
    first_seen: dict[str, str] = {}
    sent = 0
    current: dict[str, Any] | None = None

    def close(req: dict[str, Any] | None) -> None:
        if req is None:
            return
        why = _why(req["exit"], req["http"], req["lines"])
        if why is None:
            m = next(m for ln in req["lines"] if (m := ANSWER.search(ln)))
            answers[(m["version"], instances.get(m["instance"], "unknown"))] += 1
        else:
            key = re.sub(r"\d+", "N", why)  # "after 5002 ms" and "after 5001 ms" are one
            first_seen.setdefault(key, why)
            failures[key] += 1

    for raw in stdout.splitlines():
        line = raw.rstrip("\r")
        if line.startswith(BEGIN):
            close(current)
            sent += 1
            current = {"exit": None, "http": None, "lines": []}
        elif current is None:
            continue
        elif line.startswith(HTTP_CODE):
            current["http"] = line[len(HTTP_CODE):].strip()
        elif line.startswith(EXIT):
            code = line[len(EXIT):].strip()
            current["exit"] = int(code) if code.isdigit() else 255
            close(current)
            current = None
        else:
            current["lines"].append(line.strip())
    close(current)
    return Tally(sent=sent,
                 answers=tuple(Answer(v, c, n) for (v, c), n in sorted(answers.items())),
                 failures=tuple(Failure(first_seen[k], n) for k, n in failures.most_common()))


def judge_traffic(tally: Tally, *, requests: int, expected: dict[str, str],
                  client: str) -> tuple[str, str]:
    """(PASS|FAIL, message): PASS only when every request was sent and answered and every
    expected (cluster -> version) answered."""
    summary = ", ".join(f"{a.version}@{a.cluster}: {a.count}" for a in tally.answers) or "none"
    failed = "; ".join(f"{f.count}× {f.reason}" for f in tally.failures)
    seen = {(a.cluster, a.version) for a in tally.answers}
    missing = [f"{version}@{cluster}" for cluster, version in expected.items()
               if (cluster, version) not in seen]
    head = (f"{tally.sent} of {requests} requests sent from {client}: answers {summary}; "
            f"{tally.errors} errors" + (f" ({failed})" if failed else ""))
    problems = []
    if tally.sent < requests:
        problems.append(f"only {tally.sent} of {requests} requests were attempted")
    if tally.errors:
        problems.append(f"{tally.errors} request(s) got no answer")
    if missing:
        problems.append(f"no answer from {', '.join(missing)}")
    if problems:
        return FAIL, f"{head}; " + "; ".join(problems)
    return PASS, f"{head}; every request answered, every cluster and version answered"


