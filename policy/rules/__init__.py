"""Policy rules: pure functions ``(expression, *, policy, principal, ...) -> expression``.

Each rule lives in its own module named after the function; the order they run
in is :data:`policy.pipeline.RULES`.
"""
