"""Fan-out of remote secrets: one ``istioctl create-remote-secret`` per source cluster,
and no failure when istioctl races another run for the reader's token Secret.

istioctl runs for real; a small shell wrapper in front of it (set as MESHCTL_ISTIOCTL)
appends each invocation's arguments to a log and then execs the real binary, so the
test can count processes without faking anything.
"""

from __future__ import annotations

import concurrent.futures
import os
import stat
from pathlib import Path

import pytest
from kubernetes import client as k8s

from tests.factories import meshctl
from tests.test_bootstrap import assert_torn_down, clusters_dir, flags

pytestmark = pytest.mark.sandbox

TOKEN_SECRET = "istio-reader-service-account-istio-remote-secret-token"
NAMES = ["cluster1", "cluster2", "cluster3", "cluster4"]
# how many times the three-links race is run in one test (the issue asks for 10 clean
# rounds before calling the fix done; CI runs 3)
ROUNDS = int(os.environ.get("MESHCTL_TEST_RACE_ROUNDS", "3"))


@pytest.fixture(scope="module")
def four(sandbox_factory):
    return sandbox_factory(4, nodes=1, cpu="8", memory="16Gi", label="fanout")


def counting_istioctl(tmp: Path, real: Path) -> tuple[Path, Path]:
    log = tmp / "istioctl.log"
    wrapper = tmp / "istioctl"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, log


def remote_secrets(cluster) -> set[str]:
    items = cluster.core().list_namespaced_secret(
        "istio-system", label_selector="istio/multiCluster=true").items
    return {s.metadata.annotations["networking.istio.io/cluster"] for s in items}


def test_one_istioctl_per_source_and_no_race(tmp_path: Path, four) -> None:
    folder = clusters_dir(tmp_path, four, {}, {})
    wrapper, log = counting_istioctl(tmp_path, four.bin_dir / "istioctl")
    env = dict(four.env(), MESHCTL_ISTIOCTL=str(wrapper))
    args = ["--main", "cluster1", *flags("--remote", NAMES[1:]), "--clusters-dir", str(folder)]
    try:
        up = run_env(env, "bootstrap", *args)
        assert up.returncode == 0, up.stderr[-3000:]
        created = [line for line in log.read_text().splitlines()
                   if line.startswith("create-remote-secret")]
        sources = sorted(line.split("--name ")[1].split()[0] for line in created)
        assert sources == NAMES, created  # 12 links, 4 istioctl processes
        for name in NAMES:
            assert remote_secrets(four[name]) == set(NAMES) - {name}, name

        # Three links of one source at once, while its token Secret does not exist yet:
        # three istioctl processes race to create it.  Every one must succeed.
        for _ in range(ROUNDS):
            core = four["cluster2"].core()
            try:
                core.delete_namespaced_secret(TOKEN_SECRET, "istio-system")
            except k8s.ApiException as e:
                assert e.status == 404
            for target in ("cluster1", "cluster3", "cluster4"):
                four[target].core().delete_namespaced_secret("istio-remote-secret-cluster2",
                                                             "istio-system")
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                results = list(pool.map(
                    lambda target: run_env(env, "link", "--main", target, "--remote",
                                           "cluster2", "--clusters-dir", str(folder)),
                    ["cluster1", "cluster3", "cluster4"]))
            for r in results:
                assert r.returncode == 0, r.stderr[-2000:]
                assert "Traceback" not in r.stderr
            for target in ("cluster1", "cluster3", "cluster4"):
                assert "cluster2" in remote_secrets(four[target]), target
        again = run_env(env, "bootstrap", *args)
        assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr[-2000:]
    finally:
        down = run_env(env, "teardown", *args, "--yes")
        assert down.returncode == 0, down.stderr[-3000:]
        assert_torn_down(four, NAMES)


def run_env(env: dict[str, str], *args: str):
    return meshctl(*args, env=env)

