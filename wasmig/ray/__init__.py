"""wasmig on a Ray cluster: each WASI program a Ray actor (:mod:`~wasmig.ray.actor`), a detached
controller actor holding the job table (:mod:`~wasmig.ray.controller`), node choice
(:mod:`~wasmig.ray.placement`), the job's output log that survives moves (:mod:`~wasmig.ray.joblog`)
and the client the ``wasmig cluster`` command uses (:mod:`~wasmig.ray.client`). See docs/fleet.md.

Only this package imports ``ray`` (tests/test_architecture.py checks it): everything below it runs
without Ray installed, and the CLI imports it only inside ``wasmig cluster``.
"""
