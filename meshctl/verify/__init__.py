"""``verify``: does the mesh really span the clusters?  Facts from the live clusters only.

The top layer of meshctl: it reads what bootstrap made and changes nothing but its own
sample namespace.  Callers use ``from meshctl import verify`` and the names below.

- :mod:`~meshctl.verify.run`: :func:`run` (static half, then traffic when it passed,
  then cleanup in a ``finally``).
- :mod:`~meshctl.verify.static`: :func:`static_checks`: every link's remote secret works
  with its own token, one root everywhere, east-west addresses, istiod Available.
- :mod:`~meshctl.verify.traffic`: :func:`traffic_checks`, :func:`sample_manifests`,
  :func:`expected_answers`.
- :mod:`~meshctl.verify.ledger`: :func:`claim` (a namespace that is not verify's for
  this mesh ID is refused), :class:`Ledger` (every write checked and recorded),
  :func:`cleanup` (only what was recorded; the namespace only when nothing else is in it).
- :mod:`~meshctl.verify.sizing`: :func:`~meshctl.verify.sizing.requests_for`,
  :func:`~meshctl.verify.sizing.miss_chance`: the request count for a 0.1 % false-failure
  rate.
- :mod:`~meshctl.verify.curl`: :func:`curl_script`, :func:`count_requests`,
  :func:`judge_traffic`, :func:`exec_in_pod`: requests that were not seen never count.
- :mod:`~meshctl.verify.control_plane`: istiod's own view of every linked cluster.
- :mod:`~meshctl.verify.result`: :class:`Check`, :class:`Traffic`, :class:`Result`
  (``--json``, schema ``meshctl.verify/v1``), :func:`junit_xml`.
"""

from meshctl.verdicts import FAIL, PASS, SKIP
from meshctl.verify import sizing
from meshctl.verify.curl import (
    ExecFailed,
    Tally,
    count_requests,
    curl_script,
    exec_in_pod,
    judge_traffic,
)
from meshctl.verify.ledger import Ledger, Tidied, claim, cleanup
from meshctl.verify.result import (
    DEFAULT_NAMESPACE,
    SCHEMA,
    Answer,
    Check,
    Failure,
    Result,
    Traffic,
    junit_xml,
    target,
)
from meshctl.verify.run import run
from meshctl.verify.static import static_checks
from meshctl.verify.traffic import expected_answers, sample_manifests, traffic_checks

__all__ = [
    "DEFAULT_NAMESPACE", "FAIL", "PASS", "SCHEMA", "SKIP", "Answer", "Check", "ExecFailed",
    "Failure", "Ledger", "Result", "Tally", "Tidied", "Traffic", "claim", "cleanup",
    "count_requests", "curl_script", "exec_in_pod", "expected_answers", "judge_traffic",
    "junit_xml", "run", "sample_manifests", "sizing", "static_checks", "target",
    "traffic_checks",
]
