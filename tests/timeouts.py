"""Every bounded wait in the tests uses one of these, so they can be tuned in one place.

`SHORT` is for "this should NOT happen": how long to wait before concluding that nothing came.
`LONG` is for "this should happen": the bound on waiting for something that normally arrives at
once; it is only reached when a test is failing (or the machine is very slow), so it is generous.
`THREAD_EXIT` bounds how long the thread-leak check in conftest.py waits for a test's threads.
"""

from __future__ import annotations

SHORT = 0.05
LONG = 5.0
THREAD_EXIT = 2.0

__all__ = ["LONG", "SHORT", "THREAD_EXIT"]
