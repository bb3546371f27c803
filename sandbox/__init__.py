"""The code sandbox: run untrusted programs (model-generated code) contained, and judge them where
they cannot reach the verdict. `evals` (the code tasks' scores) and `rl` (the `code_tests` reward)
both use it; it imports nothing of the project but `common`.

client   Sandbox, SandboxConfig, SandboxResult, Judged: the fork servers, the limits, a run's verdict
runner   the fork server each worker starts, which forks every program (never imported)
calls    the plain-data codec between a judged run's candidate and judge (part of the server's source)

    results = Sandbox(SandboxConfig(timeout_s=10)).run_many([Judged(solution, tests, "add"), ...])
"""

from sandbox.client import Judged, Sandbox, SandboxConfig, SandboxRefused, SandboxResult

__all__ = ["Judged", "Sandbox", "SandboxConfig", "SandboxRefused", "SandboxResult"]
