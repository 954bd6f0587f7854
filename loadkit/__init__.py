"""The load kit: what both the tests and ``bench/`` drive the relay with.

A real aiosmtpd upstream (`upstream`), the real ingress run in-process with a known
snapshot (`inprocess`), a relay of real ``podpost`` processes with a counted load and its
figures (`relay`), the resilience scenarios that break something under that load
(`scenarios`, asking JetStream through `jetstream`), and generated fuzz sessions
(`smtpfuzz`). The tests assert on small runs; the bench prints figures of large ones.

It lives outside ``tests`` so that ``bench/`` imports nothing from the tests, and outside
the wheel (``[tool.setuptools] packages``): nothing shipped may import it (a contract in
``.importlinter``). Test-only helpers stay in ``tests/support``.
"""
